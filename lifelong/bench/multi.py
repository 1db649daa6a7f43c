"""``python -m lifelong.bench --multi``: two learned concepts in one prompt, plain vs guided (CAA/OAA, or the
composition ``--guided`` names, e.g. side_by_side=true caa=false oaa=false).

The first ``--concepts`` concepts are learned in one session (``--methods``' first method, else the app's
default, at the app's default steps unless ``--steps``).
For every pair (i, j) and background colour (``--pair-colors``) the prompt "a <i> {class} and a <j> {class}
on a {color} background" is generated with the same seeds twice: off (the plain mix), then on
(GenerateConfig's caa/oaa and ``--guided``). For each image and each of its two concepts, the square of the
concept's share of the image (half the side of a square image, the height of a side-by-side canvas) centred
on the concept's cross-attention peak is cropped, and the identity encoder (metrics.alignment_features)
compares the crop with

- the concept's own reference images: the concept's IA in that image;
- the references of every concept of the folder outside the pair: the level of unrelated concepts.

A concept is *present* when its IA beats its crop's IA to every unrelated concept; an image has *both* when
both its concepts are present. As in Attend-and-Excite, an image is only as good as its weaker concept: its
*minimum similarity* is the lower of its two concepts' IA. Reported per setting: the both-present rate and
the mean minimum similarity, each with a 95 % bootstrap interval over pairs and their seeds
(lifelong.stats), the mean per-concept IA and the seconds per image (map capture, which locates the crops,
runs in both settings); and guidance on minus off on the same pairs and seeds, with its interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from lifelong.attention import AttentionRecord
from lifelong.base import BaseConfig, BaseModel, compile_requested, get_base
from lifelong.bench.sequence import EVAL_COLORS
from lifelong.concepts import Session
from lifelong.configs import DEFAULT_METHOD
from lifelong.files import atomic_write, write_json
from lifelong.folders import BUNDLED_CONCEPTS, FolderConcept, examples_of, load_concepts
from lifelong.generation import GenerateConfig, generate
from lifelong.intake import load_images
from lifelong.learner import LearnConfig, learn_folder
from lifelong.metrics import EvalClip, FeatureCache, IdentityEncoder, alignment_features
from lifelong.overrides import override, parse_pairs
from lifelong.stats import RESAMPLES, Interval, PairedComparison, cluster_bootstrap, paired_comparison

SETTINGS = ("off", "on")
TILE = 96


@dataclass(frozen=True)
class MultiConfig:
    concepts: int = 4  # learned concepts; every pair of them is one prompt
    names: tuple[str, ...] = ()  # learn these concepts instead of the first ``concepts``
    method: str = DEFAULT_METHOD  # the app's: what a user's two concepts are learned with
    steps: int = LearnConfig.steps  # learning steps per concept
    images_per_pair: int = 4  # seeds seed .. seed + n - 1, the same in both settings
    seed: int = 0
    sample_steps: int = 20
    guidance_scale: float = GenerateConfig.guidance_scale
    # the lifelong benchmark's eval backgrounds: on white (used until 2026-12-02) the white llama, one of
    # the app's examples, is not drawn apart from the background even alone
    colors: tuple[str, ...] = EVAL_COLORS
    guided: tuple[tuple[str, str], ...] = ()  # GenerateConfig settings of the "on" run, e.g. attention_steps


@dataclass
class SettingResult:
    both_present: float  # share of images where both concepts beat every unrelated concept
    min_similarity: float  # mean over images of the lower of the two concepts' IA
    concept_ia: float  # mean IA of a concept's crop to its own references
    unrelated_ia: float  # mean over crops of the best IA to an unrelated concept's references
    seconds_per_image: float
    per_concept_ia: dict[str, float]  # each learned concept's mean IA over the pairs it is in
    # per image, [pair][seed], the same pairs and seeds in both settings: for the intervals
    present_images: list[list[float]]  # 1.0: both concepts present
    minimum_images: list[list[float]]  # the lower of the two IAs


MEASURES = {"both_present": "present_images", "min_similarity": "minimum_images"}


@dataclass
class MultiStatistics:
    intervals: dict[str, dict[str, Interval]]  # setting -> measure -> value [95 % interval]
    paired: dict[str, PairedComparison]  # measure -> on − off, same pairs and seeds


def multi_statistics(results: dict[str, SettingResult], resamples: int = RESAMPLES) -> MultiStatistics:
    """Both-present rate and minimum similarity per setting over pairs and seeds, and on − off."""
    intervals = {
        setting: {
            measure: cluster_bootstrap(getattr(result, field_name), resamples=resamples)
            for measure, field_name in MEASURES.items()
        }
        for setting, result in results.items()
    }
    paired = {
        measure: paired_comparison(
            getattr(results["on"], field_name), getattr(results["off"], field_name), resamples=resamples
        )
        for measure, field_name in MEASURES.items()
    }
    return MultiStatistics(intervals, paired)


def pair_prompt(first: FolderConcept, second: FolderConcept, color: str) -> str:
    one = " ".join(f"<{first.name}> {first.class_word}".split())
    two = " ".join(f"<{second.name}> {second.class_word}".split())
    return f"a {one} and a {two} on a {color} background"


def peak_crop(image: Image.Image, heat: torch.Tensor, concepts: int = 2) -> Image.Image:
    """The square of one concept's share of the image centred on the strongest cell of ``heat`` (rows ×
    columns): half the side of a square image shared by two concepts, the whole height of a canvas one square
    per concept wide (side by side)."""
    rows, columns = heat.shape[-2:]
    row, col = divmod(int(heat.argmax()), columns)
    width, height = image.size
    side = min(height, width // concepts)
    cx, cy = (col + 0.5) * width / columns, (row + 0.5) * height / rows
    left = int(min(max(cx - side / 2, 0), width - side))
    top = int(min(max(cy - side / 2, 0), height - side))
    return image.crop((left, top, left + side, top + side))


class MultiEvaluator:
    """Scores crops against every concept's references (features cached)."""

    def __init__(
        self,
        base: BaseModel,
        clip: EvalClip,
        everyone: Sequence[FolderConcept],
        identity: IdentityEncoder | None = None,
    ) -> None:
        self.base, self.clip, self.everyone, self.identity = base, clip, list(everyone), identity
        self.cache = FeatureCache()

    def references(self, concept: FolderConcept) -> torch.Tensor:
        return self.cache.get(
            concept.name,
            lambda: alignment_features(
                load_images(list(concept.images), self.base.resolution), self.clip, self.identity
            ),
        )

    def scores(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """(crops, concepts): mean cosine of each crop to each concept's references."""
        features = alignment_features(crops, self.clip, self.identity)
        return torch.stack([(features @ self.references(c).T).mean(1) for c in self.everyone], dim=1)


@dataclass
class _Tally:
    """Per setting ("off", "on"), what the pairs' images scored so far."""

    learned: list[str]
    present: dict[str, list[bool]] = field(default_factory=lambda: {s: [] for s in SETTINGS})
    minimum: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SETTINGS})
    own: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SETTINGS})
    unrelated: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SETTINGS})
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SETTINGS, 0.0))
    by_concept: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_concept = {s: {name: [] for name in self.learned} for s in SETTINGS}

    def add(self, setting: str, scores: torch.Tensor, pair: list[int], names: list[str]) -> None:
        """One image: ``scores`` (2 crops × every concept); both present when each crop is closest to its own
        concept among the pair's own and every unrelated concept."""
        others = [k for k in range(scores.shape[1]) if k not in pair]
        shown = [True, True]
        for c, k in enumerate(pair):
            best_other = float(scores[c, others].max())
            self.own[setting].append(float(scores[c, k]))
            self.by_concept[setting][names[k]].append(float(scores[c, k]))
            self.unrelated[setting].append(best_other)
            shown[c] = float(scores[c, k]) > best_other
        self.present[setting].append(all(shown))
        self.minimum[setting].append(min(float(scores[c, k]) for c, k in enumerate(pair)))

    def results(self, count: int, seeds: int) -> dict[str, SettingResult]:
        """Per setting; ``seeds`` images per pair, added pair after pair."""

        def by_pair(values: list[float]) -> list[list[float]]:
            return [values[start : start + seeds] for start in range(0, len(values), seeds)]

        return {
            s: SettingResult(
                both_present=sum(self.present[s]) / len(self.present[s]),
                min_similarity=sum(self.minimum[s]) / len(self.minimum[s]),
                concept_ia=sum(self.own[s]) / len(self.own[s]),
                unrelated_ia=sum(self.unrelated[s]) / len(self.unrelated[s]),
                seconds_per_image=self.seconds[s] / count,
                per_concept_ia={name: sum(v) / len(v) for name, v in self.by_concept[s].items()},
                present_images=by_pair([float(p) for p in self.present[s]]),
                minimum_images=by_pair(self.minimum[s]),
            )
            for s in SETTINGS
        }


def _learn_all(
    base: BaseModel,
    learned: Sequence[FolderConcept],
    config: MultiConfig,
    out: Path,
    log: Callable[[str], None],
) -> Session:
    root = out / "sessions" / "multi"
    shutil.rmtree(root, ignore_errors=True)
    session = Session.create(root, base.name)
    for concept in learned:
        learn_config = LearnConfig(method=config.method, steps=config.steps, seed=config.seed)
        learn_folder(base, session, concept, learn_config)
        log(f"[multi] learned <{concept.name}>")
    return session


def run_multi(
    base: BaseModel,
    clip: EvalClip,
    everyone: Sequence[FolderConcept],
    config: MultiConfig,
    out: Path,
    log: Callable[[str], None] = print,
    identity: IdentityEncoder | None = None,
) -> tuple[dict[str, SettingResult], Image.Image]:
    """Learn the concepts, generate every pair off and on, score; returns results and the pair grid."""
    learned = [c for c in everyone if c.name in config.names] if config.names else everyone[: config.concepts]
    if len(learned) < 2 or len(everyone) < 3:
        raise ValueError("the multi-concept benchmark needs 2+ learned concepts and 1+ unrelated one.")
    session = _learn_all(base, learned, config, out, log)
    evaluator = MultiEvaluator(base, clip, everyone, identity)
    plain = GenerateConfig(
        steps=config.sample_steps,
        guidance_scale=config.guidance_scale,
        num_images=config.images_per_pair,
        seed=config.seed,
        caa=False,
        oaa=False,
        regional=False,
        side_by_side=False,  # the plain mix of both concepts' deltas at half weight
    )
    guided = override(dataclasses.replace(plain, caa=True, oaa=True), dict(config.guided))
    settings = {"off": plain, "on": guided}
    tally = _Tally([c.name for c in learned])
    names = [c.name for c in everyone]
    rows = []
    pair_images = config.images_per_pair * len(config.colors)
    for first, second in itertools.combinations(learned, 2):
        row: list[tuple[Image.Image, str]] = []
        pair = [everyone.index(first), everyone.index(second)]
        for setting in SETTINGS:
            for color in config.colors:
                record = AttentionRecord()
                started = time.perf_counter()
                prompt = pair_prompt(first, second, color)
                images = generate(base, session, prompt, settings[setting], record=record)
                tally.seconds[setting] += time.perf_counter() - started
                maps = record.label_maps([f"<{first.name}>", f"<{second.name}>"])
                for n, image in enumerate(images):
                    crops = [peak_crop(image, maps[n, c]) for c in range(2)]
                    tally.add(setting, evaluator.scores(crops), pair, names)
                if color == config.colors[0]:
                    row.append((images[0], setting))
                    overlays = record.images(images[:1])
                    row += [
                        (overlay, f"{setting}: {which}")
                        for (overlay, _), which in zip(overlays, ("first", "second"), strict=True)
                    ]
        rows.append((f"{first.name} + {second.name}", row))
        present = {s: sum(tally.present[s][-pair_images:]) for s in SETTINGS}
        counts = f"off {present['off']}, on {present['on']} of {pair_images}"
        log(f"[multi] <{first.name}> + <{second.name}>: both present {counts}")
    return tally.results(len(rows) * pair_images, pair_images), pair_grid(rows)


def pair_grid(rows: Sequence[tuple[str, Sequence[tuple[Image.Image, str]]]]) -> Image.Image:
    """One row per pair: the first seed's image and the maps of the pair's first and second concept, guidance
    off then on."""
    label_width, header = 130, 14
    # each column as wide as its widest image at TILE high (side by side: a canvas two squares wide)
    widths = [
        max(TILE * tiles[c][0].width // tiles[c][0].height for _, tiles in rows if c < len(tiles))
        for c in range(max(len(tiles) for _, tiles in rows))
    ]
    lefts = [label_width + sum(widths[:c]) for c in range(len(widths))]
    grid = Image.new("RGB", (label_width + sum(widths), header + len(rows) * TILE), "white")
    draw = ImageDraw.Draw(grid)
    for c, (_, caption) in enumerate(rows[0][1]):
        draw.text((lefts[c] + 2, 2), caption, fill="black")
    for r, (label, tiles) in enumerate(rows):
        top = header + r * TILE
        draw.text((4, top + TILE // 2 - 6), label, fill="black")
        for c, (image, _) in enumerate(tiles):
            size = (TILE * image.width // image.height, TILE)
            grid.paste(image.resize(size, Image.Resampling.NEAREST), (lefts[c], top))
    return grid


def table(results: dict[str, SettingResult], statistics: MultiStatistics) -> str:
    """Per setting, the both-present rate and minimum similarity as "value [95 % interval]", then on − off
    (in bold when its interval excludes 0)."""
    lines = [
        "| setting | both present ↑ | min similarity ↑ | concept IA ↑ | best unrelated IA | s / image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for setting, r in results.items():
        shown = statistics.intervals[setting]
        lines.append(
            f"| {setting} | {shown['both_present']} | {shown['min_similarity'].format('.4f')} | "
            f"{r.concept_ia:.4f} | {r.unrelated_ia:.4f} | {r.seconds_per_image:.3f} |"
        )
    cells = []
    for measure, fmt in (("both_present", "+.3f"), ("min_similarity", "+.4f")):
        paired = statistics.paired[measure]
        text = paired.difference.format(fmt)
        cells.append(f"**{text}**" if paired.excludes_zero else text)
    lines.append(f"| on − off | {cells[0]} | {cells[1]} | | | |")
    return "\n".join(lines)


def describe_guided(config: MultiConfig) -> str:
    """What the "on" setting changes: CAA + OAA, with the --guided settings."""
    shown = {"caa": "true", "oaa": "true", **dict(config.guided)}
    return ", ".join(f"{key}={value}" for key, value in shown.items())


def per_concept_table(results: dict[str, SettingResult]) -> str:
    """Each learned concept's IA in the pairs, guidance off and on."""
    names = list(next(iter(results.values())).per_concept_ia)
    lines = ["| concept | " + " | ".join(f"IA {s}" for s in results) + " |", "|---|" + "---:|" * len(results)]
    for name in names:
        cells = " | ".join(f"{r.per_concept_ia[name]:.4f}" for r in results.values())
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-concept benchmark (--multi)")
    group.add_argument(
        "--images-per-pair", type=int, default=4, help="seeds per pair, the same off and on (default 4)"
    )
    group.add_argument(
        "--guided",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a GenerateConfig setting of the guided run, e.g. attention_step_size=100 (default: defaults)",
    )
    group.add_argument(
        "--pair-colors",
        default=",".join(MultiConfig.colors),
        help="backgrounds named in the pair prompts, each with every seed (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    config = MultiConfig(
        concepts=args.concepts or MultiConfig.concepts,
        method=(args.methods.split(",")[0].strip() if args.methods else MultiConfig.method),
        steps=args.steps or MultiConfig.steps,
        images_per_pair=args.images_per_pair,
        seed=args.seed,
        sample_steps=args.sample_steps or MultiConfig.sample_steps,
        guidance_scale=MultiConfig.guidance_scale if args.guidance is None else args.guidance,
        guided=tuple(parse_pairs(args.guided).items()),
        colors=tuple(color.strip() for color in args.pair_colors.split(",") if color.strip()),
    )
    everyone = load_concepts(args.concept_dir or BUNDLED_CONCEPTS)
    if args.examples:
        config = dataclasses.replace(config, names=tuple(c.name for c in examples_of(everyone)))
    base = get_base(BaseConfig(model=args.model, device=args.device, compile=compile_requested()))
    clip = EvalClip.load(args.eval_clip, base.device)
    identity = None if args.eval_identity == "clip" else IdentityEncoder.load(args.eval_identity, base.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results, grid = run_multi(base, clip, everyone, config, out, identity=identity)
    statistics = multi_statistics(results, args.resamples)
    command = "python -m lifelong.bench " + shlex.join(args.argv)
    document = {
        "command": command,
        "model": base.name,
        "config": asdict(config),
        "settings": {s: asdict(r) for s, r in results.items()},
        "statistics": asdict(statistics) | {"resamples": args.resamples},
    }
    write_json(out / "multi.json", document)
    atomic_write(out / "multi_grid.png", lambda tmp: grid.save(tmp, format="PNG"))
    report = (
        f"# Two concepts in one image\n\n`{command}`\n\n{table(results, statistics)}\n\n"
        f"off: plain sampling; on: {describe_guided(config)}.\n\n"
        f"[low, high]: 95 % interval, percentile bootstrap ({args.resamples} resamples) over the pairs and, "
        "within each, its seeds; on − off is paired on the same pairs and seeds (**bold**: excludes 0). "
        "Min similarity: per image, the lower of its two concepts' IA (Attend-and-Excite's measure).\n\n"
        f"{per_concept_table(results)}\n\n![pairs](multi_grid.png)\n"
    )

    def write_report(tmp: Path) -> None:
        tmp.write_text(report)

    atomic_write(out / "multi.md", write_report)
    print(table(results, statistics))
    print(f"wrote {out / 'multi.json'}, {out / 'multi.md'} and {out / 'multi_grid.png'}")
    return 0
