"""Learn one concept into a session: the fine-tune loop every method shares.

The loop trains a fresh :class:`~lifelong.adapters.TrainableSet` with the diffusion loss on the concept's
cached latents. Methods add regularisers: objects whose ``loss(ctx)`` returns a (weighted) term added to the
diffusion loss at each step. Nothing is written to the session until training has finished, so a cancel
or an error leaves the session exactly as it was.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from lifelong.adapters import ConceptDelta, ModelState, TrainableSet, token_embedding, trainable, use_state
from lifelong.base import BaseModel, slot_token
from lifelong.concepts import Concept, Session
from lifelong.configs import LearnConfig
from lifelong.encoding import encode_images, encode_text, tokenize
from lifelong.errors import Cancelled, DuplicateConceptError, SessionFullError
from lifelong.folders import FolderConcept
from lifelong.intake import ImageSource, load_images, square, validate_class_word, validate_name
from lifelong.limits import check_learn
from lifelong.methods import Method, get_method
from lifelong.progress import CancelToken, Progress, ProgressFn
from lifelong.prompts import captioned, check_captions, fill_template
from lifelong.settings import Value
from lifelong.step import (
    AfterLearnContext,
    BatchedRegularizer,
    BuildContext,
    Regularizer,
    Rows,
    StepContext,
    diffusion_loss,
    noise_latents,
    prediction_target,
)

__all__ = ["LearnConfig", "LearnResult", "concept_loss", "learn", "learn_folder"]


@dataclass
class LearnResult:
    concept: Concept
    losses: list[float]


def _views(image: Image.Image, size: int, augment: bool, rng: random.Random) -> list[Image.Image]:
    """The image, and with augmentation its mirror and two random crops (each mirrored too)."""
    views = [image]
    if augment:
        for _ in range(2):
            scale = rng.uniform(0.75, 0.95)
            side = int(size * scale)
            left, top = rng.randint(0, size - side), rng.randint(0, size - side)
            views.append(
                image.crop((left, top, left + side, top + side)).resize(
                    (size, size), Image.Resampling.LANCZOS
                )
            )
        views += [ImageOps.mirror(view) for view in list(views)]
    return views


@torch.no_grad()
def concept_loss(
    base: BaseModel,
    session: Session,
    checkpoint: int,
    images: Sequence[Image.Image],
    prompt: str,
    seed: int = 0,
    samples: int = 32,
) -> float:
    """Mean diffusion loss of ``images`` under ``prompt`` at ``checkpoint``, with fixed noise and timesteps."""
    state = session.state(checkpoint, base.slot_token_ids, prompt)
    generator = torch.Generator().manual_seed(seed)
    with use_state(base, state):
        latents = encode_images(base, [square(image, base.resolution) for image in images])
        latents = latents.repeat((samples + len(latents) - 1) // len(latents), 1, 1, 1)[:samples]
        embeddings = encode_text(base, [session.rewrite_prompt(prompt, checkpoint)]).expand(samples, -1, -1)
        predict = lambda noisy, t: base.pipe.unet(noisy, t, embeddings).sample.float()  # noqa: E731
        return diffusion_loss(base, latents, generator, predict).loss.item()


@dataclass
class _Plan:
    """Everything ``learn`` fixes before the first step (steps named as diffusers pipelines name theirs)."""

    method: Method
    settings: dict[str, Value]
    name: str
    class_word: str
    slot: int
    prompt: str  # the training prompt, with the slot token
    images: list[Image.Image]  # the clean images
    captions: list[str]  # what each image shows besides the concept ("" for none)

    @property
    def prompts(self) -> list[str]:
        """Each image's training prompt: ``prompt`` and the image's caption."""
        return [captioned(self.prompt, caption) for caption in self.captions]


def check_inputs(
    base: BaseModel,
    session: Session,
    images: Sequence[ImageSource],
    name: str,
    class_word: str,
    config: LearnConfig,
    captions: Sequence[str] = (),
) -> _Plan:
    """Validate everything before anything is touched: bounds and template, method, settings, name, free
    slot, images, captions."""
    check_learn(config)
    method = get_method(config.method)
    settings = method.resolve(config.settings)
    name, class_word = validate_name(name), validate_class_word(class_word)
    if name in session.names():
        raise DuplicateConceptError(f"<{name}> is already in this session; choose another name.")
    slot = len(session.concepts)
    if slot >= len(base.slot_token_ids):
        raise SessionFullError(
            f"this session already holds {slot} concepts, the most it can; start a new session."
        )
    clean = load_images(images, base.resolution)
    prompt = fill_template(config.prompt_template, slot_token(slot), class_word)
    checked = check_captions(list(captions), len(clean))
    return _Plan(method, settings, name, class_word, slot, prompt, clean, checked)


def prepare_latents(base: BaseModel, plan: _Plan, config: LearnConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latents of every view of the images (with augmentation: flips and crops), encoded once, and
    each view's training prompt as token ids."""
    rng = random.Random(config.seed)
    views, owners = [], []
    for index, image in enumerate(plan.images):
        image_views = _views(image, base.resolution, config.augment, rng)
        views += image_views
        owners += [index] * len(image_views)
    ids = tokenize(base, plan.prompts)[torch.tensor(owners, device=base.device)]
    return encode_images(base, views), ids


def make_optimizer(trainset: TrainableSet, config: LearnConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [
            {"params": trainset.weight_parameters(), "lr": config.learning_rate},
            {"params": [trainset.embedding], "lr": config.token_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )


def student_forward(
    base: BaseModel, noisy: torch.Tensor, timesteps: torch.Tensor, ids: torch.Tensor, rows: Sequence[Rows]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's one student pass: the batch's prompts (``ids``, encoded with grad: the token embedding
    trains) and the UNet on the batch and the regularisers' ``rows`` together. Returns the text states and
    the UNet's output, the batch's rows first."""
    with base.accelerator.autocast():
        states = base.pipe.text_encoder(ids)[0]
        output = base.pipe.unet(
            torch.cat([noisy, *(r.noisy for r in rows)]),
            torch.cat([timesteps, *(r.timesteps for r in rows)]),
            torch.cat([states, *(r.embeddings.to(states.dtype) for r in rows)]),
        ).sample.float()
    return states, output


def training_step(
    base: BaseModel,
    session: Session,
    trainset: TrainableSet,
    step: int,
    latents_all: torch.Tensor,
    ids_all: torch.Tensor,
    generator: torch.Generator,
    config: LearnConfig,
    regularizers: Sequence[Regularizer],
) -> float:
    """One optimiser step's gradients (over ``gradient_accumulation`` batches); returns the step's loss.

    Draws in the order the terms were computed one by one before their student passes were batched: the
    batch, its noise and timesteps, then each batched regulariser's rows."""
    accumulate = max(1, config.gradient_accumulation)
    batched = [r for r in regularizers if isinstance(r, BatchedRegularizer)]
    step_loss = 0.0
    for _ in range(accumulate):
        pick = torch.randint(
            0, len(latents_all), (config.batch_size,), generator=generator, device=base.device
        )
        latents = latents_all[pick]
        noisy, noise, timesteps = noise_latents(base, latents, generator, config.noisy_bias)
        encode = lambda prompts: encode_text(base, prompts)  # noqa: E731
        ctx = StepContext(
            base=base, session=session, trainset=trainset, step=step, latents=latents, noise=noise,
            timesteps=timesteps, generator=generator, encode=encode,
        )  # fmt: skip
        rows = {r.name: r.rows(ctx) for r in batched}
        extra = [r for r in rows.values() if r is not None]
        ctx.text_embeddings, output = student_forward(base, noisy, timesteps, ids_all[pick], extra)
        ctx.prediction, start = output[: len(latents)], len(latents)
        for name, own in rows.items():
            ctx.student_rows[name] = None if own is None else (own, output[start : start + len(own.noisy)])
            start += 0 if own is None else len(own.noisy)
        loss = F.mse_loss(ctx.prediction, prediction_target(base, latents, noise, timesteps))
        for regularizer in regularizers:
            loss = loss + regularizer.loss(ctx)
        base.accelerator.backward(loss / accumulate)
        step_loss += loss.item() / accumulate
    return step_loss


@contextmanager
def checkpointing(base: BaseModel) -> Iterator[None]:
    """Gradient checkpointing on the UNet for the block, when the base asks for it; off afterwards, so
    attention guidance (which captures maps in the forward pass) never sees a recomputed one."""
    if not base.gradient_checkpointing:
        yield
        return
    base.pipe.unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        base.pipe.unet.disable_gradient_checkpointing()


def train(
    base: BaseModel,
    session: Session,
    plan: _Plan,
    state: ModelState,
    config: LearnConfig,
    regularizers: Sequence[Regularizer],
    progress: ProgressFn | None,
    cancel: CancelToken | None,
) -> tuple[ConceptDelta, dict[str, torch.Tensor], list[float]]:
    """The loop, on the state the concept learns on top of; returns its delta, its extras and the losses."""
    started = time.perf_counter()
    generator = torch.Generator(device=base.device).manual_seed(config.seed)
    losses: list[float] = []
    with use_state(base, state):
        init = token_embedding(base, plan.class_word or plan.name)
        latents_all, ids_all = prepare_latents(base, plan, config)
        token_id = base.slot_token_ids[plan.slot]
        kind = config.params or plan.method.trainable_kind
        with (
            trainable(base, kind, token_id, init, config.lora_rank, config.seed) as trainset,
            checkpointing(base),
        ):
            optimizer = make_optimizer(trainset, config)
            for step in range(1, config.steps + 1):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(
                        f"learning <{plan.name}> was cancelled at step {step - 1}; nothing was changed."
                    )
                step_loss = training_step(
                    base, session, trainset, step, latents_all, ids_all, generator, config, regularizers
                )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"the loss diverged at step {step}; lower the learning rate.")
                losses.append(step_loss)
                if progress is not None:
                    seconds = time.perf_counter() - started
                    progress(Progress(step, config.steps, step_loss, seconds, f"learning <{plan.name}>"))
            after = AfterLearnContext(
                base, session, trainset, plan.slot, plan.prompt, plan.images, plan.settings, config.seed
            )
            return trainset.extract(), plan.method.after_learn(after), losses


def concept_record(plan: _Plan, config: LearnConfig, losses: list[float], seconds: float) -> Concept:
    """The manifest entry of the learned concept (its files are filled in by ``Session.add_concept``)."""
    return Concept(
        name=plan.name,
        class_word=plan.class_word,
        method=plan.method.name,
        images=[],
        checkpoint="",
        prompts=[fill_template(config.prompt_template, f"<{plan.name}>", plan.class_word)],
        captions=plan.captions if any(plan.captions) else [],
        settings={**asdict(config), "settings": plan.settings},
        stacked=plan.method.stack,
        seconds=round(seconds, 3),
        final_loss=float(sum(losses[-10:]) / max(1, len(losses[-10:]))),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def learn(
    base: BaseModel,
    session: Session,
    images: Sequence[ImageSource],
    name: str,
    class_word: str = "",
    config: LearnConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    regularizers: Sequence[Regularizer] = (),
    captions: Sequence[str] = (),
) -> LearnResult:
    """Learn concept ``name`` from ``images`` as the session's next checkpoint.

    ``captions``, one per image (or none), say what else each image shows ("on a red background"); each is
    appended to its image's training prompt, so the concept's token and weights learn the concept, not its
    backgrounds (kohya's caption files, next to the images, do the same).

    Every input is validated before anything is touched; the session is written only after the last step.
    The method (``config.method``, with ``config.settings``) adds its regularisers to ``regularizers``.
    Every concept learns on top of the stacked concepts before it (routed ones are off without a prompt
    naming them), with every earlier token's embedding; that state is also the distillation teacher.
    """
    config = config or LearnConfig()
    plan = check_inputs(base, session, images, name, class_word, config, captions)
    started = time.perf_counter()
    # built while the shared base is pristine: factories may generate with the base or any checkpoint
    if plan.method.components and progress is not None:
        progress(Progress(0, config.steps, message=f"preparing {plan.method.name} for <{plan.name}>"))
    state = session.state(plan.slot, base.slot_token_ids)
    build = BuildContext(
        base, session, plan.slot, plan.prompt, plan.class_word, plan.settings, state, config.seed
    )
    regularizers = [*plan.method.regularizers(build), *regularizers]
    delta, extras, losses = train(base, session, plan, state, config, regularizers, progress, cancel)
    concept = concept_record(plan, config, losses, time.perf_counter() - started)
    session.add_concept(concept, plan.images, delta, extras)
    return LearnResult(concept, losses)


def learn_folder(
    base: BaseModel, session: Session, concept: FolderConcept, config: LearnConfig
) -> LearnResult:
    """``learn`` a concept kept as a folder (its images, name, class word and captions)."""
    return learn(
        base,
        session,
        list(concept.images),
        concept.name,
        concept.class_word,
        config,
        captions=concept.captions,
    )
