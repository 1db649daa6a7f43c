"""``python -m lifelong.bench --learn``: can a concept be learned at all, from its few images alone?

Each concept of ``--concept-dir`` (the first ``--concepts`` of them) is learned alone, from the base, in a
fresh session, with the app's default method and settings unless ``--methods``/``--steps``/``--set`` say
otherwise. Its images for "a <c> {class}" on two backgrounds (``--images-per-prompt`` seeds each) are scored
against the references of *every* concept of the folder, with the identity encoder (metrics.py):

- identification top-1: the generation's nearest reference centroid is its own concept's (chance 1/K for K
  concepts in the folder);
- IA(i, i), and normalised: (IA − mean IA to the other concepts) / (reference self-similarity − mean IA to
  the other concepts): 0 is "no more like it than like anything else", 1 is "as alike as its own photos";
- background: the border's median colour is nearest to the colour the prompt asked for (the concept must
  not take over the prompt);
- TA with the eval CLIP (the token replaced by its class word), and seconds to learn;
- the VAE's ceiling: identification of the concept's own references after a VAE round trip (encode,
  decode). No UNet can draw more of a concept than its VAE decodes: below 1, the latent space itself
  loses what tells the concept apart (the bundled VAE turns the octopus's coral into yellow).

Writes results.json, report.md and grid.png (per concept: 3 references, then its generations).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from lifelong.base import BaseConfig, BaseModel, compile_requested, get_base
from lifelong.colors import NAMED_COLORS
from lifelong.concepts import Session
from lifelong.encoding import decode, encode_images
from lifelong.files import atomic_write, write_json
from lifelong.folders import BUNDLED_CONCEPTS, FolderConcept, examples_of, load_concepts
from lifelong.generation import GenerateConfig, generate
from lifelong.intake import load_images
from lifelong.learner import LearnConfig, learn_folder
from lifelong.metrics import (
    EvalClip,
    IdentityEncoder,
    background_color,
    identity_features,
    image_features,
    text_alignment,
    text_features,
)
from lifelong.overrides import override, parse_pairs
from lifelong.prompts import with_article

COLORS = ("blue", "yellow")
TILE = 64


@dataclass
class ConceptScore:
    name: str
    identification: float  # share of its generations whose nearest reference centroid is its own
    ia: float  # mean cosine to its own references
    ia_others: float  # mean cosine to the other concepts' references
    reference_self: float  # mean cosine among its own references (off-diagonal)
    ia_normalised: float
    background: float  # share of generations whose background is the prompt's colour
    ta: float
    seconds: float
    vae_ceiling: float  # identification of its references after a VAE round trip


def prompts(concept: FolderConcept) -> list[tuple[str, str, str]]:
    """(prompt with the token, TA text with the class word instead, background colour) per background."""
    token = " ".join(f"<{concept.name}> {concept.class_word}".split())
    subject = with_article(concept.subject)
    return [(f"a {token} on a {c} background", f"{subject} on a {c} background", c) for c in COLORS]


def reference_features(
    encoder: IdentityEncoder, concepts: Sequence[FolderConcept], resolution: int
) -> list[torch.Tensor]:
    return [identity_features(encoder, load_images(list(c.images), resolution)) for c in concepts]


def vae_ceiling(
    base: BaseModel,
    encoder: IdentityEncoder,
    concept: FolderConcept,
    k: int,
    references: Sequence[torch.Tensor],
) -> float:
    """Identification of the concept's references decoded from their own VAE latents."""
    round_trip = decode(base, encode_images(base, load_images(list(concept.images), base.resolution)))
    return score(k, identity_features(encoder, round_trip), references)[0]


def score(
    k: int, generated: torch.Tensor, references: Sequence[torch.Tensor]
) -> tuple[float, float, float, float]:
    """Identification top-1, IA to its own references, IA to the others', and its references' self-similarity."""
    centroids = torch.nn.functional.normalize(torch.stack([r.mean(0) for r in references]), dim=-1)
    identification = float((((generated @ centroids.T).argmax(-1)) == k).float().mean())
    own = references[k]
    ia = float((generated @ own.T).mean())
    others = [float((generated @ r.T).mean()) for j, r in enumerate(references) if j != k]
    gram = own @ own.T
    n = len(own)
    self_sim = float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))
    return identification, ia, statistics.fmean(others), self_sim


def learn_and_score(
    base: BaseModel,
    clip: EvalClip,
    encoder: IdentityEncoder,
    concepts: Sequence[FolderConcept],
    k: int,
    references: Sequence[torch.Tensor],
    config: LearnConfig,
    generate_config: GenerateConfig,
    out: Path,
) -> tuple[ConceptScore, list[Image.Image]]:
    concept = concepts[k]
    root = out / "sessions" / concept.name
    shutil.rmtree(root, ignore_errors=True)
    session = Session.create(root, base.name)
    started = time.perf_counter()
    learn_folder(base, session, concept, config)
    seconds = time.perf_counter() - started
    images, ta_texts, colors = [], [], []
    for prompt, ta_text, color in prompts(concept):
        batch = generate(base, session, prompt, generate_config)
        images += batch
        ta_texts += [ta_text] * len(batch)
        colors += [color] * len(batch)
    identification, ia, ia_others, self_sim = score(k, identity_features(encoder, images), references)
    ta = text_alignment(image_features(clip, images), text_features(clip, ta_texts))
    background = statistics.fmean(
        background_color(image, NAMED_COLORS) == color for image, color in zip(images, colors, strict=True)
    )
    shutil.rmtree(root, ignore_errors=True)
    return (
        ConceptScore(
            concept.name,
            identification,
            ia,
            ia_others,
            self_sim,
            (ia - ia_others) / (self_sim - ia_others),
            background,
            ta,
            seconds,
            vae_ceiling(base, encoder, concept, k, references),
        ),
        images,
    )


def grid(rows: Sequence[tuple[Sequence[Image.Image], Sequence[Image.Image]]]) -> Image.Image:
    """One row per concept: its references, a gap, then its generations."""
    width = max(len(refs) + 1 + len(gens) for refs, gens in rows) * TILE
    canvas = Image.new("RGB", (width, TILE * len(rows)), "white")
    for r, (refs, gens) in enumerate(rows):
        for c, image in enumerate([*refs, None, *gens]):
            if image is not None:
                canvas.paste(image.convert("RGB").resize((TILE, TILE)), (c * TILE, r * TILE))
    return canvas


def summary(scores: Sequence[ConceptScore]) -> dict[str, float]:
    keys = ("identification", "ia", "ia_normalised", "background", "ta", "seconds", "vae_ceiling")
    return {key: statistics.fmean(getattr(s, key) for s in scores) for key in keys}


def report(scores: Sequence[ConceptScore], mean: dict[str, float], command: str, chance: float) -> str:
    lines = [
        "# Learnability: each concept learned alone from the base",
        "",
        f"`{command}`",
        "",
        f"Identification chance level: {chance:.3f}. IA is the identity encoder's cosine; normalised IA is 0 "
        "at the level of other concepts and 1 at the concept's own references.",
        "",
        "| concept | identification | IA | IA others | refs self | IA normalised | background | TA | s | VAE ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        lines.append(
            f"| {s.name} | {s.identification:.2f} | {s.ia:.3f} | {s.ia_others:.3f} | {s.reference_self:.3f} | "
            f"{s.ia_normalised:.2f} | {s.background:.2f} | {s.ta:.3f} | {s.seconds:.1f} | {s.vae_ceiling:.2f} |"
        )
    lines.append(
        f"| **mean** | **{mean['identification']:.2f}** | {mean['ia']:.3f} | | | **{mean['ia_normalised']:.2f}** | "
        f"**{mean['background']:.2f}** | {mean['ta']:.3f} | {mean['seconds']:.1f} | {mean['vae_ceiling']:.2f} |"
    )
    return "\n".join(lines) + "\n\n![references, then generations](grid.png)\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("learnability (--learn)")
    group.add_argument(
        "--learn-concepts", type=int, default=12, help="how many concepts to learn (default 12)"
    )
    group.add_argument("--learn-images", type=int, default=4, help="images per prompt (default 4)")


def run(args: argparse.Namespace) -> int:
    concept_dir = getattr(args, "concept_dir", BUNDLED_CONCEPTS)
    everyone = load_concepts(concept_dir)
    chosen = examples_of(everyone) if args.examples else everyone[: args.learn_concepts]
    base = get_base(BaseConfig(model=args.model, device=args.device, compile=compile_requested()))
    clip = EvalClip.load(args.eval_clip, base.device)
    encoder = IdentityEncoder.load(args.eval_identity, base.device)
    method = args.methods.split(",")[0] if args.methods else LearnConfig.method
    overrides = parse_pairs(getattr(args, "set", []) or [])
    config = override(LearnConfig(method=method, seed=args.seed), overrides)
    if args.steps:
        config = replace(config, steps=args.steps)
    generate_config = GenerateConfig(num_images=args.learn_images, seed=args.seed)
    if args.sample_steps:
        generate_config = replace(generate_config, steps=args.sample_steps)
    if args.guidance is not None:
        generate_config = replace(generate_config, guidance_scale=args.guidance)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    references = reference_features(encoder, everyone, base.resolution)
    scores, rows = [], []
    for concept in chosen:
        k = everyone.index(concept)
        result, images = learn_and_score(
            base, clip, encoder, everyone, k, references, config, generate_config, out
        )
        scores.append(result)
        refs = load_images(list(concept.images[:3]), base.resolution)
        rows.append((refs, images[:: max(1, args.learn_images // 2)]))
        print(
            f"<{result.name}> id {result.identification:.2f} IA {result.ia:.3f} norm {result.ia_normalised:.2f} "
            f"bg {result.background:.2f} TA {result.ta:.3f} {result.seconds:.1f} s (VAE ceiling {result.vae_ceiling:.2f})",
            flush=True,
        )
    mean = summary(scores)
    command = "python -m lifelong.bench " + shlex.join(args.argv)
    write_json(
        out / "results.json",
        {
            "command": command,
            "model": base.name,
            "learn_config": asdict(config),
            "generate_config": asdict(generate_config),
            "concepts_in_folder": len(everyone),
            "mean": mean,
            "concepts": [asdict(s) for s in scores],
        },
    )
    text = report(scores, mean, command, 1 / len(everyone))

    def write_report(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(out / "report.md", write_report)
    grid(rows).save(out / "grid.png")
    print(" ".join(f"{key} {value:.3f}" for key, value in mean.items()))
    return 0
