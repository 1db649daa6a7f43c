"""Text-to-image with a session at any checkpoint, through diffusers' own pipelines (lifelong.pipelines).

What we hand them: the seeds' initial noise (drawn on the CPU, so every device gets the same numbers) as
``latents``, the prompt encoded with the session's slot tokens as ``prompt_embeds``, attention guidance as
step hooks, and for in-context generation (ICGen) a stored latent as the image-to-image start. Same seed,
same prompt, same checkpoint → the same image, on any run.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from lifelong.adapters import use_state
from lifelong.attention import AttentionControl, AttentionRecord, attention_control, prompt_tokens
from lifelong.base import BaseModel
from lifelong.composition import regional_unet
from lifelong.concepts import Session
from lifelong.configs import MAX_REGIONS, GenerateConfig, check
from lifelong.encoding import decode, encode_text
from lifelong.errors import InvalidPromptError, InvalidSettingError
from lifelong.pipelines import (
    ImageToImage,
    StepHooks,
    TextToImage,
    diffusers_strength,
    kept_steps,
    sampling_pipeline,
)
from lifelong.progress import ProgressFn
from lifelong.prompts import square_prompts, without_concepts

__all__ = ["GenerateConfig", "denoise", "generate", "generate_with_maps", "initial_noise", "warm_up"]


def check_inputs(prompt: str, config: GenerateConfig) -> None:
    """A prompt to draw and settings within their bounds (``configs.check``), or a typed error."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidPromptError("Write a prompt, e.g. 'a <rex> on a blue background'.")
    check(config)
    index = config.icgen_context
    plain = isinstance(index, str) and index.isascii() and index.isdigit() and len(index) <= 3
    if index != "mean" and not plain:
        raise InvalidSettingError("icgen_context is 'mean' or the index of a context image, e.g. 0.")


def initial_noise(base: BaseModel, seeds: list[int], columns: int = 1) -> torch.Tensor:
    """One latent of Gaussian noise per seed, drawn on the CPU so every device gets the same numbers;
    ``columns`` squares wide."""
    unet = base.pipe.unet
    size = int(unet.config.sample_size)
    shape = (int(unet.config.in_channels), size, size * columns)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    return torch.stack(noise).to(base.device)


@torch.no_grad()
def denoise(
    base: BaseModel,
    seeds: list[int],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    config: GenerateConfig,
    progress: ProgressFn | None = None,
    attention: AttentionControl | None = None,
    context: torch.Tensor | None = None,
    unet: torch.nn.Module | None = None,
    columns: int = 1,
) -> torch.Tensor:
    """Clean latents, one per seed, through diffusers' text-to-image pipeline with classifier-free guidance.

    ``attention`` (CAA/OAA) may move the latents before each step's noise prediction; ``unet`` stands in
    for the base's (regional composition, lifelong.composition); ``columns``: a canvas that many squares
    wide (side by side; text-to-image only). With a ``context``
    latent and ``config.icgen_strength`` < 1, image-to-image from the context instead (ICGen): it keeps the
    last round(steps × strength) steps (at least one) and noises the context to the first kept one.
    """
    if unet is None:
        unet = base.pipe.unet if attention is not None else base.sampling_unet()
    hooks = StepHooks(attention.guide if attention is not None else None, progress)
    common: dict[str, Any] = {
        "prompt_embeds": cond,
        "negative_prompt_embeds": uncond,
        "num_inference_steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "num_images_per_prompt": len(seeds),
        "callback_on_step_end": hooks if hooks.guide or hooks.progress else None,
        "output_type": "latent",
        "return_dict": False,
    }
    if context is None or config.icgen_strength >= 1.0:
        pipe = sampling_pipeline(base, TextToImage, unet, hooks)
        # the seeds' noise, drawn on the CPU; the pipeline scales it by init_noise_sigma and keeps its latents
        # in the UNet's dtype (on float16 GPUs the sampler's arithmetic is float16 now, it was float32)
        size = {"height": base.resolution, "width": base.resolution * columns}
        return pipe(latents=initial_noise(base, seeds, columns).to(base.dtype), **size, **common)[0].float()
    pipe = sampling_pipeline(base, ImageToImage, unet, hooks)
    kept = kept_steps(config.steps, config.icgen_strength)
    hooks.first = (config.steps - kept) * pipe.scheduler.order
    # diffusers draws the noise from these generators on the CPU: per seed, the numbers initial_noise draws
    # (in float32 bases; a float16 base gets them drawn in float16)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    image = context.expand(len(seeds), -1, -1, -1).to(base.device, base.dtype)  # latents: used as they are
    strength = diffusers_strength(config.steps, kept)
    return pipe(image=image, strength=strength, generator=generators, **common)[0].float()


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
            denoise(base, list(range(count)), text, text, config)


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
    # side by side gives way to a composition asked for by name, and to a start from a square stored image
    side = config.side_by_side and not (config.regional or config.caa or config.oaa) and context is None
    regions = regional_concepts(session, prompt, k) if config.regional or side else []
    if regions and (config.caa or config.oaa):
        raise InvalidSettingError(
            "regional composition and CAA/OAA attention guidance are alternatives for prompts naming two "
            "routed concepts: turn one of them off."
        )
    if regions:
        return _generate_regional(
            base, session, k, prompt, text, negative, seeds, config, regions, side, progress, record, context
        )
    with use_state(base, session.state(k, base.slot_token_ids, prompt)), torch.no_grad():
        cond, uncond = encode_text(base, [text]), encode_text(base, [negative])
        # attention guidance needs autograd; plain sampling skips its bookkeeping altogether
        with (
            attention_control(base, text, session.names()[:k], cond, config, record) as control,
            torch.inference_mode(control is None),
        ):
            latents = denoise(base, seeds, cond, uncond, config, progress, control, context)
            return decode(base, latents)


def regional_concepts(session: Session, prompt: str, checkpoint: int) -> list[int]:
    """The distinct routed (unstacked) concepts ``prompt`` names, 1-based, when there are two or more:
    those regional composition draws apart; else none. More than MAX_REGIONS is refused (a pass each)."""
    named = dict.fromkeys(
        i for i in session.named_concepts(prompt) if i <= checkpoint and not session.concepts[i - 1].stacked
    )
    if len(named) > MAX_REGIONS:
        raise InvalidPromptError(
            f"regional composition draws at most {MAX_REGIONS} concepts apart; this prompt names "
            f"{len(named)}. Name fewer, or turn regional off."
        )
    return list(named) if len(named) >= 2 else []


def _generate_regional(
    base: BaseModel,
    session: Session,
    k: int,
    prompt: str,
    text: str,
    negative: str,
    seeds: list[int],
    config: GenerateConfig,
    regions: list[int],
    side: bool,
    progress: ProgressFn | None,
    record: AttentionRecord | None,
    context: torch.Tensor | None,
) -> list[Image.Image]:
    """Generate with one UNet pass per named routed concept, each with its own deltas and its prompt without
    the other routed concepts' tokens, blended by region (lifelong.composition); ``side``: side by side,
    each from its own phrase of the prompt in its own square. ``text``: ``prompt`` rewritten to slot
    tokens."""
    names = session.names()
    labels = [f"<{names[i - 1]}>" for i in regions]
    # per concept: the stacked concepts and this routed one, as a prompt naming it alone would get
    states = [session.state(k, base.slot_token_ids, label) for label in labels]
    if side:
        own_prompts = square_prompts(prompt, [names[i - 1] for i in regions])
    else:
        own_prompts = [without_concepts(prompt, {names[j - 1] for j in regions if j != i}) for i in regions]
    own_texts = [session.rewrite_prompt(own, k) for own in own_prompts]
    with use_state(base, states[0]), torch.no_grad():  # every state holds every concept's embedding
        conds = [encode_text(base, [own]) for own in own_texts]
        cond, uncond = encode_text(base, [text]), encode_text(base, [negative])
    passes = [
        (state, own_cond, prompt_tokens(base, own, names[:k]), label)
        for state, own_cond, own, label in zip(states, conds, own_texts, labels, strict=True)
    ]
    full = prompt_tokens(base, text, names[:k])
    with (
        base.lock,
        torch.inference_mode(),
        regional_unet(base, passes, full, len(seeds), config.attention_res, record, side) as unet,
    ):
        columns = len(regions) if side else 1
        latents = denoise(
            base, seeds, cond, uncond, config, progress, context=context, unet=unet, columns=columns
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
