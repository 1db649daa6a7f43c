"""Prior preservation (Custom Diffusion / DreamBooth): keep the class word meaning what the base meant.

``prior_images`` images of the class prompt c_cls = "a <class word>" are generated once by the base model
(checkpoint 0) and cached as latents in the session's ``cache/`` folder. Each step adds

    L = λ · ‖ε_θ(√ᾱ_t x₀ᶜˡˢ + √(1−ᾱ_t) ε, t, c_cls) − ε‖²
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from safetensors.torch import load_file

from lifelong.files import write_safetensors
from lifelong.mechanisms.memory import sample_latents
from lifelong.settings import GUIDED, Cost, Setting, Value
from lifelong.step import BuildContext, StepContext

SETTINGS = {
    "prior_weight": Setting(1.0, "λ: weight of the class images' diffusion loss", 0.0),
    "prior_images": Setting(8, "class images the base model generates (cached per session)", 1, 64),
    "prior_steps": Setting(25, "sampler steps for the class images", 1, 100),
    "prior_batch": Setting(2, "class images per step", 1, 32),
}


def class_latents(ctx: BuildContext, prompt: str, count: int, steps: int) -> torch.Tensor:
    """Latents of ``count`` base-model images of ``prompt``, generated once and then read from the cache.

    Called before training, while the shared base holds no concept's weights: this is checkpoint 0.
    """
    key = hashlib.sha256(f"{ctx.session.base_model}|{prompt}|{count}|{steps}|{ctx.seed}".encode()).hexdigest()
    path = ctx.session.root / "cache" / f"prior-{key[:16]}.safetensors"
    if path.exists():
        return load_file(str(path))["latents"]
    latents = sample_latents(ctx.base, prompt, [ctx.seed * 1000 + 700 + i for i in range(count)], steps).cpu()
    write_safetensors(path, {"latents": latents}, {"prompt": prompt})
    return latents


class PriorPreservation:
    name = "prior"

    def __init__(self, latents: torch.Tensor, prompt: str, weight: float, batch: int) -> None:
        self.latents, self.prompt, self.weight, self.batch = latents, prompt, weight, batch
        self._embedding: torch.Tensor | None = None

    def loss(self, ctx: StepContext) -> torch.Tensor:
        if self._embedding is None:
            with torch.no_grad():
                self._embedding = ctx.encode([self.prompt])
        pick = torch.randint(
            0, len(self.latents), (self.batch,), generator=ctx.generator, device=ctx.latents.device
        )
        latents = self.latents.to(ctx.latents.device)[pick]
        return self.weight * ctx.loss(latents, self._embedding.expand(len(latents), -1, -1))


def cost(settings: Mapping[str, Value], concepts: int) -> Cost:
    """The class images' diffusion loss every step; drawing them (at most once: they are cached)."""
    once = int(settings["prior_images"]) * int(settings["prior_steps"]) * GUIDED
    return Cost(float(settings["prior_batch"]), float(once))


def build(ctx: BuildContext) -> PriorPreservation:
    s = ctx.settings
    prompt = f"a {ctx.class_word}" if ctx.class_word else "a photo"
    latents = class_latents(ctx, prompt, int(s["prior_images"]), int(s["prior_steps"]))
    return PriorPreservation(latents, prompt, float(s["prior_weight"]), int(s["prior_batch"]))
