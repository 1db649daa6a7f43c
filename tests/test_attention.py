"""Multi-concept attention on a tiny real pipeline: map capture, CAA/OAA guidance, maps as images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import pattern_images

from lifelong.adapters import use_state
from lifelong.attention import (
    AttentionRecord,
    CaptureProcessor,
    capture_resolution,
    prompt_tokens,
)
from lifelong.concepts import Session
from lifelong.encoding import decode, encode_text
from lifelong.errors import Cancelled
from lifelong.generation import GenerateConfig, denoise, generate, generate_with_maps
from lifelong.learner import LearnConfig, learn

PROMPT = "a red <rex> dog and a <mug> on the left"
OFF = GenerateConfig(steps=6, seed=3, num_images=2, caa=False, oaa=False, attention_steps=6)


@pytest.fixture(scope="module")
def two_concepts(sharp_base, tmp_path_factory):
    session = Session.create(tmp_path_factory.mktemp("attention") / "session", "tiny-sharp")
    learn(
        sharp_base, session, pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=4, seed=1)
    )
    learn(
        sharp_base,
        session,
        pattern_images(seed=2),
        "mug",
        "mug",
        LearnConfig(method="finetune", steps=4, seed=2),
    )
    return session


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def recorded(base, session, config: GenerateConfig) -> tuple[np.ndarray, AttentionRecord]:
    record = AttentionRecord()
    images = generate(base, session, PROMPT, config, record=record)
    return pixels(images), record


def test_prompt_words_concepts_and_bound_attributes(sharp_base, two_concepts):
    tokens = prompt_tokens(sharp_base, two_concepts.rewrite_prompt(PROMPT, 2), two_concepts.names())
    assert tokens.words == ["a", "red", "<rex>", "dog", "and", "a", "<mug>", "on", "the", "left"]
    assert tokens.concepts == {"<rex>": [2], "<mug>": [6]}
    assert tokens.attributes == {"<rex>": [1, 3], "<mug>": []}  # "red" and "dog" bind to <rex>


def test_captured_maps_have_the_grid_shape_and_sum_to_one_over_words(sharp_base, two_concepts):
    assert capture_resolution(sharp_base.pipe.unet) == 8
    with pytest.raises(ValueError, match="no cross-attention at 2"):
        capture_resolution(sharp_base.pipe.unet, 2)
    images, record = recorded(sharp_base, two_concepts, OFF)
    assert record.maps.shape == (2, 8, 8, 10)
    assert torch.allclose(record.maps.sum(-1), torch.ones(2, 8, 8), atol=1e-5)
    assert record.label_maps().shape == (2, 2, 8, 8)
    # capture only reads the attention: the images are those of the same generation without a record
    assert np.array_equal(images, pixels(generate(sharp_base, two_concepts, PROMPT, OFF)))


def test_both_off_is_plain_generation_bit_for_bit_and_swaps_nothing(sharp_base, two_concepts):
    seen = []

    def processors(_progress):
        seen.append(
            any(isinstance(p, CaptureProcessor) for p in sharp_base.pipe.unet.attn_processors.values())
        )

    images = generate(sharp_base, two_concepts, PROMPT, OFF, progress=processors)
    with use_state(sharp_base, two_concepts.state(2, sharp_base.slot_token_ids)), torch.no_grad():
        cond = encode_text(sharp_base, [two_concepts.rewrite_prompt(PROMPT, 2)])
        uncond = encode_text(sharp_base, [""])
        plain = decode(sharp_base, denoise(sharp_base, [3, 4], cond, uncond, OFF))
    assert np.array_equal(pixels(images), pixels(plain))
    assert seen == [False] * OFF.steps
    generate(
        sharp_base, two_concepts, PROMPT, GenerateConfig(steps=2, caa=True, oaa=True), progress=processors
    )
    assert seen[-2:] == [True, True]  # guidance swaps processors in for the run ...
    assert not any(isinstance(p, CaptureProcessor) for p in sharp_base.pipe.unet.attn_processors.values())


def test_processors_are_restored_when_generation_stops_midway(sharp_base, two_concepts):
    def stop(progress):
        raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        generate(sharp_base, two_concepts, PROMPT, dataclasses.replace(OFF, caa=True), progress=stop)
    assert not any(isinstance(p, CaptureProcessor) for p in sharp_base.pipe.unet.attn_processors.values())


def test_oaa_lowers_the_overlap_of_two_concepts_maps(sharp_base, two_concepts):
    _, off = recorded(sharp_base, two_concepts, OFF)
    images, on = recorded(
        sharp_base, two_concepts, dataclasses.replace(OFF, oaa=True, attention_step_size=200.0)
    )
    before, after = off.overlap("<rex>", "<mug>"), on.overlap("<rex>", "<mug>")
    assert (after < before - 0.03).all(), (before, after)
    assert not np.array_equal(images, recorded(sharp_base, two_concepts, OFF)[0])


def test_caa_raises_the_weakest_concepts_peak(sharp_base, two_concepts):
    _, off = recorded(sharp_base, two_concepts, OFF)
    _, on = recorded(sharp_base, two_concepts, dataclasses.replace(OFF, caa=True, attention_step_size=200.0))
    before, after = off.peaks().amin(1), on.peaks().amin(1)
    assert (after > before * 1.05).all(), (before, after)


def test_a_single_concept_prompt_is_not_guided(sharp_base, two_concepts):
    guided = dataclasses.replace(OFF, caa=True, oaa=True)
    assert np.array_equal(
        pixels(generate(sharp_base, two_concepts, "a <rex> dog", guided)),
        pixels(generate(sharp_base, two_concepts, "a <rex> dog", OFF)),
    )


def test_maps_as_images_show_each_concept_over_each_image(sharp_base, two_concepts):
    images, overlays, record = generate_with_maps(sharp_base, two_concepts, PROMPT, OFF)
    assert [caption for _, caption in overlays] == [
        "image 1: <rex>",
        "image 1: <mug>",
        "image 2: <rex>",
        "image 2: <mug>",
    ]
    assert all(overlay.size == images[0].size for overlay, _ in overlays)
    # the overlay is tinted most where the concept's map peaks and least where it is weakest
    heat = torch.nn.functional.interpolate(
        record.label_maps()[:1, :1], size=images[0].size[::-1], mode="bilinear"
    )
    tint = np.abs(pixels([overlays[0][0]]).astype(int) - pixels(images[:1]).astype(int)).sum(-1)[0]
    hot, cold = (
        np.unravel_index(int(heat[0, 0].argmax()), tint.shape),
        np.unravel_index(int(heat[0, 0].argmin()), tint.shape),
    )
    assert tint[hot] > tint[cold]


def test_maps_of_a_prompt_without_concepts_show_its_content_words(sharp_base, two_concepts):
    images, overlays, record = generate_with_maps(sharp_base, two_concepts, "a red dog on the left", OFF)
    assert record.concepts == {} and record.labels() == ["red", "dog", "left"]
    assert len(overlays) == len(images) * 3


def test_guidance_works_with_routed_concepts_and_an_icgen_start(sharp_base, tmp_path):
    session = Session.create(tmp_path / "routed", "tiny-sharp")
    for name, seed in (("rex", 0), ("mug", 2)):
        config = LearnConfig(method="routed+icgen", steps=4, seed=seed)
        learn(sharp_base, session, pattern_images(seed=seed), name, name, config)
    assert session.weights(2, PROMPT) == [0.5, 0.5]  # routed: both concepts' deltas mixed for this prompt
    start = dataclasses.replace(OFF, icgen_strength=0.7, attention_step_size=200.0)  # 4 of 6 steps
    off, on = AttentionRecord(), AttentionRecord()
    generate(sharp_base, session, PROMPT, start, record=off)
    generate(sharp_base, session, PROMPT, dataclasses.replace(start, oaa=True), record=on)
    assert (on.overlap("<rex>", "<mug>") < off.overlap("<rex>", "<mug>") - 0.03).all()
