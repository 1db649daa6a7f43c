"""Bootstrap intervals for the benchmark's and the app's figures (numpy only).

Every figure we report is a mean over concepts of a mean over each concept's eval images (its prompts ×
seeds). Its uncertainty has two sources: which concepts were drawn, and which seeds each one got. The
two-level (cluster) percentile bootstrap resamples both: draw the concepts with replacement, then, for each
drawn concept, its images with replacement, and recompute the figure; the 2.5th and 97.5th percentiles of
``resamples`` recomputations are the 95 % interval. Resampling both levels counts the seed noise in the
concept means a second time, so the interval is a little wide rather than too narrow (Davison & Hinkley,
*Bootstrap Methods*, 1997, §3.8); with one "concept" (e.g. one entry IA(i, j)) it is the ordinary
bootstrap over images. Images of a concept are treated as exchangeable, prompts included.

A paired comparison resamples the same (concept, image) indices for a method and the baseline (same
concepts, prompts and seeds), so what both share — a hard concept, an unlucky seed — cancels out of the
difference.

Samples are arrays of shape (concepts, images) or (concepts, images, quantities); a *statistic* maps the
per-concept means, shape (..., concepts, quantities), to the figure, shape (...). The default is the mean
over concepts of quantity 0; a ratio such as TFR needs two quantities (IA right after learning, IA at the
end) so that it is formed from the resampled means, not from per-image ratios near 0/0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

Statistic = Callable[[np.ndarray], np.ndarray]
RESAMPLES = 2000
SEED = 0  # one fixed seed: the same data always gives the same interval
LEVEL = 0.95
TARGET_HALF_WIDTH = 0.02  # the IA difference the benchmark should be able to show (issue 16)
_CHUNK = 4_000_000  # gathered values per resampling chunk (~32 MB of float64)


@dataclass(frozen=True)
class Interval:
    """A figure as measured and its bootstrap interval; NaN throughout when the figure is undefined."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return self.format()

    def format(self, spec: str = ".3f") -> str:
        """``0.412 [0.398, 0.427]`` (``spec`` as in format(), e.g. "+.4f"), or "n/a"."""
        if not math.isfinite(self.mean):
            return "n/a"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside the interval (False for an undefined figure)."""
        return self.low > value or self.high < value


UNDEFINED = Interval(math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class PairedComparison:
    """A method's figure minus the baseline's on the same concepts, prompts and seeds."""

    difference: Interval
    excludes_zero: bool  # the interval says the two differ (at the interval's level)

    def __str__(self) -> str:
        return self.difference.format("+.3f")


def mean_of_means(means: np.ndarray) -> np.ndarray:
    """The default statistic: the mean over concepts of each concept's mean of quantity 0."""
    return means[..., 0].mean(-1)


def drop_ratio(means: np.ndarray) -> np.ndarray:
    """TFR's statistic on quantities (before, after): mean over concepts of (before − after) / before."""
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 is an undefined figure: NaN says so
        return ((means[..., 0] - means[..., 1]) / means[..., 0]).mean(-1)


def _three_d(samples: ArrayLike) -> np.ndarray:
    values = np.asarray(samples, dtype=float)
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or 0 in values.shape:
        raise ValueError(
            f"samples must be (concepts, images[, quantities]) and non-empty; got {values.shape}"
        )
    return values


def cluster_bootstrap(
    samples: ArrayLike,
    statistic: Statistic = mean_of_means,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """The figure ``statistic`` computes, with its two-level percentile bootstrap interval (see the module
    docstring): concepts (axis 0) resampled with replacement, then each drawn concept's images (axis 1)."""
    values = _three_d(samples)
    concepts, images, quantities = values.shape
    point = float(statistic(values.mean(1)))
    if not math.isfinite(point):
        return UNDEFINED
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // (concepts * images * quantities))
    replicates = []
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        picked = rng.integers(concepts, size=(count, concepts))
        within = rng.integers(images, size=(count, concepts, images))
        replicates.append(statistic(values[picked[..., None], within].mean(2)))
    low, high = np.quantile(np.concatenate(replicates), [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(low), float(high))


def paired_comparison(
    method: ArrayLike,
    baseline: ArrayLike,
    statistic: Statistic = mean_of_means,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> PairedComparison:
    """``statistic(method) − statistic(baseline)``, both drawn on the same resampled (concept, image)
    indices. The arrays must have the same shape: entry (c, k) of both is concept c's image k made with
    the same prompt and seed."""
    ours, theirs = _three_d(method), _three_d(baseline)
    if ours.shape != theirs.shape:
        raise ValueError(f"paired samples differ in shape: {ours.shape} vs {theirs.shape}")
    split = ours.shape[2]

    def difference(means: np.ndarray) -> np.ndarray:
        return statistic(means[..., :split]) - statistic(means[..., split:])

    interval = cluster_bootstrap(np.concatenate([ours, theirs], axis=2), difference, resamples, seed, level)
    return PairedComparison(interval, interval.excludes(0.0))


@dataclass(frozen=True)
class SampleSize:
    """How many images per concept would bring a mean's interval to ± ``target``, from the measured
    variance: one-way random effects, Var(mean) = σ_b²/C + σ_w²/(C·n) for C concepts of n images each."""

    concepts: int  # C, as measured
    images: int  # n per concept, as measured
    between: float  # σ_b²: variance of the concepts' true means
    within: float  # σ_w²: variance of images around their concept's mean
    target: float
    images_needed: int | None  # n for ± target with C concepts; None: no n is enough (σ_b² dominates)
    concepts_needed: int  # C for ± target with n images each

    def half_width(self, images: int | None = None, level: float = LEVEL) -> float:
        """The normal-approximation half-width with ``images`` per concept (default: as measured)."""
        n = images or self.images
        z = NormalDist().inv_cdf((1 + level) / 2)
        return z * math.sqrt((self.between + self.within / n) / self.concepts)


def sample_size(samples: ArrayLike, target: float = TARGET_HALF_WIDTH, level: float = LEVEL) -> SampleSize:
    """Variance components of ``samples`` (concepts, images) and the image and concept counts that would
    make the 95 % half-width ``target``. σ_w² is the pooled within-concept variance; σ_b² is the variance of
    concept means less the share of it that σ_w² explains (0 when that is negative, or with one concept)."""
    values = _three_d(samples)[..., 0]
    concepts, images = values.shape
    within = float(values.var(axis=1, ddof=1).mean()) if images > 1 else 0.0
    spread = float(values.mean(1).var(ddof=1)) if concepts > 1 else 0.0
    between = max(0.0, spread - within / images)
    allowed = (target / NormalDist().inv_cdf((1 + level) / 2)) ** 2  # the variance the target allows
    room = allowed * concepts - between
    if within == 0.0:
        needed: int | None = 1 if room >= 0 else None
    else:
        needed = math.ceil(within / room) if room > 0 else None
    return SampleSize(
        concepts,
        images,
        between,
        within,
        target,
        needed,
        max(1, math.ceil((between + within / images) / allowed)),
    )
