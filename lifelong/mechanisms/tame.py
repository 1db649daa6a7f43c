"""TAME — task-aware memory enhancement (L2DM): replay the short-term memory with the diffusion loss.

With (x₀, c, i) drawn from the STM (see ``memory.py``: earlier concepts' stored images with their captions,
or their generated samples, allocated by forgetting score), each step adds

    L = μ · ‖ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t, c) − ε‖²,   ε ~ N(0, I), t ~ U{0..T-1}

so earlier concepts keep being trained on while the new one is learned.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lifelong.mechanisms.memory import ShortTermMemory, short_term_memory
from lifelong.settings import Cost, Setting, Value
from lifelong.step import BuildContext, StepContext

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
        return self.weight * ctx.loss(latents, embeddings)


def cost(settings: Mapping[str, Value], concepts: int) -> Cost:
    """The replayed samples' diffusion loss every step."""
    return Cost(float(settings["tame_batch"]))


def build(ctx: BuildContext) -> MemoryReplay:
    return MemoryReplay(
        short_term_memory(ctx), float(ctx.settings["tame_weight"]), int(ctx.settings["tame_batch"])
    )
