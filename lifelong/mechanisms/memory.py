"""Rainbow memory for TAME and ECD (L2DM): what is kept per concept, how forgotten it is, what is replayed.

After a concept is learned, the new model generates ``memory_samples`` images of it; their latents and
image features are stored with the concept (``memory.latents``, ``memory.features``) together with the
features of its reference images (long-term memory, ``memory.ltm``). Before learning the next concept the
current model generates ``score_images`` probes of every remembered concept i, and

    forgetting(i) = 1 − cos(mean feature of the probes, mean LTM feature of i)

The short-term memory (STM, at most ``memory`` rows) is filled by a highest-averages (D'Hondt)
allocation proportional to forgetting, so the most-forgotten concepts get most replay; inside a concept its
samples closest to its LTM go first. With ``memory_references`` (the default) the rows are instead the
concept's own stored images, each with its caption (the session keeps both), most typical first: replaying
the model's own samples trains it on its own defects, which compound along a sequence (docs/BENCHMARKS.md).

Features come from a CLIP image tower (``clip``: a registered name, a CLIP folder, or "" for the bundled
eval CLIP). Without any CLIP (or with ``clip=vae``) they fall back to the VAE latent average-pooled to
4×4 and flattened: drift is then measured in latent space, a weaker proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from PIL import Image

from lifelong.adapters import use_state
from lifelong.base import BUNDLED_EVAL_CLIP, BaseModel
from lifelong.encoding import decode, encode_images, encode_text
from lifelong.generation import GenerateConfig, denoise
from lifelong.metrics import EvalClip, image_features
from lifelong.prompts import captioned
from lifelong.settings import GUIDED, Cost, Setting, Value
from lifelong.step import AfterLearnContext, BuildContext, StepContext

Features = Callable[[Sequence[Image.Image]], torch.Tensor]

SETTINGS = {
    # 16: 8 slots shared by forgetting score left the least-forgotten of 9 earlier concepts with no image
    # to replay (test_methods). Over 10 held-out animals (docs/BENCHMARKS.md) l2dm's IAD went 0.057 → 0.005
    # (Δ vs finetune −0.096 [−0.183, −0.012]) and tame's 0.002 → 0.015 (−0.086 [−0.192, +0.003]): no
    # significant change for either; chosen so that every earlier concept is replayed
    "memory": Setting(16, "short-term memory size: samples replayed while learning", 1, 64),
    "memory_samples": Setting(4, "samples generated and kept per concept after learning it", 1, 16),
    "memory_steps": Setting(10, "sampler steps for memory samples and forgetting probes", 1, 50),
    "score_images": Setting(2, "probe images per concept for its forgetting score", 1, 8),
    # on: over 10 held-out animals (docs/BENCHMARKS.md, "l2dm replaying the stored images") l2dm forgot
    # less (IAD 0.029 against 0.072 with its own samples; finetune 0.102) and moved the base less (drift
    # 0.38 against 0.56), learning each concept no worse (IA right after 0.240 against 0.258)
    "memory_references": Setting(
        True, "replay earlier concepts' stored images with their captions instead of generated samples"
    ),
    "clip": Setting("", "CLIP for image features: a folder, registered name, '' = bundled, vae = fallback"),
}

_CLIPS: dict[str, EvalClip] = {}


def register_clip(name: str, clip: EvalClip) -> None:
    """Make ``clip`` usable as ``--set clip=NAME`` (the app and tests pass models they already hold)."""
    _CLIPS[name] = clip


def feature_function(base: BaseModel, clip: str) -> Features:
    """L2-normalised image features from the chosen CLIP, or the VAE fallback (see the module docstring)."""
    path = clip if clip != "vae" else ""
    if clip == "" and BUNDLED_EVAL_CLIP.exists():
        path = str(BUNDLED_EVAL_CLIP)
    if not path:
        return partial(_vae_features, base)
    if path not in _CLIPS:
        _CLIPS[path] = EvalClip.load(path, base.device)
    return partial(image_features, _CLIPS[path])


def _vae_features(base: BaseModel, images: Sequence[Image.Image]) -> torch.Tensor:
    latents = encode_images(base, [image.resize((base.resolution,) * 2) for image in images])
    return F.normalize(F.adaptive_avg_pool2d(latents, 4).flatten(1).cpu(), dim=-1)


@torch.no_grad()
def sample_latents(base: BaseModel, prompt: str, seeds: list[int], steps: int) -> torch.Tensor:
    """Clean latents the live model generates for ``prompt`` (a prompt with slot tokens)."""
    cond, uncond = encode_text(base, [prompt]), encode_text(base, [""])
    with torch.inference_mode():
        latents = denoise(base, seeds, cond, uncond, GenerateConfig(steps=steps))
    return latents.clone()  # a normal tensor again: training uses it with autograd


def cost(settings: Mapping[str, Value], concepts: int) -> Cost:
    """The forgetting probes of every earlier concept before training, the memory samples after it."""
    images = int(settings["memory_samples"]) + concepts * int(settings["score_images"])
    return Cost(once=float(images * int(settings["memory_steps"]) * GUIDED))


def after_learn(ctx: AfterLearnContext) -> dict[str, torch.Tensor]:
    s = ctx.settings
    features = feature_function(ctx.base, str(s["clip"]))
    seeds = [ctx.seed * 1000 + i for i in range(int(s["memory_samples"]))]
    latents = sample_latents(ctx.base, ctx.prompt, seeds, int(s["memory_steps"]))
    return {
        "memory.latents": latents.cpu(),
        "memory.features": features(decode(ctx.base, latents)),
        "memory.ltm": features(list(ctx.images)),
    }


@dataclass
class ShortTermMemory:
    latents: torch.Tensor  # [M, C, H, W] clean latents to replay
    concepts: list[int]  # 1-based concept index of each row
    prompts: list[str]  # slot-token prompt of each row
    scores: dict[int, float]  # forgetting score of each remembered concept

    _embeddings: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.concepts)

    def batch(self, ctx: StepContext, size: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``size`` random rows: clean latents, their prompts' text states, their concept indices."""
        if self._embeddings is None:  # STM prompts never hold the new token, so their encodings are fixed
            with torch.no_grad():
                self._embeddings = ctx.encode(self.prompts)
        pick = torch.randint(0, len(self), (size,), generator=ctx.generator, device=ctx.latents.device)
        return self.latents[pick], self._embeddings[pick], [self.concepts[int(j)] for j in pick]


def allocate(scores: dict[int, float], available: dict[int, int], capacity: int) -> dict[int, int]:
    """STM slots per concept, proportional to forgetting (D'Hondt); all-zero scores share equally."""
    weights = {i: score if any(scores.values()) else 1.0 for i, score in scores.items()}
    taken = dict.fromkeys(scores, 0)
    for _ in range(min(capacity, sum(available.values()))):
        open_ = [i for i in scores if taken[i] < available[i]]
        best = max(open_, key=lambda i: (weights[i] / (taken[i] + 1), -i))
        taken[best] += 1
    return taken


def forgetting_scores(ctx: BuildContext, remembered: list[int], features: Features) -> dict[int, float]:
    """1 − cos(probes of concept i by the model the new concept starts from, i's long-term memory)."""
    scores = {}
    session, base = ctx.session, ctx.base
    seeds = [ctx.seed * 1000 + 500 + j for j in range(int(ctx.settings["score_images"]))]
    for i in remembered:
        prompt = session.concepts[i - 1].prompts[0]
        with use_state(base, session.state(ctx.slot, base.slot_token_ids, prompt)):
            latents = sample_latents(
                base, session.rewrite_prompt(prompt, ctx.slot), seeds, int(ctx.settings["memory_steps"])
            )
            probes = features(decode(base, latents))
        ltm = session.checkpoint(i)[1]["memory.ltm"]
        if ltm.shape[-1] != probes.shape[-1]:  # the concept was remembered with another feature model
            ltm = features(session.images(i))
        scores[i] = max(0.0, 1.0 - float(F.cosine_similarity(probes.mean(0), ltm.mean(0), dim=0)))
    return scores


def short_term_memory(ctx: BuildContext) -> ShortTermMemory:
    """The STM for learning concept ``ctx.slot + 1``, computed once per learn (TAME and ECD share it)."""
    if "stm" in ctx.shared:
        return ctx.shared["stm"]
    session = ctx.session
    remembered = [i for i in range(1, ctx.slot + 1) if "memory.latents" in session.checkpoint(i)[1]]
    scores = forgetting_scores(ctx, remembered, feature_function(ctx.base, str(ctx.settings["clip"])))
    references = bool(ctx.settings["memory_references"])
    available = {
        i: len(session.concepts[i - 1].images if references else session.checkpoint(i)[1]["memory.latents"])
        for i in remembered
    }
    quota = allocate(scores, available, int(ctx.settings["memory"]))
    rows, concepts, prompts = [], [], []
    for i in remembered:
        extras = session.checkpoint(i)[1]
        ltm = extras["memory.ltm"]
        prompt = session.rewrite_prompt(session.concepts[i - 1].prompts[0], ctx.slot)
        if references:
            keep = (ltm @ ltm.mean(0)).argsort(descending=True)[: quota[i]]
            with torch.no_grad():
                latents = encode_images(ctx.base, session.images(i))
            captions = session.concepts[i - 1].captions or [""] * len(latents)
            prompts += [captioned(prompt, captions[int(j)]) for j in keep]
        else:
            keep = (extras["memory.features"] @ ltm.mean(0)).argsort(descending=True)[: quota[i]]
            latents = extras["memory.latents"]
            prompts += [prompt] * len(keep)
        rows.append(latents[keep.to(latents.device)])
        concepts += [i] * len(keep)
    latents = torch.cat(rows).to(ctx.base.device) if rows else torch.empty(0)
    ctx.shared["stm"] = ShortTermMemory(latents, concepts, prompts, scores)
    return ctx.shared["stm"]
