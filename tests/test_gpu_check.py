"""The GPU check's whole path on the tiny pipeline and the CPU: the dry run that keeps device minutes for
measuring (lifelong.bench.gpu_check, scripts/gpu_check.sh)."""

from __future__ import annotations

import json
import math

from lifelong.bench import gpu_check
from lifelong.configs import LearnConfig
from lifelong.mechanisms import dfkd


def test_the_gpu_check_runs_end_to_end_on_the_tiny_pipeline(tmp_path, capsys):
    assert gpu_check.main(["--tiny", "--device", "cpu", "--steps", "2", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [m["method"] for m in results["methods"]] == [*gpu_check.FIRST, *gpu_check.LATER]
    assert results["skipped"] == []  # no "no checkpointing" row: checkpointing is off on a CPU
    for timing in results["methods"]:
        assert timing["seconds_per_concept"] > 0 and math.isfinite(timing["seconds_per_step"])
    assert results["methods"][0]["overhead_vs_finetune"] == 1.0
    assert results["generation"]["images_per_second_batch4"] > 0
    memory = results["memory"]
    rows = LearnConfig().batch_size + dfkd.SETTINGS["dfkd_batch"].default  # the concept's and distillation's
    assert memory["method"] == "dfkd" and memory["kind"] == "lora-attn" and memory["batch"] == rows
    assert memory["learn_peak_gb"] is not None and memory["optimizer_gb"] >= 0
    environment = results["environment"]
    assert environment["model"] == "tiny" and environment["versions"]["diffusers"]
    assert gpu_check.main(["--report", str(tmp_path / "gpu_check.json")]) == 0
    report = capsys.readouterr().out
    assert "| dfkd |" in report and "| l2dm |" in report and "learning step with checkpointing" in report


def test_items_past_the_deadline_are_skipped_and_the_report_still_renders(tmp_path, capsys):
    assert gpu_check.main(["--tiny", "--device", "cpu", "--deadline", "-1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["methods"] == [] and "learn with dfkd" in results["skipped"]
    assert "Skipped (past the deadline): learn with finetune" in capsys.readouterr().out
