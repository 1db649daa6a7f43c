"""Set dataclass config fields from strings ("steps=100"), as the CLI's --set and the UI's forms do."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, get_type_hints

from lifelong.errors import UnknownMethodError

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


def _convert(value: Any, hint: Any, key: str) -> Any:
    if hint is bool:
        value = coerce(str(value))
        if not isinstance(value, bool):
            raise UnknownMethodError(f"{key} must be true or false.")
        return value
    if hint in (int, float, str):
        try:
            return hint(value)
        except ValueError as error:
            raise UnknownMethodError(f"{key}={value!r} is not a valid {hint.__name__}.") from error
    return value


def override(config: C, values: dict[str, Any]) -> C:
    """A copy of ``config`` with fields replaced; keys that are not fields go to its ``settings`` dict."""
    hints = get_type_hints(type(config))
    fields = {field.name for field in dataclasses.fields(config)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        if key in fields and key != "settings":
            changes[key] = _convert(value, hints[key], key)
        elif "settings" in fields:
            extra[key] = coerce(value) if isinstance(value, str) else value
        else:
            raise UnknownMethodError(f"unknown setting {key!r}; known: {', '.join(sorted(fields))}.")
    if extra:
        changes["settings"] = {**config.settings, **extra}  # type: ignore[attr-defined]
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """["steps=100", "weight=0.5"] -> {"steps": "100", "weight": "0.5"}."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UnknownMethodError(f"--set takes key=value, got {pair!r}.")
        result[key.strip()] = value.strip()
    return result
