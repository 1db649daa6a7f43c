"""The lifelong benchmark's figures with 95 % intervals, and every method paired with the baseline.

From each method's per-image samples (lifelong.bench.sequence.MethodResult), lifelong.stats gives:

- every figure with its two-level bootstrap interval, over concepts and their images (prompts × seeds) —
  over drift prompts and their seeds for base drift. IAD is formed per (concept, image): IA(i, i) of an
  image minus IA(i, N) of the image with the same prompt and seed; TFR is formed from the resampled
  concept means (see lifelong.stats);
- each entry IA(i, j) with its interval over its own images (the forgetting curves' error bars);
- per method, its figure minus the baseline's on the same (concept, image) draws, and whether the
  interval excludes 0;
- sample-size plans: the half-width of IAD, and of the paired IA(i, N) and IAD differences, and the eval
  images per concept (or the concepts) that would bring each to ± ``lifelong.stats.TARGET_HALF_WIDTH``.

Results saved before per-image samples were kept (format 1) get no statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from lifelong.bench.sequence import MethodResult
from lifelong.stats import (
    RESAMPLES,
    Interval,
    PairedComparison,
    SampleSize,
    Statistic,
    cluster_bootstrap,
    drop_ratio,
    mean_of_means,
    paired_comparison,
    sample_size,
)

BASELINE = "finetune"
# results.json keys, in the order of the report's tables; a figure needs two or more concepts to exist
FIGURES = ("TA", "TA_final", "IA_own", "IA_final", "IAD", "TFR", "base_drift")
PLANNED = ("IA_final", "IAD")  # the paired differences whose sample sizes the report plans


@dataclass(frozen=True)
class Samples:
    """One figure's per-image values, (clusters, images[, quantities]), and the statistic that forms it."""

    values: np.ndarray
    statistic: Statistic = mean_of_means


@dataclass
class MethodStatistics:
    intervals: dict[str, Interval]  # figure -> value [95 % interval]
    curve: list[list[Interval | None]]  # IA(i, j) over its images; None where j < i
    paired: dict[str, PairedComparison] = field(default_factory=dict)  # method − baseline; empty for it
    plans: dict[str, SampleSize] = field(default_factory=dict)  # "IAD", "Δ IA_final", "Δ IAD"

    def to_json(self) -> dict[str, object]:
        return {
            "intervals": {name: asdict(interval) for name, interval in self.intervals.items()},
            "curve": [[None if cell is None else asdict(cell) for cell in row] for row in self.curve],
            "paired": {name: asdict(comparison) for name, comparison in self.paired.items()},
            "plans": {name: asdict(plan) for name, plan in self.plans.items()},
        }


def has_samples(result: MethodResult) -> bool:
    return bool(result.IA_images)


def figure_samples(result: MethodResult) -> dict[str, Samples]:
    """Each figure's samples; IAD and TFR only with two or more concepts."""
    n = len(result.IA_images)
    own = np.array([result.IA_images[i][i] for i in range(n)], dtype=float)
    final = np.array([result.IA_images[i][n - 1] for i in range(n)], dtype=float)
    figures = {
        "TA": Samples(np.array(result.TA_images, dtype=float)),
        "TA_final": Samples(np.array(result.TA_final_images, dtype=float)),
        "IA_own": Samples(own),
        "IA_final": Samples(final),
        "base_drift": Samples(np.array(result.drift_images, dtype=float)),
    }
    if n > 1:  # the last concept has nothing after it to be forgotten by
        figures["IAD"] = Samples(own[:-1] - final[:-1])
        figures["TFR"] = Samples(np.stack([own[:-1], final[:-1]], axis=-1), drop_ratio)
    return figures


def method_statistics(
    result: MethodResult, baseline: MethodResult | None = None, resamples: int = RESAMPLES
) -> MethodStatistics:
    """``result``'s intervals and curve; with ``baseline`` (another method of the same run), the paired
    differences and their sample-size plans too."""
    figures = figure_samples(result)
    intervals = {
        name: cluster_bootstrap(figures[name].values, figures[name].statistic, resamples)
        for name in FIGURES
        if name in figures
    }
    curve = [
        [None if cell is None else cluster_bootstrap([cell], resamples=resamples) for cell in row]
        for row in result.IA_images
    ]
    stats = MethodStatistics(intervals, curve)
    if "IAD" in figures:
        stats.plans["IAD"] = sample_size(figures["IAD"].values)
    if baseline is None:
        return stats
    theirs = figure_samples(baseline)
    for name in FIGURES:
        if name in figures:
            ours = figures[name]
            stats.paired[name] = paired_comparison(
                ours.values, theirs[name].values, ours.statistic, resamples
            )
    for name in PLANNED:
        if name in figures:
            stats.plans[f"Δ {name}"] = sample_size(figures[name].values - theirs[name].values)
    return stats


def run_statistics(
    results: dict[str, MethodResult], baseline: str = BASELINE, resamples: int = RESAMPLES
) -> dict[str, MethodStatistics]:
    """Statistics of every method that kept its samples, paired with ``baseline`` when it was run."""
    reference = results.get(baseline)
    paired = reference is not None and has_samples(reference)
    return {
        name: method_statistics(result, reference if paired and name != baseline else None, resamples)
        for name, result in results.items()
        if has_samples(result)
    }
