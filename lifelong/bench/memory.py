"""``python -m lifelong.bench.memory``: what learning a concept holds in memory, component by component, at
the base's resolution, and whether it fits a device of a given size (default 24 GB, an A10G).

Each phase of learning runs alone on the real code (the learner's step, the trainable set, the VAE encode,
the teacher's pass) under :class:`~lifelong.bench.resources.PeakMemory`: the CUDA allocator's peak on a GPU,
the resident set's growth on a CPU. Beside each measurement, the same phase by arithmetic in the measured
dtype: weights at their bytes per element, trainable parameters, gradients and AdamW's two moments in fp32.

    python -m lifelong.bench.memory --random-sd15 --dtype bfloat16   # SD-1.5 at 512 px on this CPU
    python -m lifelong.bench.memory --random-sd15 --device cuda --learn
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from lifelong.adapters import trainable
from lifelong.base import BaseConfig, BaseModel, load_base
from lifelong.bench.random_sd15 import random_sd15_base
from lifelong.bench.resources import PeakMemory, return_freed_memory
from lifelong.concepts import Session
from lifelong.encoding import decode, encode_images, tokenize
from lifelong.learner import LearnConfig, learn, make_optimizer, training_step
from lifelong.mechanisms import dfkd
from lifelong.methods import get_method

GB = 2**30


@dataclass
class Phase:
    name: str
    measured_gb: float  # peak above what was held before the phase
    note: str = ""


@dataclass
class MemoryReport:
    model: str
    device: str
    dtype: str
    resolution: int
    method: str
    kind: str
    batch: int  # student rows per step: the concept's batch plus the distillation's
    teacher_batch: int  # the distillation's teacher rows per step
    pseudo_batch: int  # the teacher's pseudo-samples generated at once (one chunk)
    weights_gb: dict[str, float]  # per module, parameters at their dtype
    trainable_params: int
    optimizer_gb: float  # trainable fp32 parameters + gradients + AdamW's two moments
    phases: list[Phase] = field(default_factory=list)
    learn_peak_gb: float | None = None  # a whole learn() call with the method's defaults, if run
    learn_steps: int = 0

    def peak_gb(self, with_checkpointing: bool = True) -> float:
        """Weights + optimizer state + the largest phase, the learning step with or without checkpointing."""
        skip = "step, no checkpointing" if with_checkpointing else "step, checkpointing"
        phases = [p.measured_gb for p in self.phases if not p.name.startswith(skip)]
        return sum(self.weights_gb.values()) + self.optimizer_gb + max(phases, default=0.0)


# dfkd holds the most while learning (LoRA on every attention projection, distillation rows and a teacher
# pass on top of the concept's batch): if it fits, the default method and the others do
HEAVIEST = "dfkd"


def _gb(nbytes: float) -> float:
    return round(nbytes / GB, 3)


def _sync(base: BaseModel) -> None:
    if base.device.type == "cuda":
        torch.cuda.synchronize(base.device)


def _measure(base: BaseModel, work: Callable[[], object]) -> float:
    # bf16 weights on a CPU run under bf16 autocast, as learning runs on CUDA (the accelerator's autocast
    # is a no-op on CPUs): autocast keeps some intermediates in fp32, which a GPU holds too
    cpu_bf16 = base.device.type == "cpu" and base.dtype == torch.bfloat16
    with (
        PeakMemory(base.device, interval=0.005) as peak,
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16),
    ):
        work()
        _sync(base)
    return round(peak.peak_mb / 1024, 3)


def _images(base: BaseModel, count: int) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 255, (count, base.resolution, base.resolution, 3), generator=generator)
    return [Image.fromarray(p.to(torch.uint8).numpy()) for p in pixels]


def measure(base: BaseModel, method: str, learn_steps: int = 0) -> MemoryReport:
    """Every phase of learning a concept with ``method``'s defaults, one at a time; with ``learn_steps``,
    also one whole ``learn`` call of that many steps (the phases together, as a user's request runs them)."""
    config = LearnConfig(method=method)
    chosen = get_method(method)
    settings = chosen.resolve({})
    distil = int(settings.get("dfkd_batch", 0)) if "dfkd" in chosen.components else 0
    modules = (("unet", base.pipe.unet), ("vae", base.pipe.vae), ("text_encoder", base.pipe.text_encoder))
    report = MemoryReport(
        model=base.name,
        device=str(base.device),
        dtype=str(base.dtype).removeprefix("torch."),
        resolution=base.resolution,
        method=method,
        kind=config.params or chosen.trainable_kind,
        batch=config.batch_size + distil,
        teacher_batch=distil,
        # the pseudo-samples are drawn a chunk at a time: the largest teacher batch held at once
        pseudo_batch=dfkd.PSEUDO_CHUNK if distil and int(settings["dfkd_samples"]) else 0,
        weights_gb={
            name: _gb(sum(p.numel() * p.element_size() for p in m.parameters())) for name, m in modules
        },
        trainable_params=0,
        optimizer_gb=0.0,
        learn_steps=learn_steps,
    )
    views = _images(base, 16)  # one chunk of encode_images: 4 images with flips and crops make 24 views
    report.phases.append(
        Phase("VAE encode, 16 views", _measure(base, lambda: encode_images(base, views)), "no grad")
    )
    learning_phases(base, config, report)
    latents = torch.randn(1, *_latent_shape(base), device=base.device)
    report.phases.append(
        Phase("VAE decode, 1 image", _measure(base, lambda: decode(base, latents)), "generation")
    )
    if learn_steps:
        with tempfile.TemporaryDirectory(prefix="lifelong-memory-") as tmp:
            session = Session.create(Path(tmp) / "session", base.name)
            images = _images(base, 4)
            whole = LearnConfig(method=method, steps=learn_steps)
            report.learn_peak_gb = _measure(base, lambda: learn(base, session, images, "rex", "", whole))
    return report


def _latent_shape(base: BaseModel) -> tuple[int, int, int]:
    unet = base.pipe.unet
    side = int(unet.config.sample_size)
    return int(unet.config.in_channels), side, side


def learning_phases(base: BaseModel, config: LearnConfig, report: MemoryReport) -> None:
    """The trainable set and its optimizer state, then the learner's step (with and without gradient
    checkpointing) and the teacher's passes, on the report's batch sizes; fills ``report``."""
    unet, shape, rows = base.pipe.unet, _latent_shape(base), report.batch
    with tempfile.TemporaryDirectory(prefix="lifelong-memory-") as tmp:
        session = Session.create(Path(tmp) / "session", base.name)
        init = torch.zeros(base.pipe.text_encoder.get_input_embeddings().embedding_dim)
        ids_all = tokenize(base, ["a <|slot0|> object"])
        with torch.no_grad():
            prompt = base.pipe.text_encoder(ids_all)[0]
        with trainable(base, report.kind, base.slot_token_ids[0], init, config.lora_rank) as trainset:
            optimizer = make_optimizer(trainset, config)
            parameters = [*trainset.weight_parameters(), trainset.embedding]
            report.trainable_params = sum(p.numel() for p in parameters)

            def step(batch: int) -> None:
                generator = torch.Generator(device=base.device).manual_seed(0)
                latents = torch.randn(batch, *shape, device=base.device)
                step_config = LearnConfig(method="finetune", batch_size=batch)
                ids = ids_all.expand(batch, -1)
                training_step(base, session, trainset, 1, latents, ids, generator, step_config, [])

            def teacher(batch: int) -> None:
                noisy = torch.randn(batch, *shape, device=base.device, dtype=base.dtype)
                steps = torch.full((batch,), 500, device=base.device)
                with torch.no_grad(), trainset.disabled(), base.accelerator.autocast():
                    unet(noisy, steps, prompt.expand(batch, -1, -1))

            step(1)  # gradients exist from here on, as in every step after the first
            optimizer.step()  # AdamW's moments exist from here on
            state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
            held = [*parameters, *(p.grad for p in parameters if p.grad is not None), *state]
            report.optimizer_gb = _gb(sum(t.numel() * t.element_size() for t in held))
            unet.enable_gradient_checkpointing()
            try:
                checkpointed = _measure(base, lambda: step(rows))
            finally:
                unet.disable_gradient_checkpointing()
            one = _measure(base, lambda: step(1))
            report.phases += [
                Phase(
                    f"step, checkpointing, batch {rows}",
                    checkpointed,
                    "student forward and backward over the concept's batch and the distillation's rows",
                ),
                Phase(
                    f"step, no checkpointing, batch {rows}",
                    round(one * rows, 3),
                    f"measured at batch 1 ({one:.2f} GB) × {rows}: activations grow with the batch",
                ),
            ]
            for batch, name, note in (
                (report.teacher_batch, "teacher pass", "no grad; while the step's student graph is held"),
                (report.pseudo_batch, "teacher pseudo-samples", "no grad; one of 20 sampler steps, once"),
            ):
                if batch:
                    measured = _measure(base, partial(teacher, batch))
                    report.phases.append(Phase(f"{name}, batch {batch}", measured, note))


def table(report: MemoryReport, budget_gb: float) -> str:
    weights = sum(report.weights_gb.values())
    lines = [
        f"{report.model}, {report.resolution} px, {report.dtype} weights on {report.device}; method "
        f"{report.method} ({report.kind}, {report.trainable_params / 1e6:.2f} M trainable), "
        f"{report.batch} student rows per step",
        "| what | GB | note |",
        "|---|---:|---|",
        *(f"| weights: {name} | {gb:.2f} | {report.dtype} |" for name, gb in report.weights_gb.items()),
        f"| trainable + gradients + AdamW moments | {report.optimizer_gb:.2f} | fp32 |",
        *(f"| {p.name} | {p.measured_gb:.2f} | {p.note} |" for p in report.phases),
    ]
    teacher = next((p.measured_gb for p in report.phases if p.name.startswith("teacher pass")), 0.0)
    step = next(p.measured_gb for p in report.phases if p.name.startswith("step, checkpointing"))
    learning = weights + report.optimizer_gb + step + teacher
    lines.append(
        f"learning step with checkpointing: {weights:.2f} + {report.optimizer_gb:.2f} + {step:.2f} + "
        f"{teacher:.2f} (teacher) = {learning:.2f} GB; largest phase on top of weights and optimizer "
        f"{report.peak_gb():.2f} GB, without checkpointing {report.peak_gb(False):.2f} GB; "
        f"budget {budget_gb:.0f} GB"
    )
    if report.learn_peak_gb is not None:
        lines.append(
            f"a whole learn() of {report.learn_steps} steps: peak {report.learn_peak_gb:.2f} GB above what "
            f"was held before it (the weights), {weights + report.learn_peak_gb:.2f} GB with them"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifelong.bench.memory", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default="", help="hub id or folder (default: the bundled model)")
    source.add_argument("--random-sd15", action="store_true", help="SD-1.5 architecture, random weights")
    parser.add_argument("--device", default="")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA), float32, bfloat16, float16")
    parser.add_argument(
        "--method", default=HEAVIEST, help=f"default {HEAVIEST}: the most memory of the methods"
    )
    parser.add_argument("--learn", type=int, default=0, metavar="STEPS", help="also a whole learn() call")
    parser.add_argument("--budget-gb", type=float, default=24.0, help="device memory to fit (A10G: 24)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return_freed_memory()  # before any tensor: each phase's resident-set peak is then its own
    config = BaseConfig(model=args.model, device=args.device, dtype=args.dtype, compile=False)
    base = random_sd15_base(config) if args.random_sd15 else load_base(config)
    report = measure(base, args.method, args.learn)
    print(table(report, args.budget_gb))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
