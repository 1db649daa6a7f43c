"""A method setting: its default (which fixes its type), a one-line description and optional bounds; and
what a mechanism's settings cost (:class:`Cost`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lifelong.errors import InvalidSettingError
from lifelong.overrides import convert

Value = bool | int | float | str

GUIDED = 2  # UNet passes per sampler step of one image with classifier-free guidance


@dataclass(frozen=True)
class Cost:
    """What a mechanism adds to learning one concept, in UNet image passes (lifelong.limits' unit): per
    training step, and once (the samples it draws before or after training)."""

    per_step: float = 0.0
    once: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.per_step + other.per_step, self.once + other.once)


@dataclass(frozen=True)
class Setting:
    default: Value
    description: str
    low: float | None = None
    high: float | None = None  # a cap: memory or compute grows with the value

    def convert(self, key: str, value: Any) -> Value:
        """``value`` as the default's type, within bounds, or an InvalidSettingError that says why not."""
        converted = convert(value, type(self.default), key)
        if (
            isinstance(converted, int | float)
            and not isinstance(converted, bool)
            and (
                (self.low is not None and converted < self.low)
                or (self.high is not None and converted > self.high)
            )
        ):
            low = "" if self.low is None else f"{self.low:g}"
            high = "" if self.high is None else f"{self.high:g}"
            raise InvalidSettingError(f"{key}={value!r} is outside {low}–{high}.")
        return converted
