"""Concepts kept as folders of images: the examples shipped in ``assets/concepts`` and a user's own.

A folder holds one subfolder of images per concept and, optionally, an ``index.json``
(``[{"name", "class_word", "example"}]``, in order; ``example`` marks the app's one-click examples). An
image may have a caption file beside it (``0.png`` and ``0.txt``, kohya's convention) saying what it shows besides the concept ("on a red background"). The app
offers the shipped ones as one-click examples; the benchmarks learn them in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lifelong.base import REPO_ROOT
from lifelong.intake import ImageSource, validate_name

BUNDLED_CONCEPTS = REPO_ROOT / "assets" / "concepts"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass(frozen=True)
class FolderConcept:
    """A concept to learn: a valid concept name, an optional class word and its reference images."""

    name: str
    class_word: str
    images: tuple[ImageSource, ...]
    captions: tuple[str, ...] = ()  # one per image, or none
    example: bool = False  # the index offers it as a one-click example

    @property
    def subject(self) -> str:
        """What TA's text says instead of the token: the class word, else the name."""
        return self.class_word or self.name.replace("_", " ").replace("-", " ")


def captions_of(images: list[Path]) -> tuple[str, ...]:
    """Each image's caption file's text ("" where it has none), or () when no image has one."""
    files = [image.with_suffix(".txt") for image in images]
    if not any(file.is_file() for file in files):
        return ()
    # read a little more than a caption may hold, so an oversized file is refused, not read whole
    return tuple(_head(file) if file.is_file() else "" for file in files)


def _head(file: Path, limit: int = 4096) -> str:
    with file.open(encoding="utf-8", errors="replace") as handle:
        return handle.read(limit).strip()


def load_concepts(folder: str | Path = BUNDLED_CONCEPTS, count: int | None = None) -> list[FolderConcept]:
    """Concepts from ``folder``: its ``index.json`` if it has one, else one subfolder of images per concept
    in name order (no class word). ``count`` takes the first ones.
    """
    folder = Path(folder)
    index = folder / "index.json"
    if index.exists():
        entries = [
            (item["name"], item.get("class_word", ""), bool(item.get("example", False)))
            for item in json.loads(index.read_text())
        ]
    else:
        entries = [(sub.name, "", False) for sub in sorted(folder.iterdir()) if sub.is_dir()]
    concepts = []
    for raw_name, class_word, example in entries:
        images = sorted(p for p in (folder / raw_name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{folder / raw_name} holds no PNG, JPEG or WebP images.")
        name = validate_name(raw_name.replace(" ", "_"))
        concepts.append(FolderConcept(name, class_word, tuple(images), captions_of(images), example))
    if count is not None:
        if count > len(concepts):
            raise ValueError(f"{folder} holds {len(concepts)} concepts; asked for {count}.")
        concepts = concepts[:count]
    return concepts


def examples_of(concepts: list[FolderConcept], limit: int = 4) -> list[FolderConcept]:
    """The concepts marked as examples, in order; where none is marked, the first ones."""
    return ([c for c in concepts if c.example] or concepts)[:limit]


def load_examples(folder: str | Path = BUNDLED_CONCEPTS, limit: int = 4) -> list[FolderConcept]:
    """The examples of ``folder`` (:func:`examples_of` its concepts)."""
    return examples_of(load_concepts(folder), limit)
