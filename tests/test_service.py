"""The app's logic without a browser: per-user workspaces, cancel, forgetting report, import checks, forms."""

from __future__ import annotations

import os
import pickle
import time
import zipfile
from dataclasses import replace

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import pattern_images
from PIL import Image
from tiny_clip import tiny_clip

from lifelong.concepts import load_checkpoint, save_checkpoint
from lifelong.configs import field_help
from lifelong.errors import Cancelled, SessionFormatError
from lifelong.generation import GenerateConfig, generate
from lifelong.learner import LearnConfig
from lifelong.metrics import image_alignments
from lifelong.retention import MIN_IMAGES, retention
from lifelong.service import ClipScorer, Studio, upload_notes
from lifelong.ui.forgetting_tab import forgetting_view
from lifelong.ui.forms import Form

FAST = GenerateConfig(steps=2, num_images=2, seed=5)


@pytest.fixture
def studio(tiny_base, tmp_path):
    return Studio(tiny_base, root=tmp_path / "sessions")


def test_learn_fills_the_timeline_and_cancel_changes_nothing(studio):
    studio.learn("alice", pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=3))
    [entry] = studio.timeline("alice")
    assert (entry.index, entry.token, entry.method) == (1, "<rex>", "finetune")
    assert entry.caption.startswith("1. <rex> · finetune · ") and entry.thumbnail.is_file()
    manifest = (studio.session("alice").root / "manifest.json").read_bytes()

    def cancel_at_two(progress):
        if progress.step == 2:
            studio.cancel("alice")

    with pytest.raises(Cancelled, match="nothing was changed"):
        studio.learn(
            "alice",
            pattern_images(seed=1),
            "mug",
            "mug",
            LearnConfig(method="finetune", steps=20),
            cancel_at_two,
        )
    assert (studio.session("alice").root / "manifest.json").read_bytes() == manifest
    assert studio.tokens("alice") == ["<rex>"] and studio.tokens("bob") == []


def test_forgetting_compares_each_earlier_concept_and_fills_the_ia_matrix(tiny_base, tmp_path):
    studio = Studio(tiny_base, root=tmp_path, scorer=ClipScorer(tiny_clip()))
    for name, seed in (("rex", 0), ("mug", 1)):
        studio.learn(
            "u", pattern_images(seed=seed), name, "toy", LearnConfig(method="finetune", steps=3, seed=seed)
        )
    calls = []
    config = replace(FAST, num_images=MIN_IMAGES)  # enough seeds for an interval and a word
    report = studio.forgetting("u", config, lambda done, total: calls.append((done, total)))
    assert calls[-1] == (3, 3)  # IA(1,1), IA(1,2), IA(2,2)
    [item] = report.comparisons
    session = studio.session("u")
    right_after = generate(tiny_base, session, "a <rex> toy", config, checkpoint=1)
    now = generate(tiny_base, session, "a <rex> toy", config, checkpoint=2)
    assert np.array_equal(np.asarray(item.after), np.asarray(right_after[0]))
    assert np.array_equal(np.asarray(item.now), np.asarray(now[0]))
    assert report.matrix is not None and report.low is not None and report.high is not None
    assert np.isnan(report.matrix[1, 0]) and np.isnan(report.low[1, 0])
    cells = [0, 0, 1], [0, 1, 1]
    assert np.isfinite(report.matrix[cells]).all()
    assert (report.low[cells] <= report.matrix[cells] + 1e-9).all()
    assert (report.matrix[cells] <= report.high[cells] + 1e-9).all()
    # IA and the unrelated level, recomputed from the same images: the word's inputs are what was drawn
    scorer, references = studio.scorer, [session.images(1), session.images(2)]
    own = [
        image_alignments(scorer.features(images), scorer.features(references[0]))
        for images in (right_after, now)
    ]
    other = [
        image_alignments(scorer.features(images), scorer.features(references[1]))
        for images in (right_after, now)
    ]
    expected = retention(own[0].tolist(), own[1].tolist(), other[0].tolist(), other[1].tolist())
    assert item.retention == expected and expected.images == MIN_IMAGES
    assert item.retention.after.mean == pytest.approx(report.matrix[0, 0])
    assert item.retention.drop.mean == pytest.approx(report.matrix[0, 0] - report.matrix[0, 1])
    pairs, heatmap, curves, words, note = forgetting_view(report)
    assert [caption for _, caption in pairs] == [
        "<rex> right after learning it (checkpoint 1)",
        f"<rex> now (checkpoint 2) · IA {item.retention.now} · {item.retention.word}",
    ]
    for picture in (heatmap, curves):
        assert picture is not None and np.asarray(picture).std() > 10
    assert f"| &lt;rex&gt; | {item.retention.after} | {item.retention.now} |" in words
    assert f"**{item.retention.word}**" in words and "95 % interval" in note
    # on ZeroGPU the report comes back from a worker process: it must survive pickling intact
    copy = pickle.loads(pickle.dumps(report))
    assert np.array_equal(np.asarray(copy.comparisons[0].now), np.asarray(item.now))
    assert np.array_equal(copy.matrix, report.matrix, equal_nan=True)
    assert copy.comparisons[0].retention == item.retention

    plain = Studio(tiny_base, root=tmp_path, scorer_note="no eval CLIP here.")
    report = plain.forgetting("u", FAST)
    assert report.matrix is None and report.comparisons[0].retention is None
    assert "No IA numbers: no eval CLIP here." in report.note
    assert forgetting_view(report)[1:4] == (None, None, "")


def test_one_concept_has_nothing_to_forget_yet(studio):
    studio.learn("u", pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=2))
    report = studio.forgetting("u", FAST)
    assert report.comparisons == [] and "at least two concepts" in report.note


def test_import_replaces_the_session_and_refuses_one_from_another_model(studio, tmp_path):
    studio.learn("a", pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=2))
    exported = studio.export("a")
    studio.learn("b", pattern_images(seed=3), "mug", "mug", LearnConfig(method="finetune", steps=2))
    studio.import_file("b", exported)
    assert studio.tokens("b") == ["<rex>"]

    # the same file with K/V deltas of another shape: a session learned on a different base model
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(exported) as source, zipfile.ZipFile(foreign, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith(".safetensors"):
                path = tmp_path / "ckpt.safetensors"
                path.write_bytes(data)
                delta, _ = load_checkpoint(path)
                delta.tensors = {key: torch.zeros(3, 3) for key in delta.tensors}
                save_checkpoint(path, delta)
                data = path.read_bytes()
            target.writestr(item, data)
    with pytest.raises(SessionFormatError, match="another base model"):
        studio.import_file("b", foreign)
    assert studio.tokens("b") == ["<rex>"]
    (tmp_path / "junk.zip").write_text("not a zip")
    with pytest.raises(SessionFormatError):
        studio.import_file("b", tmp_path / "junk.zip")
    assert studio.tokens("b") == ["<rex>"]


def test_workspaces_are_keyed_safely_swept_when_old_and_reset(studio):
    with pytest.raises(SessionFormatError):
        studio.folder("../escape")
    studio.session("old")
    studio.session("fresh")
    past = time.time() - 7200
    os.utime(studio.folder("old"), (past, past))
    assert studio.sweep(max_age_s=3600) == ["old"]
    assert not studio.folder("old").exists() and studio.folder("fresh").exists()
    studio.learn("fresh", pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=1))
    studio.reset("fresh")
    assert studio.tokens("fresh") == []
    with pytest.raises(SessionFormatError, match="Nothing to export"):
        studio.export("fresh")


def test_upload_notes_say_what_happens_to_odd_images(tmp_path):
    rgb = Image.new("RGB", (80, 60), (200, 10, 10))
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgb.convert("RGBA").save(tmp_path / "alpha.png")
    rgb.save(tmp_path / "anim.gif", save_all=True, append_images=[rgb.rotate(90)])
    rgb.resize((12000, 200)).save(tmp_path / "huge.png")
    notes = upload_notes([str(tmp_path / n) for n in ("cmyk.jpg", "alpha.png", "anim.gif", "huge.png")])
    text = "\n".join(notes)
    assert "CMYK pixels are converted to RGB" in text
    assert "transparent areas become white" in text
    assert "only its first frame is used" in text
    assert "shrunk from 12000×200 px" in text
    assert upload_notes([rgb])[0].startswith("1 image(s): learning works, but 3–5 images work best")


def test_forms_are_generated_from_the_dataclass_and_parse_back():
    with gr.Blocks():
        form = Form.build(LearnConfig, exclude={"method"})
    kinds = dict(zip(form.names, (type(c).__name__ for c in form.components), strict=True))
    assert "method" not in kinds
    assert (kinds["steps"], kinds["augment"], kinds["learning_rate"], kinds["settings"]) == (
        "Slider",
        "Checkbox",
        "Number",
        "Textbox",
    )
    values = {name: component.value for name, component in zip(form.names, form.components, strict=True)}
    values.update(steps=7.0, augment=False, settings="lambda_kd = 0.5\n\nmode=fast")
    config = form.parse(*values.values(), method="finetune")
    assert (config.steps, config.augment, config.settings) == (7, False, {"lambda_kd": 0.5, "mode": "fast"})
    assert field_help(LearnConfig)["augment"] == "horizontal flips and random crops, encoded once"


def test_a_job_run_by_another_process_is_seen_and_can_be_cancelled(tiny_base, tmp_path):
    """On ZeroGPU jobs run in a forked worker with its own Studio copy: the two meet only on disk."""
    app_side, worker_side = Studio(tiny_base, root=tmp_path), Studio(tiny_base, root=tmp_path)
    assert app_side.tokens("u") == []
    worker_side.learn("u", pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=2))
    assert app_side.tokens("u") == ["<rex>"]

    def cancel_from_the_app(progress):
        if progress.step == 2:
            app_side.cancel("u")

    with pytest.raises(Cancelled):
        worker_side.learn(
            "u",
            pattern_images(seed=2),
            "mug",
            "mug",
            LearnConfig(method="finetune", steps=20),
            cancel_from_the_app,
        )
    assert app_side.tokens("u") == worker_side.tokens("u") == ["<rex>"]
