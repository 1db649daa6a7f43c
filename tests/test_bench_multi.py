"""The multi-concept benchmark (``python -m lifelong.bench --multi``) in miniature: tiny pipeline, tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import pattern_images
from PIL import Image
from tiny_clip import tiny_clip

from lifelong.bench.cli import build_parser
from lifelong.bench.multi import (
    MultiConfig,
    multi_statistics,
    pair_prompt,
    peak_crop,
    per_concept_table,
    run_multi,
    table,
)
from lifelong.folders import FolderConcept


def _recoloured(order: tuple[int, int, int], seed: int) -> tuple[Image.Image, ...]:
    return tuple(
        Image.fromarray(np.asarray(im)[:, :, list(order)].copy()) for im in pattern_images(seed=seed)
    )


def test_peak_crop_is_half_the_image_around_the_peak_and_stays_inside():
    image = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    heat = torch.zeros(8, 8)
    heat[0, 0] = 1.0
    assert np.array_equal(np.asarray(peak_crop(image, heat)), np.asarray(image)[:32, :32])
    heat = torch.zeros(8, 8)
    heat[4, 7] = 1.0  # centre (60, 36): clamped to the right edge
    assert np.array_equal(np.asarray(peak_crop(image, heat)), np.asarray(image)[20:52, 32:64])


def test_side_by_side_crop_is_a_whole_square_around_the_peak():
    image = Image.fromarray(np.arange(64 * 128 * 3, dtype=np.uint8).reshape(64, 128, 3))
    heat = torch.zeros(8, 16)
    heat[3, 12] = 1.0  # centre (100, 28): the right square's whole height, clamped to the right edge
    assert np.array_equal(np.asarray(peak_crop(image, heat)), np.asarray(image)[:, 64:])
    heat = torch.zeros(8, 16)
    heat[3, 7] = 1.0  # centre (60, 28): a square across the seam, as the map says
    assert np.array_equal(np.asarray(peak_crop(image, heat)), np.asarray(image)[:, 28:92])


def test_multi_benchmark_reports_both_settings_on_the_same_seeds(tiny_base, tmp_path):
    everyone = [
        FolderConcept("rex", "dog", tuple(pattern_images())),
        FolderConcept("mug", "mug", _recoloured((2, 1, 0), 1)),
        FolderConcept("toy", "toy", _recoloured((1, 2, 0), 2)),
    ]
    config = MultiConfig(  # two of the three by name: "mug" is only an unrelated concept here
        names=("rex", "toy"),
        steps=2,
        images_per_pair=1,
        sample_steps=3,
        guided=(("attention_steps", "2"),),
        colors=("blue", "yellow"),  # one seed on each background: two images of the pair
    )
    results, grid = run_multi(tiny_base, tiny_clip(), everyone, config, tmp_path, log=lambda _: None)
    assert set(results) == {"off", "on"}
    for result in results.values():
        assert result.both_present in (0.0, 0.5, 1.0)  # 2 images of the one pair
        assert -1.0 <= result.concept_ia <= 1.0 and -1.0 <= result.unrelated_ia <= 1.0
        assert result.seconds_per_image > 0
        assert set(result.per_concept_ia) == {"rex", "toy"}
        assert sum(result.per_concept_ia.values()) / 2 == pytest.approx(result.concept_ia)
        shape = (1, 2)  # pair × (colour, seed)
        assert np.shape(result.present_images) == np.shape(result.minimum_images) == shape
        assert result.both_present == pytest.approx(np.mean(result.present_images))
        assert result.min_similarity == pytest.approx(np.mean(result.minimum_images))
        assert result.min_similarity <= result.concept_ia + 1e-6  # the weaker concept of each image
    statistics = multi_statistics(results, resamples=200)
    for setting, result in results.items():
        interval = statistics.intervals[setting]["min_similarity"]
        assert interval.mean == pytest.approx(result.min_similarity) and interval.low <= interval.high
    paired = statistics.paired["both_present"]
    assert paired.difference.mean == pytest.approx(results["on"].both_present - results["off"].both_present)
    # one row (one pair): off image, its two maps, on image, its two maps
    assert grid.size == (130 + 6 * 96, 14 + 96)
    shown = table(results, statistics)
    assert "| on |" in shown and "| on − off |" in shown and "| toy |" in per_concept_table(results)
    assert f"| off | {statistics.intervals['off']['both_present']} |" in shown
    assert (
        pair_prompt(everyone[0], everyone[1], "white") == "a <rex> dog and a <mug> mug on a white background"
    )
    args = build_parser().parse_args(
        ["--multi", "--out", str(tmp_path), "--images-per-pair", "3", "--guided", "attention_step_size=50"]
    )
    assert args.multi and args.images_per_pair == 3 and args.guided == ["attention_step_size=50"]
