"""``python -m lifelong.bench.speed``: how fast a concept is learned and an image is made, at any scale.

For each method: learn a first concept (so distillation has a teacher), then time learning a second one —
seconds per step (median of the steady steps), seconds per concept (the whole ``learn`` call: encoding,
training, after-learn hooks, saving), peak memory, checkpoint size. Then generation: seconds per image
at 25 steps, images per second at batch 4, and the time to swap a checkpoint's deltas into the base.

    python -m lifelong.bench.speed                       # the default (bundled) model on this machine
    python -m lifelong.bench.speed --random-sd15 --device cuda --methods finetune,dfkd,l2dm,lfs
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lifelong.adapters import KINDS, compose, trainable, use_state
from lifelong.base import REPO_ROOT, BaseConfig, BaseModel, load_base
from lifelong.bench.random_sd15 import random_sd15_base
from lifelong.bench.resources import PeakMemory
from lifelong.concepts import Session, save_checkpoint
from lifelong.generation import GenerateConfig, generate
from lifelong.learner import LearnConfig, learn
from lifelong.methods import METHODS
from lifelong.progress import Progress

EXAMPLES = REPO_ROOT / "assets" / "concepts"


@dataclass
class MethodTiming:
    method: str
    seconds_per_step: float
    seconds_per_concept: float
    peak_memory_mb: float
    checkpoint_mb: float
    overhead_vs_finetune: float = float("nan")


def _example_images(index: int, size: int) -> list[Image.Image]:
    """A held-out concept's images if the bundled examples are there, else a synthetic pattern."""
    folders = sorted(p for p in EXAMPLES.iterdir() if p.is_dir()) if EXAMPLES.is_dir() else []
    if len(folders) > index:
        return [Image.open(p).convert("RGB") for p in sorted(folders[index].glob("*.png"))[:4]]
    rng = np.random.default_rng(index)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(4)]


def _sync(base: BaseModel) -> None:
    if base.device.type == "cuda":
        torch.cuda.synchronize(base.device)


def time_method(base: BaseModel, method: str, steps: int, root: Path) -> MethodTiming:
    session = Session.create(root / method.replace("+", "_"), base.name)
    warmup = LearnConfig(method=method, steps=max(2, steps // 10), seed=1)
    learn(base, session, _example_images(0, base.resolution), "first", "object", warmup)
    stamps: list[float] = []

    def record(progress: Progress) -> None:
        _sync(base)
        stamps.append(progress.seconds)

    with PeakMemory(base.device) as peak:
        result = learn(
            base,
            session,
            _example_images(1, base.resolution),
            "second",
            "object",
            LearnConfig(method=method, steps=steps),
            record,
        )
    intervals = np.diff(stamps)[len(stamps) // 5 :]  # the first steps include warm-up and caching
    checkpoint = session.root / result.concept.checkpoint
    return MethodTiming(
        method=method,
        seconds_per_step=float(statistics.median(intervals)) if len(intervals) else float("nan"),
        seconds_per_concept=result.concept.seconds,
        peak_memory_mb=round(peak.peak_mb, 1),
        checkpoint_mb=round(checkpoint.stat().st_size / 2**20, 3),
    )


def time_generation(base: BaseModel, session: Session) -> dict[str, float]:
    prompt = f"a <{session.names()[-1]}> object" if session.concepts else "a picture"
    generate(base, session, prompt, GenerateConfig(steps=2))  # warm-up
    _sync(base)
    started = time.perf_counter()
    generate(base, session, prompt, GenerateConfig(steps=25, num_images=1))
    _sync(base)
    one = time.perf_counter() - started
    started = time.perf_counter()
    generate(base, session, prompt, GenerateConfig(steps=25, num_images=4))
    _sync(base)
    four = time.perf_counter() - started
    state = session.state(len(session.concepts), base.slot_token_ids)
    started = time.perf_counter()
    for _ in range(5):
        with use_state(base, state):
            _sync(base)
    swap = (time.perf_counter() - started) / 5
    return {
        "seconds_per_image_25_steps": one,
        "images_per_second_batch4": 4 / four,
        "seconds_per_state_swap": swap,
    }


def size_only(base: BaseModel) -> dict[str, object]:
    """Checkpoint size per concept and state-swap time without training (for scales this machine can't train)."""
    init = torch.zeros(base.pipe.text_encoder.get_input_embeddings().embedding_dim)
    results: dict[str, object] = {"model": base.name, "device": str(base.device), "dtype": str(base.dtype)}
    with tempfile.TemporaryDirectory(prefix="lifelong-size-") as tmp:
        for kind in KINDS:
            with trainable(base, kind, base.slot_token_ids[0], init) as trainset:
                delta = trainset.extract()
            path = Path(tmp) / f"{kind}.safetensors"
            save_checkpoint(path, delta)
            results[f"checkpoint_mb_{kind}"] = round(path.stat().st_size / 2**20, 2)
            state = compose([delta], base.slot_token_ids[:1])
            started = time.perf_counter()
            for _ in range(5):
                with use_state(base, state):
                    _sync(base)
            results[f"seconds_per_state_swap_{kind}"] = round((time.perf_counter() - started) / 5, 4)
    return results


def run(base: BaseModel, methods: list[str], steps: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="lifelong-speed-") as tmp:
        timings = [time_method(base, method, steps, Path(tmp)) for method in methods]
        generation = time_generation(base, Session.open(Path(tmp) / methods[0].replace("+", "_")))
    reference = next((t for t in timings if t.method == "finetune"), None)
    for timing in timings:
        if reference is not None:
            timing.overhead_vs_finetune = round(timing.seconds_per_concept / reference.seconds_per_concept, 3)
    return {
        "model": base.name,
        "device": str(base.device),
        "device_name": torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else "cpu",
        "dtype": str(base.dtype),
        "resolution": base.resolution,
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "methods": [asdict(t) for t in timings],
        **generation,
    }


def table(results: dict) -> str:
    lines = [
        f"model {results['model']} on {results['device_name']} ({results['dtype']}, {results['resolution']} px, "
        f"{results['steps']} steps)",
        "| method | s/step | s/concept | × finetune | peak MB | checkpoint MB |",
        "|---|---|---|---|---|---|",
    ]
    for t in results["methods"]:
        lines.append(
            f"| {t['method']} | {t['seconds_per_step']:.3f} | {t['seconds_per_concept']:.1f} | "
            f"{t['overhead_vs_finetune']:.2f} | {t['peak_memory_mb']:.0f} | {t['checkpoint_mb']:.2f} |"
        )
    lines.append(
        f"generation: {results['seconds_per_image_25_steps']:.3f} s/image (25 steps), "
        f"{results['images_per_second_batch4']:.2f} images/s at batch 4, "
        f"state swap {results['seconds_per_state_swap'] * 1000:.1f} ms"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifelong.bench.speed", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default="", help="hub id or folder (default: the bundled model)")
    source.add_argument("--random-sd15", action="store_true", help="SD-1.5 architecture, random weights")
    parser.add_argument("--device", default="")
    parser.add_argument("--methods", default="finetune,dfkd,l2dm,lfs")
    parser.add_argument("--steps", type=int, default=LearnConfig.steps)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--size-only", action="store_true", help="only checkpoint size and swap time, no training"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m.split("+")[0] in METHODS]
    skipped = sorted(set(args.methods.split(",")) - set(methods))
    if skipped:
        print(f"not known here, skipped: {', '.join(skipped)}")
    config = BaseConfig(model=args.model, device=args.device)
    base = random_sd15_base(config) if args.random_sd15 else load_base(config)
    if args.size_only:
        results = size_only(base)
        print(json.dumps(results, indent=2))
    else:
        results = run(base, methods, args.steps)
        print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
