"""Train the world's UNet2DConditionModel on 16×16×4 VAE latents, conditioned on the frozen CLIP text tower.

As in SD: scaled-linear betas over 1000 steps, the text tower's last hidden state as cross-attention
context, and the empty prompt in place of the caption 10% of the time so classifier-free guidance works.
Unlike SD-1.x, the betas are rescaled to zero terminal SNR and the UNet predicts v (as in SD 2.x and
"Common Diffusion Noise Schedules and Sample Steps are Flawed"): on 16×16 latents the mean of SD's last
noisy latent still carries the image's mean colour at SNR ≈ 1, so an ε-model takes the background colour
from the starting noise instead of the prompt. For short CPU training, whose length the shared CPU
decides, it uses a constant lr, min-SNR-5 loss weights (in x0 terms: min(SNR, 5) + 1) and an EMA of the
weights (the EMA is what ships). The training images are encoded to latents once, before the first step.

`nice -n 10 python -m lifelong.world.train_unet [--resume] [--init UNET] [--reencode]`
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel

from .common import Checkpointer, Log, load_cache, to_pixels
from .grow import with_fine_attention
from .tokenizer import tokenize


@dataclass
class UnetTrainConfig:
    data: Path = Path("runs/world/data")
    clip: Path = Path("runs/world/clip/ckpt/model")
    vae: Path = Path("runs/world/vae/final")
    out: Path = Path("runs/world/unet")
    steps: int = 3000
    n_latents: int = 24000  # encoding all 40k cached images costs ~5-15 min of a shared CPU
    batch: int = 32
    lr: float = 4e-4
    ema_decay: float = 0.999
    uncond_prob: float = 0.1
    snr_gamma: float = 5.0
    seed: int = 0
    threads: int = 1  # on a shared 2-core CPU, 2 threads thrashed (10x slower steps)
    save_every: int = 250
    init: Path | None = None  # start from these UNet weights instead of from scratch
    reencode: bool = False  # re-encode the latents with `vae` (after the VAE changed)
    text_encoder: Path | None = (
        None  # a CLIPTextModel folder (e.g. assets/base-model/text_encoder) instead of `clip`
    )
    grow: bool = False  # add cross-attention at 16×16 first (grow.with_fine_attention: same function)
    lr_new: float | None = None  # learning rate of the grown layers (default: lr)
    budget_s: float | None = None  # stop (and save) after this many seconds
    device: str = "cpu"  # e.g. cuda: bf16 autocast, fp32 weights and optimizer state


def build_unet() -> UNet2DConditionModel:
    """(64, 128, 128) channels, 1 layer per block, cross-attention at 8×8 and 4×4: ~6.7 M params, sized so
    that 25 guided steps on a 2-core CPU take about half a second."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=32,
        use_linear_projection=True,  # faster than 1×1 convolutions on a CPU; see assemble.with_linear_projection
    )


def build_noise_scheduler() -> DDPMScheduler:
    """SD's betas rescaled to zero terminal SNR, v-prediction; every config value set so configs save as
    they run. Sampling must then start at t = 999 ("trailing" spacing)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )


def load_text_encoder(clip_path: Path, text_encoder: Path | None = None) -> CLIPTextModel:
    """The text tower of the trained world CLIP (CLIPModel.text_model is a CLIPTextModel), or a saved
    CLIPTextModel such as the shipped pipeline's."""
    if text_encoder is not None:
        return CLIPTextModel.from_pretrained(text_encoder).eval().requires_grad_(False)
    return CLIPModel.from_pretrained(clip_path).text_model.eval().requires_grad_(False)


def _start_unet(cfg: UnetTrainConfig) -> UNet2DConditionModel:
    if cfg.init is None:
        return build_unet()
    unet = UNet2DConditionModel.from_pretrained(cfg.init, torch_dtype=torch.float32)
    return with_fine_attention(unet) if cfg.grow else unet


def _param_groups(unet: UNet2DConditionModel, cfg: UnetTrainConfig) -> list[dict]:
    """The grown attention blocks (16×16 level) at ``lr_new``, everything else at ``lr`` (frozen at 0)."""
    new = [p for n, p in unet.named_parameters() if _is_grown(n)]
    old = [p for n, p in unet.named_parameters() if not _is_grown(n)]
    if not new or cfg.lr_new is None:
        return [{"params": old + new, "lr": cfg.lr, "base_lr": cfg.lr}]
    groups = [{"params": new, "lr": cfg.lr_new, "base_lr": cfg.lr_new}]
    if cfg.lr > 0:
        groups.append({"params": old, "lr": cfg.lr, "base_lr": cfg.lr})
    else:  # the old layers stay as they are: the grown UNet keeps their function exactly
        for param in old:
            param.requires_grad_(False)
    return groups


def _is_grown(name: str) -> bool:
    return name.startswith(("down_blocks.0.attentions.", "up_blocks.2.attentions."))


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, images: np.ndarray, log: Log, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Scaled latent means of every cached image, float16, N×4×16×16."""
    vae.eval().to(device)
    out = np.empty((len(images), 4, 16, 16), dtype=np.float16)
    for i in range(0, len(images), 256):
        pixels = to_pixels(torch.from_numpy(np.array(images[i : i + 256])).to(device))
        out[i : i + 256] = (
            (vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor).float().cpu().numpy()
        )
        if i % 5120 == 0:
            log(f"encoded {i}/{len(images)} images")
    return out


def train(cfg: UnetTrainConfig, resume: bool) -> None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # GPUs only
    log = Log(cfg.out / "train.log")
    latents_file = cfg.out / "latents.npy"
    images, captions = load_cache(cfg.data)
    if cfg.reencode or not latents_file.exists():
        np.save(
            latents_file,
            encode_latents(AutoencoderKL.from_pretrained(cfg.vae), images[: cfg.n_latents], log, device),
        )
    latents = torch.from_numpy(np.load(latents_file)).to(device)
    ids = tokenize(captions[: len(latents)]).to(device)
    empty = tokenize([""])[0].to(device)
    text_encoder = load_text_encoder(cfg.clip, cfg.text_encoder).to(device)
    ckpt = Checkpointer(cfg.out / "ckpt")
    if resume and ckpt.exists():
        unet = UNet2DConditionModel.from_pretrained(ckpt.folder / "unet")
        ema = UNet2DConditionModel.from_pretrained(ckpt.folder / "ema")
        start = ckpt.state()["step"]
    else:
        unet = _start_unet(cfg)
        ema = UNet2DConditionModel.from_config(unet.config)
        ema.load_state_dict(unet.state_dict())
        start = 0
    unet.to(device)
    ema.requires_grad_(False).to(device)
    scheduler = build_noise_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(
        device
    )  # add_noise/get_velocity index it on device
    alphas_cumprod = scheduler.alphas_cumprod
    groups = _param_groups(unet, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01)
    if start:
        ckpt.load_optimizer(optimizer)
        for group, wanted in zip(optimizer.param_groups, groups, strict=True):
            group["base_lr"] = wanted["base_lr"]  # this run's --lr/--lr-new, not the saved ones
    log(
        f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, {len(latents)} latents, start {start}"
    )
    rng = np.random.default_rng([cfg.seed, start])
    generator = torch.Generator().manual_seed(cfg.seed * 100003 + start)
    params, ema_params = list(unet.parameters()), list(ema.parameters())
    trained = [p for p in params if p.requires_grad]
    running = 0.0
    began = time.monotonic()
    for step in range(start, cfg.steps):
        unet.train()
        batch = torch.from_numpy(np.sort(rng.choice(len(latents), size=cfg.batch, replace=False))).to(device)
        x0 = latents[batch].float()
        tokens = ids[batch].clone()
        tokens[torch.from_numpy(rng.random(cfg.batch) < cfg.uncond_prob).to(device)] = empty
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
        with torch.no_grad(), autocast:
            context = text_encoder(input_ids=tokens).last_hidden_state
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,), generator=generator).to(
            device
        )
        noisy = scheduler.add_noise(x0, noise, t)
        with autocast:
            pred = unet(noisy, t, encoder_hidden_states=context).sample.float()
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        weight = (snr.clamp(max=cfg.snr_gamma) + 1) / (snr + 1)
        target = scheduler.get_velocity(x0, noise, t)
        loss = (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * min(1.0, (step + 1 - start) / 200)  # constant after warmup
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        running += loss.detach()  # no host sync per step
        if (step + 1) % 50 == 0:
            log(f"step {step + 1} loss {float(running) / 50:.4f}")
            running = 0.0
        out_of_time = cfg.budget_s is not None and time.monotonic() - began > cfg.budget_s
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or out_of_time:
            ckpt.save({"unet": unet, "ema": ema}, optimizer, step + 1)
            log(f"step {step + 1} saved")
        if out_of_time:
            break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps", type=int, default=UnetTrainConfig.steps)
    parser.add_argument("--threads", type=int, default=UnetTrainConfig.threads)
    parser.add_argument(
        "--lr", type=float, default=UnetTrainConfig.lr, help="e.g. lower it for a final phase"
    )
    parser.add_argument("--out", type=Path, default=UnetTrainConfig.out)
    parser.add_argument(
        "--data", type=Path, default=UnetTrainConfig.data, help="a rendered cache (world.data)"
    )
    parser.add_argument("--vae", type=Path, default=UnetTrainConfig.vae)
    parser.add_argument("--init", type=Path, help="start from these UNet weights (a diffusers folder)")
    parser.add_argument("--n-latents", type=int, default=UnetTrainConfig.n_latents)
    parser.add_argument("--reencode", action="store_true", help="re-encode the latents with --vae first")
    parser.add_argument("--text-encoder", type=Path, help="a CLIPTextModel folder instead of --clip")
    parser.add_argument("--grow", action="store_true", help="add cross-attention at 16×16 to --init")
    parser.add_argument("--lr-new", type=float, help="learning rate of the grown layers")
    parser.add_argument("--budget-s", type=float, help="stop and save after this many seconds")
    parser.add_argument("--batch", type=int, default=UnetTrainConfig.batch)
    parser.add_argument("--save-every", type=int, default=UnetTrainConfig.save_every)
    parser.add_argument("--device", default=UnetTrainConfig.device, help="e.g. cuda")
    args = parser.parse_args()
    cfg = UnetTrainConfig(**{k: v for k, v in vars(args).items() if k != "resume"})
    train(cfg, args.resume)


if __name__ == "__main__":
    main()
