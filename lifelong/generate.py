"""Text-to-image with a session at any checkpoint: the sampling loop, in small steps.

We own the loop (rather than calling the pipeline) because methods change where it starts (in-context
generation starts from a stored latent) and what happens inside it (attention guidance moves the latents).
Same seed, same prompt, same checkpoint → the same image, on any run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from lifelong.adapters import use_state
from lifelong.attention import AttentionControl, AttentionRecord, attention_control
from lifelong.base import BaseModel
from lifelong.concepts import Session
from lifelong.configs import GenerateConfig, check
from lifelong.encoding import decode, encode_text
from lifelong.errors import InvalidPromptError, InvalidSettingError
from lifelong.progress import Progress, ProgressFn

__all__ = ["GenerateConfig", "denoise", "generate", "generate_with_maps", "initial_noise", "warm_up"]

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scaled latents, t) → ε or v
Guide = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # (step index, t, latents) → latents


def check_inputs(prompt: str, config: GenerateConfig) -> None:
    """A prompt to draw and settings within their bounds (``configs.check``), or a typed error."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidPromptError("Write a prompt, e.g. 'a <rex> on a blue background'.")
    check(config)
    index = config.icgen_context
    plain = isinstance(index, str) and index.isascii() and index.isdigit() and len(index) <= 3
    if index != "mean" and not plain:
        raise InvalidSettingError("icgen_context is 'mean' or the index of a context image, e.g. 0.")


def initial_noise(base: BaseModel, seeds: list[int]) -> torch.Tensor:
    """One latent of Gaussian noise per seed, drawn on the CPU so every device gets the same numbers."""
    unet = base.pipe.unet
    size = int(unet.config.sample_size)
    shape = (int(unet.config.in_channels), size, size)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    return torch.stack(noise).to(base.device)


@torch.no_grad()
def denoise(
    base: BaseModel,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    config: GenerateConfig,
    progress: ProgressFn | None = None,
    attention: AttentionControl | None = None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM with classifier-free guidance from pure noise (``latents``) to clean latents.

    ``attention`` (CAA/OAA) may move the latents before each step's noise prediction. With a ``context``
    latent and ``config.icgen_strength`` < 1 sampling starts from the context instead (ICGen).
    """
    unet = base.pipe.unet if attention is not None else base.sampling_unet()
    scheduler = base.sampling_scheduler()
    scheduler.set_timesteps(config.steps, device=base.device)
    timesteps = scheduler.timesteps
    if context is not None and config.icgen_strength < 1.0:
        latents, timesteps = noised_context(scheduler, context, latents, config.icgen_strength)
    else:
        latents = latents * scheduler.init_noise_sigma
    batch = len(latents)
    embeddings = torch.cat([uncond.expand(batch, -1, -1), cond.expand(batch, -1, -1)])

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # ε or v, whichever the scheduler's prediction_type says; guidance is linear in either
        model_input = torch.cat([latents, latents]).to(base.dtype)
        uncond_out, cond_out = unet(model_input, t, embeddings).sample.float().chunk(2)
        return uncond_out + config.guidance_scale * (cond_out - uncond_out)

    guide = None
    if attention is not None:
        guide = lambda index, t, latents: attention.guide(index, t, latents, scheduler)  # noqa: E731
    return sampling_loop(scheduler, latents, timesteps, predict, guide, progress)


def sampling_loop(
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    predict: Predict,
    guide: Guide | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """The sampler's steps over ``timesteps`` from ``latents`` (already scaled to the first one): per step,
    ``guide`` may move the latents, then ``predict`` gives the model output for the scaled latents. Shared
    by sampling and by DFKD's teacher walks."""
    for index, t in enumerate(timesteps):
        if guide is not None:
            latents = guide(index, t, latents)
        output = predict(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(output, t, latents).prev_sample
        if progress is not None:
            progress(Progress(index + 1, len(timesteps), message="generating"))
    return latents


def warm_up(base: BaseModel, image_counts: tuple[int, ...] = (1, 2)) -> None:
    """Compile the sampling UNet now rather than on a user's first request (a no-op without compile).

    Two batch sizes, because the second one makes torch.compile build a kernel for any batch size:
    afterwards no number of images recompiles. Holds the base's lock, as sampling does.
    """
    if not base.config.compile:
        return
    with base.lock, torch.inference_mode():
        text = encode_text(base, [""])
        for count in image_counts:
            config = GenerateConfig(steps=1, num_images=count)
            denoise(base, initial_noise(base, list(range(count))), text, text, config)


def noised_context(
    scheduler: DDIMScheduler, context: torch.Tensor, noise: torch.Tensor, strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Img2img start: keep the last ``strength`` share of the timesteps (at least one) and noise the
    context latent to the first kept one. Returns the start latents and the timesteps left to run."""
    timesteps = scheduler.timesteps
    kept = max(1, round(len(timesteps) * strength))
    remaining = timesteps[len(timesteps) - kept :]
    start = remaining[:1].repeat(len(noise))
    return scheduler.add_noise(context.expand_as(noise).to(noise), noise, start), remaining


def vision_context(session: Session, prompt: str, checkpoint: int, choice: str) -> torch.Tensor | None:
    """The stored context latent of the first concept ``prompt`` names that has one (ICGen), or None."""
    for index in session.named_concepts(prompt):
        context = session.checkpoint(index)[1].get("context") if index <= checkpoint else None
        if context is None:
            continue
        if choice == "mean":
            return context.mean(0, keepdim=True)
        if int(choice) >= len(context):
            name = session.concepts[index - 1].token
            raise InvalidPromptError(f"{name} has {len(context)} context images: pick 0–{len(context) - 1}.")
        return context[int(choice)][None]
    return None


def generate(
    base: BaseModel,
    session: Session,
    prompt: str,
    config: GenerateConfig | None = None,
    checkpoint: int | None = None,
    progress: ProgressFn | None = None,
    record: AttentionRecord | None = None,
) -> list[Image.Image]:
    """Images for ``prompt`` (which may name concepts as ``<name>``) at ``checkpoint`` (None = latest).

    ``record``, if given, receives the generation's cross-attention maps (see lifelong.attention).
    """
    config = config or GenerateConfig()
    check_inputs(prompt, config)
    k = session.resolve(checkpoint)
    text = session.rewrite_prompt(prompt, k)
    negative = session.rewrite_prompt(config.negative_prompt, k, "the negative prompt")
    seeds = [config.seed + i for i in range(config.num_images)]
    context = vision_context(session, prompt, k, config.icgen_context) if config.icgen_strength < 1 else None
    with use_state(base, session.state(k, base.slot_token_ids, prompt)), torch.no_grad():
        cond, uncond = encode_text(base, [text]), encode_text(base, [negative])
        # attention guidance needs autograd; plain sampling skips its bookkeeping altogether
        with (
            attention_control(base, text, session.names()[:k], cond, config, record) as control,
            torch.inference_mode(control is None),
        ):
            latents = denoise(
                base, initial_noise(base, seeds), cond, uncond, config, progress, control, context
            )
            return decode(base, latents)


def generate_with_maps(
    base: BaseModel,
    session: Session,
    prompt: str,
    config: GenerateConfig | None = None,
    checkpoint: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[Image.Image], list[tuple[Image.Image, str]], AttentionRecord]:
    """Generate, and show where each concept sits: images, map overlays with captions, and the raw maps."""
    record = AttentionRecord()
    images = generate(base, session, prompt, config, checkpoint, progress, record=record)
    return images, record.images(images), record
