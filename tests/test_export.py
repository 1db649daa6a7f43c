"""Concepts out to the formats diffusers, A1111 and ComfyUI load, and back in (issue 18).

A concept learned on the bundled model is exported, loaded into a fresh plain ``StableDiffusionPipeline`` of
the same base with diffusers' own ``load_lora_weights`` and ``load_textual_inversion``, and sampled with the
same seed and the base's own sampler: a LoRA concept gives the session's images (equal up to 8-bit
rounding); a dense K/V concept, written as LoRA by a truncated SVD, gives them within a stated tolerance.
An export imported back as a concept gives the session's images exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import pattern_images
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya
from safetensors.torch import load_file, save_file

from lifelong.adapters import target_module_names
from lifelong.base import BUNDLED_MODEL, get_base
from lifelong.concepts import Session
from lifelong.configs import ExportConfig, GenerateConfig
from lifelong.errors import ExportError, LoraImportError
from lifelong.generation import generate
from lifelong.learner import LearnConfig, learn
from lifelong.lora_export import export, peft_state_dict
from lifelong.lora_import import import_lora
from lifelong.lowrank import to_factors

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason="needs the bundled model")
SAMPLE = GenerateConfig(steps=4, seed=7)
TINY_LEARN = {"method": "finetune", "steps": 2, "batch_size": 1, "augment": False}
# a dense delta's SVD keeps 99 % of its energy (relative error ≤ 0.1): images within this mean |Δ| of 0–255
SVD_MEAN_TOLERANCE = 1.0


@pytest.fixture(scope="module")
def base():
    return get_base()


@pytest.fixture(scope="module")
def session(base, tmp_path_factory):
    """<rex>, a LoRA concept, then <mug>, a dense K/V one, on the bundled model."""
    session = Session.create(tmp_path_factory.mktemp("export") / "session", base.name)
    learn(base, session, pattern_images(size=64), "rex", "animal", LearnConfig(params="lora", **TINY_LEARN))
    learn(
        base,
        session,
        pattern_images(size=64, seed=1),
        "mug",
        "object",
        LearnConfig(params="kv", **TINY_LEARN),
    )
    return session


def plain_pipeline() -> StableDiffusionPipeline:
    """The base as anyone else loads it: no slot tokens, nothing of ours."""
    return StableDiffusionPipeline.from_pretrained(
        str(BUNDLED_MODEL), safety_checker=None, requires_safety_checker=False
    )


def draw(pipe: StableDiffusionPipeline, prompt: str) -> np.ndarray:
    generator = torch.Generator().manual_seed(SAMPLE.seed)
    image = pipe(
        prompt, num_inference_steps=SAMPLE.steps, guidance_scale=SAMPLE.guidance_scale, generator=generator
    ).images[0]
    return np.asarray(image).astype(int)


def drawn(base, session, prompt: str, checkpoint: int) -> np.ndarray:
    return np.asarray(generate(base, session, prompt, SAMPLE, checkpoint)[0]).astype(int)


def assert_same_image(theirs: np.ndarray, ours: np.ndarray) -> None:
    """Equal up to 8-bit rounding: peft adds B(A x) to W x where the session samples with W + BA written
    into the weight, so a float32 rounding may move a rare pixel by one level (1 in 12,288 seen)."""
    differ = theirs != ours
    assert np.abs(theirs - ours).max() <= 1 and differ.mean() < 1e-3, (
        differ.sum(),
        np.abs(theirs - ours).max(),
    )


def test_a_lora_concept_loads_into_plain_diffusers_and_draws_the_same_images(base, session, tmp_path):
    report = export(base, session, tmp_path / "rex", ExportConfig(concept="rex"))
    assert (
        report.tokens == ["<rex>"]
        and not report.svd_ranks
        and set(report.ranks.values()) == {LearnConfig.lora_rank}
    )
    readme = (tmp_path / "rex" / "README.md").read_text()
    assert "base-model" in readme and "<rex>" in readme and "load_lora_weights" in readme
    pipe = plain_pipeline()
    pipe.load_lora_weights(str(tmp_path / "rex"))
    pipe.load_textual_inversion(str(tmp_path / "rex" / "embeddings" / "rex.safetensors"))
    ours = drawn(base, session, "a <rex> animal", 1)
    assert ours.std() > 0
    assert_same_image(draw(pipe, "a <rex> animal"), ours)


def test_a_checkpoint_with_dense_deltas_exports_by_svd_within_the_stated_error(base, session, tmp_path):
    report = export(base, session, tmp_path / "k2", ExportConfig(energy=0.99), checkpoint=2)
    assert report.tokens == ["<rex>", "<mug>"]
    assert report.svd_ranks and 0 < report.relative_error <= math.sqrt(1 - 0.99) + 1e-6
    # LoRA and SVD factors stacked per module: rex's rank plus the SVD's rank
    assert all(report.ranks[m] == LearnConfig.lora_rank + r for m, r in report.svd_ranks.items())
    pipe = plain_pipeline()
    pipe.load_lora_weights(str(tmp_path / "k2"))
    for name in ("rex", "mug"):
        pipe.load_textual_inversion(str(tmp_path / "k2" / "embeddings" / f"{name}.safetensors"))
    prompt = "a <rex> animal and a <mug> object"
    ours, theirs = drawn(base, session, prompt, 2), draw(pipe, prompt)
    pipe.disable_lora()
    without = draw(pipe, prompt)
    assert np.abs(ours - theirs).mean() < SVD_MEAN_TOLERANCE  # measured 0.03, max 1
    assert np.abs(ours - without).mean() > SVD_MEAN_TOLERANCE  # the LoRA matters (measured 7.4)


def test_the_kohya_file_has_diffusers_kohya_keys_and_loads_like_the_diffusers_export(base, session, tmp_path):
    report = export(base, session, tmp_path / "kohya", ExportConfig(format="kohya"), checkpoint=1)
    lora = load_file(tmp_path / "kohya" / report.files[0])
    factors = to_factors([session.checkpoint(1)[0]])
    expected = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state_dict(factors).items()})
    assert set(lora) == set(expected) and all(torch.equal(lora[k], expected[k]) for k in expected)
    module = target_module_names(base.pipe.unet)[0]
    assert f"lora_unet_{module.replace('.', '_')}.alpha" in lora
    a1111 = load_file(tmp_path / "kohya" / "embeddings" / "rex.safetensors")
    assert list(a1111) == ["emb_params"] and a1111["emb_params"].shape == (1, 128)
    pipe = plain_pipeline()
    pipe.load_lora_weights(str(tmp_path / "kohya" / report.files[0]))  # diffusers' kohya conversion
    pipe.load_textual_inversion(str(tmp_path / "kohya" / "embeddings" / "rex.safetensors"), token="<rex>")
    assert_same_image(draw(pipe, "a <rex> animal"), drawn(base, session, "a <rex> animal", 1))


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_export_then_import_reproduces_the_images(base, session, tmp_path, fmt):
    out = tmp_path / "out"
    report = export(base, session, out, ExportConfig(format=fmt, concept="rex"))
    lora = out / report.files[0]
    again = Session.create(tmp_path / "again", base.name)
    concept = import_lora(
        base, again, lora, out / "embeddings" / "rex.safetensors", "rex", "animal", GenerateConfig(steps=2)
    )
    assert concept.method == "imported" and concept.prompts == ["a <rex> animal"]
    assert len(again.images(1)) == 1 and again.images(1)[0].size == (base.resolution,) * 2
    np.testing.assert_array_equal(
        drawn(base, again, "a <rex> animal", 1), drawn(base, session, "a <rex> animal", 1)
    )


def test_exports_are_refused_with_a_clear_message(base, session, tmp_path):
    with pytest.raises(ExportError, match="not a concept of this session"):
        export(base, session, tmp_path / "a", ExportConfig(concept="nobody"))
    with pytest.raises(ExportError, match="not both"):
        export(base, session, tmp_path / "a", ExportConfig(concept="rex"), checkpoint=2)
    with pytest.raises(ExportError, match="Checkpoint 0 is the base model"):
        export(base, session, tmp_path / "b", checkpoint=0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="new folder"):
        export(base, session, tmp_path / "c")


def foreign_lora(unet, path, prefix: str = "unet.") -> None:
    """A diffusers-keyed LoRA of rank 2 on another UNet's K/V projections."""
    tensors = {}
    for module in target_module_names(unet):
        out, inp = unet.get_submodule(module).weight.shape
        tensors[f"{prefix}{module}.lora_A.weight"] = torch.randn(2, inp)
        tensors[f"{prefix}{module}.lora_B.weight"] = torch.randn(out, 2)
    save_file(tensors, str(path))


def test_imports_of_another_base_or_other_layers_are_refused(base, tiny_base, session, tmp_path):
    out = tmp_path / "ok"
    export(base, session, out, ExportConfig(concept="rex"))
    embedding = out / "embeddings" / "rex.safetensors"
    target = Session.create(tmp_path / "target", base.name)
    foreign_lora(tiny_base.pipe.unet, tmp_path / "tiny.safetensors")
    with pytest.raises(LoraImportError, match="made for another base model") as caught:
        import_lora(base, target, tmp_path / "tiny.safetensors", embedding, "x")
    assert str(tmp_path) not in str(caught.value)
    save_file({"<x>": torch.zeros(32)}, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(LoraImportError, match="takes vectors of 128 numbers"):
        import_lora(base, target, out / "pytorch_lora_weights.safetensors", tmp_path / "narrow.safetensors")
    save_file({"<x>": torch.zeros(3, 128)}, str(tmp_path / "multi.safetensors"))
    with pytest.raises(LoraImportError, match="3 vectors per token"):
        import_lora(base, target, out / "pytorch_lora_weights.safetensors", tmp_path / "multi.safetensors")
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    save_file(
        {**weights, "text_encoder.x.lora_A.weight": torch.zeros(1, 1)}, str(tmp_path / "te.safetensors")
    )
    with pytest.raises(LoraImportError, match="also changes the text encoder"):
        import_lora(base, target, tmp_path / "te.safetensors", embedding)
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    with pytest.raises(LoraImportError, match="not a safetensors file"):
        import_lora(base, target, tmp_path / "pickle.safetensors", embedding)
    assert target.concepts == []
