"""The command line on a pipeline folder saved from the tiny components (the real from_pretrained path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import pattern_images
from PIL import Image
from tiny import tiny_pipeline

from lifelong.cli import main
from lifelong.methods import DEFAULT_METHOD


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny-sd"
    tiny_pipeline(seed=3).save_pretrained(path)
    return path


def test_learn_generate_info(model_dir, tmp_path, capsys):
    images = []
    for index, image in enumerate(pattern_images()):
        images.append(str(tmp_path / f"{index}.jpg"))
        image.save(images[-1])
    session = tmp_path / "session"
    common = ["--model", str(model_dir), "--device", "cpu"]
    assert (
        main(
            [
                "learn",
                "--session",
                str(session),
                "--name",
                "Rex",
                "--class-word",
                "dog",
                "--steps",
                "3",
                *images,
                *common,
            ]
        )
        == 0
    )
    assert main(["info", "--session", str(session)]) == 0
    assert f"checkpoint 1: <rex> (dog) method={DEFAULT_METHOD} images=3 steps=3" in capsys.readouterr().out
    args = [
        "generate",
        "--session",
        str(session),
        "--prompt",
        "a <rex> dog",
        "--num-images",
        "2",
        "--steps",
        "2",
    ]
    assert main([*args, "--out", str(tmp_path / "now"), *common]) == 0
    assert main([*args, "--out", str(tmp_path / "again"), *common]) == 0
    now = [np.asarray(Image.open(tmp_path / "now" / f"{i:06d}.png")) for i in range(2)]
    again = [np.asarray(Image.open(tmp_path / "again" / f"{i:06d}.png")) for i in range(2)]
    assert now[0].shape == (16, 16, 3) and all(np.array_equal(a, b) for a, b in zip(now, again, strict=True))
    maps = [*args, "--maps", "--set", "caa=false", "--out", str(tmp_path / "maps"), *common]
    assert main(maps) == 0
    assert len(list((tmp_path / "maps").glob("attention-*.png"))) == 2  # one overlay per image
    assert main([*args, "--set", "no_such_field=1", "--out", str(tmp_path / "x"), *common]) == 2


def test_errors_are_messages_not_tracebacks(model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    code = main(
        ["learn", "--session", str(tmp_path / "s"), "--name", "../x", str(bad), "--model", str(model_dir)]
    )
    assert code == 2 and "cannot be a concept name" in capsys.readouterr().err
    code = main(
        [
            "generate",
            "--session",
            str(tmp_path / "s"),
            "--prompt",
            "a <ghost>",
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(model_dir),
        ]
    )
    assert code == 2 and "not a learned concept" in capsys.readouterr().err


def test_export_and_import_lora(model_dir, tmp_path, capsys):
    """A concept exported as a kohya file + A1111 embedding, imported into a new session, draws the same."""
    images = []
    for index, image in enumerate(pattern_images()):
        images.append(str(tmp_path / f"{index}.png"))
        image.save(images[-1])
    common = ["--model", str(model_dir), "--device", "cpu"]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    learn = ["learn", "--session", first, "--name", "rex", "--set", "params=lora", "--steps", "2", *images]
    assert main([*learn, "--method", "finetune", *common]) == 0
    out = tmp_path / "export"
    assert main(["export", "--session", first, "--format", "kohya", "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "<rex>: LoRA on" in printed and str(out / "lifelong-checkpoint-1.safetensors") in printed
    lora, embedding = out / "lifelong-checkpoint-1.safetensors", out / "embeddings" / "rex.safetensors"
    command = ["import-lora", "--session", second, "--lora", str(lora), "--embedding", str(embedding)]
    assert main([*command, "--name", "rex", *common]) == 0
    assert "imported <rex> (kohya LoRA) as checkpoint 1" in capsys.readouterr().out
    drawn = []
    for session in (first, second):
        folder = tmp_path / f"images-{Path(session).name}"
        generate = ["generate", "--session", session, "--prompt", "a <rex>", "--steps", "2", "--out"]
        assert main([*generate, str(folder), *common]) == 0
        drawn.append(np.asarray(Image.open(folder / "000000.png")))
    assert np.array_equal(*drawn)
    assert main(["export", "--session", first, "--out", str(out), *common]) == 2
    assert "export into a new folder" in capsys.readouterr().err
