"""Seconds per concept and peak memory of every method relative to finetune, on the tiny test pipeline.

    LIFELONG_TORCH_THREADS=1 PYTHONPATH=. python scripts/method_costs.py [--steps 30] [--rounds 2]

Each (method, round) runs in a fresh process that builds the tiny pipeline (tests/tiny.py), registers a
tiny CLIP for the memory features, generates once (so the allocator is warm), then learns the same three
concepts with the method's default settings and the same steps. Memory is the process's peak resident
set (``resource.getrusage(...).ru_maxrss``) minus its resident set just before the first concept: the
extra memory learning needed, including what the method keeps (teacher passes, memory, class images).
tracemalloc is not used: it does not see torch's CPU tensor allocations. The reported value per method is
the minimum over rounds (rounds are interleaved, so load from other processes hits every method alike).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(method: str, steps: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(int(os.environ.get("LIFELONG_TORCH_THREADS", "1")))
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    from conftest import pattern_images
    from tiny import tiny_pipeline
    from tiny_clip import tiny_clip

    from lifelong.base import BaseConfig, prepare_base
    from lifelong.bench.resources import resident_bytes
    from lifelong.concepts import Session
    from lifelong.generation import GenerateConfig, generate
    from lifelong.learner import LearnConfig, learn
    from lifelong.mechanisms.memory import register_clip
    from lifelong.methods import get_method

    base = prepare_base(tiny_pipeline(), BaseConfig(model="tiny", concept_slots=6), torch.device("cpu"))
    register_clip("tiny", tiny_clip())
    settings = {"clip": "tiny"} if "clip" in get_method(method).settings() else {}
    session = Session.create(Path(tempfile.mkdtemp()) / "s", "tiny")
    generate(base, session, "a dog", GenerateConfig(steps=4))
    before = resident_bytes() // 1024
    seconds = []
    for index, (name, word) in enumerate([("rex", "dog"), ("tom", "cat"), ("cup", "mug")]):
        started = time.perf_counter()
        learn(
            base,
            session,
            pattern_images(seed=index),
            name,
            word,
            LearnConfig(method=method, steps=steps, settings=settings),
        )
        seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "seconds_per_concept": sum(seconds) / len(seconds),
        "extra_mib": (peak - before) / 1024,
        "peak_mib": peak / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", default="")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process: measure one method
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    sys.path.insert(0, str(ROOT))
    from lifelong.methods import METHODS

    methods = args.methods.split(",") if args.methods else [*METHODS, "routed+dfkd"]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for method in methods:
            out = subprocess.run(
                [sys.executable, __file__, "--one", method, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            results[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {m: {k: min(r[k] for r in runs) for k in runs[0]} for m, runs in results.items()}
    ref = best.get("finetune") or next(iter(best.values()))
    print("| method | s/concept | × finetune | peak RSS MiB | extra MiB while learning | × finetune |")
    print("|---|---|---|---|---|---|")
    for method, row in best.items():
        print(
            f"| {method} | {row['seconds_per_concept']:.2f} | {row['seconds_per_concept'] / ref['seconds_per_concept']:.2f} "
            f"| {row['peak_mib']:.0f} | {row['extra_mib']:.1f} | {row['extra_mib'] / max(ref['extra_mib'], 1e-9):.2f} |"
        )


if __name__ == "__main__":
    main()
