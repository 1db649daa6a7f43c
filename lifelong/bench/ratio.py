"""``python -m lifelong.bench.ratio``: a method's learning time as a multiple of finetune's, on one base.

Each run is a fresh process (one torch thread, sampling uncompiled) that loads the base, learns the first
example concept for 2 finetune steps (so a stacked method has a teacher and dfkd an earlier concept in its
pool), then learns the second example concept with ``--method`` or ``finetune`` at ``--steps``, timing
that ``learn`` call with ``time.process_time()``: CPU seconds, which other processes sharing the CPU
disturb far less than wall time. Runs alternate (method, finetune, method, …) for ``--pairs`` pairs; the
report gives each pair's ratio and the median, the figure issue 20 asks for ("dfkd ÷ finetune").
``--finetune-set params=lora-attn`` gives finetune the method's trainable set, so the ratio is what the
method's mechanism adds, without the cost of training more layers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lifelong.base import BaseConfig, load_base
from lifelong.concepts import Session
from lifelong.folders import load_concepts
from lifelong.learner import LearnConfig, learn_folder
from lifelong.overrides import override, parse_pairs


def one_run(method: str, steps: int, pairs: list[str], model: str) -> float:
    """CPU seconds of one ``learn`` of the second example concept with ``method`` (this process)."""
    torch.set_num_threads(1)
    base = load_base(BaseConfig(model=model, compile=False))
    first, second = load_concepts()[:2]
    session = Session.create(Path(tempfile.mkdtemp(prefix="lifelong-ratio-")) / "s", base.name)
    learn_folder(base, session, first, LearnConfig(method="finetune", steps=2))
    config = override(LearnConfig(method=method, steps=steps), parse_pairs(pairs))
    started = time.process_time()
    learn_folder(base, session, second, config)
    return time.process_time() - started


def _spawn(method: str, pairs: list[str], args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "lifelong.bench.ratio", "--one", method, "--steps", str(args.steps)]
    command += ["--model", args.model] + [item for pair in pairs for item in ("--set", pair)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(output.strip().splitlines()[-1])["cpu_seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="dfkd", help="the method to compare with finetune")
    parser.add_argument("--steps", type=int, default=LearnConfig().steps)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model", default="", help="hub id or folder (default: the bundled model)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of --method (not finetune's)",
    )
    parser.add_argument(
        "--finetune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a LearnConfig field of the finetune runs, e.g. params=lora-attn: the method's trainable set, so "
        "the ratio is what the method adds to it",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: time this method once
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps({"cpu_seconds": one_run(args.one, args.steps, args.set, args.model)}))
        return 0
    ratios = []
    for pair in range(args.pairs):
        method, plain = _spawn(args.method, args.set, args), _spawn("finetune", args.finetune_set, args)
        ratios.append(method / plain)
        print(
            f"pair {pair + 1}: {args.method} {method:.1f} CPU s, finetune {plain:.1f} CPU s, ×{ratios[-1]:.2f}"
        )
    mine = "".join(f" --set {pair}" for pair in args.set)
    theirs = "".join(f" --set {pair}" for pair in args.finetune_set)
    print(
        f"{args.method}{mine} ÷ finetune{theirs}, {args.steps} steps: median ×{statistics.median(ratios):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
