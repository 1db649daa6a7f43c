"""A method setting: its default (which fixes its type), a one-line description and optional bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lifelong.errors import UnknownMethodError
from lifelong.overrides import coerce

Value = bool | int | float | str


@dataclass(frozen=True)
class Setting:
    default: Value
    description: str
    low: float | None = None
    high: float | None = None  # a cap: memory or compute grows with the value

    def convert(self, key: str, value: Any) -> Value:
        """``value`` as the default's type, within bounds, or an UnknownMethodError that says why not."""
        kind = type(self.default)
        if kind is bool:
            value = coerce(str(value))
            if not isinstance(value, bool):
                raise UnknownMethodError(f"{key} must be true or false.")
            return value
        try:
            converted = kind(value)
        except (TypeError, ValueError) as error:
            raise UnknownMethodError(f"{key}={value!r} is not a valid {kind.__name__}.") from error
        if kind is int and float(value) != converted:
            raise UnknownMethodError(f"{key}={value!r} must be a whole number.")
        if isinstance(converted, int | float) and (
            (self.low is not None and converted < self.low)
            or (self.high is not None and converted > self.high)
        ):
            low = "" if self.low is None else f"{self.low:g}"
            high = "" if self.high is None else f"{self.high:g}"
            raise UnknownMethodError(f"{key}={value!r} is outside {low}–{high}.")
        return converted
