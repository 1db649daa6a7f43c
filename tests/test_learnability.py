"""The learnability benchmark (`python -m lifelong.bench --learn`): its scores and its files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import pattern_images
from PIL import Image
from tiny_clip import save_tiny_model_and_clip

from lifelong.bench.cli import main
from lifelong.bench.learnability import grid, score


def _unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def test_score_identifies_and_normalises_against_the_other_concepts():
    own = _unit([[1.0, 0.1, 0.0], [1.0, -0.1, 0.0]])
    other = _unit([[0.0, 1.0, 0.1], [0.0, 1.0, -0.1]])
    third = _unit([[0.0, 0.1, 1.0], [0.0, -0.1, 1.0]])
    identification, ia, ia_others, self_sim = score(0, own, [own, other, third])
    assert identification == 1.0 and ia > self_sim > ia_others
    like_other = _unit([[0.05, 1.0, 0.0]])
    identification, ia, ia_others, _ = score(0, like_other, [own, other, third])
    assert identification == 0.0 and ia < ia_others + 0.5


def test_grid_puts_references_then_generations_in_one_row_per_concept():
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    canvas = grid([([red, red], [blue]), ([red], [blue, blue, blue])])
    assert canvas.size == (5 * 64, 2 * 64)
    assert canvas.getpixel((10, 10)) == (255, 0, 0) and canvas.getpixel((2 * 64 + 10, 10)) == (255, 255, 255)
    assert canvas.getpixel((3 * 64 + 10, 10)) == (0, 0, 255)


def test_cli_learns_each_concept_alone_and_writes_scores_and_grid(tmp_path, capsys):
    model, clip = save_tiny_model_and_clip(tmp_path)
    for name, seed in (("mug", 1), ("rex", 0), ("toy", 2)):
        folder = tmp_path / "mine" / name
        folder.mkdir(parents=True)
        for k, image in enumerate(pattern_images(seed=seed)):
            image.save(folder / f"{k}.png")
    out = tmp_path / "out"
    args = [
        "--learn",
        "--model",
        str(model),
        "--eval-clip",
        str(clip),
        "--concept-dir",
        str(tmp_path / "mine"),
    ]
    args += ["--learn-concepts", "2", "--methods", "finetune", "--steps", "2", "--sample-steps", "2"]
    args += ["--learn-images", "1", "--guidance", "3", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["generate_config"]["guidance_scale"] == 3.0
    assert [c["name"] for c in document["concepts"]] == ["mug", "rex"]
    assert document["concepts_in_folder"] == 3 and document["learn_config"]["method"] == "finetune"
    for concept in document["concepts"]:
        assert 0 <= concept["identification"] <= 1 and 0 <= concept["background"] <= 1
        assert concept["seconds"] > 0 and -1 <= concept["ia"] <= 1
    assert set(document["mean"]) >= {
        "identification",
        "ia_normalised",
        "background",
        "ta",
        "seconds",
        "vae_ceiling",
    }
    assert all(0 <= c["vae_ceiling"] <= 1 for c in document["concepts"])
    assert Image.open(out / "grid.png").size[1] == 2 * 64
    assert "| **mean** |" in (out / "report.md").read_text()
    assert "<rex> id" in capsys.readouterr().out
    assert not (out / "sessions" / "rex").exists()  # each concept's throwaway session is removed


def test_cli_learns_the_examples_the_index_marks(tmp_path):
    model, clip = save_tiny_model_and_clip(tmp_path)
    index = [{"name": "mug"}, {"name": "rex", "example": True}, {"name": "toy", "example": True}]
    for seed, entry in enumerate(index):
        folder = tmp_path / "mine" / entry["name"]
        folder.mkdir(parents=True)
        for k, image in enumerate(pattern_images(seed=seed)):
            image.save(folder / f"{k}.png")
    (tmp_path / "mine" / "index.json").write_text(json.dumps(index))
    args = ["--learn", "--examples", "--model", str(model), "--eval-clip", str(clip)]
    args += ["--concept-dir", str(tmp_path / "mine"), "--methods", "finetune", "--steps", "1"]
    args += ["--sample-steps", "1", "--learn-images", "1", "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 0
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["name"] for c in document["concepts"]] == ["rex", "toy"]
    assert document["concepts_in_folder"] == 3  # "mug" still counts among the others


@pytest.mark.parametrize("kind", ["lora-attn"])
def test_lora_on_every_attention_projection_learns_and_leaves_the_base_as_it_was(tiny_base, tmp_path, kind):
    from lifelong.concepts import Session
    from lifelong.generation import GenerateConfig, generate
    from lifelong.learner import LearnConfig, learn

    before = {k: v.clone() for k, v in tiny_base.pipe.unet.state_dict().items()}
    session = Session.create(tmp_path / "s", "tiny")
    config = LearnConfig(method="finetune", steps=3, params=kind, lora_rank=2)
    learn(tiny_base, session, pattern_images(), "toy", "toy", config)
    delta, _ = session.checkpoint(1)
    modules = delta.modules()
    for suffix in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k"):
        assert any(m.endswith(suffix) for m in modules), suffix
    assert all(delta.dense(m).abs().sum() > 0 for m in modules)
    base_image = generate(tiny_base, session, "a toy", GenerateConfig(steps=2), checkpoint=0)[0]
    learned_image = generate(tiny_base, session, "a <toy> toy", GenerateConfig(steps=2))[0]
    assert base_image.tobytes() != learned_image.tobytes()
    after = tiny_base.pipe.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
