"""The lifelong core on a tiny real pipeline: learn, checkpoints, persistence, cancel."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pattern_images
from peft.tuners.tuners_utils import BaseTunerLayer
from tiny import tiny_pipeline

from lifelong.adapters import target_module_names, trainable
from lifelong.base import BaseConfig, compile_default, prepare_base
from lifelong.concepts import Session
from lifelong.encoding import encode_text
from lifelong.errors import Cancelled, CheckpointError, InvalidPromptError, SessionFormatError
from lifelong.generation import GenerateConfig, denoise, generate, warm_up
from lifelong.learner import LearnConfig, concept_loss, learn

FAST = GenerateConfig(steps=3, seed=7, num_images=2)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


@pytest.fixture(scope="module")
def learned(tiny_base, tmp_path_factory):
    """A session that learned <rex>, and the base model's images generated before any learning."""
    session = Session.create(tmp_path_factory.mktemp("core") / "session", "tiny")
    before = pixels(generate(tiny_base, session, "a red dog", FAST))
    learn(
        tiny_base, session, pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=40, seed=1)
    )
    return session, before


def test_checkpoint_zero_reproduces_the_base_bit_for_bit(tiny_base, learned):
    session, before = learned
    assert np.array_equal(pixels(generate(tiny_base, session, "a red dog", FAST, checkpoint=0)), before)


def test_base_weights_are_restored_exactly_after_use(tiny_base, learned):
    session, _ = learned
    pristine = {
        n: tiny_base.pipe.unet.get_submodule(n).weight.clone()
        for n in target_module_names(tiny_base.pipe.unet)
    }
    generate(tiny_base, session, "a <rex> dog", FAST)
    for name, weight in pristine.items():
        assert torch.equal(tiny_base.pipe.unet.get_submodule(name).weight, weight)


def test_new_token_changes_generations(tiny_base, learned):
    session, before = learned
    with_token = pixels(generate(tiny_base, session, "a <rex> dog", FAST))
    assert np.abs(with_token.astype(int) - before.astype(int)).mean() > 1.0


def test_same_seed_same_image_and_batch_of_seeds(tiny_base, learned):
    session, _ = learned
    first = generate(tiny_base, session, "a <rex> dog", FAST)
    second = generate(tiny_base, session, "a <rex> dog", FAST)
    assert np.array_equal(pixels(first), pixels(second))
    assert not np.array_equal(pixels(first[:1]), pixels(first[1:]))  # seeds 7 and 8 differ


def test_training_lowers_the_concept_loss(tiny_base, learned):
    session, _ = learned
    images = session.images(1)
    before = concept_loss(tiny_base, session, 0, images, "a dog")
    after = concept_loss(tiny_base, session, 1, images, "a <rex> dog")
    assert after < before * 0.97, (before, after)  # K/V + token only: a random tiny UNet moves a few %


def test_v_prediction_zero_snr_base_learns_and_samples_from_pure_noise(tmp_path):
    """SD-2.x-style schedules (and the bundled model's) train on the velocity and sample from t = 999."""
    from tiny import tiny_pipeline

    pipe = tiny_pipeline(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )
    base = prepare_base(pipe, BaseConfig(model="tiny-v", concept_slots=2), torch.device("cpu"))
    scheduler = base.sampling_scheduler()
    scheduler.set_timesteps(FAST.steps)
    assert int(scheduler.timesteps[0]) == 999 and float(scheduler.alphas_cumprod[999]) == 0.0
    session = Session.create(tmp_path / "session", "tiny-v")
    learn(base, session, pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=40, seed=1))
    images = session.images(1)
    before = concept_loss(base, session, 0, images, "a dog")
    after = concept_loss(base, session, 1, images, "a <rex> dog")
    assert after < before * 0.97, (before, after)
    generated = pixels(generate(base, session, "a <rex> dog", FAST))
    assert generated.std() > 1.0


@pytest.mark.parametrize(
    "shipped, sampler",
    [
        ("DDIMScheduler", "DDIMScheduler"),
        ("EulerDiscreteScheduler", "EulerDiscreteScheduler"),
        ("PNDMScheduler", "PNDMScheduler"),
        ("DDPMScheduler", "DDIMScheduler"),  # a training schedule
        ("EulerAncestralDiscreteScheduler", "DDIMScheduler"),  # draws noise at each step
    ],
)
def test_sampling_uses_the_bases_own_ode_sampler_else_ddim(shipped, sampler):
    """base.SHIPPED_SAMPLERS: a base's own ODE sampler is honoured, anything else samples with DDIM; either
    way the same seed gives the same latents, for text-to-image and for an ICGen start."""
    import diffusers

    pipe = tiny_pipeline()
    pipe.scheduler = getattr(diffusers, shipped).from_config(pipe.scheduler.config)
    base = prepare_base(pipe, BaseConfig(model="tiny", concept_slots=2), torch.device("cpu"))
    assert type(base.sampling_scheduler()).__name__ == sampler
    context = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cond, uncond = encode_text(base, ["a dog"]), encode_text(base, [""])
        for strength in (1.0, 0.5):
            config = GenerateConfig(steps=4, icgen_strength=strength)
            first = denoise(base, [3, 4], cond, uncond, config, context=context)
            assert torch.equal(first, denoise(base, [3, 4], cond, uncond, config, context=context))
            assert first.isfinite().all() and not torch.equal(first[0], first[1])


def test_save_export_import_gives_the_same_image(tiny_base, learned, tmp_path):
    session, _ = learned
    expected = pixels(generate(tiny_base, session, "a <rex> dog", FAST, checkpoint=1))
    exported = session.export(tmp_path / "rex.lifelong.zip")
    restored = Session.import_file(exported, tmp_path / "restored", tiny_base)
    reopened = Session.open(restored.root)
    assert reopened.names() == ["rex"]
    assert np.array_equal(pixels(generate(tiny_base, reopened, "a <rex> dog", FAST, checkpoint=1)), expected)


def test_cancel_leaves_manifest_and_checkpoints_unchanged(tiny_base, learned):
    session, _ = learned
    manifest = (session.root / "manifest.json").read_bytes()
    files_before = sorted(p.relative_to(session.root) for p in session.root.rglob("*"))
    cancel = threading.Event()
    steps_seen = []

    def on_progress(progress):
        steps_seen.append(progress.step)
        if progress.step == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        learn(
            tiny_base,
            session,
            pattern_images(seed=2),
            "mug",
            "mug",
            LearnConfig(method="finetune", steps=50),
            on_progress,
            cancel,
        )
    assert steps_seen == [1, 2, 3]
    assert (session.root / "manifest.json").read_bytes() == manifest
    assert sorted(p.relative_to(session.root) for p in session.root.rglob("*")) == files_before
    assert Session.open(session.root).names() == ["rex"]
    assert not any(isinstance(m, BaseTunerLayer) for m in tiny_base.pipe.unet.modules())


def test_lora_parameters_learn_and_come_off_cleanly(tiny_base, tmp_path):
    session = Session.create(tmp_path / "lora", "tiny")
    learn(
        tiny_base,
        session,
        pattern_images(),
        "toy",
        "toy",
        LearnConfig(method="finetune", steps=4, params="lora", lora_rank=2),
    )
    delta, _ = session.checkpoint(1)
    assert delta.kind == "lora" and all(t.shape[0] == 2 or t.shape[1] == 2 for t in delta.tensors.values())
    assert not any(isinstance(m, BaseTunerLayer) for m in tiny_base.pipe.unet.modules())
    assert any(delta.dense(m).abs().sum() > 0 for m in delta.modules())
    again = Session.create(tmp_path / "lora-again", "tiny")
    learn(
        tiny_base,
        again,
        pattern_images(),
        "toy",
        "toy",
        LearnConfig(method="finetune", steps=4, params="lora", lora_rank=2),
    )
    torch.manual_seed(12345)  # the global generator must not matter: the seed in LearnConfig decides
    third = Session.create(tmp_path / "lora-third", "tiny")
    learn(
        tiny_base,
        third,
        pattern_images(),
        "toy",
        "toy",
        LearnConfig(method="finetune", steps=4, params="lora", lora_rank=2),
    )
    for other in (again, third):
        tensors = other.checkpoint(1)[0].tensors
        assert all(torch.equal(tensors[key], value) for key, value in delta.tensors.items())


def test_unknown_and_future_tokens_and_checkpoints_are_refused(tiny_base, learned):
    session, _ = learned
    with pytest.raises(InvalidPromptError, match="not a learned concept"):
        generate(tiny_base, session, "a <nobody> dog", FAST)
    with pytest.raises(InvalidPromptError, match="after checkpoint 0"):
        generate(tiny_base, session, "a <rex> dog", FAST, checkpoint=0)
    with pytest.raises(CheckpointError):
        generate(tiny_base, session, "a dog", FAST, checkpoint=5)
    with pytest.raises(InvalidPromptError, match="Write a prompt"):
        generate(tiny_base, session, "   ", FAST)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "members",
    [
        {"manifest.json": b"{}"},
        {"manifest.json": b'{"format": "lifelong-session", "version": 1}', "evil.pkl": b"\x80\x04."},
        {"manifest.json": b'{"format": "lifelong-session", "version": 1}', "../escape.png": b"x"},
        {"readme.txt": b"hello"},
    ],
)
def test_import_refuses_what_is_not_our_format(tiny_base, tmp_path, members):
    with pytest.raises(SessionFormatError):
        Session.import_file(_zip(tmp_path / "x.zip", members), tmp_path / "out", tiny_base)
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_non_zip_and_a_foreign_checkpoint(tiny_base, tmp_path, learned):
    (tmp_path / "not.zip").write_bytes(b"plain text")
    with pytest.raises(SessionFormatError):
        Session.import_file(tmp_path / "not.zip", tmp_path / "a", tiny_base)
    session, _ = learned
    exported = session.export(tmp_path / "ok.zip")
    with zipfile.ZipFile(exported) as src, zipfile.ZipFile(tmp_path / "bad.zip", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"\x00" * 16 if item.filename.endswith(".safetensors") else data)
    with pytest.raises(SessionFormatError):
        Session.import_file(tmp_path / "bad.zip", tmp_path / "b", tiny_base)


def test_compile_is_on_for_cpus_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("LIFELONG_COMPILE", raising=False)
    assert compile_default(torch.device("cpu")) and not compile_default(torch.device("cuda"))
    monkeypatch.setenv("LIFELONG_COMPILE", "0")
    assert not compile_default(torch.device("cpu"))
    monkeypatch.setenv("LIFELONG_COMPILE", "1")
    assert compile_default(torch.device("cuda"))


def test_sampling_runs_eagerly_while_a_trainable_set_is_attached():
    """After-learn memory samples run with the trainable set attached: the compiled graph is for the bare UNet."""
    base = prepare_base(tiny_pipeline(), BaseConfig(model="tiny", compile=True))
    width = base.pipe.text_encoder.get_input_embeddings().weight.shape[1]
    for kind in ("kv", "lora"):
        with trainable(base, kind, base.slot_token_ids[0], torch.zeros(width)):
            assert base.sampling_unet() is base.pipe.unet
        assert base.sampling_unet() is base.compiled_unet is not None


def test_warm_up_compiles_for_any_number_of_images(tmp_path):
    base = prepare_base(tiny_pipeline(), BaseConfig(model="tiny", compile=True))
    warm_up(base)
    assert base.compiled_unet is not None
    session = Session.create(tmp_path / "s", "tiny")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for count in (1, 3):
            images = generate(base, session, "a dog", GenerateConfig(steps=2, num_images=count))
            assert len(images) == count


@pytest.mark.slow
def test_compiled_sampling_gives_the_eager_images_and_follows_the_weights(learned):
    """The compiled UNet shares the base's weights, so the K/V deltas a concept writes in reach it too."""
    session, _ = learned
    eager = prepare_base(tiny_pipeline(), BaseConfig(model="tiny"))
    compiled = prepare_base(tiny_pipeline(), BaseConfig(model="tiny", compile=True))
    expected = pixels(generate(eager, session, "a <rex> dog", FAST))
    assert np.abs(pixels(generate(compiled, session, "a <rex> dog", FAST)).astype(int) - expected).max() <= 1
    assert compiled.compiled_unet is not None

    unet, x, c = compiled.pipe.unet, torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    with torch.inference_mode():
        before = compiled.sampling_unet()(x, 500, c).sample
        unet.get_submodule(target_module_names(unet)[0]).weight.mul_(3)
        after, reference = compiled.sampling_unet()(x, 500, c).sample, unet(x, 500, c).sample
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, reference)


def test_each_images_caption_joins_its_training_prompt(tiny_base, tmp_path):
    from lifelong.base import slot_token
    from lifelong.encoding import tokenize
    from lifelong.learner import check_inputs, prepare_latents

    session = Session.create(tmp_path / "s", "tiny")
    config = LearnConfig(method="finetune", steps=1)
    captions = ["on  grass", "", "at night"]
    plan = check_inputs(tiny_base, session, pattern_images(), "rex", "dog", config, captions)
    token = slot_token(0)
    assert plan.prompts == [f"a {token} dog on grass", f"a {token} dog", f"a {token} dog at night"]
    latents, ids = prepare_latents(tiny_base, plan, config)
    views = len(latents) // 3  # each image's views are consecutive
    assert len(ids) == len(latents)
    for image, prompt in enumerate(plan.prompts):
        expected = tokenize(tiny_base, [prompt])[0]
        assert all(torch.equal(row, expected) for row in ids[image * views : (image + 1) * views])


@pytest.mark.parametrize(
    ("captions", "message"),
    [
        (["on grass"], "1 captions for 3 images"),
        (["a", "<|slot1|>", "c"], "caption 2"),
        (["a", "b", "{x}"], "caption 3"),
    ],
)
def test_bad_captions_are_refused_before_anything_is_touched(tiny_base, tmp_path, captions, message):
    session = Session.create(tmp_path / "s", "tiny")
    with pytest.raises(InvalidPromptError, match=message):
        learn(tiny_base, session, pattern_images(), "rex", "dog", LearnConfig(steps=1), captions=captions)
    assert session.names() == []
