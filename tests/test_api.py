"""The Python API of ``lifelong/__init__.py``: a few lines that read like diffusers, one argument order,
and a pipeline passed in is left as it was."""

from __future__ import annotations

import importlib

import numpy as np
import torch
from conftest import pattern_images
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from tiny import tiny_pipeline

import lifelong


def test_the_api_learns_generates_and_exports_and_leaves_the_callers_pipeline_alone(tmp_path):
    pipe = tiny_pipeline(seed=5)
    vocabulary = len(pipe.tokenizer)
    weights = {name: p.detach().clone() for name, p in pipe.unet.named_parameters()}
    grads = {name: p.requires_grad for name, p in pipe.text_encoder.named_parameters()}

    base = lifelong.from_pipe(pipe)
    session = lifelong.open_session(base, tmp_path / "session")
    config = lifelong.LearnConfig(method="finetune", params="lora", steps=2, batch_size=2)
    lifelong.learn(base, session, pattern_images(), "rex", "dog", config)
    images = lifelong.generate(base, session, "a <rex> dog", lifelong.GenerateConfig(steps=2, seed=1))
    report = lifelong.export(base, session, tmp_path / "rex-lora")

    assert len(images) == 1 and np.asarray(images[0]).std() > 0
    assert (
        report.tokens == ["<rex>"] and (tmp_path / "rex-lora" / "pytorch_lora_weights.safetensors").exists()
    )
    assert list(load_file(tmp_path / "rex-lora" / "embeddings" / "rex.safetensors")) == ["<rex>"]
    # the caller's pipeline: no slot tokens, weights and gradient flags as they were, still usable as is
    assert len(pipe.tokenizer) == vocabulary
    assert all(torch.equal(p, weights[name]) for name, p in pipe.unet.named_parameters())
    assert {name: p.requires_grad for name, p in pipe.text_encoder.named_parameters()} == grads
    assert isinstance(pipe, StableDiffusionPipeline) and base.pipe is not pipe
    assert sorted(lifelong.__all__) == lifelong.__all__ and all(
        hasattr(lifelong, n) for n in lifelong.__all__
    )
    assert callable(lifelong.generate) and callable(lifelong.export)
    # no module hides behind a function of the same name: both modules import as modules
    assert importlib.import_module("lifelong.generation").generate is lifelong.generate
    assert importlib.import_module("lifelong.lora_export").export is lifelong.export
