"""ECD — elastic concept distillation (L2DM): hold earlier concepts harder the more they have drifted.

On STM rows (x₀, c, i) (stored images or generated samples, not noise), with the previous checkpoint as teacher:

    x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε
    L = λ · mean_b w_{i_b} · ‖ε_student(x_t, t, c) − ε_teacher(x_t, t, c)‖²
    w_i = f_i / mean_j f_j      (f = forgetting scores of the remembered concepts; all zero → w = 1)

With ``ecd_weighting=kept``, w_i = (1 − f_i) / mean_j (1 − f_j) instead: the teacher is the model the new
concept starts from, and f_i is measured on it, so the default holds hardest the concepts the teacher has
already lost (the paper's break condition: distilling a degraded teacher propagates its errors); "kept"
distils where the teacher still knows the concept and leaves the lost ones to TAME's stored images.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lifelong.errors import InvalidSettingError
from lifelong.mechanisms.memory import ShortTermMemory, short_term_memory
from lifelong.settings import Cost, Setting, Value
from lifelong.step import BuildContext, StepContext

SETTINGS = {
    "ecd_weight": Setting(1.0, "λ: weight of the elastic distillation loss", 0.0),
    "ecd_batch": Setting(2, "memory samples distilled per step", 1, 32),
    "ecd_weighting": Setting(
        "forgotten", "forgotten: hold drifted concepts hardest; kept: hold those the teacher still draws"
    ),
}
WEIGHTINGS = ("forgotten", "kept")


def elastic_weights(scores: Mapping[int, float], weighting: str = "forgotten") -> dict[int, float]:
    """Per concept, its forgetting score (or, ``kept``, 1 − score) relative to the mean (mean weight 1)."""
    if weighting not in WEIGHTINGS:
        raise InvalidSettingError(f"ecd_weighting takes one of {', '.join(WEIGHTINGS)}.")
    values = {i: score if weighting == "forgotten" else max(0.0, 1.0 - score) for i, score in scores.items()}
    mean = sum(values.values()) / len(values) if values else 0.0
    return {i: value / mean if mean > 0 else 1.0 for i, value in values.items()}


class ElasticDistillation:
    name = "ecd"

    def __init__(
        self, memory: ShortTermMemory, weight: float, batch: int, weighting: str = "forgotten"
    ) -> None:
        self.memory, self.weight, self.batch = memory, weight, batch
        self.weights = elastic_weights(memory.scores, weighting)

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
        short_term_memory(ctx),
        float(ctx.settings["ecd_weight"]),
        int(ctx.settings["ecd_batch"]),
        str(ctx.settings["ecd_weighting"]),
    )
