"""Train the evaluation's identity encoder: image features that tell any two emoji apart.

Image alignment (IA) and concept identification need features on which references of one concept sit
close together and far from every other concept, also for concepts the diffusion model never saw (as real
CLIP and DINO features do for SD users' dogs and mugs). The world CLIP, trained contrastively on 83
held-in names, does not: on the 26 held-out concepts' references its leave-one-out identification was 0.50.
This encoder is the judge, not the student, so it trains on every emoji the font renders, held-out ones
included (~1,400 classes), with strong augmentation: background (named colours and random ones), scale,
position, flips, colour jitter, blur and noise (generations of a 16×16-latent model are soft). It never
reads text, so the diffusion model learns nothing from it.

Model: transformers' `ResNetModel` (basic blocks, 1.5 M params) on 64×64 images, trained as a cosine
classifier (normalised features and class weights, scale 16, label smoothing); the pooled 256-d feature,
L2-normalised, is the identity feature. Glyphs are rendered once; scenes are composed on the fly with
`grid_sample`, so no two steps see the same images.

`python -m lifelong.world.train_identity --steps 4000 [--resume]` (needs the emoji font), then
`python -m lifelong.world.train_identity --export assets/eval-identity`.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

from ..metrics import leave_one_out_identification
from .common import Checkpointer, Log, cosine_lr
from .data import COLORS, _glyph, renderable_emoji

_SIDE = 64  # glyphs are stored at the image size; smaller placements are scaled down by grid_sample
IMAGE_SIZE = 64


def identity_config() -> ResNetConfig:
    return ResNetConfig(
        num_channels=3,
        embedding_size=32,
        hidden_sizes=[32, 64, 128, 256],
        depths=[1, 1, 2, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
    )


def glyph_bank(chars: list[str]) -> torch.Tensor:
    """uint8 N×4×64×64 RGBA glyphs."""
    return torch.from_numpy(np.stack([np.asarray(_glyph(c, _SIDE)) for c in chars])).permute(0, 3, 1, 2)


def compose(glyphs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random scenes of the given RGBA glyphs: float N×3×64×64 in [0, 1]."""
    n = len(glyphs)
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    scale = 0.35 + 0.55 * rand(n)  # object side as a fraction of the image
    centre = (rand(n, 2) * 2 - 1) * (1 - scale[:, None]) * 0.9
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -centre / scale[:, None]
    grid = F.affine_grid(theta, [n, 4, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    rgba = F.grid_sample(glyphs.float() / 255, grid, align_corners=False, padding_mode="zeros")
    named = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255
    background = torch.where(
        rand(n, 1) < 0.7, named[torch.randint(len(named), (n,), generator=generator)], rand(n, 3)
    )
    background = (background + (rand(n, 3) - 0.5) * 0.1).clamp(0, 1)[:, :, None, None]
    alpha = rgba[:, 3:4]
    image = rgba[:, :3] * alpha + background * (1 - alpha)  # grid_sample keeps colour premultiplied
    return _jitter(image, generator)


def _jitter(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter, then blur and noise, as a soft generation looks."""
    n = len(image)
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    image = image * (0.8 + 0.4 * rand(n, 1, 1, 1))
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    image = (image - mean) * (0.75 + 0.5 * rand(n, 1, 1, 1)) + mean
    grey = image.mean(dim=1, keepdim=True)
    image = (image - grey) * (0.7 + 0.6 * rand(n, 1, 1, 1)) + grey
    sigma = rand(n) * 1.3
    blurred = _blur(image, sigma)
    image = blurred + torch.randn(image.shape, generator=generator) * (rand(n, 1, 1, 1) * 0.04)
    return image.clamp(0, 1)


def _blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (sigma 0 leaves the image as it is)."""
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # N×5
    n, c, h, w = image.shape
    flat = image.reshape(1, n * c, h, w)
    k = kernel.repeat_interleave(c, dim=0)
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def normalise(pixels01: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [-1, 1], the normalisation the exported image processor applies."""
    return pixels01 * 2 - 1


class IdentityTrainer(torch.nn.Module):
    """The encoder and a cosine classifier over every renderable emoji."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.encoder = ResNetModel(identity_config())
        self.classes = torch.nn.Parameter(torch.randn(classes, 256) * 0.01)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(pixel_values=pixels).pooler_output.flatten(1), dim=-1)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = 16.0 * self.features(pixels) @ F.normalize(self.classes, dim=-1).T
        return F.cross_entropy(logits, labels, label_smoothing=0.1)


@dataclass
class IdentityTrainConfig:
    out: Path = Path("runs/world/identity")
    steps: int = 4000
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    threads: int = 1
    save_every: int = 250


def train(cfg: IdentityTrainConfig, resume: bool) -> None:
    torch.set_num_threads(cfg.threads)
    log = Log(cfg.out / "train.log")
    chars = renderable_emoji()
    glyphs = glyph_bank(chars)
    model = IdentityTrainer(len(chars))
    ckpt = Checkpointer(cfg.out / "ckpt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if resume and ckpt.exists():
        start = ckpt.state()["step"]
        model.encoder = ResNetModel.from_pretrained(ckpt.folder / "encoder")
        model.classes.data = load_file(ckpt.folder / "classes.safetensors")["classes"]
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        ckpt.load_optimizer(optimizer)
    log(f"identity encoder, {len(chars)} emoji classes, start {start}")
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start)
    running = 0.0
    for step in range(start, cfg.steps):
        model.train()
        labels = torch.randint(len(chars), (cfg.batch,), generator=generator)
        pixels = normalise(compose(glyphs[labels], generator))
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, warmup=200, floor=0.02)
        loss = model(pixels, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()
        if (step + 1) % 50 == 0:
            log(f"step {step + 1} loss {running / 50:.4f}")
            running = 0.0
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            _save(ckpt, model, optimizer, step + 1)
            log(f"step {step + 1} saved; held-out leave-one-out {held_out_identification(model.encoder):.3f}")


def _save(ckpt: Checkpointer, model: IdentityTrainer, optimizer: torch.optim.Optimizer, step: int) -> None:
    ckpt.save({"encoder": model.encoder}, optimizer, step)
    save_file({"classes": model.classes.detach().contiguous()}, ckpt.folder / "classes.safetensors")


@torch.no_grad()
def held_out_identification(encoder: ResNetModel) -> float:
    """Leave-one-out nearest-centroid identification of the shipped held-out references."""
    concepts = Path(__file__).resolve().parents[2] / "assets" / "concepts"
    encoder.eval()
    groups = []
    for folder in sorted(p for p in concepts.iterdir() if p.is_dir()):
        images = [
            Image.open(f).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
            for f in sorted(folder.glob("*.png"))
        ]
        pixels = normalise(
            torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2) / 255
        )
        groups.append(F.normalize(encoder(pixel_values=pixels.float()).pooler_output.flatten(1), dim=-1))
    return leave_one_out_identification(groups)


def export(ckpt_folder: Path, out: Path) -> None:
    """The encoder as a transformers folder (safetensors) with the image processor that feeds it."""
    tmp = out.with_name(out.name + ".tmp")
    ResNetModel.from_pretrained(ckpt_folder / "encoder").save_pretrained(tmp)
    ConvNextImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        crop_pct=1.0,
        resample=Image.Resampling.BICUBIC,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps", type=int, default=IdentityTrainConfig.steps)
    parser.add_argument("--batch", type=int, default=IdentityTrainConfig.batch)
    parser.add_argument("--threads", type=int, default=IdentityTrainConfig.threads)
    parser.add_argument(
        "--export", type=Path, help="write the trained encoder here (e.g. assets/eval-identity)"
    )
    args = parser.parse_args()
    cfg = IdentityTrainConfig(steps=args.steps, batch=args.batch, threads=args.threads)
    if args.export:
        export(cfg.out / "ckpt", args.export)
    else:
        train(cfg, args.resume)


if __name__ == "__main__":
    main()
