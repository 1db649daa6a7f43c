"""Read an untrusted zip file within limits: sizes checked from its headers, and again while reading.

A zip's headers can lie (a "2 MB" file that inflates to 1 GiB), so every member is read through a counter
that stops at the size the caller allows, whatever the header said. Errors never name a server path: the
caller says what the file is (``label``), and that is all a message shows of it.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import IO, Any

from lifelong.errors import SessionFormatError

_CHUNK = 1 << 20
# everything zipfile and its decompressors raise on a damaged or hostile file
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,  # an unsupported compression method
    RuntimeError,  # an encrypted member
    ValueError,
    OSError,
)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class Archive:
    """The members of an open zip file by name, refused as a whole if its headers break a limit."""

    def __init__(self, handle: zipfile.ZipFile, label: str, max_members: int) -> None:
        self.label = label
        self._zip = handle
        members = handle.infolist()
        if len(members) > max_members:
            raise SessionFormatError(
                f"{label} holds {len(members)} files; a session has at most {max_members}."
            )
        self.members: dict[str, zipfile.ZipInfo] = {}
        for member in members:
            if member.filename in self.members:
                raise SessionFormatError(f"{label} holds the same file name twice; it was altered.")
            self.members[member.filename] = member

    def check_sizes(self, limits: dict[str, int], max_total: float) -> None:
        """Refuse from the headers alone: a member over its own limit, or all of them over the total."""
        for name, limit in limits.items():
            if self.members[name].file_size > limit:
                raise SessionFormatError(
                    f"{self.label}: one of its files is larger than a session file can hold."
                )
        if sum(member.file_size for member in self.members.values()) > max_total:
            raise SessionFormatError(f"{self.label} is larger than a session of this app can be.")

    def read(self, name: str, limit: int) -> bytes:
        with self._open(name) as source:
            data = source.read(limit + 1)
        if len(data) > limit:
            raise SessionFormatError(f"{self.label}: one of its files is larger than its header says.")
        return data

    def extract(self, name: str, target: Path, limit: int) -> None:
        """Copy one member to ``target``, stopping at ``limit`` bytes whatever the header said."""
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with self._open(name) as source, open(target, "wb") as sink:
            while chunk := source.read(min(_CHUNK, limit + 1 - written)):
                written += len(chunk)
                if written > limit:
                    raise SessionFormatError(
                        f"{self.label}: one of its files is larger than its header says."
                    )
                sink.write(chunk)

    @contextmanager
    def _open(self, name: str) -> Iterator[IO[bytes]]:
        try:
            with self._zip.open(self.members[name]) as source:
                yield source
        except SessionFormatError:
            raise
        except ZIP_ERRORS as error:
            raise SessionFormatError(f"{self.label} is damaged ({_reason(error)}).") from error


@contextmanager
def open_archive(path: Path, label: str, max_members: int) -> Iterator[Archive]:
    try:
        handle = zipfile.ZipFile(path)
    except ZIP_ERRORS as error:
        raise SessionFormatError(
            f"{label} is not an exported Lifelong Studio session (not a zip file)."
        ) from error
    with handle:
        yield Archive(handle, label, max_members)


def _reason(error: BaseException) -> str:
    """Why a member could not be read, without the paths an OSError carries."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    if isinstance(error, zipfile.BadZipFile | zlib.error | EOFError):
        return "its data does not match its checksum or is cut short"
    if isinstance(error, RuntimeError | NotImplementedError):
        return "it is encrypted or compressed in a way this app does not read"
    return type(error).__name__


def parse_json(data: bytes, label: str, max_depth: int) -> Any:
    """JSON from untrusted bytes: UTF-8, no duplicate keys, nesting at most ``max_depth`` deep.

    The depth is measured before parsing (brackets outside strings), so a "[[[[…" file costs one regex
    pass rather than a RecursionError deep in the parser.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SessionFormatError(f"{label} is not UTF-8 text.") from error
    brackets = [1 if c in "[{" else -1 for c in _JSON_STRING.sub("", text) if c in "[]{}"]
    if max(accumulate(brackets), default=0) > max_depth:
        raise SessionFormatError(f"{label} is nested more than {max_depth} levels deep; it is not ours.")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise SessionFormatError(f"{label} repeats a key; it was altered.")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except (ValueError, RecursionError) as error:
        raise SessionFormatError(f"{label} is not valid JSON.") from error


def brief(text: str, limit: int = 60) -> str:
    """A name taken from an untrusted file, short enough for a message."""
    return text if len(text) <= limit else f"{text[:limit]}…"
