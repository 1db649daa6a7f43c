"""What one request may ask for: the range of every setting that multiplies work, and its cost.

A job's cost is its expected seconds on a Space GPU, computed from its settings alone, before it runs or
waits for the GPU. The same functions size ZeroGPU's ``spaces.GPU`` durations (lifelong.ui) and refuse,
through :class:`Budget`, requests that would hold the one shared GPU longer than the app allows
(``$LIFELONG_MAX_JOB_SECONDS``), so one visitor cannot stall every other.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lifelong.errors import LimitError
from lifelong.prompts import check_template

if TYPE_CHECKING:
    from lifelong.generate import GenerateConfig
    from lifelong.learner import LearnConfig

BUDGET_ENV = "LIFELONG_MAX_JOB_SECONDS"
DEFAULT_BUDGET_S = 900.0  # a learn at the UI's largest step count (2000 × batch 4) fits, with room
SECONDS_PER_SAMPLE = 0.08  # one training sample (or one denoising step of one image) on a Space GPU
LEARN_OVERHEAD_S = 30.0  # encoding the images, building the method's regularisers, saving
GENERATE_OVERHEAD_S = 15.0
MAX_STEPS = 2000
MAX_BATCH_SIZE = 64
MAX_ACCUMULATION = 16
MAX_LORA_RANK = 64
MAX_SEED = 2**31 - 1  # memory samples derive seeds as seed × 1000 + i: keep that inside 64 bits
MAX_GUIDANCE = 50.0
MAX_GENERATE_STEPS = 200  # generate's own bound on sampling steps


def learn_seconds(config: LearnConfig) -> float:
    samples = config.steps * config.batch_size * max(1, config.gradient_accumulation)
    return LEARN_OVERHEAD_S + samples * SECONDS_PER_SAMPLE


def generate_seconds(config: GenerateConfig, generations: int = 1) -> float:
    """``generations`` calls of generate with ``config`` (classifier-free guidance runs the UNet twice)."""
    # guided steps (the first attention_steps of them) run the UNet once more
    guided = min(config.attention_steps, config.steps) if config.caa or config.oaa else 0
    unet_calls = 2 * generations * (config.steps + guided) * config.num_images
    return GENERATE_OVERHEAD_S + unet_calls * SECONDS_PER_SAMPLE


@dataclass(frozen=True)
class Budget:
    """The most expected seconds one request may take."""

    max_seconds: float = DEFAULT_BUDGET_S

    @classmethod
    def from_env(cls) -> Budget:
        value = os.environ.get(BUDGET_ENV)
        return cls(float(value)) if value else cls()

    def check(self, seconds: float, what: str, advice: str) -> None:
        if seconds > self.max_seconds:
            raise LimitError(
                f"{what} would take about {seconds:,.0f} s of GPU time; this app allows at most "
                f"{self.max_seconds:,.0f} s per request. {advice}"
            )


def check_learn(config: LearnConfig) -> None:
    """Refuse LearnConfig values that are out of range, before anything runs."""
    _within("steps", config.steps, 1, MAX_STEPS)
    _within("batch_size", config.batch_size, 1, MAX_BATCH_SIZE)
    _within("gradient_accumulation", config.gradient_accumulation, 1, MAX_ACCUMULATION)
    _within("lora_rank", config.lora_rank, 1, MAX_LORA_RANK)
    _within("seed", config.seed, 0, MAX_SEED)
    _within("learning_rate", config.learning_rate, 0.0, 1.0, low_open=True)
    _within("token_learning_rate", config.token_learning_rate, 0.0, 1.0, low_open=True)
    _within("weight_decay", config.weight_decay, 0.0, 1.0)
    if config.params not in ("", "kv", "lora"):
        raise LimitError("params must be kv, lora, or empty for the method's choice.")
    check_template(config.prompt_template)


def check_generate(config: GenerateConfig) -> None:
    """Refuse GenerateConfig values beyond the ones generate checks itself (steps, images, ICGen)."""
    _within("seed", config.seed, 0, MAX_SEED)
    _within("guidance_scale", config.guidance_scale, 0.0, MAX_GUIDANCE)
    _within("attention_steps", config.attention_steps, 0, MAX_GENERATE_STEPS)
    _within("attention_step_size", config.attention_step_size, 0.0, 1000.0)
    _within("caa_threshold", config.caa_threshold, 0.0, 1.0)
    _within("oaa_threshold", config.oaa_threshold, 0.0, 1.0)
    _within("attention_res", config.attention_res, 0, 1024)


def _within(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and (low < number if low_open else low <= number) and number <= high):
        side = "above" if low_open else "from"
        raise LimitError(f"{name}={value!r} is out of range: use a value {side} {low:g} to {high:g}.")
