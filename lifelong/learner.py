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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from lifelong.adapters import TrainableSet, token_embedding, trainable, use_state
from lifelong.base import BaseModel, slot_token
from lifelong.concepts import Concept, Session
from lifelong.encoding import encode_images, encode_text, tokenize
from lifelong.errors import Cancelled, DuplicateConceptError, SessionFullError
from lifelong.intake import ImageSource, load_images, square, validate_class_word, validate_name
from lifelong.limits import check_learn
from lifelong.methods import DEFAULT_METHOD, AfterLearnContext, BuildContext, get_method
from lifelong.progress import CancelToken, Progress, ProgressFn
from lifelong.prompts import fill_template


@dataclass
class LearnConfig:
    """How to learn one concept. The UI's "Advanced" panel is generated from these fields."""

    method: str = DEFAULT_METHOD  # the app's default too; "finetune" is the baseline that forgets
    steps: int = 200
    batch_size: int = 4
    gradient_accumulation: int = 1
    learning_rate: float = 1e-3  # for the K/V increments (or LoRA factors)
    token_learning_rate: float = 5e-3
    weight_decay: float = 0.0
    params: str = ""  # "kv" (full K/V increments) or "lora" (peft LoRA on K/V); "" = the method's choice
    lora_rank: int = 4
    augment: bool = True  # horizontal flips and random crops, encoded once
    seed: int = 0
    prompt_template: str = "a {token} {class_word}"
    # the method's settings, see `python -m lifelong methods`
    settings: dict[str, float | int | str | bool] = field(default_factory=dict)


@dataclass
class StepContext:
    """What a regulariser sees at one training step."""

    base: BaseModel
    session: Session
    trainset: TrainableSet
    step: int
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    text_embeddings: torch.Tensor
    prediction: torch.Tensor
    generator: torch.Generator
    encode: Callable[[list[str]], torch.Tensor]

    def teacher(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Noise prediction of the state this concept is learned on top of (the previous checkpoint)."""
        with torch.no_grad(), self.trainset.disabled(), self.base.accelerator.autocast():
            return self.base.pipe.unet(noisy, timesteps, embeddings).sample.float()

    def student(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        with self.base.accelerator.autocast():
            return self.base.pipe.unet(noisy, timesteps, embeddings).sample.float()

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet should predict for ``latents`` noised with ``noise`` (ε, or v for v-models)."""
        return _target(self.base, latents, noise, timesteps)


class Regularizer(Protocol):
    name: str

    def loss(self, ctx: StepContext) -> torch.Tensor: ...


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
        noise = torch.randn(latents.shape, generator=generator).to(base.device)
        timesteps = torch.randint(
            0, base.train_scheduler.config.num_train_timesteps, (samples,), generator=generator
        ).to(base.device)
        embeddings = encode_text(base, [session.rewrite_prompt(prompt, checkpoint)]).expand(samples, -1, -1)
        noisy = base.train_scheduler.add_noise(latents, noise, timesteps)
        prediction = base.pipe.unet(noisy.to(base.dtype), timesteps, embeddings).sample.float()
        return F.mse_loss(prediction, _target(base, latents, noise, timesteps)).item()


def _target(
    base: BaseModel, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    if base.train_scheduler.config.prediction_type == "v_prediction":
        return base.train_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def learn(
    session: Session,
    base: BaseModel,
    images: Sequence[ImageSource],
    name: str,
    class_word: str = "",
    config: LearnConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    regularizers: Sequence[Regularizer] = (),
) -> LearnResult:
    """Learn concept ``name`` from ``images`` as the session's next checkpoint.

    Every input is validated before anything is touched; the session is written only after the last step.
    The method (``config.method``, with ``config.settings``) adds its regularisers to ``regularizers``.
    """
    config = config or LearnConfig()
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
    started = time.perf_counter()
    rng = random.Random(config.seed)
    generator = torch.Generator(device=base.device).manual_seed(config.seed)
    token_id = base.slot_token_ids[slot]
    prompt = fill_template(config.prompt_template, slot_token(slot), class_word)
    # every concept learns on top of the stacked concepts before it (routed ones are off without a prompt
    # naming them), with every earlier token's embedding; this state is also the distillation teacher
    state = session.state(slot, base.slot_token_ids)
    # built while the shared base is pristine: factories may generate with the base or any checkpoint
    if method.components and progress is not None:
        progress(Progress(0, config.steps, message=f"preparing {method.name} for <{name}>"))
    build = BuildContext(base, session, slot, prompt, class_word, settings, state, config.seed)
    regularizers = [*method.regularizers(build), *regularizers]
    losses: list[float] = []
    with use_state(base, state):
        init = token_embedding(base, class_word or name)
        views = [view for image in clean for view in _views(image, base.resolution, config.augment, rng)]
        latents_all = encode_images(base, views)
        ids = tokenize(base, [prompt])
        with trainable(
            base, config.params or method.trainable_kind, token_id, init, config.lora_rank, config.seed
        ) as trainset:
            optimizer = torch.optim.AdamW(
                [
                    {"params": trainset.weight_parameters(), "lr": config.learning_rate},
                    {"params": [trainset.embedding], "lr": config.token_learning_rate},
                ],
                weight_decay=config.weight_decay,
            )
            scheduler = base.train_scheduler
            accumulate = max(1, config.gradient_accumulation)
            for step in range(1, config.steps + 1):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(
                        f"learning <{name}> was cancelled at step {step - 1}; nothing was changed."
                    )
                step_loss = 0.0
                for _ in range(accumulate):
                    pick = torch.randint(
                        0, len(latents_all), (config.batch_size,), generator=generator, device=base.device
                    )
                    latents = latents_all[pick]
                    noise = torch.randn(latents.shape, generator=generator, device=base.device)
                    timesteps = torch.randint(
                        0,
                        scheduler.config.num_train_timesteps,
                        (len(latents),),
                        generator=generator,
                        device=base.device,
                    )
                    noisy = scheduler.add_noise(latents, noise, timesteps)
                    with base.accelerator.autocast():
                        embeddings = base.pipe.text_encoder(ids.expand(len(latents), -1))[0]
                        prediction = base.pipe.unet(
                            noisy.to(base.dtype), timesteps, embeddings
                        ).sample.float()
                    loss = F.mse_loss(prediction, _target(base, latents, noise, timesteps))
                    ctx = StepContext(
                        base,
                        session,
                        trainset,
                        step,
                        latents,
                        noise,
                        timesteps,
                        embeddings,
                        prediction,
                        generator,
                        lambda prompts: encode_text(base, prompts),
                    )
                    for regularizer in regularizers:
                        loss = loss + regularizer.loss(ctx)
                    base.accelerator.backward(loss / accumulate)
                    step_loss += loss.item() / accumulate
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"the loss diverged at step {step}; lower the learning rate.")
                losses.append(step_loss)
                if progress is not None:
                    progress(
                        Progress(
                            step, config.steps, step_loss, time.perf_counter() - started, f"learning <{name}>"
                        )
                    )
            delta = trainset.extract()
            extras = method.after_learn(
                AfterLearnContext(base, session, trainset, slot, prompt, clean, settings, config.seed)
            )
    concept = Concept(
        name=name,
        class_word=class_word,
        method=method.name,
        images=[],
        checkpoint="",
        prompts=[fill_template(config.prompt_template, f"<{name}>", class_word)],
        settings={**asdict(config), "settings": settings},
        stacked=method.stack,
        seconds=round(time.perf_counter() - started, 3),
        final_loss=float(sum(losses[-10:]) / max(1, len(losses[-10:]))),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    session.add_concept(concept, clean, delta, extras)
    return LearnResult(concept, losses)
