"""Set dataclass config fields from strings ("steps=100"), as the CLI's --set and the UI's forms do."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, get_type_hints

from lifelong.errors import InvalidSettingError

C = TypeVar("C")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def coerce(text: str) -> bool | int | float | str:
    """The most specific of bool, int, float, str that ``text`` spells."""
    lowered = text.strip().lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (bool, int, float or str; others pass through), or an InvalidSettingError."""
    if hint is bool:
        value = coerce(str(value))
        if not isinstance(value, bool):
            raise InvalidSettingError(f"{key} must be true or false.")
        return value
    if hint in (int, float, str):
        try:
            converted = hint(value)
        except (TypeError, ValueError) as error:
            raise InvalidSettingError(f"{key}={value!r} is not a valid {hint.__name__}.") from error
        if hint is int and not isinstance(value, str) and float(value) != converted:
            raise InvalidSettingError(f"{key}={value!r} must be a whole number.")
        return converted
    return value


def override(config: C, values: dict[str, Any]) -> C:
    """A copy of ``config`` with fields replaced; keys that are not fields go to its ``settings`` dict."""
    hints = get_type_hints(type(config))
    fields = {field.name for field in dataclasses.fields(config)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        if key in fields and key != "settings":
            changes[key] = convert(value, hints[key], key)
        elif "settings" in fields:
            extra[key] = coerce(value) if isinstance(value, str) else value
        else:
            raise InvalidSettingError(f"unknown setting {key!r}; known: {', '.join(sorted(fields))}.")
    if extra:
        changes["settings"] = {**config.settings, **extra}  # type: ignore[attr-defined]
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """["steps=100", "weight=0.5"] -> {"steps": "100", "weight": "0.5"}."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidSettingError(f"--set takes key=value, got {pair!r}.")
        result[key.strip()] = value.strip()
    return result
