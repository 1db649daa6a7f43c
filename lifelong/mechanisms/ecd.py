"""ECD — elastic concept distillation (L2DM): hold earlier concepts harder the more they have drifted.

On STM rows (x₀, c, i) (stored images or generated samples, not noise), with the previous checkpoint as teacher:

    x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε
    L = λ · mean_b w_{i_b} · ‖ε_student(x_t, t, c) − ε_teacher(x_t, t, c)‖²
    w_i = f_i / mean_j f_j      (f = forgetting scores of the remembered concepts; all zero → w = 1)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lifelong.mechanisms.memory import ShortTermMemory, short_term_memory
from lifelong.settings import Cost, Setting, Value
from lifelong.step import BuildContext, StepContext

SETTINGS = {
    "ecd_weight": Setting(1.0, "λ: weight of the elastic distillation loss", 0.0),
    "ecd_batch": Setting(2, "memory samples distilled per step", 1, 32),
}


def elastic_weights(scores: Mapping[int, float]) -> dict[int, float]:
    """Per concept, its forgetting score relative to the mean score (mean weight 1)."""
    mean = sum(scores.values()) / len(scores) if scores else 0.0
    return {i: score / mean if mean > 0 else 1.0 for i, score in scores.items()}


class ElasticDistillation:
    name = "ecd"

    def __init__(self, memory: ShortTermMemory, weight: float, batch: int) -> None:
        self.memory, self.weight, self.batch = memory, weight, batch
        self.weights = elastic_weights(memory.scores)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        if not len(self.memory):
            return ctx.latents.new_zeros(())
        latents, embeddings, concepts = self.memory.batch(ctx, self.batch)
        error = ctx.loss(latents, embeddings, distil=True, per_sample=True)
        weights = torch.tensor([self.weights[i] for i in concepts], device=error.device)
        return self.weight * (weights * error).mean()


def cost(settings: Mapping[str, Value], concepts: int) -> Cost:
    """Student and teacher passes on the distilled memory samples every step."""
    return Cost(2.0 * int(settings["ecd_batch"]))


def build(ctx: BuildContext) -> ElasticDistillation:
    return ElasticDistillation(
        short_term_memory(ctx), float(ctx.settings["ecd_weight"]), int(ctx.settings["ecd_batch"])
    )
