"""The lifelong benchmark: learn a sequence of concepts with each method, measure forgetting after each one.

For every method the same concepts are learned in the same order with the same seeds. After concept j the
eval images of every concept i ≤ j are generated (fixed prompts, fixed seeds) and compared with concept i's
reference images: that fills column j of the IA matrix. After the last concept, base-model prompts are
generated again and compared with the base model's images (base drift). Per method the results are also
written to ``methods/<method>.json`` so an interrupted run can be resumed.

Each figure is also kept per image (``*_images`` fields of :class:`MethodResult`): image k of a concept is
eval prompt k // images_per_prompt with seed seed + k % images_per_prompt, at every checkpoint and for
every method, so lifelong.bench.intervals can bootstrap over concepts and seeds and pair methods.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lifelong.base import BaseModel
from lifelong.bench.resources import PeakMemory
from lifelong.concepts import Session
from lifelong.errors import InvalidSettingError
from lifelong.files import write_json
from lifelong.folders import FolderConcept
from lifelong.generation import GenerateConfig, generate
from lifelong.intake import load_images
from lifelong.learner import LearnConfig, learn, learn_folder
from lifelong.methods import METHODS, get_method
from lifelong.metrics import (
    EvalClip,
    FeatureCache,
    IdentityEncoder,
    alignment_features,
    forgetting,
    image_alignments,
    image_features,
    paired_drifts,
    text_alignments,
    text_features,
)
from lifelong.overrides import override
from lifelong.prompts import with_article

# Base-model prompts for the drift measure: scenes of the bundled world whose words any SD-1.x model also
# reads as plain English; the benchmark's class words are added to them.
DRIFT_SCENES = (
    "a cat face on a blue background",
    "a hamburger on a red background",
    "a sailboat on a yellow background",
    "a sunflower on a purple background",
    "an elephant on a green background",
    "a guitar on a white background",
)
EVAL_COLORS = ("blue", "yellow")
LEARN_FIELDS = {f.name for f in fields(LearnConfig)} - {"method", "settings", "steps", "seed"}
REFERENCE = "images/reference/{i}.png"  # concept i's first reference image, for the before/after grid
# 2: per-image samples in MethodResult. Part of the setup, so --resume never reuses a result without them.
RESULTS_FORMAT = 2


def eval_prompts(concept: FolderConcept, colors: Sequence[str] = EVAL_COLORS) -> list[tuple[str, str]]:
    """(prompt naming the concept's token, the same prompt for TA with the token replaced by its subject)."""
    token = " ".join(f"<{concept.name}> {concept.class_word}".split())
    pairs = [(f"a {token}", with_article(concept.subject))]
    pairs += [
        (f"a {token} on a {color} background", f"{with_article(concept.subject)} on a {color} background")
        for color in colors
    ]
    return pairs


def drift_prompts(concepts: Sequence[FolderConcept]) -> list[str]:
    """Base-model prompts that name no concept: the class words, then the fixed scenes."""
    words = dict.fromkeys(c.class_word for c in concepts if c.class_word)
    return [*(f"{with_article(word)} on a gray background" for word in words), *DRIFT_SCENES]


@dataclass(frozen=True)
class SequenceConfig:
    """What one benchmark run fixes before any method is compared."""

    methods: tuple[str, ...]
    steps: int = LearnConfig.steps  # learning steps per concept: the app's, so concepts are learned
    images_per_prompt: int = 2
    seed: int = 0
    sample_steps: int = 20
    guidance_scale: float = GenerateConfig.guidance_scale
    colors: tuple[str, ...] = EVAL_COLORS
    # ("key", "value") pairs: LearnConfig fields for every method, method settings for the methods that
    # have them (e.g. ("clip", FOLDER) for the memory-based methods)
    overrides: tuple[tuple[str, str], ...] = ()

    def applicable(self, method: str) -> tuple[tuple[str, str], ...]:
        """The overrides that reach ``method``: LearnConfig fields, and the settings the method has."""
        known = get_method(method).settings()
        return tuple((key, value) for key, value in self.overrides if key in LEARN_FIELDS or key in known)

    def learn_config(self, method: str) -> LearnConfig:
        return override(
            LearnConfig(method=method, steps=self.steps, seed=self.seed), dict(self.applicable(method))
        )

    def check(self) -> None:
        """Refuse unknown methods and settings no method has before hours of work, not after. A setting of
        a method that is not in this run is allowed, so the parts of one split run share one command line."""
        known = {key for method in METHODS.values() for key in method.settings()}
        unknown = [key for key, _ in self.overrides if key not in LEARN_FIELDS and key not in known]
        if unknown:
            raise InvalidSettingError(f"no method has a setting {unknown[0]!r}.")
        for method in self.methods:
            get_method(method).resolve(dict(self.learn_config(method).settings))


@dataclass
class MethodResult:
    """One method's row of results.json (plus the file names of its before/after images)."""

    TA: float  # mean TA of concept i's images right after learning it
    TA_final: float  # mean TA of every concept's images after the last concept
    IA_own: float  # mean IA(i, i)
    IA_final: float  # mean IA(i, N)
    IAD: float
    TFR: float
    base_drift: float  # 1 − mean cosine, base model vs final model, same prompts and seeds
    IA_matrix: list[list[float | None]]
    seconds_per_concept: float  # wall time of learn() (with the method's after-learn work), no evaluation
    peak_memory_mb: float  # most memory held above the start while learning (see resources.PeakMemory)
    eval_seconds: float
    images: dict[str, str] = field(default_factory=dict)  # "<i>_after_<j>" -> path relative to --out
    # per image (see the module docstring); empty in results of format 1, which have no intervals
    IA_images: list[list[list[float] | None]] = field(default_factory=list)  # [i][j]: IA(i, j)'s images
    TA_images: list[list[float]] = field(default_factory=list)  # [i]: right after learning concept i
    TA_final_images: list[list[float]] = field(default_factory=list)  # [i]: after the last concept
    drift_images: list[list[float]] = field(default_factory=list)  # [drift prompt][seed]: 1 − cosine

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MethodResult:
        """Read back a saved row (format 1 or 2); null numbers (undefined, e.g. IAD of one concept) become
        NaN."""
        values: dict[str, Any] = {key: math.nan if value is None else value for key, value in data.items()}
        return cls(**values)


Log = Callable[[str], None]


class Evaluator:
    """Generates and scores the fixed eval images; reference and base-model features are cached."""

    def __init__(
        self,
        base: BaseModel,
        clip: EvalClip,
        concepts: Sequence[FolderConcept],
        config: SequenceConfig,
        identity: IdentityEncoder | None = None,
    ) -> None:
        self.base, self.clip, self.concepts, self.config = base, clip, concepts, config
        self.identity = identity  # IA's features (metrics.alignment_features); None: the CLIP's
        self.cache = FeatureCache()

    def generate_config(self, method: str | None = None) -> GenerateConfig:
        """Plain sampling settings, with the method's own generation settings when it declares some."""
        declared = dict(get_method(method).generate_settings) if method else {}
        return replace(
            GenerateConfig(**declared),  # type: ignore[arg-type]
            steps=self.config.sample_steps,
            guidance_scale=self.config.guidance_scale,
            num_images=self.config.images_per_prompt,
            seed=self.config.seed,
        )

    def references(self, i: int) -> torch.Tensor:
        concept = self.concepts[i]
        return self.cache.get(
            ("reference", concept.name),
            lambda: alignment_features(
                load_images(list(concept.images), self.base.resolution), self.clip, self.identity
            ),
        )

    def concept(
        self, session: Session, i: int, checkpoint: int, method: str | None
    ) -> tuple[list[float], list[float], Image.Image]:
        """IA(i, checkpoint) and TA of each of concept i's eval images, and the first image (first prompt,
        first seed)."""
        config = self.generate_config(method)
        images, texts = [], []
        for prompt, ta_text in eval_prompts(self.concepts[i], self.config.colors):
            images += generate(self.base, session, prompt, config, checkpoint)
            texts += [ta_text] * config.num_images
        ta = text_alignments(
            image_features(self.clip, images),
            self.cache.get(("text", *texts), lambda: text_features(self.clip, texts)),
        )
        ia = image_alignments(alignment_features(images, self.clip, self.identity), self.references(i))
        return ia.tolist(), ta.tolist(), images[0]

    def drift_images(
        self, session: Session, checkpoint: int | None, config: GenerateConfig
    ) -> list[Image.Image]:
        return [
            image
            for prompt in drift_prompts(self.concepts)
            for image in generate(self.base, session, prompt, config, checkpoint)
        ]

    def warm_up(self, out: Path) -> None:
        """A two-step learn and one generation in a throwaway session before anything is measured, so the
        first method does not pay the process's one-time allocations in its peak memory and time."""
        (out / "sessions").mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=".warm-up.", dir=out / "sessions"))  # runs may share --out
        session = Session.create(root, self.base.name)
        concept = self.concepts[0]
        learn(
            self.base, session, list(concept.images), concept.name, concept.class_word, LearnConfig(steps=2)
        )
        self.concept(session, 0, 1, None)
        shutil.rmtree(root)

    def base_drift(self, session: Session, method: str) -> list[list[float]]:
        """1 − cosine between the base model's and the final model's images, per drift prompt and seed.

        The base images use plain settings (no method ran on the base); the final model's use the method's.
        """
        plain = self.generate_config()
        before = self.cache.get(
            ("base-images",), lambda: image_features(self.clip, self.drift_images(session, 0, plain))
        )
        after = self.drift_images(session, None, self.generate_config(method))
        drifts = paired_drifts(before, image_features(self.clip, after))
        return drifts.reshape(-1, self.config.images_per_prompt).tolist()


def run_method(evaluator: Evaluator, method: str, out: Path, log: Log = print) -> MethodResult:
    """Learn the whole sequence with ``method`` in a fresh session under ``out/sessions/<method>``."""
    base, concepts, config = evaluator.base, evaluator.concepts, evaluator.config
    root = out / "sessions" / method
    shutil.rmtree(root, ignore_errors=True)
    session = Session.create(root, base.name)
    n = len(concepts)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    samples: list[list[list[float] | None]] = [[None] * n for _ in range(n)]
    ta_own: list[list[float]] = [[] for _ in range(n)]
    ta_final: list[list[float]] = [[] for _ in range(n)]
    seconds, peaks, eval_seconds = [], [], 0.0
    images: dict[str, str] = {}
    for j, concept in enumerate(concepts):
        learn_config = config.learn_config(method)
        started = time.perf_counter()
        with PeakMemory(base.device) as memory:
            learn_folder(base, session, concept, learn_config)
        seconds.append(time.perf_counter() - started)  # all of it: what a method stores after learning too
        peaks.append(memory.peak_mb)
        started = time.perf_counter()
        for i in range(j + 1):
            ia, ta, first = evaluator.concept(session, i, j + 1, method)
            matrix[i][j], samples[i][j] = _mean(ia), ia
            if i == j:
                ta_own[i] = ta
            if j == n - 1:
                ta_final[i] = ta
            if i == j or j == n - 1:
                relative = f"images/{method}/{i}_after_{j}.png"
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                first.save(out / relative)
                images[f"{i}_after_{j}"] = relative
        eval_seconds += time.perf_counter() - started
        row = " ".join(f"{matrix[i][j]:.3f}" for i in range(j + 1))
        log(f"[{method}] {j + 1}/{n} learned <{concept.name}> in {seconds[-1]:.1f} s; IA(·, {j + 1}) = {row}")
    started = time.perf_counter()
    drift = evaluator.base_drift(session, method)
    eval_seconds += time.perf_counter() - started
    summary = forgetting(matrix)
    return MethodResult(
        TA=sum(map(_mean, ta_own)) / n,
        TA_final=sum(map(_mean, ta_final)) / n,
        IA_own=summary.ia_own,
        IA_final=summary.ia_final,
        IAD=summary.iad,
        TFR=summary.tfr,
        base_drift=sum(map(_mean, drift)) / len(drift),
        IA_matrix=matrix,
        seconds_per_concept=sum(seconds) / n,
        peak_memory_mb=max(peaks),
        eval_seconds=eval_seconds,
        images=images,
        IA_images=samples,
        TA_images=ta_own,
        TA_final_images=ta_final,
        drift_images=drift,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def finite_or_none(value: object) -> object:
    """JSON has no NaN: undefined numbers (IAD of a one-concept run) are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    return value


def setup_record(
    config: SequenceConfig, model: str, eval_clip: str, concepts: Sequence[FolderConcept]
) -> dict[str, object]:
    """Everything fixed before comparing methods; a resumed method must have been run with the same."""
    return {
        "results_format": RESULTS_FORMAT,
        "config": {k: v for k, v in asdict(config).items() if k != "methods"},
        "model": model,
        "eval_clip": eval_clip,
        "concepts": [
            {"name": c.name, "class_word": c.class_word, "images": [str(p) for p in c.images]}
            for c in concepts
        ],
        "eval_prompts": {c.name: [p for p, _ in eval_prompts(c, config.colors)] for c in concepts},
        "drift_prompts": drift_prompts(concepts),
    }


def run_sequence(
    base: BaseModel,
    clip: EvalClip,
    concepts: Sequence[FolderConcept],
    config: SequenceConfig,
    out: Path,
    setup: dict[str, object],
    resume: bool = False,
    log: Log = print,
    identity: IdentityEncoder | None = None,
) -> dict[str, MethodResult]:
    """Run every method of ``config`` on the sequence; returns results by method name. IA uses
    ``identity``'s features (the CLIP's image tower's without one)."""
    if len(concepts) > len(base.slot_token_ids):
        raise ValueError(
            f"the base holds {len(base.slot_token_ids)} concept slots; asked for {len(concepts)}."
        )
    config.check()
    evaluator = Evaluator(base, clip, concepts, config, identity)
    for i, concept in enumerate(concepts):
        path = out / REFERENCE.format(i=i)
        path.parent.mkdir(parents=True, exist_ok=True)
        load_images(list(concept.images[:1]), base.resolution)[0].save(path)
    evaluator.warm_up(out)
    results = {}
    for method in config.methods:
        saved = out / "methods" / f"{method}.json"
        own = method_setup(setup, config, method)
        if resume and saved.exists():
            record = json.loads(saved.read_text())
            if record.get("setup") == json.loads(json.dumps(finite_or_none(own))):
                log(f"[{method}] reusing {saved}")
                results[method] = MethodResult.from_json(record["result"])
                continue
        results[method] = run_method(evaluator, method, out, log)
        write_json(saved, finite_or_none({"setup": own, "result": asdict(results[method])}))
    return results


def method_setup(setup: dict[str, object], config: SequenceConfig, method: str) -> dict[str, object]:
    """What one method's result depends on: the run's setup with only the overrides that reach it, so a
    run that sets, e.g., a dfkd setting can reuse finetune's result from a run without it."""
    fixed = dict(setup["config"])  # type: ignore[call-overload]
    fixed["overrides"] = [list(pair) for pair in config.applicable(method)]
    return {**setup, "config": fixed}


def results_json(setup: dict[str, object], results: dict[str, MethodResult]) -> dict[str, object]:
    """The results.json document: the fixed setup, then per method its metrics."""
    document = setup | {"methods": {name: asdict(result) for name, result in results.items()}}
    return finite_or_none(document)  # type: ignore[return-value]
