"""Concepts and sessions: one user's ordered sequence of learned concepts, on disk.

A session is a folder::

    manifest.json                       the commit point: a concept exists once the manifest names it
    concepts/<name>/images/<i>.png      the normalised images it was learned from
    concepts/<name>/checkpoint.safetensors   what learning it changed (ConceptDelta) + method extras

Checkpoint k is the model right after learning concept k (0 = the base model). It is composed from the
stored deltas, never stored as a model copy. ``export`` packs the folder into one zip file; ``import_file``
unpacks one, refusing anything that is not exactly our format.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from lifelong.adapters import KINDS, ConceptDelta, ModelState, compose
from lifelong.base import slot_token
from lifelong.errors import CheckpointError, DuplicateConceptError, InvalidPromptError, SessionFormatError
from lifelong.files import atomic_write, write_json, write_png, write_safetensors
from lifelong.intake import NAME_PATTERN

FORMAT = "lifelong-session"
CHECKPOINT_FORMAT = "lifelong-concept"
VERSION = 1
MANIFEST = "manifest.json"
TOKEN_PATTERN = re.compile(r"<([a-z0-9][a-z0-9_-]{0,31})>")
_EXPORT_SUFFIXES = {".json", ".png", ".safetensors"}
_MAX_EXPORT_BYTES = 4 << 30


@dataclass
class Concept:
    """One learned concept, as the manifest records it."""

    name: str
    class_word: str
    method: str
    images: list[str]
    checkpoint: str
    prompts: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    stacked: bool = True  # False: learned from the base and mixed in by the prompts that name it (routed)
    seconds: float = 0.0
    final_loss: float = float("nan")
    created: str = ""

    @property
    def token(self) -> str:
        return f"<{self.name}>"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Concept:
        try:
            concept = cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        except TypeError as error:
            raise SessionFormatError(f"the manifest has a damaged concept entry ({error}).") from error
        if not NAME_PATTERN.match(concept.name):
            raise SessionFormatError(
                f"the manifest names a concept {concept.name!r} that is not a valid name."
            )
        return concept


def _check_inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if root.resolve() not in path.parents:
        raise SessionFormatError(f"the manifest points outside the session: {relative!r}.")
    return path


def save_checkpoint(path: Path, delta: ConceptDelta, extras: dict[str, torch.Tensor] | None = None) -> None:
    tensors = {f"delta.{key}": value for key, value in delta.tensors.items()}
    tensors["embedding"] = delta.embedding
    tensors.update({f"extra.{key}": value for key, value in (extras or {}).items()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "version": str(VERSION),
        "kind": delta.kind,
    }
    write_safetensors(path, tensors, metadata)


def load_checkpoint(path: Path) -> tuple[ConceptDelta, dict[str, torch.Tensor]]:
    """Read a concept checkpoint (safetensors only, never pickle) and check it is ours."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT or metadata.get("kind") not in KINDS:
                raise SessionFormatError(f"{path.name} is not a Lifelong Studio concept checkpoint.")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as error:
        raise SessionFormatError(f"{path.name} is not a readable checkpoint ({error}).") from error
    if "embedding" not in tensors:
        raise SessionFormatError(f"{path.name} has no token embedding.")
    deltas = {key.removeprefix("delta."): value for key, value in tensors.items() if key.startswith("delta.")}
    extras = {key.removeprefix("extra."): value for key, value in tensors.items() if key.startswith("extra.")}
    return ConceptDelta(metadata["kind"], deltas, tensors["embedding"]), extras


class Session:
    """An ordered sequence of concepts in a folder, with the model state after each one."""

    def __init__(self, root: Path, base_model: str, concepts: list[Concept]) -> None:
        self.root = root
        self.base_model = base_model
        self.concepts = concepts
        self._cache: dict[str, tuple[ConceptDelta, dict[str, torch.Tensor]]] = {}

    # --- opening and saving -------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, base_model: str) -> Session:
        """Open the session in ``root``, or start an empty one there."""
        root = Path(root)
        if (root / MANIFEST).exists():
            return cls.open(root)
        session = cls(root, base_model, [])
        session._write_manifest()
        return session

    @classmethod
    def open(cls, root: str | Path) -> Session:
        root = Path(root)
        try:
            data = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError as error:
            raise SessionFormatError(f"{root} is not a session folder (no {MANIFEST}).") from error
        except (ValueError, UnicodeDecodeError) as error:
            raise SessionFormatError(f"{root / MANIFEST} is damaged: {error}.") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SessionFormatError(f"{root} is not a Lifelong Studio session.")
        if data.get("version") != VERSION:
            raise SessionFormatError(
                f"session format version {data.get('version')} is not supported (need {VERSION})."
            )
        concepts = [Concept.from_json(item) for item in data.get("concepts", [])]
        for concept in concepts:
            for relative in [concept.checkpoint, *concept.images]:
                if not _check_inside(root, relative).is_file():
                    raise SessionFormatError(f"the session is missing {relative}.")
        return cls(root, str(data.get("base_model", "")), concepts)

    def _write_manifest(self) -> None:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "base_model": self.base_model,
            "concepts": [asdict(concept) for concept in self.concepts],
        }
        write_json(self.root / MANIFEST, data)

    def add_concept(
        self,
        concept: Concept,
        images: Sequence[Image.Image],
        delta: ConceptDelta,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> Concept:
        """Store a learned concept: files first, in a folder renamed into place, then the manifest."""
        if concept.name in self.names():
            raise DuplicateConceptError(f"{concept.token} is already in this session; choose another name.")
        final = self.root / "concepts" / concept.name
        staging = Path(tempfile.mkdtemp(prefix=f".{concept.name}.", dir=self._concepts_dir()))
        try:
            relative_images = []
            for index, image in enumerate(images):
                write_png(staging / "images" / f"{index}.png", image)
                relative_images.append(f"concepts/{concept.name}/images/{index}.png")
            save_checkpoint(staging / "checkpoint.safetensors", delta, extras)
            if final.exists():  # left over by a crash before its manifest entry was written
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        concept.images = relative_images
        concept.checkpoint = f"concepts/{concept.name}/checkpoint.safetensors"
        self.concepts.append(concept)
        try:
            self._write_manifest()
        except BaseException:
            self.concepts.pop()
            raise
        return concept

    def _concepts_dir(self) -> Path:
        path = self.root / "concepts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- reading ------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [concept.name for concept in self.concepts]

    def checkpoint(self, index: int) -> tuple[ConceptDelta, dict[str, torch.Tensor]]:
        """Delta and extras of concept ``index`` (1-based), loaded once."""
        concept = self.concepts[index - 1]
        if concept.name not in self._cache:
            self._cache[concept.name] = load_checkpoint(_check_inside(self.root, concept.checkpoint))
        return self._cache[concept.name]

    def images(self, index: int) -> list[Image.Image]:
        return [
            Image.open(_check_inside(self.root, rel)).convert("RGB")
            for rel in self.concepts[index - 1].images
        ]

    def resolve(self, checkpoint: int | None) -> int:
        """``None`` means the latest checkpoint; anything outside 0..N is an error."""
        latest = len(self.concepts)
        k = latest if checkpoint is None else checkpoint
        if not 0 <= k <= latest:
            raise CheckpointError(f"checkpoint {k} does not exist: this session has checkpoints 0–{latest}.")
        return k

    def state(self, checkpoint: int, slot_token_ids: Sequence[int], prompt: str | None = None) -> ModelState:
        """The model state at ``checkpoint`` for ``prompt``: concepts up to it, weighted by :meth:`weights`."""
        deltas = [self.checkpoint(i)[0] for i in range(1, checkpoint + 1)]
        return compose(deltas, slot_token_ids[:checkpoint], self.weights(checkpoint, prompt))

    def weights(self, checkpoint: int, prompt: str | None = None) -> list[float]:
        """Weight of each concept's deltas up to ``checkpoint``: 1 for stacked concepts; for unstacked
        (routed) ones, their share of the prompt's mentions of unstacked concepts, so a prompt naming only
        one of them gets its deltas alone and a prompt naming none gets none (the base weights)."""
        concepts = self.concepts[:checkpoint]
        named = [
            i for i in self.named_concepts(prompt or "") if i <= checkpoint and not concepts[i - 1].stacked
        ]
        return [
            1.0 if concept.stacked else named.count(index) / len(named) if named else 0.0
            for index, concept in enumerate(concepts, start=1)
        ]

    def named_concepts(self, prompt: str) -> list[int]:
        """1-based indices of the session's concepts that ``prompt`` names as ``<name>``, in order."""
        names = self.names()
        return [names.index(name) + 1 for name in TOKEN_PATTERN.findall(prompt) if name in names]

    def rewrite_prompt(self, prompt: str, checkpoint: int) -> str:
        """Replace ``<name>`` by the concept's slot token; refuse names not learned by ``checkpoint``."""
        names = self.names()

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                known = ", ".join(f"<{n}>" for n in names) or "none yet"
                raise InvalidPromptError(f"<{name}> is not a learned concept (learned: {known}).")
            index = names.index(name)
            if index >= checkpoint:
                raise InvalidPromptError(
                    f"<{name}> was learned after checkpoint {checkpoint}; pick a later one."
                )
            return slot_token(index)

        return TOKEN_PATTERN.sub(replace, prompt)

    # --- one-file export ----------------------------------------------------------------------------

    def export(self, path: str | Path) -> Path:
        """Write the whole session as one zip file (manifest, images, safetensors), atomically."""
        path = Path(path)
        files = [self.root / MANIFEST]
        for concept in self.concepts:
            files += [self.root / rel for rel in (*concept.images, concept.checkpoint)]

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
                for file in files:
                    archive.write(file, file.relative_to(self.root).as_posix())

        atomic_write(path, write)
        return path

    @classmethod
    def import_file(cls, path: str | Path, root: str | Path) -> Session:
        """Unpack an exported session into the empty folder ``root`` and open it.

        Only a zip holding a manifest, PNGs and safetensors under plain relative paths is accepted.
        """
        path, root = Path(path), Path(root)
        if root.exists() and any(root.iterdir()):
            raise SessionFormatError(f"{root} is not empty; import into a new folder.")
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            raise SessionFormatError(f"{path.name} is not an exported Lifelong Studio session.") from error
        with archive:
            members = archive.infolist()
            names = {member.filename for member in members}
            if MANIFEST not in names:
                raise SessionFormatError(
                    f"{path.name} is not an exported Lifelong Studio session (no manifest)."
                )
            if sum(member.file_size for member in members) > _MAX_EXPORT_BYTES:
                raise SessionFormatError(f"{path.name} is too large to be a session.")
            for member in members:
                name = member.filename
                parts = Path(name).parts
                if (
                    member.is_dir()
                    or name.startswith("/")
                    or ".." in parts
                    or Path(name).suffix not in _EXPORT_SUFFIXES
                ):
                    raise SessionFormatError(
                        f"{path.name} holds an unexpected file {name!r}; refusing to import it."
                    )
            staging = Path(
                tempfile.mkdtemp(prefix=".import.", dir=root.parent if root.parent.exists() else None)
            )
            try:
                archive.extractall(staging)
                session = cls.open(staging)
                for index in range(1, len(session.concepts) + 1):
                    session.checkpoint(index)
                root.parent.mkdir(parents=True, exist_ok=True)
                if root.exists():
                    root.rmdir()
                shutil.move(str(staging), str(root))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return cls.open(root)
