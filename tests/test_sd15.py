"""SD-1.5 at full size on the CPU: every step of a user's request, through the app's service, at 512 px.

The pipeline is SD-1.5's architecture from its published configs with random weights
(``lifelong.bench.random_sd15``: UNet 860 M, VAE 84 M, CLIP ViT-L text tower 123 M parameters), so module
names, shapes, dtypes and memory paths are the real ones; the images are noise. Each default trainable set
learns a concept for 2 steps (dfkd, LoRA on every attention projection, with its distillation on; finetune,
dense K/V; c-lora, LoRA on K/V with its penalty), then the session is saved and loaded back, two concepts
compose in one 2-step DDIM generation with their attention maps, and the composition exports under the
names diffusers and kohya use. fp32 at batch 1 with gradient checkpointing, as a CPU would learn it.

    python -m pytest -m slow tests/test_sd15.py        # prints its time and peak RSS at the end
"""

from __future__ import annotations

import math
import resource
import time
import zipfile
from dataclasses import replace

import pytest
import torch
from conftest import pattern_images
from safetensors.torch import load_file

from lifelong.adapters import target_module_names, token_embedding
from lifelong.attention import capture_resolution
from lifelong.base import BaseConfig, prepare_base
from lifelong.bench.random_sd15 import random_sd15
from lifelong.configs import ExportConfig, GenerateConfig, LearnConfig
from lifelong.service import Studio

pytestmark = pytest.mark.slow

USER = "alice"
TWO_STEPS = LearnConfig(steps=2, batch_size=1, augment=False)
# (name, class word, config): the class words are words of the random tokenizer's synthetic vocabulary
CONCEPTS = [
    # the teacher pass and its pseudo-samples at full size: one sample keeps its 20-step walk short
    ("rex", "w12", replace(TWO_STEPS, method="dfkd", settings={"dfkd_samples": 1, "dfkd_batch": 1})),
    ("mug", "w40", replace(TWO_STEPS, method="finetune")),
    ("cup", "w41", replace(TWO_STEPS, method="c-lora")),
]
PEAK_RSS_LIMIT_GB = 16.0  # a 24 GB machine, with room for what else runs on it


@pytest.fixture(scope="module")
def started() -> float:
    return time.perf_counter()


@pytest.fixture(scope="module")
def studio(started, tmp_path_factory) -> Studio:
    config = BaseConfig(model="random-sd15", gradient_checkpointing=True, compile=False)
    base = prepare_base(random_sd15(), config, torch.device("cpu"))
    studio = Studio(base, root=tmp_path_factory.mktemp("sessions"))
    for index, (name, class_word, learn_config) in enumerate(CONCEPTS):
        images = pattern_images(count=2, size=base.resolution, seed=index)
        studio.learn(USER, images, name, class_word, learn_config)
    return studio


def test_the_base_is_sd15_sized_and_its_tokenizer_takes_concept_tokens(studio):
    base = studio.base
    assert base.resolution == 512 and base.dtype == torch.float32 and base.gradient_checkpointing
    assert sum(p.numel() for p in base.pipe.unet.parameters()) > 850e6
    tokenizer = base.pipe.tokenizer  # word-level over w0, w1, …: "a" is unknown, the slot token is one token
    ids = tokenizer(studio.session(USER).rewrite_prompt("a <rex> w12", 3)).input_ids
    assert ids == [tokenizer.unk_token_id, base.slot_token_ids[0], tokenizer.convert_tokens_to_ids("w12")]


def test_each_trainable_set_learns_at_full_size(studio):
    base, session = studio.base, studio.session(USER)
    unet = base.pipe.unet
    expected = {
        1: ("lora-attn", target_module_names(unet, "lora-attn")),  # dfkd: q, k, v, out of attn1, attn2
        2: ("kv", target_module_names(unet, "kv")),
        3: ("lora", target_module_names(unet, "kv")),
    }
    assert len(expected[1][1]) == 128 and len(expected[2][1]) == 32  # 16 transformer blocks
    for index, (kind, modules) in expected.items():
        delta, _ = session.checkpoint(index)
        assert delta.kind == kind and sorted(delta.modules()) == sorted(modules)
        assert all(t.dtype == torch.float32 for t in delta.tensors.values())
        for module in modules:
            layer = unet.get_submodule(module)
            change = delta.dense(module)
            assert change.shape == (layer.out_features, layer.in_features)
            if kind != "kv":  # B starts at zero: two steps moved it
                assert delta.tensors[f"{module}.lora_A"].shape == (LearnConfig.lora_rank, layer.in_features)
            assert change.abs().sum() > 0, module
        _, class_word, _ = CONCEPTS[index - 1]
        assert delta.embedding.shape == (768,)
        assert not torch.equal(delta.embedding, token_embedding(base, class_word))
    assert [c.method for c in session.concepts] == ["dfkd", "finetune", "c-lora"]
    assert all(math.isfinite(c.final_loss) for c in session.concepts)


def test_the_session_file_loads_back_whole(studio):
    archive = studio.export(USER)
    reopened = studio.import_file("bob", archive)
    original = studio.session(USER)
    assert reopened.names() == original.names() == ["rex", "mug", "cup"]
    for index in (1, 2, 3):
        (mine, _), (theirs, _) = original.checkpoint(index), reopened.checkpoint(index)
        assert mine.tensors.keys() == theirs.tensors.keys()
        assert all(torch.equal(mine.tensors[k], theirs.tensors[k]) for k in mine.tensors)
        assert torch.equal(mine.embedding, theirs.embedding)


def test_two_concepts_compose_with_their_attention_maps_at_512_px(studio):
    assert capture_resolution(studio.base.pipe.unet) == 16  # of SD-1.5's 64, 32, 16 and 8
    config = GenerateConfig(steps=2, seed=0)
    images, overlays = studio.generate_with_maps(USER, "a <rex> w12 and a <mug> w40", config)
    assert [image.size for image in images] == [(512, 512)]
    captions = [caption for _, caption in overlays]
    assert any("<rex>" in c for c in captions) and any("<mug>" in c for c in captions)
    assert all(overlay.size == (512, 512) for overlay, _ in overlays)


def test_the_export_loads_into_diffusers_under_its_module_names(studio, tmp_path):
    """Last: it loads the export into the base's own pipeline, as a user's diffusers code would."""
    base = studio.base
    unet = base.pipe.unet
    names = set(target_module_names(unet, "lora-attn"))
    kohya_archive, kohya_report = studio.export_lora(USER, ExportConfig(format="kohya"))
    with zipfile.ZipFile(kohya_archive) as handle:
        handle.extractall(tmp_path / "kohya")
    [kohya_file] = (tmp_path / "kohya").glob("*/*.safetensors")
    kohya_names = {"lora_unet_" + name.replace(".", "_") for name in names}
    assert (
        {key.split(".")[0] for key in load_file(kohya_file)}
        == {"lora_unet_" + m.replace(".", "_") for m in kohya_report.ranks}
        <= kohya_names
    )

    archive, report = studio.export_lora(USER, ExportConfig())  # diffusers, checkpoint 3: all three
    assert set(report.ranks) == names and report.svd_ranks  # the dense K/V concept went through the SVD
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(tmp_path / "diffusers")
    [folder] = (tmp_path / "diffusers").iterdir()
    weights = load_file(folder / "pytorch_lora_weights.safetensors")
    assert {key.removeprefix("unet.").rsplit(".lora", 1)[0] for key in weights} == names
    base.pipe.load_lora_weights(str(folder), adapter_name="exported")
    try:
        for module in names:
            layer = unet.get_submodule(module)
            assert layer.lora_A["exported"].weight.shape == (report.ranks[module], layer.in_features)
        base.pipe.load_textual_inversion(str(folder / "embeddings" / "rex.safetensors"))
        assert base.pipe.tokenizer.convert_tokens_to_ids("<rex>") != base.pipe.tokenizer.unk_token_id
    finally:
        base.pipe.unload_lora_weights()


def test_time_and_peak_memory(started, capsys):
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB
    with capsys.disabled():
        print(f"\nSD-1.5 at 512 px, every step of a request: {seconds:.0f} s, peak RSS {peak_gb:.1f} GB")
    assert peak_gb < PEAK_RSS_LIMIT_GB
