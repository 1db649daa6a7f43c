"""Did an earlier concept survive what was learned after it? One word, read from intervals.

The Forgetting tab samples each earlier concept's prompt with the same seeds right after it was learned
(checkpoint i) and now (the latest checkpoint). Per image it measures IA — the mean similarity to the
concept's own images — and the *unrelated level*: the highest mean similarity of the same image to any
other concept of the session. From the images (lifelong.stats, bootstrap over seeds) come intervals of

- the drop: IA right after learning minus IA now, paired seed by seed;
- the margin: IA minus the unrelated level, right after learning and now.

The word, in this order:

- **too few images**: fewer than ``MIN_IMAGES`` images, too few for an interval;
- **not learned**: right after learning, the margin's interval does not lie above 0 — the concept's images
  were already no closer to its own images than to another concept's, so there is nothing to forget;
- **kept**: the drop's interval includes 0 (or lies below it), or lies entirely below ``SMALL_DROP``;
- **faded**: the drop's interval lies above 0 (and is not entirely small), but the margin now still lies
  above 0: the concept is weaker, yet still clearly itself;
- **forgotten**: the drop's interval lies above 0 and the margin now does not lie above 0: its images are
  no longer distinguishable from another concept's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lifelong.stats import RESAMPLES, Interval, cluster_bootstrap

KEPT, FADED, FORGOTTEN = "kept", "faded", "forgotten"
NOT_LEARNED, TOO_FEW = "not learned", "too few images"
SMALL_DROP = 0.02  # an IA loss this small is no loss worth a word (issue 16's smallest difference to show)
MIN_IMAGES = 3  # fewer: a bootstrap over seeds has almost nothing to resample

_REASONS = {
    TOO_FEW: f"fewer than {MIN_IMAGES} images: use more images per concept for an interval",
    NOT_LEARNED: "right after learning it was not yet clearly closer to its own images than to another concept's",
    KEPT: "the drop's interval includes 0 or stays below {small}",
    FADED: "it dropped, but is still clearly closer to its own images than to another concept's",
    FORGOTTEN: "it dropped, and is now no closer to its own images than to another concept's",
}


def word(drop: Interval, margin_after: Interval, margin_now: Interval, images: int) -> str:
    """The word for one concept (the rules of the module docstring, in their order)."""
    if images < MIN_IMAGES:
        return TOO_FEW
    if margin_after.low <= 0:
        return NOT_LEARNED
    if drop.low <= 0 or drop.high < SMALL_DROP:
        return KEPT
    return FADED if margin_now.low > 0 else FORGOTTEN


@dataclass(frozen=True)
class Retention:
    """One earlier concept's IA right after learning and now, the intervals the word is read from, and
    the word."""

    after: Interval  # IA right after learning
    now: Interval  # IA at the latest checkpoint
    drop: Interval  # after − now, seed by seed
    margin_after: Interval  # IA − unrelated level, right after learning
    margin_now: Interval  # IA − unrelated level, now
    images: int
    word: str

    @property
    def reason(self) -> str:
        return _REASONS[self.word].format(small=SMALL_DROP)


def retention(
    after: Sequence[float],
    now: Sequence[float],
    unrelated_after: Sequence[float],
    unrelated_now: Sequence[float],
    resamples: int = RESAMPLES,
) -> Retention:
    """Intervals and word from per-image values: IA and unrelated level of the images right after
    learning and now; entry k of each is the image of seed k."""
    values = {
        "after": np.asarray(after, dtype=float),
        "now": np.asarray(now, dtype=float),
        "unrelated_after": np.asarray(unrelated_after, dtype=float),
        "unrelated_now": np.asarray(unrelated_now, dtype=float),
    }
    if len({v.shape for v in values.values()}) != 1:
        raise ValueError("every per-image list needs one value per seed")

    def interval(samples: np.ndarray) -> Interval:
        return cluster_bootstrap(samples[None], resamples=resamples)  # one concept: over its seeds

    drop = interval(values["after"] - values["now"])
    margin_after = interval(values["after"] - values["unrelated_after"])
    margin_now = interval(values["now"] - values["unrelated_now"])
    images = len(values["after"])
    return Retention(
        interval(values["after"]),
        interval(values["now"]),
        drop,
        margin_after,
        margin_now,
        images,
        word(drop, margin_after, margin_now, images),
    )
