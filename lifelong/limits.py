"""What one request may cost, and the checks a request passes before it is queued.

The range of every setting is written once, on its config field (``lifelong.configs``: ``check`` refuses
values outside it). What a range cannot say is said here: a job's cost is its expected seconds on a Space
GPU, computed from its settings alone, before it runs or waits for the GPU. The same functions size
ZeroGPU's ``spaces.GPU`` durations (lifelong.ui.jobs) and refuse, through :class:`Budget`, requests that
would hold the one shared GPU longer than the app allows (``$LIFELONG_MAX_JOB_SECONDS``), so one visitor
cannot stall every other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lifelong.configs import MAX_REGIONS, GenerateConfig, LearnConfig, check
from lifelong.errors import LimitError
from lifelong.methods import get_method
from lifelong.prompts import check_template

BUDGET_ENV = "LIFELONG_MAX_JOB_SECONDS"
# a learn at the UI's largest step count (2000 × batch 4) with the default method fits after 20 concepts
DEFAULT_BUDGET_S = 1800.0
SECONDS_PER_SAMPLE = 0.08  # one training sample (or one denoising step of one image) on a Space GPU
LEARN_OVERHEAD_S = 30.0  # encoding the images, building the method's regularisers, saving
GENERATE_OVERHEAD_S = 15.0


def learn_seconds(config: LearnConfig, concepts: int = 0) -> float:
    """Learning a concept after ``concepts`` others: the batch's samples and what the method's mechanisms
    add (distillation and replay rows each step, samples drawn once; ``Method.cost``)."""
    method = get_method(config.method)
    extra = method.cost(method.resolve(config.settings), concepts)
    accumulate = max(1, config.gradient_accumulation)
    samples = config.steps * accumulate * (config.batch_size + extra.per_step) + extra.once
    return LEARN_OVERHEAD_S + samples * SECONDS_PER_SAMPLE


def generate_seconds(config: GenerateConfig, generations: int = 1) -> float:
    """``generations`` calls of generate with ``config`` (classifier-free guidance runs the UNet twice)."""
    # guided steps (the first attention_steps of them) run the UNet once more; regional composition runs
    # it once per concept it draws apart, and the prompt is not known here: at most MAX_REGIONS; side by
    # side the canvas is that many squares wide, budgeted as if each pass covered all of it (a bound: a
    # pass draws its square and a quarter of one)
    guided = min(config.attention_steps, config.steps) if config.caa or config.oaa else 0
    passes = MAX_REGIONS**2 if config.side_by_side else MAX_REGIONS if config.regional else 1
    unet_calls = 2 * generations * (config.steps + guided) * config.num_images * passes
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
    """Refuse LearnConfig values out of their range (``configs.check``) or a template that is not plain
    ``{token}``/``{class_word}`` substitution, before anything runs."""
    check(config)
    check_template(config.prompt_template)


def check_generate(config: GenerateConfig) -> None:
    """Refuse GenerateConfig values out of their range (``configs.check``)."""
    check(config)
