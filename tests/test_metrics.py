"""Metrics on a tiny real CLIP: features, the IA-matrix summary, drift, and the feature cache."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import pattern_images
from PIL import Image
from tiny_clip import tiny_clip

from lifelong.metrics import (
    FeatureCache,
    forgetting,
    image_alignments,
    image_features,
    paired_drifts,
    text_alignment,
    text_features,
)


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def test_image_features_are_normalised_and_independent_of_batching(clip):
    images = pattern_images(3) + [Image.new("RGB", (40, 40), (250, 250, 20))]
    whole = image_features(clip, images)
    pieces = image_features(clip, images, batch=3)
    assert whole.shape == (4, clip.model.config.projection_dim)
    assert torch.allclose(whole.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(whole, pieces, atol=1e-5)
    assert not whole.requires_grad


def test_alignment_is_highest_for_the_same_images(clip):
    discs = image_features(clip, pattern_images(3))
    flat = image_features(clip, [Image.new("RGB", (48, 48), (250, 250, 20))])
    assert image_alignments(discs, discs).mean() > image_alignments(flat, discs).mean()
    assert float(image_alignments(discs[:1], discs[:1])[0]) == pytest.approx(1.0, abs=1e-5)
    per_image = image_alignments(discs, torch.cat([discs, flat]))
    assert per_image.shape == (3,) and torch.allclose(per_image, (discs @ torch.cat([discs, flat]).T).mean(1))


def test_text_alignment_pairs_rows_and_text_features_differ_by_prompt(clip):
    texts = text_features(clip, ["a red dog", "a blue mug on the left"])
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert float(texts[0] @ texts[1]) < 0.999
    assert text_alignment(texts, texts) == pytest.approx(1.0, abs=1e-5)
    assert text_alignment(texts, texts.flip(0)) == pytest.approx(float(texts[0] @ texts[1]), abs=1e-5)


def test_paired_drift_is_zero_for_the_same_images_and_grows_with_change(clip):
    before = image_features(clip, pattern_images(2))
    changed = image_features(clip, [Image.new("RGB", (48, 48), (0, 0, 0))] * 2)
    assert torch.allclose(paired_drifts(before, before), torch.zeros(2), atol=1e-5)
    assert (paired_drifts(before, changed) > 1e-3).all()


def test_forgetting_summarises_a_known_matrix():
    matrix = [[0.8, 0.7, 0.6], [None, 0.9, 0.9], [None, None, 0.5]]
    result = forgetting(matrix)
    assert result.ia_own == pytest.approx((0.8 + 0.9 + 0.5) / 3)
    assert result.ia_final == pytest.approx((0.6 + 0.9 + 0.5) / 3)
    assert result.iad == pytest.approx((0.2 + 0.0) / 2)
    assert result.tfr == pytest.approx((0.2 / 0.8 + 0.0) / 2)


def test_forgetting_of_one_concept_is_undefined_and_bad_matrices_are_refused():
    assert math.isnan(forgetting([[0.7]]).iad)
    with pytest.raises(ValueError):
        forgetting([[0.7, None], [None, 0.6]])
    with pytest.raises(ValueError):
        forgetting([[0.7, 0.6]])


def test_feature_cache_computes_each_key_once():
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(1, 2)

    cache = FeatureCache()
    assert torch.equal(cache.get("octopus", compute), cache.get("octopus", compute))
    assert len(calls) == 1


def test_leave_one_out_identification_counts_nearest_other_centroids():
    from lifelong.metrics import leave_one_out_identification

    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0]]), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0], [0.1, 1.0]]), dim=-1)
    assert leave_one_out_identification([a, b]) == 1.0
    # an image of concept b that looks like a: one miss out of five
    b_odd = torch.cat([b, torch.nn.functional.normalize(torch.tensor([[1.0, 0.05]]), dim=-1)])
    assert leave_one_out_identification([a, b_odd]) == pytest.approx(5 / 6)
    with pytest.raises(ValueError):
        leave_one_out_identification([a])


def test_background_color_reads_the_border_not_the_object():
    from lifelong.colors import NAMED_COLORS
    from lifelong.metrics import background_color

    image = Image.new("RGB", (64, 64), NAMED_COLORS["blue"])
    image.paste(Image.new("RGB", (40, 40), NAMED_COLORS["yellow"]), (12, 12))
    assert background_color(image) == "blue"
    assert background_color(Image.new("RGB", (64, 64), (250, 220, 60))) == "yellow"
