"""``python -m lifelong.bench``: benchmark modes over one shared set of options.

A mode is a flag (``""`` for the default mode, the lifelong benchmark), a function that adds its option
group, and a function that runs it. To add a benchmark, write a module with one :class:`Mode` and list it
in :data:`MODES`; the common options (model, eval CLIP, device, seed, methods, steps, out) are shared.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lifelong.base import BaseConfig, compile_requested, get_base
from lifelong.bench import learnability, multi
from lifelong.bench.report import write_report
from lifelong.bench.sequence import SequenceConfig, results_json, run_sequence, setup_record
from lifelong.configs import GenerateConfig, LearnConfig
from lifelong.errors import LifelongError
from lifelong.folders import BUNDLED_CONCEPTS, load_concepts
from lifelong.methods import METHODS
from lifelong.metrics import EvalClip, IdentityEncoder
from lifelong.overrides import parse_pairs
from lifelong.stats import RESAMPLES


@dataclass(frozen=True)
class Mode:
    flag: str  # "" = the default mode, run when no mode flag is given
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# The app's 200 steps, so concepts are learned before their forgetting is measured. Quick: 6 concepts, the
# fewest of the held-out animals after which finetune's IAD interval excludes 0 at 2 images per prompt
# (0.224 [0.114, 0.336] in the full run's first six), against routed, whose keeping of concepts the default
# method (routed+dfkd) inherits, at a third of dfkd's time (docs/BENCHMARKS.md).
QUICK = {"concepts": 6, "steps": LearnConfig.steps, "images_per_prompt": 2}
QUICK_METHODS = ("finetune", "routed")
FULL = {"concepts": 10, "steps": LearnConfig.steps, "images_per_prompt": 4}


def _lifelong_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lifelong benchmark (the default mode)")
    group.add_argument(
        "--concepts", type=int, default=None, help=f"how many concepts to learn (default {FULL['concepts']})"
    )
    group.add_argument(
        "--concept-dir",
        type=Path,
        default=BUNDLED_CONCEPTS,
        help="one subfolder of images per concept, optionally an index.json with class words "
        "(default: the bundled world's held-out emoji)",
    )
    group.add_argument(
        "--images-per-prompt",
        type=int,
        default=None,
        help=f"eval images per prompt and checkpoint (default {FULL['images_per_prompt']})",
    )
    group.add_argument(
        "--sample-steps",
        type=int,
        default=None,
        help="DDIM steps of eval images (default 20; --learn: 25, the app's)",
    )
    group.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"classifier-free guidance of eval images (default {GenerateConfig.guidance_scale:g}, the app's)",
    )
    group.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['concepts']} concepts, methods {','.join(QUICK_METHODS)}, {QUICK['steps']} steps",
    )
    group.add_argument(
        "--resume", action="store_true", help="reuse methods/<method>.json of an earlier identical run"
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a LearnConfig field for every method, or a method setting for the methods that have it",
    )


def sequence_settings(args: argparse.Namespace) -> tuple[SequenceConfig, int]:
    """The run's config and concept count: explicit options, else the --quick or the full defaults."""
    defaults = QUICK if args.quick else FULL
    methods = (
        args.methods.split(",") if args.methods else (list(QUICK_METHODS) if args.quick else list(METHODS))
    )
    config = SequenceConfig(
        methods=tuple(m.strip() for m in methods if m.strip()),
        steps=args.steps or defaults["steps"],
        images_per_prompt=args.images_per_prompt or defaults["images_per_prompt"],
        seed=args.seed,
        sample_steps=args.sample_steps or SequenceConfig.sample_steps,
        guidance_scale=GenerateConfig.guidance_scale if args.guidance is None else args.guidance,
        overrides=tuple(parse_pairs(args.set).items()),
    )
    return config, args.concepts or defaults["concepts"]


def load_identity(args: argparse.Namespace, device: torch.device) -> IdentityEncoder | None:
    """The identity encoder IA uses (--eval-identity, default the bundled one), or None for "clip"."""
    if args.eval_identity == "clip":
        return None
    return IdentityEncoder.load(args.eval_identity, device)


def _run_lifelong(args: argparse.Namespace) -> int:
    config, count = sequence_settings(args)
    config.check()  # a typo should fail now, not after loading models
    concepts = load_concepts(args.concept_dir, count)
    base = get_base(BaseConfig(model=args.model, device=args.device, compile=compile_requested()))
    clip = EvalClip.load(args.eval_clip, base.device)
    identity = load_identity(args, base.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    setup = setup_record(config, base.name, args.eval_clip or "bundled", concepts)
    setup["eval_identity"] = args.eval_identity or "bundled"
    results = run_sequence(base, clip, concepts, config, out, setup, resume=args.resume, identity=identity)
    command = "python -m lifelong.bench " + shlex.join(args.argv)
    names = [c.name for c in concepts]
    document = results_json(setup, results) | {"command": command}
    write_report(out, document, results, names, command, args.resamples)
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and the plots")
    return 0


LIFELONG = Mode(
    "", "concept sequences × methods: TA, IA matrix, IAD, TFR, base drift", _lifelong_arguments, _run_lifelong
)
MULTI = Mode(
    "multi", "pairs of learned concepts in one prompt, CAA/OAA off vs on", multi.add_arguments, multi.run
)
LEARN = Mode(
    "learn",
    "each concept learned alone: identification, normalised IA, background, TA, seconds",
    learnability.add_arguments,
    learnability.run,
)
MODES: list[Mode] = [LIFELONG, MULTI, LEARN]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lifelong.bench",
        description="Benchmark lifelong learning methods on the bundled world or your own concepts.",
    )
    flags = parser.add_mutually_exclusive_group()
    for mode in MODES:
        if mode.flag:
            flags.add_argument(f"--{mode.flag}", action="store_true", help=mode.help)
    common = parser.add_argument_group("common options")
    common.add_argument("--out", type=Path, required=True, help="folder for results.json, report.md, plots")
    common.add_argument(
        "--model", default="", help="hub id or folder of an SD-1.x pipeline (default: bundled)"
    )
    common.add_argument(
        "--eval-clip", default="", help="CLIP folder or hub id (default: the bundled eval CLIP)"
    )
    common.add_argument(
        "--eval-identity",
        default="",
        help="image model for IA: folder or hub id of a DINO-like model (default: the bundled identity "
        "encoder); 'clip' uses the eval CLIP's image tower",
    )
    common.add_argument("--device", default="", help="cpu, cuda, ... (default: what accelerate finds)")
    common.add_argument("--methods", default="", help="comma-separated method names (default: all)")
    common.add_argument("--steps", type=int, default=None, help="learning steps per concept")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument(
        "--examples",
        action="store_true",
        help="--learn, --multi: the concepts --concept-dir's index marks as the app's examples, not the first ones",
    )
    common.add_argument(
        "--resamples",
        type=int,
        default=RESAMPLES,
        help=f"bootstrap resamples of the 95 %% intervals (default {RESAMPLES}; lifelong/stats.py)",
    )
    for mode in MODES:
        mode.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    threads = os.environ.get("LIFELONG_TORCH_THREADS")
    if threads:  # a shared machine caps our threads
        torch.set_num_threads(int(threads))
    mode = next((m for m in MODES if m.flag and getattr(args, m.flag.replace("-", "_"))), LIFELONG)
    try:
        return mode.run(args)
    except (LifelongError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
