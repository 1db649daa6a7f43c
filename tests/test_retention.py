"""The Forgetting tab's words follow their rules (lifelong.retention), on constructed intervals and images."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong.retention import (
    FADED,
    FORGOTTEN,
    KEPT,
    MIN_IMAGES,
    NOT_LEARNED,
    SMALL_DROP,
    TOO_FEW,
    retention,
    word,
)
from lifelong.stats import Interval

CLEAR = Interval(0.30, 0.25, 0.35)  # a margin well above the unrelated level
GONE = Interval(0.01, -0.03, 0.05)  # a margin that includes 0


@pytest.mark.parametrize(
    ("drop", "after", "now", "expected"),
    [
        (Interval(0.05, -0.01, 0.11), CLEAR, CLEAR, KEPT),  # the drop's interval includes 0
        (Interval(0.05, -0.01, 0.11), CLEAR, GONE, KEPT),  # ... even when now is unclear: no shown drop
        (Interval(-0.05, -0.08, -0.02), CLEAR, CLEAR, KEPT),  # it got better
        (Interval(0.01, 0.005, SMALL_DROP - 0.001), CLEAR, CLEAR, KEPT),  # a real but small drop
        (Interval(0.10, 0.06, 0.14), CLEAR, CLEAR, FADED),
        (Interval(0.015, 0.005, SMALL_DROP + 0.01), CLEAR, CLEAR, FADED),  # may be more than small
        (Interval(0.10, 0.06, 0.14), CLEAR, GONE, FORGOTTEN),
        (Interval(0.10, 0.06, 0.14), CLEAR, Interval(-0.1, -0.15, -0.05), FORGOTTEN),
        (Interval(0.10, 0.06, 0.14), GONE, GONE, NOT_LEARNED),  # nothing to forget
        (Interval(0.0, -0.01, 0.01), Interval(0.05, 0.0, 0.1), CLEAR, NOT_LEARNED),  # 0 is not "above"
    ],
)
def test_words_follow_the_rules(drop, after, now, expected):
    assert word(drop, after, now, MIN_IMAGES) == expected


def test_too_few_images_give_no_word():
    assert word(Interval(0.10, 0.06, 0.14), CLEAR, GONE, MIN_IMAGES - 1) == TOO_FEW


def test_retention_reads_intervals_from_paired_seeds():
    rng = np.random.default_rng(0)
    after = 0.6 + rng.normal(0, 0.02, 16)
    unrelated = 0.1 + rng.normal(0, 0.02, 16)
    same = retention(after, after, unrelated, unrelated)
    assert same.word == KEPT and same.drop == Interval(0.0, 0.0, 0.0)
    assert same.after.mean == pytest.approx(after.mean()) and same.images == 16
    faded = retention(after, after - 0.2, unrelated, unrelated)
    assert faded.word == FADED and faded.drop.low > SMALL_DROP
    assert "still clearly" in faded.reason
    noise = rng.normal(0, 0.02, 16)
    forgotten = retention(after, unrelated + noise - noise.mean(), unrelated, unrelated)  # as close as others
    assert forgotten.word == FORGOTTEN and forgotten.margin_now.low <= 0 < forgotten.margin_after.low
    never = retention(unrelated, unrelated, unrelated, unrelated)
    assert never.word == NOT_LEARNED
    with pytest.raises(ValueError, match="one value per seed"):
        retention(after, after[:3], unrelated, unrelated)
