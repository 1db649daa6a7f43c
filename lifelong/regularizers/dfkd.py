"""DFKD — data-free knowledge distillation from the previous checkpoint (LFS-Diffusion).

Every ``k`` steps, with no stored data::

    x_t ~ N(0, I),  t ~ U{0..T-1},  c ~ pool
    L = λ · ‖ε_student(x_t, t, c) − ε_teacher(x_t, t, c)‖²

The teacher is the same UNet with the new trainable set switched off (the previous checkpoint). The pool
holds earlier concepts' prompts, class words, generic prompts and the empty prompt. With ``sampler_steps``
n > 0, x_t is instead reached by j ~ U{1..n} teacher DDIM steps (of 20) from noise, so distillation also
covers the latents the sampler visits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lifelong.errors import UnknownMethodError
from lifelong.settings import Setting

if TYPE_CHECKING:
    from lifelong.learner import StepContext
    from lifelong.methods import BuildContext

GENERIC_PROMPTS = ("a photo", "a picture of an object", "an animal", "a landscape", "a painting")
SOURCES = ("concepts", "classes", "generic", "empty")
SAMPLER_GRID = 20

SETTINGS = {
    "dfkd_weight": Setting(1.0, "λ: weight of the distillation loss", 0.0),
    "dfkd_every": Setting(1, "distil every k-th step", 1, 1000),
    "dfkd_batch": Setting(2, "noise latents per distillation step", 1, 32),
    "dfkd_pool": Setting(",".join(SOURCES), "prompt pool: any of concepts,classes,generic,empty"),
    "dfkd_sampler_steps": Setting(
        0, "0: x_t is pure noise; n: up to n teacher sampler steps", 0, SAMPLER_GRID - 1
    ),
}


def prompt_pool(ctx: BuildContext, sources: str) -> list[str]:
    """Prompts to distil on, from the named sources, without duplicates."""
    chosen = {source.strip() for source in sources.split(",") if source.strip()}
    if not chosen or chosen - set(SOURCES):
        raise UnknownMethodError(f"dfkd_pool takes a comma-separated subset of {','.join(SOURCES)}.")
    earlier = ctx.session.concepts[: ctx.slot]
    pool: list[str] = []
    if "concepts" in chosen:
        pool += [ctx.session.rewrite_prompt(c.prompts[0], ctx.slot) for c in earlier if c.prompts]
    if "classes" in chosen:
        pool += [f"a {word}" for word in [*(c.class_word for c in earlier), ctx.class_word] if word]
    if "generic" in chosen:
        pool += list(GENERIC_PROMPTS)
    if "empty" in chosen:
        pool.append("")
    return list(dict.fromkeys(pool)) or [""]


class DataFreeDistillation:
    name = "dfkd"

    def __init__(self, pool: list[str], weight: float, every: int, batch: int, sampler_steps: int) -> None:
        self.pool, self.weight, self.every, self.batch = pool, weight, every, batch
        self.sampler_steps = sampler_steps
        self._embeddings: torch.Tensor | None = None

    def loss(self, ctx: StepContext) -> torch.Tensor:
        if ctx.step % self.every:
            return ctx.latents.new_zeros(())
        if self._embeddings is None:  # the pool never holds the new token, so its encodings are fixed
            with torch.no_grad():
                self._embeddings = ctx.encode(self.pool)
        pick = torch.randint(
            0, len(self.pool), (self.batch,), generator=ctx.generator, device=ctx.latents.device
        )
        embeddings = self._embeddings[pick]
        shape = (self.batch, *ctx.latents.shape[1:])
        noisy = torch.randn(shape, generator=ctx.generator, device=ctx.latents.device)
        steps = ctx.base.train_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (self.batch,), generator=ctx.generator, device=noisy.device)
        if self.sampler_steps:
            noisy, timesteps = self._teacher_walk(ctx, noisy, embeddings)
        student = ctx.student(noisy.to(ctx.base.dtype), timesteps, embeddings)
        teacher = ctx.teacher(noisy.to(ctx.base.dtype), timesteps, embeddings)
        return self.weight * F.mse_loss(student, teacher)

    def _teacher_walk(
        self, ctx: StepContext, noise: torch.Tensor, embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scheduler = ctx.base.sampling_scheduler()
        scheduler.set_timesteps(SAMPLER_GRID, device=noise.device)
        walk = int(
            torch.randint(1, self.sampler_steps + 1, (1,), generator=ctx.generator, device=noise.device)
        )
        latents = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps[:walk]:
            eps = ctx.teacher(scheduler.scale_model_input(latents, t).to(ctx.base.dtype), t, embeddings)
            latents = scheduler.step(eps, t, latents).prev_sample
        return latents, scheduler.timesteps[walk].repeat(len(latents))


def build(ctx: BuildContext) -> DataFreeDistillation:
    s = ctx.settings
    return DataFreeDistillation(
        prompt_pool(ctx, str(s["dfkd_pool"])),
        float(s["dfkd_weight"]),
        int(s["dfkd_every"]),
        int(s["dfkd_batch"]),
        int(s["dfkd_sampler_steps"]),
    )
