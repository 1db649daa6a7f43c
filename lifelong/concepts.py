"""Concepts and sessions: one user's ordered sequence of learned concepts, on disk.

A session is a folder::

    manifest.json                       the commit point: a concept exists once the manifest names it
    concepts/<name>/images/<i>.png      the normalised images it was learned from
    concepts/<name>/checkpoint.safetensors   what learning it changed (ConceptDelta) + method extras

Checkpoint k is the model right after learning concept k (0 = the base model). It is composed from the
stored deltas, never stored as a model copy. ``export`` packs the folder into one zip file; ``import_file``
unpacks one, refusing anything that is not exactly our format (see lifelong.manifest, lifelong.signature
and lifelong.archive: an imported file is a stranger's).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from lifelong.adapters import KINDS, ConceptDelta, ModelState, compose
from lifelong.archive import Archive, brief, open_archive, parse_json
from lifelong.base import BaseModel, public_model_name, slot_token
from lifelong.errors import CheckpointError, DuplicateConceptError, InvalidPromptError, SessionFormatError
from lifelong.files import atomic_write, write_json, write_png, write_safetensors
from lifelong.intake import MAX_IMAGES
from lifelong.manifest import (
    FORMAT,
    MAX_DEPTH,
    MAX_MANIFEST_BYTES,
    VERSION,
    check_manifest,
    checkpoint_file,
    concept_files,
    image_file,
)
from lifelong.prompts import TOKEN_PATTERN, check_prompt
from lifelong.signature import BaseSignature, Shaped

CHECKPOINT_FORMAT = "lifelong-concept"
MANIFEST = "manifest.json"
SESSION_FILE = "the session file"  # how messages name an imported file: never by its path on this server


@dataclass
class Concept:
    """One learned concept, as the manifest records it."""

    name: str
    class_word: str
    method: str
    images: list[str]
    checkpoint: str
    prompts: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)  # one per image ("" for none), or none at all
    settings: dict[str, Any] = field(default_factory=dict)
    stacked: bool = True  # False: learned from the base and mixed in by the prompts that name it (routed)
    seconds: float = 0.0
    final_loss: float = float("nan")
    created: str = ""

    @property
    def token(self) -> str:
        return f"<{self.name}>"


def max_session_bytes(signature: BaseSignature, concepts: int) -> int:
    """The largest session file that can hold ``concepts`` concepts for this base (before zip overhead)."""
    per_concept = signature.max_checkpoint_bytes() + MAX_IMAGES * signature.max_image_bytes()
    return MAX_MANIFEST_BYTES + concepts * per_concept


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


def load_checkpoint(
    path: Path, signature: BaseSignature | None = None, label: str = ""
) -> tuple[ConceptDelta, dict[str, torch.Tensor]]:
    """Read a concept checkpoint (safetensors only, never pickle) and check it is ours.

    With a ``signature`` (an imported file) every tensor's name, shape and dtype is checked from the header
    before any is read, and the values must be finite.
    """
    label = label or path.name
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if (
                metadata.get("format") != CHECKPOINT_FORMAT
                or metadata.get("version") != str(VERSION)
                or metadata.get("kind") not in KINDS
            ):
                raise SessionFormatError(f"{label} is not a Lifelong Studio concept checkpoint.")
            if signature is not None:
                shapes = {}
                for key in handle.keys():  # noqa: SIM118 - not a dict
                    view = handle.get_slice(key)
                    shapes[key] = Shaped(view.get_dtype(), tuple(view.get_shape()))
                signature.check(label, metadata, shapes)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as error:
        raise SessionFormatError(f"{label} is not a readable checkpoint.") from error
    if "embedding" not in tensors:
        raise SessionFormatError(f"{label} has no token embedding.")
    if signature is not None and not all(torch.isfinite(t).all() for t in tensors.values()):
        raise SessionFormatError(f"{label} holds values that are not finite numbers.")
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
        """The session in folder ``root`` (errors name the session, not the folder: it is a server path)."""
        root = Path(root)
        try:
            raw = (root / MANIFEST).read_bytes()
        except FileNotFoundError as error:
            raise SessionFormatError("this folder is not a session (it has no manifest).") from error
        if len(raw) > MAX_MANIFEST_BYTES:
            raise SessionFormatError("the session's manifest is too large to be ours.")
        base_model, entries = check_manifest(parse_json(raw, "the session's manifest", MAX_DEPTH))
        concepts = [Concept(**entry) for entry in entries]
        for concept in concepts:
            for relative in [concept.checkpoint, *concept.images]:
                if not _check_inside(root, relative).is_file():
                    raise SessionFormatError(f"the session is missing {relative}.")
        return cls(root, base_model, concepts)

    def manifest(self, base_model: str | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "base_model": self.base_model if base_model is None else base_model,
            "concepts": [asdict(concept) for concept in self.concepts],
        }

    def _write_manifest(self) -> None:
        write_json(self.root / MANIFEST, self.manifest())

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
                relative_images.append(image_file(concept.name, index))
            save_checkpoint(staging / "checkpoint.safetensors", delta, extras)
            if final.exists():  # left over by a crash before its manifest entry was written
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        concept.images = relative_images
        concept.checkpoint = checkpoint_file(concept.name)
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

    def rewrite_prompt(self, prompt: str, checkpoint: int, what: str = "the prompt") -> str:
        """Replace ``<name>`` by the concept's slot token; refuse names not learned by ``checkpoint`` and
        any slot token spelled in ``prompt`` itself (only this rewrite may write one)."""
        check_prompt(prompt, what)
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
        """Write the whole session as one zip file (manifest, images, safetensors), atomically.

        The manifest names the base model as others know it (a hub id, or a local folder's own name): where
        the model lives on this server is not the file's business.
        """
        path = Path(path)
        manifest = json.dumps(self.manifest(public_model_name(self.base_model)), indent=2, ensure_ascii=False)
        files = [relative for concept in self.concepts for relative in (*concept.images, concept.checkpoint)]

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
                archive.writestr(MANIFEST, manifest)
                for relative in files:
                    archive.write(self.root / relative, relative)

        atomic_write(path, write)
        return path

    @classmethod
    def import_file(cls, path: str | Path, root: str | Path, base: BaseModel) -> Session:
        """Unpack an exported session into the new folder ``root`` and open it, or refuse the file whole.

        Everything is checked before anything is kept, cheapest first: the zip's headers (file count and
        sizes), the manifest (its schema, and the concept count against this base's slots before any
        checkpoint is opened), that the zip holds exactly the files the manifest implies, each file read
        within its size limit, every image (a PNG of the base's resolution) and every checkpoint (against
        this base's signature). Only those files and a manifest written afresh are kept.
        """
        path, root = Path(path), Path(root)
        if root.exists() and any(root.iterdir()):
            raise SessionFormatError("the import folder is not empty; import into a new folder.")
        signature = BaseSignature.of(base)
        slots = len(base.slot_token_ids)
        with open_archive(path, SESSION_FILE, max_members=1 + slots * (MAX_IMAGES + 1)) as archive:
            base_model, entries = _read_manifest(archive, slots)
            limits = {MANIFEST: MAX_MANIFEST_BYTES}
            for entry in entries:
                limits.update({image: signature.max_image_bytes() for image in entry["images"]})
                limits[entry["checkpoint"]] = signature.max_checkpoint_bytes()
            unlisted = sorted(set(archive.members) - set(limits))
            if unlisted:
                raise SessionFormatError(
                    f"{SESSION_FILE} holds a file its manifest does not list "
                    f"({brief(PurePosixPath(unlisted[0]).name)}); "
                    "refusing to import it."
                )
            absent = [name for name in limits if name not in archive.members]
            if absent:
                raise SessionFormatError(f"{SESSION_FILE} lacks {absent[0]}, which its manifest lists.")
            archive.check_sizes(limits, max_session_bytes(signature, len(entries)))
            root.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".import.", dir=root.parent))
            try:
                session = cls(staging, base_model, [Concept(**entry) for entry in entries])
                for entry in entries:
                    for relative in concept_files(entry):
                        archive.extract(relative, staging / relative, limits[relative])
                    label = f"the checkpoint of <{entry['name']}>"
                    for relative in entry["images"]:
                        _check_image(staging / relative, signature.image_side, entry["name"])
                    load_checkpoint(staging / entry["checkpoint"], signature, label)
                session._write_manifest()
                if root.exists():
                    root.rmdir()
                staging.rename(root)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return cls.open(root)


def open_session(base: BaseModel, root: str | Path) -> Session:
    """The session in folder ``root``, or a new empty one there, for ``base`` (base first, as in every call
    of the library: ``learn(base, session, …)``, ``generate(base, session, …)``)."""
    return Session.create(root, base.name)


def _read_manifest(archive: Archive, slots: int) -> tuple[str, list[dict[str, Any]]]:
    if MANIFEST not in archive.members:
        raise SessionFormatError(f"{SESSION_FILE} is not an exported Lifelong Studio session (no manifest).")
    archive.check_sizes({MANIFEST: MAX_MANIFEST_BYTES}, max_total=math.inf)
    data = parse_json(
        archive.read(MANIFEST, MAX_MANIFEST_BYTES), f"the manifest of {SESSION_FILE}", MAX_DEPTH
    )
    return check_manifest(data, max_concepts=slots)


def _check_image(path: Path, side: int, name: str) -> None:
    """A stored concept image: a PNG of exactly the base's resolution that decodes."""
    try:
        with Image.open(path) as image:
            fits = image.format == "PNG" and image.size == (side, side)
            if fits:
                image.load()
    except Image.DecompressionBombError:
        fits = False  # a header claiming hundreds of megapixels: not one of ours either
    except (OSError, SyntaxError, ValueError) as error:
        raise SessionFormatError(f"an image of <{name}> in {SESSION_FILE} is damaged.") from error
    if not fits:
        raise SessionFormatError(f"an image of <{name}> in {SESSION_FILE} is not a {side}×{side} px PNG.")
