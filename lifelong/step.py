"""What one training step is, for the learner and every mechanism: contexts, the regulariser protocol and
the one diffusion loss they all compute.

Data flows one way: ``methods`` name mechanisms (``lifelong.mechanisms``), mechanisms build regularisers
from a :class:`BuildContext` and compute their terms from a :class:`StepContext`, the learner runs the
loop. This module imports none of them (as diffusers keeps its outputs and processor protocols low in the
tree), so none of them imports another's loop.

The diffusion loss, for clean latents x₀ and text states c::

    ε ~ N(0, I),  t ~ U{0..T-1}   (drawn in this order from the step's generator)
    x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε
    L = ‖f(x_t, t) − y‖²,   y = ε (or v for v-prediction bases), or a teacher's output on the same x_t
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from PIL import Image

from lifelong.adapters import ModelState, TrainableSet
from lifelong.base import BaseModel
from lifelong.concepts import Session
from lifelong.settings import Value

Predict = Callable[
    [torch.Tensor, torch.Tensor], torch.Tensor
]  # (noisy latents in the base dtype, t) → output


@dataclass
class BuildContext:
    """What a regulariser factory sees before training starts (the base is pristine at that moment)."""

    base: BaseModel
    session: Session
    slot: int  # 0-based index of the concept being learned
    prompt: str  # its training prompt, with its slot token
    class_word: str
    settings: dict[str, Value]
    state: ModelState  # what the concept is trained on top of: the teacher
    seed: int
    shared: dict[str, Any] = field(default_factory=dict)  # computed once, used by several components


@dataclass
class AfterLearnContext:
    """What an after-learn hook sees: the live model is the new checkpoint."""

    base: BaseModel
    session: Session
    trainset: TrainableSet
    slot: int
    prompt: str
    images: Sequence[Image.Image]  # the clean (unaugmented) images the concept was learned from
    settings: dict[str, Value]
    seed: int


@dataclass
class Rows:
    """Inputs a regulariser adds to the step's one student forward: the UNet then runs once per step on the
    concept's batch and these rows together, instead of once more for the regulariser (one call at batch
    b + r costs less than two, and the weights are read once)."""

    noisy: torch.Tensor  # noised latents in the base's dtype
    timesteps: torch.Tensor
    embeddings: torch.Tensor


@dataclass(kw_only=True)
class StepContext:
    """What a regulariser sees at one training step.

    ``rows`` first (before the step's student forward, after the batch's noise and timesteps were drawn),
    then ``loss`` (after it: ``text_embeddings`` and ``prediction`` are set, and ``student_rows`` holds each
    batched regulariser's rows with the student's output on them, or None when it added none this step).
    """

    base: BaseModel
    session: Session
    trainset: TrainableSet
    step: int
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    generator: torch.Generator
    encode: Callable[[list[str]], torch.Tensor]
    text_embeddings: torch.Tensor | None = None
    prediction: torch.Tensor | None = None
    student_rows: dict[str, tuple[Rows, torch.Tensor] | None] = field(default_factory=dict)

    def teacher(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Noise prediction of the state this concept is learned on top of (the previous checkpoint)."""
        with torch.no_grad(), self.trainset.disabled(), self.base.accelerator.autocast():
            return self.base.pipe.unet(noisy, timesteps, embeddings).sample.float()

    def student(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        with self.base.accelerator.autocast():
            return self.base.pipe.unet(noisy, timesteps, embeddings).sample.float()

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet should predict for ``latents`` noised with ``noise`` (ε, or v for v-models)."""
        return prediction_target(self.base, latents, noise, timesteps)

    def loss(
        self, latents: torch.Tensor, embeddings: torch.Tensor, distil: bool = False, per_sample: bool = False
    ) -> torch.Tensor:
        """The student's diffusion loss on ``latents`` under ``embeddings`` (one row each), against the
        data's target or, with ``distil``, against the teacher on the same noised latents."""
        student: Predict = lambda noisy, t: self.student(noisy, t, embeddings)  # noqa: E731
        teacher: Predict = lambda noisy, t: self.teacher(noisy, t, embeddings)  # noqa: E731
        return diffusion_loss(
            self.base, latents, self.generator, student, teacher if distil else None, per_sample
        ).loss


class Regularizer(Protocol):
    """A term added to the diffusion loss at every step (weighted by the regulariser itself)."""

    name: str

    def loss(self, ctx: StepContext) -> torch.Tensor: ...


@runtime_checkable
class BatchedRegularizer(Regularizer, Protocol):
    """A regulariser whose student pass joins the step's one student forward: ``rows`` draws its inputs
    (or returns None on a step without a term), ``loss`` reads the student's output on them from
    ``ctx.student_rows`` and runs the student itself only when called outside the learner's step."""

    def rows(self, ctx: StepContext) -> Rows | None: ...


def prediction_target(
    base: BaseModel, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """ε, or v = √ᾱ_t ε − √(1−ᾱ_t) x₀ for v-prediction bases."""
    if base.train_scheduler.config.prediction_type == "v_prediction":
        return base.train_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def draw_noise(
    base: BaseModel,
    shape: Sequence[int],
    generator: torch.Generator,
    device: torch.device,
    noisy_bias: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise of ``shape`` and one training timestep per row, drawn in this order on the generator's
    device (so a CPU generator gives the same numbers for every device), then moved to ``device``.

    Timesteps are uniform, or with ``noisy_bias`` ≠ 1 the noisiest quarter is that many times as likely as
    the rest (diffusers' "later" timestep bias strategy, portion 0.25)."""
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device)
    steps = base.train_scheduler.config.num_train_timesteps
    if noisy_bias == 1.0:
        timesteps = torch.randint(0, steps, (shape[0],), generator=generator, device=generator.device)
    else:
        weights = torch.ones(steps, device=generator.device)
        weights[-(steps // 4) :] = noisy_bias
        timesteps = torch.multinomial(weights, shape[0], replacement=True, generator=generator)
    return noise.to(device), timesteps.to(device)


def noise_latents(
    base: BaseModel, latents: torch.Tensor, generator: torch.Generator, noisy_bias: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_t in the base's dtype, with the ε and t drawn for it (``draw_noise``)."""
    noise, timesteps = draw_noise(base, latents.shape, generator, latents.device, noisy_bias)
    noisy = base.train_scheduler.add_noise(latents, noise, timesteps).to(base.dtype)
    return noisy, noise, timesteps


@dataclass
class DiffusionLoss:
    loss: torch.Tensor  # a scalar, or one value per row with ``per_sample``
    noise: torch.Tensor
    timesteps: torch.Tensor
    prediction: torch.Tensor


def diffusion_loss(
    base: BaseModel,
    latents: torch.Tensor,
    generator: torch.Generator,
    predict: Predict,
    teacher: Predict | None = None,
    per_sample: bool = False,
) -> DiffusionLoss:
    """Noise ``latents`` at random timesteps and compare ``predict``'s output with the target (ε or v), or
    with ``teacher``'s output on the same input (distillation). ``predict`` gets the noised latents in the
    base's dtype and the timesteps; ``per_sample`` keeps one mean squared error per row."""
    noisy, noise, timesteps = noise_latents(base, latents, generator)
    prediction = predict(noisy, timesteps)
    target = teacher(noisy, timesteps) if teacher is not None else None
    if target is None:
        target = prediction_target(base, latents, noise, timesteps)
    per_row = per_sample  # mean squared error of each row, or over the batch (bit-exact with mse_loss)
    loss = ((prediction - target) ** 2).flatten(1).mean(1) if per_row else F.mse_loss(prediction, target)
    return DiffusionLoss(loss, noise, timesteps, prediction)
