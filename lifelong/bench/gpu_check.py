"""``python -m lifelong.bench.gpu_check``: the first GPU's measurements in one command (``scripts/gpu_check.sh``).

SD-1.5's architecture with random weights at 512 px (speed and memory do not depend on the weights' values),
the library's defaults on that device (bf16 weights, gradient checkpointing, SDPA):

1. learning speed of finetune and dfkd (the default method) at the default steps (``lifelong.bench.speed``);
2. generation: one 25-step image, images per second at batch 4;
3. memory of each phase of learning with the default method, and of a whole 2-step learn
   (``lifelong.bench.memory``);
4. learning speed of lfs and l2dm, then dfkd without gradient checkpointing (what checkpointing costs).

Each item is written to ``--out``/gpu_check.json as soon as it is measured, and an item that would start
after ``--deadline`` seconds is skipped (listed under "skipped"), so a device lease that runs out still
returns what was measured. ``--tiny`` runs the same path on the tiny test pipeline, in seconds on a CPU:
the dry run. ``--report FILE`` prints a finished JSON as the tables docs/BENCHMARKS.md takes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from lifelong.base import BaseConfig, BaseModel, prepare_base
from lifelong.bench import memory, speed
from lifelong.bench.random_sd15 import random_sd15_base
from lifelong.bench.resources import resident_bytes
from lifelong.bench.tiny import tiny_pipeline
from lifelong.concepts import Session
from lifelong.learner import LearnConfig

FIRST = ("finetune", "dfkd")
LATER = ("lfs", "l2dm")
PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "tokenizers", "safetensors")


def environment(base: BaseModel) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = base.device.type == "cuda"
    return {
        "model": base.name,
        "device": str(base.device),
        "device_name": torch.cuda.get_device_name(base.device) if cuda else platform.processor() or "cpu",
        "device_memory_gb": round(torch.cuda.get_device_properties(base.device).total_memory / 2**30, 1)
        if cuda
        else None,
        "dtype": str(base.dtype).removeprefix("torch."),
        "resolution": base.resolution,
        # what the base holds before any job (weights, slot rows): the peaks below are above it
        "held_gb": round((torch.cuda.memory_allocated(base.device) if cuda else resident_bytes()) / 2**30, 2),
        "gradient_checkpointing": base.gradient_checkpointing,
        "attention_processor": type(next(iter(base.pipe.unet.attn_processors.values()))).__name__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": versions,
    }


def make_base(tiny: bool, device: str) -> BaseModel:
    if not tiny:
        return random_sd15_base(BaseConfig(device=device, compile=False))
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return prepare_base(tiny_pipeline(), BaseConfig(model="tiny", compile=False), chosen)


class Check:
    """The run's results, written whole after every item."""

    def __init__(self, out: Path, deadline: float) -> None:
        self.out, self.deadline = out, deadline
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {"methods": [], "skipped": []}
        out.mkdir(parents=True, exist_ok=True)

    def due(self, item: str) -> bool:
        """Whether there is time to start ``item``; if not, it is recorded as skipped."""
        elapsed = time.perf_counter() - self.started
        if elapsed > self.deadline:
            self.results["skipped"].append(item)
            print(f"[{elapsed:5.0f} s] skipped {item}: past the {self.deadline:.0f} s deadline", flush=True)
            return False
        print(f"[{elapsed:5.0f} s] {item}", flush=True)
        return True

    def save(self, **items: Any) -> None:
        self.results.update(items)
        self.results["seconds"] = round(time.perf_counter() - self.started, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2))


def run(base: BaseModel, out: Path, steps: int, deadline: float) -> dict[str, Any]:
    check = Check(out, deadline)
    check.save(environment=environment(base), steps=steps)
    with tempfile.TemporaryDirectory(prefix="lifelong-gpu-check-") as tmp:
        root = Path(tmp)
        for method in FIRST:
            if check.due(f"learn with {method}"):
                check.results["methods"].append(asdict(speed.time_method(base, method, steps, root)))
                check.save()
        if check.results["methods"] and check.due("generation"):
            first = check.results["methods"][0]["method"]
            check.save(generation=speed.time_generation(base, Session.open(root / first)))
    if check.due(f"memory of learning with {memory.HEAVIEST}"):
        check.save(memory=asdict(memory.measure(base, memory.HEAVIEST, learn_steps=2)))
    with tempfile.TemporaryDirectory(prefix="lifelong-gpu-check-") as tmp:
        for method in LATER:
            if check.due(f"learn with {method}"):
                check.results["methods"].append(asdict(speed.time_method(base, method, steps, Path(tmp))))
                check.save()
        if base.gradient_checkpointing and check.due("learn with dfkd, no gradient checkpointing"):
            chosen = base.config
            base.config = replace(chosen, gradient_checkpointing=False)
            try:
                timing = speed.time_method(base, "dfkd", steps, Path(tmp))
            finally:
                base.config = chosen
            timing.method = "dfkd, no checkpointing"
            check.results["methods"].append(asdict(timing))
            check.save()
    reference = next((m for m in check.results["methods"] if m["method"] == "finetune"), None)
    for timing in check.results["methods"]:
        if reference is not None:
            ratio = timing["seconds_per_concept"] / reference["seconds_per_concept"]
            timing["overhead_vs_finetune"] = round(ratio, 3)
    check.save()
    return check.results


def report(results: dict[str, Any]) -> str:
    """The results as docs/BENCHMARKS.md shows them."""
    env = results["environment"]
    lines = [
        f"{env['device_name']} ({env['device_memory_gb']} GB), {env['model']} at {env['resolution']} px, "
        f"{env['dtype']} weights, gradient checkpointing {'on' if env['gradient_checkpointing'] else 'off'}, "
        f"{env['attention_processor']}; {env['held_gb']} GB held before learning; torch {env['versions']['torch']}, diffusers "
        f"{env['versions']['diffusers']}; {results['steps']} steps; the whole check took "
        f"{results['seconds']:.0f} s",
        "",
        "| method | s/step | s/concept | × finetune | peak GB above what was held | checkpoint MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in results["methods"]:
        lines.append(
            f"| {t['method']} | {t['seconds_per_step']:.3f} | {t['seconds_per_concept']:.1f} | "
            f"{t['overhead_vs_finetune']:.2f} | {t['peak_memory_mb'] / 1024:.2f} | {t['checkpoint_mb']:.2f} |"
        )
    generation = results.get("generation")
    if generation:
        lines += [
            "",
            f"Generation: {generation['seconds_per_image_25_steps']:.2f} s per image (25 steps), "
            f"{generation['images_per_second_batch4']:.2f} images/s at batch 4, state swap "
            f"{generation['seconds_per_state_swap'] * 1000:.1f} ms.",
        ]
    if results.get("memory"):
        data = dict(results["memory"])
        data["phases"] = [memory.Phase(**p) for p in data["phases"]]
        budget = env["device_memory_gb"] or 24.0
        lines += ["", memory.table(memory.MemoryReport(**data), budget)]
    if results["skipped"]:
        lines += ["", f"Skipped (past the deadline): {', '.join(results['skipped'])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifelong.bench.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--tiny", action="store_true", help="the tiny test pipeline: a dry run")
    parser.add_argument("--device", default="", help="default: CUDA if there is one, else the CPU")
    parser.add_argument("--steps", type=int, default=LearnConfig.steps)
    parser.add_argument("--deadline", type=float, default=390.0, help="seconds; later items are skipped")
    parser.add_argument("--report", type=Path, default=None, help="print a finished gpu_check.json")
    args = parser.parse_args(argv)
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    base = make_base(args.tiny, args.device)
    results = run(base, args.out, args.steps, args.deadline)
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
