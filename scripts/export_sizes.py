"""File sizes of a concept's LoRA export, SVD ranks and errors (docs/BENCHMARKS.md, "Export").

    LIFELONG_TORCH_THREADS=1 PYTHONPATH=. python scripts/export_sizes.py [--steps 200]

Bundled model: the first shipped example concept learned with finetune as dense K/V increments, as LoRA on
K/V and as LoRA on every attention projection (rank 4), each exported in both formats; dense deltas at
several energy shares, with how far a plain diffusers pipeline that loads the export draws from the session
(mean |Δ| of 0–255 pixel values over 4 seeds, 25 steps). SD-1.5: its UNet built from its config on the meta device (no download, no memory),
LoRA factors of ranks 4, 16 and 64 at its shapes written by the same writers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from accelerate import init_empty_weights
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from lifelong import (
    BaseModel,
    ExportConfig,
    GenerateConfig,
    LearnConfig,
    Session,
    export,
    generate,
    learn,
    load_base,
    open_session,
)
from lifelong.adapters import target_module_names
from lifelong.folders import load_concepts
from lifelong.lora_export import write_diffusers, write_kohya
from lifelong.lowrank import Factors


def sizes(folder: Path) -> str:
    return ", ".join(
        f"{p.relative_to(folder)} {p.stat().st_size:,} B" for p in sorted(folder.rglob("*.safetensors"))
    )


def image_gap(base: BaseModel, session: Session, folder: Path, name: str, prompt: str) -> float:
    pipe = StableDiffusionPipeline.from_pretrained(
        base.name, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = base.sampling_scheduler()
    pipe.load_lora_weights(str(folder))
    pipe.load_textual_inversion(str(folder / "embeddings" / f"{name}.safetensors"))
    gaps = []
    for seed in range(4):
        config = GenerateConfig(seed=seed)
        ours = np.asarray(generate(base, session, prompt, config)[0], dtype=float)
        generator = torch.Generator().manual_seed(seed)
        drawn = pipe(
            prompt,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=generator,
        )
        gaps.append(np.abs(np.asarray(drawn.images[0], dtype=float) - ours).mean())
    return float(np.mean(gaps))


def bundled(steps: int, out: Path) -> None:
    base = load_base()
    concept = load_concepts()[0]
    for params in ("kv", "lora", "lora-attn"):
        session = open_session(base, out / params)
        config = LearnConfig(method="finetune", params=params, steps=steps)
        learn(base, session, concept.images[:5], concept.name, concept.class_word, config)
        stored = (out / params / "concepts" / concept.name / "checkpoint.safetensors").stat().st_size
        print(f"bundled {params}: session checkpoint {stored:,} B")
        for energy in (0.9, 0.99, 0.999) if params == "kv" else (0.99,):
            for fmt in ("diffusers", "kohya"):
                report = export(
                    base, session, out / f"{params}-{fmt}-{energy}", ExportConfig(format=fmt, energy=energy)
                )
                print(f"  {fmt} energy {energy}: {report.summary()} {sizes(report.folder)}")
            prompt = f"a <{concept.name}> {concept.class_word}"
            gap = image_gap(base, session, out / f"{params}-diffusers-{energy}", concept.name, prompt)
            print(f"  plain diffusers vs session, '{prompt}': mean |Δ| {gap:.3f} of 255")


def sd15(out: Path) -> None:
    with init_empty_weights():
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the defaults are SD-1.x's
    embeddings = {"rex": torch.zeros(768)}
    for kind in ("kv", "lora-attn"):
        shapes = {m: tuple(unet.get_submodule(m).weight.shape) for m in target_module_names(unet, kind)}
        dense = 4 * sum(o * i for o, i in shapes.values())
        print(f"SD-1.5 {kind}: {len(shapes)} layers, dense fp32 increments {dense:,} B")
        for rank in (4, 16, 64):
            factors = Factors(
                {m: (torch.zeros(rank, i), torch.zeros(o, rank)) for m, (o, i) in shapes.items()}
            )
            folder = out / f"sd15-{kind}-{rank}"
            write_diffusers(folder / "diffusers", factors, embeddings)
            write_kohya(folder / "kohya", "rex", factors, embeddings, "sd15")
            print(f"  rank {rank}: {sizes(folder)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("LIFELONG_TORCH_THREADS", "2")))
    with tempfile.TemporaryDirectory() as folder:
        bundled(args.steps, Path(folder))
        sd15(Path(folder))


if __name__ == "__main__":
    main()
