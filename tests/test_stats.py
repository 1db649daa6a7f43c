"""The bootstrap on distributions whose intervals are known, the paired comparison, the sample-size plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lifelong.stats import (
    Interval,
    cluster_bootstrap,
    drop_ratio,
    paired_comparison,
    sample_size,
)


def test_normal_samples_give_mean_plus_minus_1_96_standard_errors():
    rng = np.random.default_rng(1)
    sigma, n = 0.1, 4000
    for shape in ((1, n), (n, 1)):  # all images of one concept, or one image each of n concepts
        values = rng.normal(0.4, sigma, size=shape)
        interval = cluster_bootstrap(values)
        assert interval.mean == pytest.approx(values.mean())
        assert interval.half_width == pytest.approx(1.96 * sigma / math.sqrt(n), rel=0.1)
        assert interval.low < interval.mean < interval.high
        assert (interval.low + interval.high) / 2 == pytest.approx(values.mean(), abs=3e-4)


def test_a_constant_sample_has_a_zero_width_interval_and_the_same_seed_the_same_interval():
    assert cluster_bootstrap(np.full((5, 4), 0.3)) == Interval(0.3, 0.3, 0.3)
    values = np.random.default_rng(2).normal(size=(6, 5))
    assert cluster_bootstrap(values) == cluster_bootstrap(values)
    assert cluster_bootstrap(values, resamples=500, seed=1) != cluster_bootstrap(
        values, resamples=500, seed=2
    )


def test_concepts_are_resampled_not_only_images():
    """Five concepts far apart, each with near-identical images: a bootstrap over images alone would give
    an interval of width ~0; over concepts it is ±1.96 × the standard error of the concept means (the
    percentile bootstrap of five values is a little narrower than the normal one)."""
    rng = np.random.default_rng(3)
    centres = np.array([0.1, 0.5, 0.3, 0.7, 0.2])
    values = centres[:, None] + rng.normal(0, 1e-3, size=(5, 8))
    interval = cluster_bootstrap(values)
    normal = 1.96 * centres.std(ddof=1) / math.sqrt(5)
    assert 0.7 * normal < interval.half_width < 1.1 * normal


def test_paired_comparison_finds_a_real_shift_and_none_between_identical_inputs():
    rng = np.random.default_rng(4)
    baseline = rng.normal(0.3, 0.1, size=(10, 12))
    shifted = baseline + 0.03 + rng.normal(0, 0.01, size=baseline.shape)  # same concepts and seeds
    found = paired_comparison(shifted, baseline)
    assert found.excludes_zero and found.difference.low > 0
    assert found.difference.mean == pytest.approx(0.03, abs=0.005)
    assert str(found).startswith("+0.03")
    same = paired_comparison(baseline, baseline)
    assert same.difference == Interval(0.0, 0.0, 0.0) and not same.excludes_zero
    other = rng.normal(0.3, 0.1, size=baseline.shape)  # no shift, independent noise
    assert not paired_comparison(other, baseline).excludes_zero
    with pytest.raises(ValueError, match="differ in shape"):
        paired_comparison(baseline[:5], baseline)


def test_a_ratio_statistic_uses_the_resampled_means_and_undefined_figures_say_so():
    before = np.full((4, 3), 0.5)
    after = np.full((4, 3), 0.4)
    assert cluster_bootstrap(np.stack([before, after], -1), drop_ratio).mean == pytest.approx(0.2)
    undefined = cluster_bootstrap(np.zeros((2, 3, 2)), drop_ratio)  # 0 / 0
    assert math.isnan(undefined.mean) and undefined.format() == "n/a" and not undefined.excludes(0.0)
    assert Interval(0.412, 0.398, 0.427).format() == "0.412 [0.398, 0.427]"


def test_sample_size_reads_the_variance_components():
    rng = np.random.default_rng(5)
    within = rng.normal(0, 0.1, size=(10, 400))  # no spread between concepts
    plan = sample_size(within)
    assert plan.within == pytest.approx(0.01, rel=0.05) and plan.between < 1e-4
    # 1.96 × √(0.01 / (10 n)) = 0.02 at n ≈ 9.6
    assert plan.images_needed == 10 and plan.half_width(10) <= 0.02 < plan.half_width(9)
    spread = np.linspace(-0.3, 0.3, 10)[:, None] + within[:, :4]
    wide = sample_size(spread)
    assert wide.images_needed is None  # the concepts differ too much: more images cannot help
    assert wide.concepts_needed > 10
