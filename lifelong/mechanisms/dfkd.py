"""DFKD — data-free knowledge distillation from the previous checkpoint (LFS-Diffusion).

Every ``k`` steps, with no stored data::

    x̂ ~ teacher(c)  (``samples`` per pool prompt c, generated once per concept),  t ~ U{0..T-1}
    x_t = √ᾱ_t · x̂_m + √(1 − ᾱ_t) · ε
    L = λ · ‖out_student(x_t, t, c_m) − out_teacher(x_t, t, c_m)‖²      (out: ε or v)

The teacher is the same UNet with the new trainable set switched off (the previous checkpoint). The pool
holds earlier concepts' prompts, class words, generic prompts and the empty prompt; the pseudo-samples x̂
are the teacher's own 20-step DDIM images of them, so the student is held to the teacher on the inputs it
meets when generating, at every noise level. With ``samples`` = 0, x_t is pure noise at a random t (cheaper,
but off the data distribution for all but the noisiest t: on the bundled model that version forgot more
than finetune, docs/BENCHMARKS.md). With ``sampler_steps`` n > 0, x_t is instead reached by j ~ U{1..n}
teacher DDIM steps (of 20) from noise, fresh every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from lifelong.errors import InvalidSettingError
from lifelong.prompts import with_article
from lifelong.settings import Cost, Setting, Value
from lifelong.step import BuildContext, Rows, StepContext, draw_noise, noise_latents

GENERIC_PROMPTS = ("a photo", "a picture of an object", "an animal", "a landscape", "a painting")
SOURCES = ("concepts", "classes", "generic", "empty")
SAMPLER_GRID = 20
PSEUDO_CHUNK = 8  # pseudo-samples per teacher sampler batch

# One row per step and one pseudo-sample per pool prompt: on the learnability benchmark as good as two rows
# and eight samples shared by the pool (which left prompts past the eighth without one), at ×1.79 of
# finetune's time instead of ×2.25; over 10 concepts the base drifts half as much as under finetune
# (docs/BENCHMARKS.md)
SETTINGS = {
    "dfkd_weight": Setting(1.0, "λ: weight of the distillation loss", 0.0),
    "dfkd_every": Setting(1, "distil every k-th step", 1, 1000),
    "dfkd_batch": Setting(1, "noise latents per distillation step", 1, 32),
    "dfkd_pool": Setting(",".join(SOURCES), "prompt pool: any of concepts,classes,generic,empty"),
    "dfkd_samples": Setting(
        1, "teacher pseudo-samples per pool prompt, noised to random t (0: x_t is pure noise)", 0, 64
    ),
    "dfkd_sampler_steps": Setting(
        0, "n > 0: x_t from up to n fresh teacher sampler steps instead", 0, SAMPLER_GRID - 1
    ),
}


def pool_sources(text: str) -> set[str]:
    """The sources a ``dfkd_pool`` setting names, or an InvalidSettingError."""
    chosen = {source.strip() for source in text.split(",") if source.strip()}
    if not chosen or chosen - set(SOURCES):
        raise InvalidSettingError(f"dfkd_pool takes a comma-separated subset of {','.join(SOURCES)}.")
    return chosen


def prompt_pool(ctx: BuildContext, sources: str) -> list[str]:
    """Prompts to distil on, from the named sources, without duplicates."""
    chosen = pool_sources(sources)
    earlier = ctx.session.concepts[: ctx.slot]
    pool: list[str] = []
    if "concepts" in chosen:
        pool += [ctx.session.rewrite_prompt(c.prompts[0], ctx.slot) for c in earlier if c.prompts]
    if "classes" in chosen:
        pool += [with_article(word) for word in [*(c.class_word for c in earlier), ctx.class_word] if word]
    if "generic" in chosen:
        pool += list(GENERIC_PROMPTS)
    if "empty" in chosen:
        pool.append("")
    return list(dict.fromkeys(pool)) or [""]


class DataFreeDistillation:
    name = "dfkd"

    def __init__(
        self, pool: list[str], weight: float, every: int, batch: int, samples: int, sampler_steps: int
    ) -> None:
        self.pool, self.weight, self.every, self.batch = pool, weight, every, batch
        self.samples, self.sampler_steps = samples, sampler_steps
        self._embeddings: torch.Tensor | None = None
        self._pseudo: tuple[torch.Tensor, torch.Tensor] | None = None

    def rows(self, ctx: StepContext) -> Rows | None:
        """This step's distillation inputs (None on steps without the term); the student's pass on them
        joins the learner's one student forward."""
        if ctx.step % self.every:
            return None
        if self._embeddings is None:  # the pool never holds the new token, so its encodings are fixed
            with torch.no_grad():
                self._embeddings = ctx.encode(self.pool)
        if self.samples > 0 and not self.sampler_steps:
            latents, embeddings = self._pseudo_samples(ctx)
            pick = self._pick(ctx, len(embeddings))
            noisy, _, timesteps = noise_latents(ctx.base, latents[pick], ctx.generator)
            return Rows(noisy, timesteps, embeddings[pick])
        embeddings = self._embeddings[self._pick(ctx, len(self._embeddings))]
        shape = (self.batch, *ctx.latents.shape[1:])
        noise, timesteps = draw_noise(ctx.base, shape, ctx.generator, ctx.latents.device)
        if self.sampler_steps:
            noisy, timesteps = self._teacher_walk(ctx, noise, embeddings)
        else:
            noisy = noise
        return Rows(noisy.to(ctx.base.dtype), timesteps, embeddings)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        if self.name in ctx.student_rows:  # batched into the learner's student forward
            batched = ctx.student_rows[self.name]
            if batched is None:
                return ctx.latents.new_zeros(())
            rows, student = batched
        else:
            own = self.rows(ctx)
            if own is None:
                return ctx.latents.new_zeros(())
            rows, student = own, ctx.student(own.noisy, own.timesteps, own.embeddings)
        teacher = ctx.teacher(rows.noisy, rows.timesteps, rows.embeddings)
        return self.weight * F.mse_loss(student, teacher)

    def _pick(self, ctx: StepContext, count: int) -> torch.Tensor:
        return torch.randint(0, count, (self.batch,), generator=ctx.generator, device=ctx.latents.device)

    @torch.no_grad()
    def _pseudo_samples(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's own images (latents), ``samples`` of every pool prompt, generated on first use (in
        chunks of ``PSEUDO_CHUNK``, which bound the memory at full size) and kept."""
        if self._pseudo is None:
            assert self._embeddings is not None
            device = ctx.latents.device
            index = torch.arange(len(self.pool), device=device).repeat_interleave(self.samples)
            embeddings = self._embeddings[index]
            noise = torch.randn((len(index), *ctx.latents.shape[1:]), generator=ctx.generator, device=device)
            chunks = [
                self._teacher_walk(
                    ctx, noise[i : i + PSEUDO_CHUNK], embeddings[i : i + PSEUDO_CHUNK], SAMPLER_GRID
                )[0]
                for i in range(0, len(index), PSEUDO_CHUNK)
            ]
            self._pseudo = torch.cat(chunks), embeddings
        return self._pseudo

    def _teacher_walk(
        self, ctx: StepContext, noise: torch.Tensor, embeddings: torch.Tensor, walk: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``walk`` (default: j ~ U{1..sampler_steps}) teacher sampler steps of 20 from ``noise`` (the
        generator's own loop, without guidance); returns the latents and the timestep they are at (the last
        grid step when the walk is complete)."""
        scheduler = ctx.base.ddim_scheduler()  # a first-order sampler: j steps end at timesteps[j]
        scheduler.set_timesteps(SAMPLER_GRID, device=noise.device)
        if walk is None:
            walk = int(
                torch.randint(1, self.sampler_steps + 1, (1,), generator=ctx.generator, device=noise.device)
            )
        teacher = lambda latents, t: ctx.teacher(latents.to(ctx.base.dtype), t, embeddings)  # noqa: E731
        start = noise * scheduler.init_noise_sigma
        latents = teacher_steps(scheduler, start, scheduler.timesteps[:walk], teacher)
        return latents, scheduler.timesteps[min(walk, SAMPLER_GRID - 1)].repeat(len(latents))


def cost(settings: Mapping[str, Value], concepts: int) -> Cost:
    """Student and teacher passes on the distillation rows; the pseudo-samples (a 20-step teacher walk per
    sample of every pool prompt), or the fresh walks of ``sampler_steps``. The pool's size is bounded by
    its sources with ``concepts`` earlier concepts."""
    chosen = pool_sources(str(settings["dfkd_pool"]))
    pool = (
        concepts * ("concepts" in chosen)
        + (concepts + 1) * ("classes" in chosen)
        + len(GENERIC_PROMPTS) * ("generic" in chosen)
        + ("empty" in chosen)
    )
    batch, every = int(settings["dfkd_batch"]), int(settings["dfkd_every"])
    walk, samples = int(settings["dfkd_sampler_steps"]), int(settings["dfkd_samples"])
    per_step = batch * (2 + walk) / every
    return Cost(per_step, samples * max(pool, 1) * SAMPLER_GRID if samples and not walk else 0.0)


def build(ctx: BuildContext) -> DataFreeDistillation:
    s = ctx.settings
    return DataFreeDistillation(
        prompt_pool(ctx, str(s["dfkd_pool"])),
        float(s["dfkd_weight"]),
        int(s["dfkd_every"]),
        int(s["dfkd_batch"]),
        int(s["dfkd_samples"]),
        int(s["dfkd_sampler_steps"]),
    )


def teacher_steps(
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The sampler's steps over ``timesteps`` from ``latents`` (already scaled to the first one), with
    ``predict`` (scaled latents, t) → the model output, no guidance. A loop of our own rather than a pipeline
    call: the teacher is a function (the UNet with the trainable set switched off), not a module a pipeline
    could hold, and a walk stops after j of the 20 steps, still noisy."""
    for t in timesteps:
        latents = scheduler.step(predict(scheduler.scale_model_input(latents, t), t), t, latents).prev_sample
    return latents
