"""A miniature lifelong benchmark on the tiny pipeline and a tiny CLIP: schema, values, files, resume."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import pattern_images
from PIL import Image
from tiny_clip import save_tiny_model_and_clip, tiny_clip

from lifelong.bench import ratio
from lifelong.bench.cli import build_parser, main, sequence_settings
from lifelong.bench.report import write_report
from lifelong.bench.sequence import (
    Evaluator,
    MethodResult,
    SequenceConfig,
    drift_prompts,
    eval_prompts,
    results_json,
    run_sequence,
    setup_record,
)
from lifelong.errors import InvalidSettingError
from lifelong.folders import FolderConcept, load_concepts, load_examples
from lifelong.methods import get_method

KEYS = {"TA", "IA_final", "IAD", "TFR", "base_drift", "IA_matrix", "seconds_per_concept", "peak_memory_mb"}


def _concepts() -> list[FolderConcept]:
    blue = [Image.fromarray(np.asarray(im)[:, :, ::-1].copy()) for im in pattern_images(seed=1)]
    return [
        FolderConcept("rex", "dog", tuple(pattern_images())),
        FolderConcept("mug", "mug", tuple(blue)),
    ]


@pytest.fixture(scope="module")
def miniature(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = SequenceConfig(
        methods=("finetune", "lfs"), steps=3, images_per_prompt=1, sample_steps=2, colors=("blue",)
    )
    concepts = _concepts()
    setup = setup_record(config, "tiny", "tiny-clip", concepts)
    results = run_sequence(tiny_base, tiny_clip(), concepts, config, out, setup, log=lambda _: None)
    document = results_json(setup, results)
    write_report(out, document, results, [c.name for c in concepts], "pytest")
    return out, config, concepts, setup, results


def test_results_json_has_every_metric_per_method(miniature):
    out, config, *_ = miniature
    document = json.loads((out / "results.json").read_text())
    assert set(document["methods"]) == set(config.methods)
    for result in document["methods"].values():
        assert set(result) >= KEYS
        matrix = result["IA_matrix"]
        assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
        assert matrix[1][0] is None  # concept 2 did not exist after concept 1
        for value in (matrix[0][0], matrix[0][1], matrix[1][1]):
            assert math.isfinite(value) and -1.0 <= value <= 1.0
        assert result["IAD"] == pytest.approx(matrix[0][0] - matrix[0][1])
        assert result["TFR"] == pytest.approx((matrix[0][0] - matrix[0][1]) / matrix[0][0])
        assert -1.0 <= result["TA"] <= 1.0 and 0.0 <= result["base_drift"] <= 2.0
        assert result["seconds_per_concept"] > 0 and result["peak_memory_mb"] >= 0
    assert document["drift_prompts"][:2] == ["a dog on a gray background", "a mug on a gray background"]


def test_every_image_is_kept_and_the_figures_are_their_means_with_intervals(miniature):
    out, config, *_ = miniature
    document = json.loads((out / "results.json").read_text())
    images = len(config.colors) + 1  # prompts × images_per_prompt (1)
    for name, result in document["methods"].items():
        samples = result["IA_images"]
        assert samples[1][0] is None and len(samples[0][1]) == images
        assert result["IA_matrix"][0][1] == pytest.approx(np.mean(samples[0][1]))
        assert result["TA"] == pytest.approx(np.mean(result["TA_images"]))
        assert np.shape(result["drift_images"]) == (len(document["drift_prompts"]), 1)
        assert result["base_drift"] == pytest.approx(np.mean(result["drift_images"]))
        stats = document["statistics"]["methods"][name]
        for key in ("TA", "TA_final", "IA_own", "IA_final", "IAD", "TFR", "base_drift"):
            interval = stats["intervals"][key]
            assert interval["mean"] == pytest.approx(result[key])
            assert interval["low"] <= interval["mean"] + 1e-9 and interval["mean"] <= interval["high"] + 1e-9
        assert stats["curve"][1][0] is None and stats["curve"][0][1]["mean"] == pytest.approx(
            result["IA_matrix"][0][1]
        )
        assert stats["plans"]["IAD"]["images"] == images
    lfs = document["statistics"]["methods"]["lfs"]["paired"]["IAD"]
    finetune = document["methods"]["finetune"]
    assert lfs["difference"]["mean"] == pytest.approx(document["methods"]["lfs"]["IAD"] - finetune["IAD"])
    assert document["statistics"]["methods"]["finetune"]["paired"] == {}
    assert document["statistics"]["bootstrap"]["resamples"] == 2000


def test_learning_changes_what_the_final_model_draws(miniature):
    *_, results = miniature
    assert all(result.base_drift > 0 for result in results.values())


def test_report_and_plots_are_written(miniature):
    out, config, *_ = miniature
    report = (out / "report.md").read_text()
    for method in config.methods:
        assert f"| {method} |" in report
        assert Image.open(out / f"ia_matrix_{method}.png").size[0] > 100
    value = r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]"  # 0.412 [0.398, 0.427]
    assert re.search(rf"\| finetune \| {value} \| {value} \|", report)
    assert re.search(r"\| lfs − finetune \| \**[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", report)
    assert "| finetune − finetune |" not in report
    assert "images for ± 0.02" in report and "Eval images per concept and checkpoint: 2;" in report
    assert Image.open(out / "forgetting_curves.png").size[0] > 100
    grid = Image.open(out / "before_after.png")
    assert grid.size[1] >= (1 + 2 * len(config.methods)) * 96  # references, then two rows per method


def test_results_saved_without_samples_still_load_and_report_without_intervals(miniature, tmp_path):
    out, config, concepts, setup, results = miniature
    document = json.loads((out / "methods" / "finetune.json").read_text())["result"]
    old = {key: value for key, value in document.items() if not key.endswith("_images")}  # format 1
    result = MethodResult.from_json(old)
    assert result.IA_images == [] and result.IAD == results["finetune"].IAD  # JSON keeps floats exactly
    shutil.copytree(out / "images", tmp_path / "images")
    names = [c.name for c in concepts]
    write_report(tmp_path, results_json(setup, {"finetune": result}), {"finetune": result}, names, "old")
    report = (tmp_path / "report.md").read_text()
    assert f"| finetune | {result.TA:.3f} | {result.IA_own:.3f} |" in report
    assert json.loads((tmp_path / "results.json").read_text())["statistics"]["methods"] == {}


def test_resume_reuses_finished_methods(tiny_base, miniature):
    out, config, concepts, setup, results = miniature
    logs = []
    again = run_sequence(tiny_base, tiny_clip(), concepts, config, out, setup, resume=True, log=logs.append)
    assert again == results
    assert len(logs) == len(config.methods) and all("reusing" in line for line in logs)


def test_prompts_name_the_token_and_ta_text_names_the_class():
    concept = FolderConcept("octopus", "animal", ())
    assert eval_prompts(concept, ("blue",)) == [
        ("a <octopus> animal", "an animal"),
        ("a <octopus> animal on a blue background", "an animal on a blue background"),
    ]
    assert eval_prompts(FolderConcept("my-cup", "", ()), ())[0] == ("a <my-cup>", "a my cup")
    assert all("<" not in prompt for prompt in drift_prompts([concept]))


def test_cli_on_saved_model_and_a_folder_of_concepts(tmp_path, capsys):
    model, clip = save_tiny_model_and_clip(tmp_path)
    for concept in _concepts():
        folder = tmp_path / "mine" / concept.name
        folder.mkdir(parents=True)
        for k, image in enumerate(concept.images):
            image.save(folder / f"{k}.png")
    assert [c.name for c in load_concepts(tmp_path / "mine")] == ["mug", "rex"]
    out = tmp_path / "out"
    args = ["--model", str(model), "--eval-clip", str(clip), "--concept-dir", str(tmp_path / "mine")]
    args += ["--concepts", "2", "--methods", "finetune", "--steps", "2", "--sample-steps", "2"]
    args += ["--images-per-prompt", "1", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    document = json.loads((out / "results.json").read_text())
    assert list(document["methods"]) == ["finetune"]
    assert document["command"].startswith("python -m lifelong.bench --model")
    assert "[finetune] 2/2 learned <rex>" in capsys.readouterr().out


def test_cli_refuses_an_unknown_method_before_learning(tmp_path, capsys):
    code = main(["--methods", "finetune,nope", "--concepts", "1", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 2 and "nope" in capsys.readouterr().err
    assert not (tmp_path / "sessions").exists()


def test_eval_sampling_is_fixed_and_methods_add_their_generation_settings(tiny_base):
    config = SequenceConfig(methods=("finetune", "lfs"), images_per_prompt=3, seed=5, sample_steps=7)
    evaluator = Evaluator(tiny_base, tiny_clip(), _concepts(), config)
    plain, lfs = evaluator.generate_config(), evaluator.generate_config("lfs")
    assert (plain.steps, plain.num_images, plain.seed) == (lfs.steps, lfs.num_images, lfs.seed) == (7, 3, 5)
    assert plain.icgen_strength == 1.0
    assert lfs.icgen_strength == get_method("lfs").generate_settings["icgen_strength"] < 1.0


def test_overrides_reach_every_method_or_only_the_methods_that_have_the_setting():
    config = SequenceConfig(
        methods=("finetune", "l2dm"), overrides=(("learning_rate", "0.002"), ("clip", "vae"))
    )
    config.check()
    finetune, l2dm = config.learn_config("finetune"), config.learn_config("l2dm")
    assert finetune.learning_rate == l2dm.learning_rate == 0.002
    assert finetune.settings == {} and l2dm.settings == {"clip": "vae"}
    with pytest.raises(InvalidSettingError, match="no_such_setting"):
        SequenceConfig(methods=("finetune",), overrides=(("no_such_setting", "1"),)).check()


def test_quick_defaults_and_explicit_options_win():
    config, count = sequence_settings(build_parser().parse_args(["--quick", "--out", "x"]))
    assert (count, config.methods, config.steps) == (6, ("finetune", "routed"), 200)
    args = ["--quick", "--out", "x", "--steps", "5", "--concepts", "2", "--methods", "finetune, routed"]
    config, count = sequence_settings(build_parser().parse_args(args))
    assert (count, config.methods, config.steps) == (2, ("finetune", "routed"), 5)


def test_ratio_times_a_method_against_finetune_in_fresh_processes(tmp_path, capsys):
    model, _ = save_tiny_model_and_clip(tmp_path)
    args = ["--model", str(model), "--steps", "2", "--pairs", "1", "--set", "dfkd_samples=1"]
    assert ratio.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"pair 1: dfkd [0-9.]+ CPU s, finetune [0-9.]+ CPU s", out)
    found = re.search(r"dfkd --set dfkd_samples=1 ÷ finetune, 2 steps: median ×([0-9.]+)", out)
    assert found and float(found.group(1)) > 1  # distillation rows and a teacher pass on top of finetune's


def test_resume_reuses_a_method_that_the_new_overrides_do_not_reach(tiny_base, miniature):
    out, config, concepts, setup, results = miniature
    tuned = replace(config, methods=("finetune",), overrides=(("dfkd_weight", "3"),))
    logs = []
    setup = setup_record(tuned, "tiny", "tiny-clip", concepts)
    again = run_sequence(tiny_base, tiny_clip(), concepts, tuned, out, setup, resume=True, log=logs.append)
    assert again["finetune"] == results["finetune"] and logs == [
        f"[finetune] reusing {out}/methods/finetune.json"
    ]
    assert tuned.applicable("lfs") == (("dfkd_weight", "3"),) and tuned.applicable("finetune") == ()


def test_examples_are_the_ones_the_index_marks_else_the_first(tmp_path):
    for name in ("ant", "bee", "cat"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), "red").save(tmp_path / name / "0.png")
    assert [c.name for c in load_examples(tmp_path, limit=2)] == ["ant", "bee"]
    index = [{"name": "ant"}, {"name": "bee", "example": True}, {"name": "cat", "example": True}]
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert [c.name for c in load_examples(tmp_path)] == ["bee", "cat"]
    shipped = load_examples()
    assert len(shipped) == 4 and all(c.example and len(c.captions) == len(c.images) for c in shipped)
