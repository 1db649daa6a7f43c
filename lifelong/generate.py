"""Text-to-image with a session at any checkpoint: the sampling loop, in small steps.

We own the loop (rather than calling the pipeline) because methods change where it starts (in-context
generation starts from a stored latent) and what happens inside it (attention guidance moves the latents).
Same seed, same prompt, same checkpoint → the same image, on any run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from PIL import Image

from lifelong.adapters import use_state
from lifelong.attention import AttentionControl, AttentionRecord, attention_control
from lifelong.base import BaseModel
from lifelong.concepts import Session
from lifelong.encoding import decode, encode_text
from lifelong.errors import InvalidPromptError
from lifelong.limits import check_generate
from lifelong.progress import Progress, ProgressFn

MAX_IMAGES = 16


@dataclass
class GenerateConfig:
    """How to sample. The UI's generation settings are generated from these fields."""

    steps: int = 25
    guidance_scale: float = 5.0
    negative_prompt: str = ""
    num_images: int = 1
    seed: int = 0  # image i uses seed + i
    # multi-concept attention (lifelong.attention): only for prompts naming two or more concepts. Off by
    # default: on the bundled model it lowered concept IA at +60 % time per image (docs/BENCHMARKS.md)
    caa: bool = False  # each concept gets a strong attention peak; each location goes to one concept
    oaa: bool = False  # concepts' (and other concepts' attributes') attention maps kept apart
    attention_steps: int = 10  # guided steps at the start of sampling
    attention_step_size: float = 20.0
    caa_threshold: float = 0.8  # peak attention (share of the words at a location) each concept should reach
    oaa_threshold: float = 0.0  # overlap of normalised maps tolerated between concepts
    attention_res: int = 0  # side of the attention grid to use; 0 = automatic
    # in-context generation (ICGen): start from a named concept's stored image latent noised to this
    # strength; 1 = plain text-to-image
    icgen_strength: float = 1.0
    icgen_context: str = "mean"  # which stored latent: "mean" of them, or an image index "0", "1", ...


def _check(prompt: str, config: GenerateConfig) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidPromptError("Write a prompt, e.g. 'a <rex> on a blue background'.")
    if not 1 <= config.num_images <= MAX_IMAGES:
        raise InvalidPromptError(f"Ask for 1 to {MAX_IMAGES} images at a time.")
    if not 1 <= config.steps <= 200:
        raise InvalidPromptError("Use between 1 and 200 sampling steps.")
    if not 0.0 < config.icgen_strength <= 1.0:
        raise InvalidPromptError("icgen_strength must be in (0, 1]; 1 means plain text-to-image.")
    index = config.icgen_context
    if index != "mean" and not (index.isascii() and index.isdigit() and len(index) <= 3):
        raise InvalidPromptError("icgen_context is 'mean' or the index of a context image, e.g. 0.")
    check_generate(config)


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
    for index, t in enumerate(timesteps):
        if attention is not None:
            latents = attention.guide(index, t, latents, scheduler)
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t).to(base.dtype)
        # ε or v, whichever the scheduler's prediction_type says; guidance is linear in either
        uncond_out, cond_out = unet(model_input, t, embeddings).sample.float().chunk(2)
        guided = uncond_out + config.guidance_scale * (cond_out - uncond_out)
        latents = scheduler.step(guided, t, latents).prev_sample
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
    _check(prompt, config)
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
