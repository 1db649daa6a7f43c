"""Train the world's AutoencoderKL: 64×64×3 images ↔ 16×16×4 latents (3 blocks, 2 downsamplings).

Loss: L1 + MSE reconstruction with a tiny KL weight, as SD's VAE keeps latents near-Gaussian without
blurring. After training, the latent std over the cache sets `scaling_factor`, so scaled latents have unit
variance as the UNet's noise schedule assumes.

`nice -n 10 python -m lifelong.world.train_vae [--resume]`
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from .common import Checkpointer, Log, cosine_lr, load_cache, to_pixels
from .data import generate


@dataclass
class VaeTrainConfig:
    data: Path = Path("runs/world/data")
    out: Path = Path("runs/world/vae")
    steps: int = 2500
    batch: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-6
    seed: int = 0
    threads: int = 1
    save_every: int = 200
    until: int | None = None  # stop early at this step, keeping the lr schedule of `steps`
    decoder_only: bool = False
    init: Path | None = None  # start from this VAE folder (decoder-only default: OUT/final)
    widen: tuple[int, ...] | None = None  # first widen the init VAE to these block channels (widen_vae)
    deepen: int | None = None  # first give the init VAE this many layers per block (deepen_vae)
    latent_noise: float = 1.0  # scale of the posterior noise on decoded latents (0: decode the mean)
    l1_weight: float = 1.0
    device: str = "cpu"
    budget_s: float | None = None  # stop after this much training time; the lr schedule ends with it


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


@torch.no_grad()
def psnr_db(vae: AutoencoderKL, n: int = 128, seed: int = 2) -> float:
    """Reconstruction PSNR (dB, pixels in [0, 1]) on `n` fresh scenes of `seed`, decoding the latent mean."""
    vae.eval()
    images = np.stack([np.asarray(generate(seed, i)[0]) for i in range(n)])
    pixels = to_pixels(images).to(vae.device)
    recon = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((recon - pixels) / 2).pow(2).mean().item()
    return float(10 * np.log10(1.0 / mse))


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: np.ndarray, n: int = 2048) -> float:
    """Std of unscaled latent means over the first `n` cached images."""
    vae.eval()
    means = [
        vae.encode(to_pixels(images[i : i + 128]).to(vae.device)).latent_dist.mean
        for i in range(0, min(n, len(images)), 128)
    ]
    return float(torch.cat(means).std())


def widen_vae(vae: AutoencoderKL, channels: tuple[int, ...], noise: float = 1e-3) -> AutoencoderKL:
    """The same VAE, exactly, with each block's channels multiplied (Net2WiderNet: every unit copied).

    Copies of a unit get equal incoming weights and share its outgoing weights; the shares differ by a small
    noise that cancels in the sum, so the function is unchanged but the copies get different gradients and
    can learn apart. Group norms see the same statistics (copies sit in the same group) and the mid-block
    attention's queries are scaled down to undo the doubled dot products. Meant for decoder-only training:
    the encoder, hence every latent the UNet was trained on, stays exactly as it was.
    """
    old = tuple(vae.config.block_out_channels)
    if len(channels) != len(old) or any(c % o for c, o in zip(channels, old, strict=True)):
        raise ValueError(f"each of {channels} must be a multiple of {old}")
    wide = AutoencoderKL.from_config(vae.config, block_out_channels=tuple(channels))
    shapes = {key: value.shape for key, value in wide.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, original in vae.state_dict().items():
        value = original.float()
        if value.shape[0] != shapes[key][0]:
            value = value.repeat_interleave(shapes[key][0] // value.shape[0], dim=0)
        if value.ndim > 1 and value.shape[1] != shapes[key][1]:
            factor = shapes[key][1] // value.shape[1]
            shares = value.unsqueeze(2).expand(-1, -1, factor, *value.shape[2:]) / factor
            jitter = torch.randn(shares.shape, generator=generator) * noise * value.abs().mean()
            value = (shares + jitter - jitter.mean(2, keepdim=True)).flatten(1, 2)
        if ".to_q." in key and value.shape != original.shape:
            value = value / (shapes[key][0] / original.shape[0]) ** 0.5
        state[key] = value
    wide.load_state_dict(state)
    return wide


def deepen_vae(vae: AutoencoderKL, layers_per_block: int) -> AutoencoderKL:
    """The same VAE, exactly, with more resnets per block: each added resnet's last conv starts at zero,
    so it passes its input through unchanged until training moves it. Like `widen_vae`, meant for
    decoder-only training (the encoder's added resnets stay identities)."""
    if layers_per_block < vae.config.layers_per_block:
        raise ValueError(
            f"{layers_per_block} layers per block is fewer than the VAE's {vae.config.layers_per_block}"
        )
    deep = AutoencoderKL.from_config(vae.config, layers_per_block=layers_per_block)
    state = deep.state_dict()
    old = vae.state_dict()
    for key, value in state.items():
        if key in old:
            state[key] = old[key]
        elif ".conv2." in key:
            state[key] = torch.zeros_like(value)
    deep.load_state_dict(state)
    return deep


def _cache_on(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The whole cache as one uint8 tensor on `device`, so batches are gathered where they are used."""
    return torch.from_numpy(np.array(images)).to(device)


def _trainable(vae: AutoencoderKL, decoder_only: bool) -> list[torch.nn.Parameter]:
    if decoder_only:
        return [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    return list(vae.parameters())


def train(cfg: VaeTrainConfig, resume: bool) -> None:
    """Full training writes `final` (with scaling_factor); decoder-only training starts from `final`,
    keeps its encoder (so latents already cached for the UNet stay valid) and writes `final-decoder`."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # GPUs only
    suffix = "-decoder" if cfg.decoder_only else ""
    log = Log(cfg.out / f"train{suffix}.log")
    images, _ = load_cache(cfg.data)
    ckpt = Checkpointer(cfg.out / f"ckpt{suffix}")
    if resume and ckpt.exists():
        vae = AutoencoderKL.from_pretrained(ckpt.folder / "vae")
        start = ckpt.state()["step"]
    else:
        init = cfg.init or (cfg.out / "final" if cfg.decoder_only else None)
        vae = AutoencoderKL.from_pretrained(init) if init else build_vae()
        if cfg.widen:
            vae = widen_vae(vae, cfg.widen)
        if cfg.deepen:
            vae = deepen_vae(vae, cfg.deepen)
        start = 0
    vae.to(device)
    pool = _cache_on(images, device)
    params = _trainable(vae, cfg.decoder_only)
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if start:
        ckpt.load_optimizer(optimizer)
    log(f"vae {sum(p.numel() for p in params) / 1e6:.2f}M trainable params, start at step {start}")
    rng = np.random.default_rng([cfg.seed, start])
    began = time.monotonic()
    for step in range(start, min(cfg.steps, cfg.until or cfg.steps)):
        elapsed = time.monotonic() - began
        if cfg.budget_s and elapsed > cfg.budget_s:
            log(f"time budget spent at step {step}")
            break
        vae.train()
        batch = torch.from_numpy(np.sort(rng.choice(len(images), size=cfg.batch, replace=False))).to(device)
        pixels = to_pixels(pool[batch])
        # with a time budget the schedule runs on whichever of steps or time is further along
        progress = max(step, round(cfg.steps * elapsed / cfg.budget_s)) if cfg.budget_s else step
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(progress, cfg.steps, cfg.lr)
        with torch.set_grad_enabled(not cfg.decoder_only):
            posterior = vae.encode(pixels).latent_dist
        latents = posterior.mean + cfg.latent_noise * posterior.std * torch.randn_like(posterior.mean)
        recon = vae.decode(latents).sample
        loss = (
            cfg.l1_weight * F.l1_loss(recon, pixels)
            + F.mse_loss(recon, pixels)
            + cfg.kl_weight * posterior.kl().mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 in (cfg.steps, cfg.until):
            ckpt.save({"vae": vae}, optimizer, step + 1)
            log(f"step {step + 1} saved; psnr {psnr_db(vae, n=64):.2f} dB")
    if not cfg.decoder_only:
        std = latent_std(vae, images)
        vae.register_to_config(scaling_factor=1.0 / std)
        log(f"latent std {std:.4f}, scaling_factor {1 / std:.4f}")
    final = cfg.out / f"final{suffix}"
    vae.to("cpu").save_pretrained(final)
    (final / "quality.json").write_text(json.dumps({"psnr_db": psnr_db(vae)}))
    log(f"saved to {final}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps", type=int, default=VaeTrainConfig.steps)
    parser.add_argument("--threads", type=int, default=VaeTrainConfig.threads)
    parser.add_argument("--until", type=int, help="stop at this step; the lr schedule still spans --steps")
    parser.add_argument("--lr", type=float, default=VaeTrainConfig.lr)
    parser.add_argument("--batch", type=int, default=VaeTrainConfig.batch)
    parser.add_argument("--data", type=Path, default=VaeTrainConfig.data)
    parser.add_argument("--save-every", type=int, default=VaeTrainConfig.save_every)
    parser.add_argument("--device", default=VaeTrainConfig.device, help="e.g. cuda")
    parser.add_argument("--budget-s", type=float, help="stop after this many seconds of training")
    parser.add_argument("--deepen", type=int, help="layers per block: deepen the init VAE first (deepen_vae)")
    parser.add_argument("--out", type=Path, default=VaeTrainConfig.out)
    parser.add_argument("--init", type=Path, help="start from this VAE folder")
    parser.add_argument("--latent-noise", type=float, default=VaeTrainConfig.latent_noise)
    parser.add_argument("--l1-weight", type=float, default=VaeTrainConfig.l1_weight)
    parser.add_argument("--decoder-only", action="store_true", help="fine-tune the decoder (of OUT/final)")
    parser.add_argument(
        "--widen",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        help="e.g. 64,128,128: widen the init VAE first, keeping its function (see widen_vae)",
    )
    args = parser.parse_args()
    cfg = VaeTrainConfig(**{k: v for k, v in vars(args).items() if k != "resume"})
    train(cfg, args.resume)


if __name__ == "__main__":
    main()
