"""Between pixels, text and the model's spaces: VAE latents and text-encoder states."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from lifelong.base import BaseModel


@torch.no_grad()
def encode_images(base: BaseModel, images: Sequence[Image.Image], batch: int = 16) -> torch.Tensor:
    """Scaled VAE latents (the distribution's mean) of RGB images at the base's resolution."""
    vae = base.pipe.vae
    pixels = torch.stack([torch.from_numpy(_to_array(image)) for image in images]).permute(0, 3, 1, 2)
    pixels = (pixels * 2 - 1).to(base.device, vae.dtype)
    chunks = [vae.encode(pixels[i : i + batch]).latent_dist.mean for i in range(0, len(pixels), batch)]
    return torch.cat(chunks).float() * vae.config.scaling_factor


def _to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def tokenize(base: BaseModel, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's full length, as the UNet was trained to see them."""
    tokenizer = base.pipe.tokenizer
    batch = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return batch.input_ids.to(base.device)


def encode_text(base: BaseModel, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states for prompts that may hold slot tokens (with grad, if any is on)."""
    return base.pipe.text_encoder(tokenize(base, prompts))[0]


@torch.no_grad()
def decode(base: BaseModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = base.pipe.vae
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    arrays = (
        ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )
    return [Image.fromarray(np.ascontiguousarray(array)) for array in arrays]
