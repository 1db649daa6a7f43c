"""ICGen — in-context generation (LFS-Diffusion), learn-time half: keep the concept's vision context.

After learning, the VAE latents of (up to ``icgen_images``) of the concept's clean images are stored with it
(``extra.context``). At generation (``lifelong.generation``), a prompt that names the concept can start from
a context latent noised to strength s instead of from pure noise: x_start = √ᾱ_τ x_ctx + √(1−ᾱ_τ) ε, with τ
the first of the last s·N sampler steps (img2img / SDEdit); s = 1 is plain text-to-image.
"""

from __future__ import annotations

import torch

from lifelong.encoding import encode_images
from lifelong.settings import Setting
from lifelong.step import AfterLearnContext

SETTINGS = {
    "icgen_images": Setting(3, "images whose latents are kept as the concept's vision context", 1, 20)
}


def after_learn(ctx: AfterLearnContext) -> dict[str, torch.Tensor]:
    images = list(ctx.images)[: int(ctx.settings["icgen_images"])]
    return {"context": encode_images(ctx.base, images).cpu()}
