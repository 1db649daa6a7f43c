"""Regional composition of routed concepts (lifelong.composition) on a tiny real pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import pattern_images

from lifelong.adapters import use_state
from lifelong.attention import AttentionRecord, prompt_tokens
from lifelong.composition import region_weights, regional_unet, seam_margin, square_weights
from lifelong.concepts import Session
from lifelong.encoding import encode_text
from lifelong.errors import InvalidPromptError, InvalidSettingError
from lifelong.generation import GenerateConfig, generate
from lifelong.learner import LearnConfig, learn
from lifelong.limits import GENERATE_OVERHEAD_S, generate_seconds

PROMPT = "a <rex> dog and a <mug> mug"
PLAIN = GenerateConfig(steps=4, seed=3, num_images=2, side_by_side=False)  # the plain mix
REGIONAL = dataclasses.replace(PLAIN, regional=True)
SIDE = dataclasses.replace(PLAIN, side_by_side=True)


@pytest.fixture(scope="module")
def routed(sharp_base, tmp_path_factory):
    session = Session.create(tmp_path_factory.mktemp("composition") / "session", "tiny-sharp")
    for name, word, seed in (("rex", "dog", 0), ("mug", "mug", 2)):
        learn(
            sharp_base,
            session,
            pattern_images(seed=seed),
            name,
            word,
            LearnConfig("routed", steps=4, seed=seed),
        )
    return session


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) for image in images])


def test_region_weights_follow_the_stronger_map_and_sum_to_one():
    maps = torch.full((1, 2, 4, 4), 0.1)
    maps[0, 0, 0, 0] = 0.9  # the first concept attends top left
    maps[0, 1, 3, 3] = 0.3  # the second, weakly overall, bottom right: its own peak still wins there
    weights = region_weights(maps, 8)
    assert weights.shape == (1, 2, 8, 8)
    assert torch.allclose(weights.sum(1), torch.ones(1, 8, 8))
    assert weights[0, 0, 0, 0] > 0.99 and weights[0, 1, 7, 7] > 0.99


def test_each_pass_has_its_own_concept_and_the_blend_lies_between_them(sharp_base, routed):
    names = routed.names()
    passes = []
    for label, text in (("<rex>", "a <rex> dog and a mug"), ("<mug>", "a dog and a <mug> mug")):
        state = routed.state(2, sharp_base.slot_token_ids, label)
        own = routed.rewrite_prompt(text, 2)
        with use_state(sharp_base, state), torch.no_grad():
            cond = encode_text(sharp_base, [own])
        passes.append((state, cond, prompt_tokens(sharp_base, own, names), label))
    unet = sharp_base.pipe.unet
    size = int(unet.config.sample_size)
    sample = torch.randn(
        2, int(unet.config.in_channels), size, size, generator=torch.Generator().manual_seed(0)
    )
    uncond = torch.zeros_like(passes[0][1])
    context = torch.cat([uncond, passes[0][1]])  # the wrapper puts each pass's own prompt in the cond row
    t = torch.tensor(500)
    with torch.no_grad():
        alone = []
        for state, cond, _, _ in passes:
            with use_state(sharp_base, state):
                alone.append(unet(sample, t, torch.cat([uncond, cond]), return_dict=False)[0])
        full = prompt_tokens(sharp_base, routed.rewrite_prompt(PROMPT, 2), names)
        with regional_unet(sharp_base, passes, full, images=1) as wrapper:
            blended = wrapper(sample, t, context, return_dict=False)[0]
    low, high = torch.minimum(*alone), torch.maximum(*alone)
    assert (blended >= low - 1e-5).all() and (blended <= high + 1e-5).all()  # a convex blend per location
    assert not torch.allclose(alone[0], alone[1], atol=1e-4)  # the passes really differ
    for one in alone:
        assert not torch.allclose(blended, one, atol=1e-4)  # and both reach the image


def test_regional_generation_draws_otherwise_and_leaves_the_base_as_found(sharp_base, routed):
    unet_before = {k: v.clone() for k, v in sharp_base.pipe.unet.state_dict().items()}
    table = sharp_base.pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    record = AttentionRecord()
    first = pixels(generate(sharp_base, routed, PROMPT, REGIONAL, record=record))
    again = pixels(generate(sharp_base, routed, PROMPT, REGIONAL))
    mixed = pixels(generate(sharp_base, routed, PROMPT, PLAIN))
    np.testing.assert_array_equal(first, again)  # same seeds, same images
    assert np.abs(first - mixed).mean() > 0.5  # not the half-weight mix of both concepts
    assert set(record.concepts) == {"<rex>", "<mug>"} and record.maps.shape[0] == 2
    assert torch.allclose(
        record.maps.sum(-1), torch.ones(record.maps.shape[:3])
    )  # words' shares per location
    assert (record.label_maps(["<rex>", "<mug>"]).flatten(2).amax(-1) > 0).all()  # both concepts are drawn
    for key, value in sharp_base.pipe.unet.state_dict().items():
        assert torch.equal(value, unet_before[key]), key
    assert torch.equal(sharp_base.pipe.text_encoder.get_input_embeddings().weight, table)


def test_one_routed_concept_is_plain_sampling_and_guidance_is_an_alternative(sharp_base, routed):
    one = "a <rex> dog on the left"
    np.testing.assert_array_equal(
        pixels(generate(sharp_base, routed, one, REGIONAL)), pixels(generate(sharp_base, routed, one, PLAIN))
    )
    with pytest.raises(InvalidSettingError, match="alternatives"):
        generate(sharp_base, routed, PROMPT, dataclasses.replace(REGIONAL, caa=True))


def test_regional_cost_is_budgeted_and_bounded(sharp_base, routed, tmp_path):
    plain, regional = (
        generate_seconds(PLAIN) - GENERATE_OVERHEAD_S,
        generate_seconds(REGIONAL) - GENERATE_OVERHEAD_S,
    )
    assert regional == pytest.approx(3 * plain)  # up to MAX_REGIONS passes per step, budgeted before it runs
    many = Session.create(tmp_path / "many", "tiny-sharp")
    for seed, name in enumerate(("a", "b", "c", "d")):
        learn(
            sharp_base,
            many,
            pattern_images(seed=seed),
            name,
            "toy",
            LearnConfig("routed", steps=1, seed=seed),
        )
    with pytest.raises(InvalidPromptError, match="at most 3"):
        generate(sharp_base, many, "<a> toy, <b> toy, <c> toy and <d> toy", REGIONAL)


def test_regional_generation_starts_from_a_stored_latent_when_asked(sharp_base, tmp_path):
    session = Session.create(tmp_path / "icgen", "tiny-sharp")
    for name, word, seed in (("rex", "dog", 0), ("mug", "mug", 2)):
        config = LearnConfig("routed+icgen", steps=2, seed=seed)
        learn(sharp_base, session, pattern_images(seed=seed), name, word, config)
    start = dataclasses.replace(REGIONAL, icgen_strength=0.5)
    from_context = pixels(generate(sharp_base, session, PROMPT, start))
    from_noise = pixels(generate(sharp_base, session, PROMPT, REGIONAL))
    assert np.abs(from_context - from_noise).mean() > 0.5  # ICGen's start reaches the regional run


def test_square_weights_give_each_square_its_columns_and_blend_only_where_windows_overlap():
    weights = square_weights(2, 4, 32, margin=2)[0]
    assert weights.shape == (2, 4, 32)
    assert torch.allclose(weights.sum(0), torch.ones(4, 32))
    assert (weights[0, :, :14] == 1).all() and (weights[1, :, 18:] == 1).all()  # 16 ± the margin
    assert ((weights[0, 0, 14:18] > 0) & (weights[0, 0, 14:18] < 1)).all()
    three = square_weights(3, 1, 48, margin=2)[0, :, 0]
    assert three.argmax(0).tolist() == [0] * 16 + [1] * 16 + [2] * 16  # each square owns its third
    assert seam_margin(16, 2) == 2 and seam_margin(64, 4) == 8 and seam_margin(8, 4) == 4  # whole map cells


def _passes(base, session, texts):
    names = session.names()
    passes = []
    for label, text in texts:
        state = session.state(2, base.slot_token_ids, label)
        own = session.rewrite_prompt(text, 2)
        with use_state(base, state), torch.no_grad():
            cond = encode_text(base, [own])
        passes.append((state, cond, prompt_tokens(base, own, names), label))
    return passes


def test_side_by_side_takes_each_pass_in_its_own_squares_window(sharp_base, routed):
    passes = _passes(sharp_base, routed, (("<rex>", "a <rex> dog"), ("<mug>", "a <mug> mug")))
    unet = sharp_base.pipe.unet
    size = int(unet.config.sample_size)
    shape = (2, int(unet.config.in_channels), size, 2 * size)
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    uncond = torch.zeros_like(passes[0][1])
    t = torch.tensor(500)
    full = prompt_tokens(sharp_base, routed.rewrite_prompt(PROMPT, 2), routed.names())
    with regional_unet(sharp_base, passes, full, images=1, side_by_side=True) as wrapper, torch.no_grad():
        blended = wrapper(sample, t, torch.cat([uncond, passes[0][1]]), return_dict=False)[0]
        margin = seam_margin(size, size // wrapper.passes[0].store.resolution)
        windows = (slice(0, size + margin), slice(size - margin, 2 * size))
        alone = []
        for (state, cond, _, _), window in zip(passes, windows, strict=True):
            with use_state(sharp_base, state):
                own = sample[..., window].contiguous()
                alone.append(unet(own, t, torch.cat([uncond, cond]), return_dict=False)[0])
    torch.testing.assert_close(blended[..., : size - margin], alone[0][..., : size - margin])
    torch.testing.assert_close(blended[..., size + margin :], alone[1][..., 2 * margin :])
    assert not torch.allclose(alone[0][..., :size], alone[1][..., margin:], atol=1e-4)


def test_side_by_side_draws_a_wider_canvas_the_same_every_time(sharp_base, routed, tmp_path):
    unet_before = {k: v.clone() for k, v in sharp_base.pipe.unet.state_dict().items()}
    record = AttentionRecord()
    first = generate(sharp_base, routed, PROMPT + " on a table", SIDE, record=record)
    side = sharp_base.resolution
    assert [image.size for image in first] == [(2 * side, side)] * 2
    again = generate(sharp_base, routed, PROMPT + " on a table", SIDE)
    np.testing.assert_array_equal(pixels(first), pixels(again))
    res = record.maps.shape[1]
    assert record.maps.shape[:3] == (2, res, 2 * res)  # the maps cover the whole canvas
    rex, mug = record.label_maps(["<rex>", "<mug>"])[0].sum(1)  # per column
    assert rex[: res // 2].sum() > mug[: res // 2].sum() and mug[-res // 2 :].sum() > rex[-res // 2 :].sum()
    for key, value in sharp_base.pipe.unet.state_dict().items():
        assert torch.equal(value, unet_before[key]), key
    one = generate(sharp_base, routed, "a <rex> dog", SIDE)  # one routed concept: plain sampling
    assert one[0].size == (side, side)
    assert generate_seconds(SIDE) - GENERATE_OVERHEAD_S == pytest.approx(
        9 * (generate_seconds(PLAIN) - GENERATE_OVERHEAD_S)
    )  # up to three passes over a canvas three squares wide
    for named in ({"regional": True}, {"caa": True}):  # a composition asked for by name takes its place
        asked = dataclasses.replace(PLAIN, **named)
        chosen = generate(sharp_base, routed, PROMPT, dataclasses.replace(asked, side_by_side=True))
        np.testing.assert_array_equal(pixels(chosen), pixels(generate(sharp_base, routed, PROMPT, asked)))
    session = Session.create(tmp_path / "icgen", "tiny-sharp")
    for name, word, seed in (("rex", "dog", 0), ("mug", "mug", 2)):
        config = LearnConfig("routed+icgen", steps=1)
        learn(sharp_base, session, pattern_images(seed=seed), name, word, config)
    start = dataclasses.replace(PLAIN, icgen_strength=0.5)  # a square stored image to start from
    np.testing.assert_array_equal(
        pixels(generate(sharp_base, session, PROMPT, dataclasses.replace(start, side_by_side=True))),
        pixels(generate(sharp_base, session, PROMPT, start)),
    )
