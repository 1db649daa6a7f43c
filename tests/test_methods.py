"""Anti-forgetting methods on the tiny pipeline: each mechanism, then 3 concepts in a row per method."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import pattern_images
from tiny import tiny_pipeline
from tiny_clip import tiny_clip

from lifelong.adapters import compose, trainable, use_state
from lifelong.cli import main
from lifelong.concepts import Session
from lifelong.encoding import encode_images, encode_text
from lifelong.errors import InvalidSettingError, UnknownMethodError
from lifelong.generation import GenerateConfig, generate
from lifelong.learner import LearnConfig, learn
from lifelong.limits import DEFAULT_BUDGET_S, SECONDS_PER_SAMPLE, learn_seconds
from lifelong.mechanisms import clora, dfkd, ecd, memory, prior, tame
from lifelong.mechanisms.memory import ShortTermMemory, allocate, forgetting_scores, register_clip
from lifelong.methods import METHODS, get_method
from lifelong.step import BuildContext, StepContext

FAST_GEN = GenerateConfig(steps=4, seed=3, num_images=2)
# every setting that costs time, at its cheapest; each method takes the ones it has
CHEAP = {
    "prior_images": 2,
    "prior_steps": 2,
    "memory_samples": 2,
    "memory_steps": 2,
    "score_images": 1,
    "clip": "tiny-test-clip",
    "icgen_images": 2,
}
CONCEPTS = [("rex", "dog"), ("tom", "cat"), ("cup", "mug")]


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_registered():
    register_clip("tiny-test-clip", tiny_clip())


def cheap(method: str, **more) -> dict:
    known = get_method(method).settings()
    return {**{k: v for k, v in CHEAP.items() if k in known}, **more}


def learn_sequence(base, root, method: str, steps: int = 2, count: int = 3, **settings) -> Session:
    session = Session.create(root, "tiny")
    for index, (name, word) in enumerate(CONCEPTS[:count]):
        config = LearnConfig(method=method, steps=steps, batch_size=2, settings=cheap(method, **settings))
        learn(base, session, pattern_images(seed=index), name, word, config)
    return session


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(int)


def build_context(base, session, method: str, **settings) -> BuildContext:
    slot = len(session.concepts)
    state = session.state(slot, base.slot_token_ids)
    resolved = get_method(method).resolve(cheap(method, **settings))
    return BuildContext(base, session, slot, "a <|slot0|> toy", "toy", resolved, state, seed=0)


@contextmanager
def live_step(base, session, seed: int = 0):
    """The model being trained on top of ``session``'s latest checkpoint, and a step context for it."""
    slot = len(session.concepts)
    with (
        use_state(base, session.state(slot, base.slot_token_ids)),
        trainable(base, "kv", base.slot_token_ids[slot], torch.zeros(32)) as trainset,
    ):
        latents = torch.zeros(2, 4, 8, 8)

        def make(step: int = 1) -> StepContext:
            generator = torch.Generator().manual_seed(seed)
            zeros = latents.new_zeros(())
            encode = lambda prompts: encode_text(base, prompts)  # noqa: E731
            return StepContext(
                base=base, session=session, trainset=trainset, step=step, latents=latents, noise=latents,
                timesteps=zeros, generator=generator, encode=encode,
            )  # fmt: skip

        yield trainset, make


def perturb(trainset, scale: float = 0.05, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in trainset.weight_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


# --- registry and settings ------------------------------------------------------------------------


def test_methods_command_lists_every_method_with_its_settings(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in (
        "finetune",
        "custom-diffusion",
        "c-lora",
        "dfkd",
        "icgen",
        "tame",
        "ecd",
        "l2dm",
        "lfs",
        "routed",
    ):
        assert f"\n{name} " in f"\n{out}"
    for setting in (
        "dfkd_weight",
        "dfkd_every",
        "dfkd_pool",
        "icgen_images",
        "memory",
        "tame_weight",
        "ecd_weight",
    ):
        assert setting in out


def test_presets_combinations_and_setting_validation():
    assert get_method("l2dm").components == ("memory", "tame", "ecd")
    assert get_method("lfs").components == ("dfkd", "icgen")
    assert get_method("lfs").trainable_kind == get_method("dfkd").trainable_kind == "lora-attn"
    combined = get_method("routed+dfkd")
    assert not combined.stack and "dfkd_weight" in combined.settings()
    assert get_method("c-lora+icgen").trainable_kind == "lora"
    assert 0 < get_method("routed+lfs").generate_settings["icgen_strength"] < 1  # ICGen on by default
    assert get_method("dfkd").resolve({"dfkd_every": "3"})["dfkd_every"] == 3
    with pytest.raises(InvalidSettingError, match="no setting"):
        get_method("finetune").resolve({"dfkd_weight": 1})
    with pytest.raises(InvalidSettingError, match="outside"):
        get_method("tame").resolve({"memory": 65})  # the STM's cap
    with pytest.raises(UnknownMethodError, match="unknown method"):
        get_method("dfkd+nothing")


def test_the_learn_cost_counts_what_each_method_adds():
    plain = learn_seconds(LearnConfig(method="finetune"))
    assert learn_seconds(LearnConfig(method="finetune"), concepts=9) == plain
    # dfkd without pseudo-samples: a student and a teacher pass on each of dfkd_batch rows per step; by
    # default one row, and pseudo-samples on top
    rows = learn_seconds(LearnConfig(method="dfkd", settings={"dfkd_samples": 0, "dfkd_batch": 2})) - plain
    assert rows == pytest.approx(200 * 2 * 2 * SECONDS_PER_SAMPLE)
    dfkd = learn_seconds(LearnConfig(method="dfkd"))
    assert dfkd > plain + rows / 2 and learn_seconds(LearnConfig(method="dfkd"), concepts=9) > dfkd
    assert learn_seconds(LearnConfig(method="dfkd", settings={"dfkd_every": 2})) < dfkd
    assert learn_seconds(LearnConfig(method="l2dm"), concepts=9) > learn_seconds(LearnConfig(method="l2dm"))
    assert learn_seconds(LearnConfig(method="custom-diffusion")) > plain
    # the app's default budget admits the UI's largest learn with the default method
    assert learn_seconds(LearnConfig(steps=2000), concepts=20) <= DEFAULT_BUDGET_S


def test_learn_refuses_unknown_settings_before_touching_the_session(tiny_base, tmp_path):
    session = Session.create(tmp_path / "s", "tiny")
    with pytest.raises(InvalidSettingError):
        learn(
            tiny_base,
            session,
            pattern_images(),
            "rex",
            "dog",
            LearnConfig(method="dfkd", settings={"wieght": 1}),
        )
    assert session.names() == [] and not (tmp_path / "s" / "concepts").exists()


# --- dfkd -----------------------------------------------------------------------------------------


def test_dfkd_is_zero_at_the_teacher_and_its_gradient_pulls_the_student_back(tiny_base, tmp_path):
    session = learn_sequence(tiny_base, tmp_path / "s", "finetune", count=1)
    regularizer = dfkd.build(build_context(tiny_base, session, "dfkd", dfkd_samples=2))
    assert (
        "" in regularizer.pool
        and "a dog" in regularizer.pool
        and any("<|slot0|>" in p for p in regularizer.pool)
    )
    with live_step(tiny_base, session) as (trainset, make):
        assert regularizer.loss(make()).item() == 0.0  # fresh increments are zero: student = teacher
        perturb(trainset)
        before = regularizer.loss(make())
        assert before.item() > 0
        before.backward()
        with torch.no_grad():
            for parameter in trainset.weight_parameters():
                parameter -= 0.01 * parameter.grad / parameter.grad.norm() * parameter.norm()
        assert regularizer.loss(make()).item() < before.item()  # same draws, closer to the teacher
        pseudo = regularizer._pseudo  # the teacher's samples: made once per concept, then reused
        assert pseudo is not None and torch.isfinite(pseudo[0]).all()
        # every pool prompt (the earlier concept's among them) has its own `samples` pseudo-samples
        per_prompt = regularizer._embeddings.repeat_interleave(regularizer.samples, dim=0)
        assert len(pseudo[0]) == regularizer.samples * len(regularizer.pool) > dfkd.PSEUDO_CHUNK
        assert torch.equal(pseudo[1], per_prompt)
        regularizer.every = 2
        assert regularizer.loss(make(step=1)).item() == 0.0 and regularizer.loss(make(step=2)).item() > 0
        assert regularizer._pseudo is pseudo
        regularizer.samples = 0  # x_t pure noise
        assert regularizer.loss(make(step=2)).item() > 0
        regularizer.sampler_steps = 3  # x_t from the teacher's own sampler
        assert regularizer.loss(make(step=2)).item() > 0


# --- icgen ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def icgen_session(tiny_base, tmp_path_factory):
    return learn_sequence(tiny_base, tmp_path_factory.mktemp("icgen") / "s", "icgen", count=2)


def test_icgen_stores_the_latents_of_the_concept_images(tiny_base, icgen_session):
    context = icgen_session.checkpoint(1)[1]["context"]
    expected = encode_images(tiny_base, icgen_session.images(1)[:2])
    assert torch.allclose(context, expected)


def test_icgen_at_strength_one_is_plain_generation_and_below_depends_on_the_context(tiny_base, icgen_session):
    plain = pixels(generate(tiny_base, icgen_session, "a <rex> dog", FAST_GEN))
    one = GenerateConfig(steps=4, seed=3, num_images=2, icgen_strength=1.0, icgen_context="1")
    assert np.array_equal(pixels(generate(tiny_base, icgen_session, "a <rex> dog", one)), plain)
    half = GenerateConfig(steps=4, seed=3, num_images=2, icgen_strength=0.5)
    from_context = pixels(generate(tiny_base, icgen_session, "a <rex> dog", half))
    assert np.abs(from_context - plain).mean() > 1.0
    extras = icgen_session.checkpoint(1)[1]
    stored = extras["context"]
    try:
        extras["context"] = torch.flip(stored, dims=[-1]) * -1
        other = pixels(generate(tiny_base, icgen_session, "a <rex> dog", half))
    finally:
        extras["context"] = stored
    assert np.abs(other - from_context).mean() > 1.0
    # a prompt naming no concept with a context has nothing to start from: plain generation
    assert np.array_equal(
        pixels(generate(tiny_base, icgen_session, "a red dog", half)),
        pixels(generate(tiny_base, icgen_session, "a red dog", FAST_GEN)),
    )


# --- tame / ecd (rainbow memory) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tame_session(tiny_base, tmp_path_factory):
    return learn_sequence(tiny_base, tmp_path_factory.mktemp("tame") / "s", "tame", count=2)


def test_tame_fills_memory_after_each_concept(tiny_base, tame_session):
    for index in (1, 2):
        extras = tame_session.checkpoint(index)[1]
        assert extras["memory.latents"].shape == (2, 4, 8, 8)
        assert extras["memory.features"].shape == (2, 16)  # the tiny CLIP's projection
        assert extras["memory.ltm"].shape == (3, 16)  # one per reference image
        assert torch.allclose(extras["memory.features"].norm(dim=-1), torch.ones(2))


def test_stm_allocation_follows_the_forgetting_score():
    assert allocate({1: 0.1, 2: 0.3}, {1: 4, 2: 4}, 4) == {1: 1, 2: 3}
    assert allocate({1: 0.3, 2: 0.1}, {1: 4, 2: 4}, 4) == {1: 3, 2: 1}
    assert allocate({1: 0.0, 2: 0.0}, {1: 4, 2: 4}, 4) == {1: 2, 2: 2}
    assert allocate({1: 0.9, 2: 0.1}, {1: 1, 2: 4}, 3) == {1: 1, 2: 2}  # capped by what is stored
    # the default memory replays every one of nine earlier concepts (five stored images each), even when
    # one has drifted far more than the others (with 8 slots five of them went without)
    scores = {i: 0.05 for i in range(1, 10)} | {1: 0.6}
    quota = allocate(scores, dict.fromkeys(scores, 5), memory.SETTINGS["memory"].default)
    assert min(quota.values()) >= 1 and quota[1] == max(quota.values())


def test_forgetting_score_measures_drift_from_long_term_memory(tiny_base, tame_session):
    ctx = build_context(tiny_base, tame_session, "tame")
    features = lambda images: torch.nn.functional.normalize(torch.ones(len(images), 16), dim=-1)  # noqa: E731
    extras = tame_session.checkpoint(1)[1]
    stored = extras["memory.ltm"]
    try:
        extras["memory.ltm"] = features([None])
        assert forgetting_scores(ctx, [1], features)[1] == pytest.approx(0.0, abs=1e-6)
        extras["memory.ltm"] = -features([None])
        assert forgetting_scores(ctx, [1], features)[1] == pytest.approx(2.0)
    finally:
        extras["memory.ltm"] = stored


def test_stm_is_capped_and_the_replay_trains_on_it(tiny_base, tame_session):
    regularizer = tame.build(build_context(tiny_base, tame_session, "tame", memory=3))
    memory = regularizer.memory
    assert len(memory) == 3 and set(memory.concepts) <= {1, 2} and set(memory.scores) == {1, 2}
    with live_step(tiny_base, tame_session) as (trainset, make):
        loss = regularizer.loss(make())
        loss.backward()
        assert loss.item() > 0 and any(p.grad.abs().sum() > 0 for p in trainset.weight_parameters())
    empty = tame.MemoryReplay(ShortTermMemory(torch.empty(0), [], [], {}), 1.0, 2)
    with live_step(tiny_base, tame_session) as (_, make):
        assert empty.loss(make()).item() == 0.0


def test_stm_can_replay_the_stored_images_with_their_captions(tiny_base, tmp_path):
    session = Session.create(tmp_path / "s", "tiny")
    captions = [["on grass", "", "at night"], ["in snow", "on a sofa", ""]]
    for index, (name, word) in enumerate(CONCEPTS[:2]):
        config = LearnConfig(method="tame", steps=2, batch_size=2, settings=cheap("tame"))
        learn(tiny_base, session, pattern_images(seed=index), name, word, config, captions=captions[index])
    assert Session.open(session.root).concepts[1].captions == captions[1]  # kept in the manifest
    memory = tame.build(build_context(tiny_base, session, "tame", memory=6)).memory  # the default
    assert sorted(memory.concepts) == [1, 1, 1, 2, 2, 2]  # every stored image once
    stored = {i: encode_images(tiny_base, session.images(i)) for i in (1, 2)}
    for row, concept, prompt in zip(memory.latents, memory.concepts, memory.prompts, strict=True):
        image = next(j for j in range(3) if torch.allclose(stored[concept][j], row))
        expected = session.rewrite_prompt(session.concepts[concept - 1].prompts[0], 2)
        assert prompt == f"{expected} {captions[concept - 1][image]}".strip()
    samples = tame.build(build_context(tiny_base, session, "tame", memory=6, memory_references=False)).memory
    assert len(samples) == 4  # the generated samples: two per concept, no captions
    assert set(samples.prompts) == {session.rewrite_prompt(c.prompts[0], 2) for c in session.concepts}


def test_ecd_weights_follow_forgetting_scores(tiny_base, tame_session):
    assert ecd.elastic_weights({1: 0.1, 2: 0.3}) == pytest.approx({1: 0.5, 2: 1.5})
    assert ecd.elastic_weights({1: 0.0, 2: 0.0}) == {1: 1.0, 2: 1.0}
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a <|slot0|> dog", "a <|slot1|> cat"]
    losses: list[float] = []
    with live_step(tiny_base, tame_session) as (trainset, make):
        for scores in ({1: 1.0, 2: 1.0}, {1: 1.0, 2: 0.0}, {1: 0.0, 2: 1.0}):
            regularizer = ecd.ElasticDistillation(ShortTermMemory(latents, [1, 2], prompts, scores), 1.0, 4)
            if not losses:
                assert regularizer.loss(make()).item() == 0.0  # student = teacher
                perturb(trainset)
            losses.append(regularizer.loss(make()).item())
    assert losses[0] > 0 and losses[1] != pytest.approx(losses[2], rel=1e-3)
    # with only concept 1 forgotten its rows get weight 2, concept 2's weight 0: the mean stays comparable
    assert 0 < losses[1] < 2 * losses[0] and 0 < losses[2] < 2 * losses[0]


# --- c-lora and custom diffusion -----------------------------------------------------------------


def test_clora_penalty_is_zero_first_and_grows_with_overlap(tiny_base, tmp_path):
    empty = Session.create(tmp_path / "e", "tiny")
    first = clora.build(build_context(tiny_base, empty, "c-lora"))
    with live_step(tiny_base, empty) as (trainset, make):
        perturb(trainset)
        assert first.loss(make()).item() == 0.0  # nothing learned before
    modules = list(trainset.modules)
    generator = torch.Generator().manual_seed(2)
    earlier, other = {}, {}
    for module in modules:
        shape = tiny_base.pipe.unet.get_submodule(module).weight.shape
        rows = (torch.arange(shape[0]) < shape[0] // 2).float()[:, None]  # earlier updates: top rows only
        earlier[module] = torch.randn(shape, generator=generator) * rows
        other[module] = torch.randn(shape, generator=generator) * (1 - rows)
    penalty = clora.OverlapPenalty(earlier, 1.0)
    with live_step(tiny_base, empty) as (trainset, make):
        values = []
        for overlap in (0.0, 0.5, 1.0):
            with torch.no_grad():
                for module, parameter in zip(modules, trainset.weight_parameters(), strict=True):
                    parameter.copy_(overlap * earlier[module] + (1 - overlap) * other[module])
            values.append(penalty.loss(make()).item())
    assert values[0] == 0.0 and 0 < values[1] < values[2]


def test_clora_trains_lora_with_the_penalty_after_the_first_concept(tiny_base, tmp_path):
    session = learn_sequence(tiny_base, tmp_path / "s", "c-lora", count=2)
    assert all(session.checkpoint(i)[0].kind == "lora" for i in (1, 2))
    assert set(clora.build(build_context(tiny_base, session, "c-lora")).earlier) == set(
        session.checkpoint(1)[0].modules()
    )


def test_clora_after_a_concept_with_lora_on_every_attention_projection(tiny_base, tmp_path):
    """dfkd's concept changed projections a K/V LoRA does not train (their ΔW is 0: no overlap term)."""
    session = learn_sequence(tiny_base, tmp_path / "s", "dfkd", count=1)
    config = LearnConfig(method="c-lora", steps=2, batch_size=2)
    result = learn(tiny_base, session, pattern_images(seed=1), "tom", "cat", config)
    assert session.checkpoint(2)[0].kind == "lora" and np.isfinite(result.losses).all()


def test_prior_class_images_come_from_the_base_and_are_cached(tiny_base, tmp_path):
    session = learn_sequence(tiny_base, tmp_path / "s", "finetune", count=1)
    ctx = build_context(tiny_base, session, "custom-diffusion")
    regularizer = prior.build(ctx)
    assert regularizer.prompt == "a toy" and regularizer.latents.shape == (2, 4, 8, 8)
    (cached,) = (session.root / "cache").glob("prior-*.safetensors")
    fresh = prior.sample_latents(tiny_base, "a toy", [700, 701], 2)  # the pristine base = checkpoint 0
    assert torch.allclose(regularizer.latents, fresh)
    from safetensors.torch import save_file

    save_file({"latents": torch.zeros(2, 4, 8, 8)}, str(cached))
    assert prior.build(ctx).latents.abs().sum() == 0  # read back from the cache, not regenerated
    with live_step(tiny_base, session) as (trainset, make):
        loss = regularizer.loss(make())
        loss.backward()
        assert loss.item() > 0 and any(p.grad.abs().sum() > 0 for p in trainset.weight_parameters())


# --- routed ---------------------------------------------------------------------------------------


def test_routed_uses_only_the_named_concepts_deltas(tiny_base, tmp_path):
    session = learn_sequence(tiny_base, tmp_path / "s", "routed", count=2)
    assert [c.stacked for c in session.concepts] == [False, False]
    rex, tom = session.checkpoint(1)[0], session.checkpoint(2)[0]
    ids = tiny_base.slot_token_ids
    only_rex = compose([rex], ids[:1]).weight_deltas
    state = session.state(2, ids, "a <rex> dog").weight_deltas
    assert set(state) == set(only_rex) and all(torch.equal(state[m], only_rex[m]) for m in only_rex)
    assert session.state(2, ids, "a red dog").weight_deltas == {}  # no concept named: base weights
    mixed = session.state(2, ids, "<rex> and <tom>").weight_deltas
    assert all(torch.allclose(mixed[m], 0.5 * rex.dense(m) + 0.5 * tom.dense(m)) for m in mixed)
    # generation: a prompt naming only <rex> is the same image at checkpoint 2 as at checkpoint 1
    assert np.array_equal(
        pixels(generate(tiny_base, session, "a <rex> dog", FAST_GEN, checkpoint=2)),
        pixels(generate(tiny_base, session, "a <rex> dog", FAST_GEN, checkpoint=1)),
    )


# --- every method, three concepts in a row --------------------------------------------------------

EXTRAS = {
    "icgen": {"context"},
    "lfs": {"context"},
    "tame": {"memory.latents", "memory.features", "memory.ltm"},
    "ecd": {"memory.latents", "memory.features", "memory.ltm"},
    "l2dm": {"memory.latents", "memory.features", "memory.ltm"},
}


@pytest.mark.parametrize("method", [*METHODS, "routed+dfkd"])
def test_three_concepts_in_a_row(tiny_base, tmp_path, method):
    session = learn_sequence(tiny_base, tmp_path / "s", method)
    reopened = Session.open(session.root)
    assert [c.method for c in reopened.concepts] == [method] * 3
    assert all(c.stacked == get_method(method).stack for c in reopened.concepts)
    assert set(reopened.checkpoint(3)[1]) == EXTRAS.get(method, set())
    assert len(generate(tiny_base, reopened, "<rex> and <cup>", FAST_GEN)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("method", [*METHODS, "routed+dfkd"])
def test_three_concepts_in_a_row_with_default_settings(tiny_base, tmp_path, method):
    session = Session.create(tmp_path / "s", "tiny")
    for index, (name, word) in enumerate(CONCEPTS):
        settings: dict[str, float | int | str | bool] = (
            {"clip": "tiny-test-clip"} if "clip" in get_method(method).settings() else {}
        )
        config = LearnConfig(method=method, steps=30, settings=settings)
        result = learn(tiny_base, session, pattern_images(seed=index), name, word, config)
        assert all(np.isfinite(result.losses))
    assert [c.method for c in session.concepts] == [method] * 3


def test_cli_learns_with_a_method_and_settings_and_generates_in_context(tmp_path, capsys):
    model = tmp_path / "tiny-sd"
    tiny_pipeline(seed=3).save_pretrained(model)
    images = []
    for index, image in enumerate(pattern_images()):
        images.append(str(tmp_path / f"{index}.png"))
        image.save(images[-1])
    session, common = str(tmp_path / "session"), ["--model", str(model), "--device", "cpu"]
    learn_args = ["learn", "--session", session, "--name", "rex", "--class-word", "dog", "--steps", "2"]
    settings = ["--set", "dfkd_every=2", "--set", "icgen_images=2"]
    assert main([*learn_args, "--method", "lfs", *settings, *images, *common]) == 0
    concept = Session.open(session).concepts[0]
    assert concept.method == "lfs" and concept.settings["settings"]["dfkd_every"] == 2
    assert Session.open(session).checkpoint(1)[1]["context"].shape[0] == 2
    generate_args = [
        "generate",
        "--session",
        session,
        "--prompt",
        "a <rex> dog",
        "--steps",
        "2",
        "--num-images",
        "1",
    ]
    assert main([*generate_args, "--icgen-strength", "0.5", "--out", str(tmp_path / "out"), *common]) == 0
    assert (tmp_path / "out" / "000000.png").exists()
    capsys.readouterr()
    bad = ["learn", "--session", session, "--name", "tom", "--method", "dfkd", "--set", "dfkd_wieght=1"]
    assert main([*bad, *images, *common]) == 2
    assert "no setting 'dfkd_wieght'" in capsys.readouterr().err


def test_stacked_distillation_defaults_hold_harder_than_learning_from_the_base():
    # dfkd and lfs stack, and hold the previous checkpoint at λ 200; routed+dfkd learns from the base at λ 1
    assert (
        get_method("dfkd").resolve({})["dfkd_weight"] == get_method("lfs").resolve({})["dfkd_weight"] == 200
    )
    assert get_method("routed+dfkd").resolve({})["dfkd_weight"] == 1
    assert get_method("dfkd").settings()["dfkd_weight"].default == 200  # what the app's form shows
    assert get_method("dfkd").resolve({"dfkd_weight": 3})["dfkd_weight"] == 3
