"""The session manifest's schema: every field's type, length and count, checked before anything it names
is opened.

A manifest may come from a stranger's file, so nothing in it is trusted: the concept count is checked
against the base's slots before any checkpoint is touched, and a concept's files are not paths the file
chooses but the ones its name implies (``concept_files``), so a manifest can only name files of its own
concepts, each once.
"""

from __future__ import annotations

import math
from typing import Any

from lifelong.errors import InvalidConceptNameError, InvalidPromptError, SessionFormatError
from lifelong.intake import MAX_IMAGES, NAME_PATTERN, validate_class_word
from lifelong.prompts import TOKEN_PATTERN, check_captions, check_prompt

FORMAT = "lifelong-session"
VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20  # 32 concepts of 20 images take ~100 kB
MAX_DEPTH = 6  # manifest > concepts > concept > settings > method settings
MAX_PROMPTS = 16
MAX_SETTINGS = 64
MAX_TEXT = 1000  # any other string field
_TOP = {"format", "version", "base_model", "concepts"}
_REQUIRED = {"name", "class_word", "method", "images", "checkpoint", "prompts"}
_OPTIONAL = {"captions", "settings", "stacked", "seconds", "final_loss", "created"}


def image_file(name: str, index: int) -> str:
    return f"concepts/{name}/images/{index}.png"


def checkpoint_file(name: str) -> str:
    return f"concepts/{name}/checkpoint.safetensors"


def concept_files(entry: dict[str, Any]) -> list[str]:
    """The files a checked concept entry names: its images, then its checkpoint."""
    return [*entry["images"], entry["checkpoint"]]


def check_manifest(data: Any, max_concepts: int | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The base model name and the concept entries of a manifest, or a SessionFormatError naming the
    first thing wrong with it (never a server path)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SessionFormatError("this is not a Lifelong Studio session (its manifest is not ours).")
    _no_unknown_keys(data, _TOP, "the manifest")
    version = data.get("version")
    if type(version) is not int:
        raise SessionFormatError(
            f"the manifest's version is {_kind(version)}; this app reads version {VERSION} (a whole number)."
        )
    if version != VERSION:
        raise SessionFormatError(
            f"the session file has format version {version}; this app reads version {VERSION} only."
        )
    base_model = _text(data.get("base_model", ""), "the manifest's base model", 200)
    concepts = data.get("concepts", [])
    if not isinstance(concepts, list):
        raise SessionFormatError(f"the manifest's concepts are {_kind(concepts)}, not a list.")
    if max_concepts is not None and len(concepts) > max_concepts:
        raise SessionFormatError(
            f"this session has {len(concepts)} concepts; this app holds at most {max_concepts}."
        )
    entries: list[dict[str, Any]] = []
    for index, item in enumerate(concepts, start=1):
        entries.append(_check_concept(item, index, [entry["name"] for entry in entries]))
    for entry in entries:  # a concept's prompts are used at its own checkpoint: they name it or earlier ones
        known = [other["name"] for other in entries[: entries.index(entry) + 1]]
        for prompt in entry["prompts"]:
            named = [name for name in TOKEN_PATTERN.findall(prompt) if name not in known]
            if named:
                raise SessionFormatError(
                    f"a prompt of <{entry['name']}> in the manifest names <{named[0]}>, which is not "
                    "learned before it."
                )
    return base_model, entries


def _check_concept(item: Any, index: int, earlier: list[str]) -> dict[str, Any]:
    where = f"concept {index} of the manifest"
    if not isinstance(item, dict):
        raise SessionFormatError(f"{where} is {_kind(item)}, not an entry.")
    missing = sorted(_REQUIRED - set(item))
    if missing:
        raise SessionFormatError(f"{where} has no {missing[0]!r}.")
    _no_unknown_keys(item, _REQUIRED | _OPTIONAL, where)
    name = _text(item["name"], f"the name of {where}", 32)
    if not NAME_PATTERN.match(name):
        raise SessionFormatError(f"{where} has a name that is not a valid concept name.")
    if name in earlier:
        raise SessionFormatError(f"the manifest names <{name}> twice.")
    where = f"<{name}> in the manifest"
    class_word = _text(item["class_word"], f"the class word of {where}", 40)
    try:
        plain = validate_class_word(class_word) == class_word
    except InvalidConceptNameError:
        plain = False
    if not plain:
        raise SessionFormatError(f"{where} has a class word that is not a plain word.")
    method = _text(item["method"], f"the method of {where}", 100)
    images = _list(item["images"], f"the images of {where}", 1, MAX_IMAGES)
    if images != [image_file(name, i) for i in range(len(images))]:
        raise SessionFormatError(f"{where} names image files that are not its own.")
    if item["checkpoint"] != checkpoint_file(name):
        raise SessionFormatError(f"{where} names a checkpoint that is not its own.")
    prompts = _list(item["prompts"], f"the prompts of {where}", 1, MAX_PROMPTS)
    for prompt in prompts:
        try:
            check_prompt(_text(prompt, f"a prompt of {where}", MAX_TEXT), f"a prompt of {where}")
        except InvalidPromptError as error:
            raise SessionFormatError(str(error)) from error
    captions = _list(item.get("captions", []), f"the captions of {where}", 0, len(images))
    if captions:
        try:
            captions = check_captions(captions, len(images))
        except InvalidPromptError as error:
            raise SessionFormatError(f"{where}: {error}") from error
    entry = {
        "name": name,
        "class_word": class_word,
        "method": method,
        "images": images,
        "checkpoint": item["checkpoint"],
        "prompts": prompts,
        "captions": captions,
        "settings": _settings(item.get("settings", {}), f"the settings of {where}", nested=True),
        "stacked": _flag(item.get("stacked", True), f"'stacked' of {where}"),
        "seconds": _number(item.get("seconds", 0.0), f"the seconds of {where}", finite=True),
        "final_loss": _number(item.get("final_loss", math.nan), f"the final loss of {where}", finite=False),
        "created": _text(item.get("created", ""), f"the date of {where}", 64),
    }
    return entry


def _settings(value: Any, what: str, nested: bool) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > MAX_SETTINGS:
        raise SessionFormatError(f"{what} are not a table of at most {MAX_SETTINGS} values.")
    checked: dict[str, Any] = {}
    for key, item in value.items():
        _text(key, f"a setting name in {what}", 64)
        if nested and key == "settings":
            checked[key] = _settings(item, what, nested=False)
        elif isinstance(item, str):
            checked[key] = _text(item, what, MAX_TEXT)
        elif isinstance(item, bool | int | float):
            checked[key] = item
        else:
            raise SessionFormatError(f"{what} hold {_kind(item)} where a plain value belongs.")
    return checked


def _no_unknown_keys(item: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(item) - known)
    if unknown:
        raise SessionFormatError(f"{where} has an unknown field {_short(unknown[0])}.")


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise SessionFormatError(f"{what} is {_kind(value)}, not text.")
    if len(value) > limit:
        raise SessionFormatError(f"{what} is {len(value)} characters long; at most {limit} are allowed.")
    return value


def _list(value: Any, what: str, low: int, high: int) -> list[Any]:
    if not isinstance(value, list):
        raise SessionFormatError(f"{what} are {_kind(value)}, not a list.")
    if not low <= len(value) <= high:
        raise SessionFormatError(f"{what} number {len(value)}; between {low} and {high} are allowed.")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SessionFormatError(f"{what} is {_kind(value)}, not true or false.")
    return value


def _number(value: Any, what: str, finite: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SessionFormatError(f"{what} is {_kind(value)}, not a number.")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    if finite and not (math.isfinite(number) and 0.0 <= number <= 1e9):
        raise SessionFormatError(f"{what} is not a duration in seconds.")
    return number


def _kind(value: Any) -> str:
    """How a JSON value reads in a message: its type and a short excerpt."""
    names = {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a table",
    }
    if value is None:
        return "empty (null)"
    return f"{names.get(type(value), type(value).__name__)} {_short(value)}"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"
