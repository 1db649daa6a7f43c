"""TAME — task-aware memory enhancement (L2DM): replay the short-term memory with the diffusion loss.

With (x₀, c, i) drawn from the STM (see ``memory.py``: generated samples of earlier concepts, allocated by
forgetting score), each step adds

    L = μ · ‖ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t, c) − ε‖²,   ε ~ N(0, I), t ~ U{0..T-1}

so earlier concepts keep being trained on while the new one is learned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lifelong.regularizers.memory import ShortTermMemory, short_term_memory
from lifelong.settings import Setting

if TYPE_CHECKING:
    from lifelong.learner import StepContext
    from lifelong.methods import BuildContext

SETTINGS = {
    "tame_weight": Setting(1.0, "μ: weight of the replayed samples' diffusion loss", 0.0),
    "tame_batch": Setting(2, "memory samples replayed per step", 1, 32),
}


class MemoryReplay:
    name = "tame"

    def __init__(self, memory: ShortTermMemory, weight: float, batch: int) -> None:
        self.memory, self.weight, self.batch = memory, weight, batch

    def loss(self, ctx: StepContext) -> torch.Tensor:
        if not len(self.memory):
            return ctx.latents.new_zeros(())
        latents, embeddings, _ = self.memory.batch(ctx, self.batch)
        noise = torch.randn(latents.shape, generator=ctx.generator, device=latents.device)
        steps = ctx.base.train_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (len(latents),), generator=ctx.generator, device=latents.device)
        noisy = ctx.base.train_scheduler.add_noise(latents, noise, timesteps)
        prediction = ctx.student(noisy.to(ctx.base.dtype), timesteps, embeddings)
        return self.weight * F.mse_loss(prediction, ctx.target(latents, noise, timesteps))


def build(ctx: BuildContext) -> MemoryReplay:
    return MemoryReplay(
        short_term_memory(ctx), float(ctx.settings["tame_weight"]), int(ctx.settings["tame_batch"])
    )
