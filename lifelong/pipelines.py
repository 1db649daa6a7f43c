"""diffusers' Stable Diffusion pipelines as our sampler, with the two things our sampling adds to them.

- Classifier-free guidance at every scale: ours is ``uncond + s·(cond − uncond)`` for any s in 0–20, while
  diffusers skips the unconditional branch at s ≤ 1 (so s = 0.5 would give another image than before).
- :class:`StepHooks`: a guide that may move the latents before each step's noise prediction (multi-concept
  attention guidance, lifelong.attention) and progress after each step. For steps 1, 2, … the guide runs in
  diffusers' ``callback_on_step_end`` of the step before (as the Attend-and-Excite community pipeline moves
  the latents per step); for step 0 in ``prepare_latents``, the one place between setting the timesteps and
  the first step.

The pipelines are built per call on the base's own modules (shared, never copied), with the UNet the call
samples with (the compiled one for plain sampling) and a fresh scheduler. The image-to-image one is built
the same way rather than with ``from_pipe``: ``from_pipe`` ends with ``.to(dtype)`` over every shared module
(~20 ms per call on the bundled model, a logged warning each time, and a cast of the shared base).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from lifelong.base import BaseModel
from lifelong.progress import Progress, ProgressFn

# (step index, t, latents, scheduler) → latents, before that step's noise prediction
Guide = Callable[[int, torch.Tensor, torch.Tensor, SchedulerMixin], torch.Tensor]


@dataclass
class StepHooks:
    """What a sampling run does around diffusers' steps: ``guide`` moves the latents before a step,
    ``progress`` hears after each one. ``first``: the run's first step's index in ``scheduler.timesteps``
    (image-to-image skips the noisiest ones)."""

    guide: Guide | None = None
    progress: ProgressFn | None = None
    first: int = 0

    def timesteps(self, pipe: Any) -> torch.Tensor:
        return pipe.scheduler.timesteps[self.first :]

    def start(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """Before step 0, once the timesteps are set: the guide's move for the first step."""
        if self.guide is None:
            return latents
        return self.guide(0, self.timesteps(pipe)[0], latents, pipe.scheduler)

    def __call__(
        self, pipe: Any, index: int, t: torch.Tensor, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """diffusers' ``callback_on_step_end`` after step ``index``: progress, then the next step's guide."""
        timesteps = self.timesteps(pipe)
        if self.progress is not None:
            self.progress(Progress(index + 1, len(timesteps), message="generating"))
        if self.guide is None or index + 1 >= len(timesteps):
            return {}
        return {"latents": self.guide(index + 1, timesteps[index + 1], tensors["latents"], pipe.scheduler)}


class _Sampling:
    """Mixed into diffusers' pipelines (first in the bases): the additions of the module docstring."""

    hooks: StepHooks | None = None
    base_device: torch.device | None = None

    @property
    def do_classifier_free_guidance(self) -> bool:
        return True

    @property
    def _execution_device(self) -> torch.device:
        # the base's device, where the whole base lives (no offload hooks here): diffusers' own walks every
        # module of every component for offload hooks on each call, ~4 ms on the bundled model
        return self.base_device or super()._execution_device  # type: ignore[misc]

    def prepare_latents(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        latents = super().prepare_latents(*args, **kwargs)  # type: ignore[misc]
        return latents if self.hooks is None else self.hooks.start(self, latents)


class TextToImage(_Sampling, StableDiffusionPipeline):
    """diffusers' text-to-image pipeline with our guidance and step hooks."""


class ImageToImage(_Sampling, StableDiffusionImg2ImgPipeline):
    """diffusers' image-to-image pipeline with our guidance and step hooks (ICGen starts here)."""


Pipeline = TypeVar("Pipeline", TextToImage, ImageToImage)


def sampling_pipeline(
    base: BaseModel, kind: type[Pipeline], unet: torch.nn.Module, hooks: StepHooks | None = None
) -> Pipeline:
    """A ``kind`` pipeline on the base's modules with ``unet`` and a fresh ``base.sampling_scheduler()``."""
    pipe = kind(
        vae=base.pipe.vae,
        text_encoder=base.pipe.text_encoder,
        tokenizer=base.pipe.tokenizer,
        unet=unet,
        scheduler=base.sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.hooks, pipe.base_device = hooks, base.device
    return pipe


def kept_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` an image-to-image run keeps: round(steps × strength), at least one."""
    return max(1, round(steps * strength))


def diffusers_strength(steps: int, kept: int) -> float:
    """The ``strength`` for which diffusers' image-to-image keeps ``kept`` of ``steps`` steps: it keeps
    int(steps × strength), so hand it the middle of that step (a plain kept/steps can land a hair below)."""
    return 1.0 if kept >= steps else (kept + 0.5) / steps
