"""The files each browser session leaves in Gradio's cache, removed when the session ends.

Gradio keeps every upload and every returned file in its cache folder, shared by all sessions and kept
until a restart, so "your concepts are deleted when you leave" would be only half true. Here each session's
outputs (images, thumbnails, exports) are written straight into a folder of its own inside that cache
(Gradio serves a file already there without copying it), and its uploads are noted as they arrive; ``drop``
removes both with the session's workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from gradio.utils import get_upload_folder
from PIL import Image

OUTPUTS = "lifelong-outputs"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SessionFiles:
    """Per-session files in Gradio's cache: published outputs and noted uploads."""

    def __init__(self, keep: Iterable[Path] = ()) -> None:
        self.cache = Path(get_upload_folder()).resolve()
        # uploads with the content of these app files (the examples) are Gradio's copies of them, which
        # every session shares: never removed with one session
        self._keep = {_digest(path) for path in keep}
        self._uploads: dict[str, set[Path]] = {}
        self._lock = threading.Lock()

    def folder(self, user: str) -> Path:
        if not user or user.startswith(".") or Path(user).name != user:
            raise ValueError("a session id is a plain name")  # Studio.folder refuses these first
        return self.cache / OUTPUTS / user

    def image(self, user: str, image: Image.Image) -> str:
        """Save an output image as a PNG named by its content; the path Gradio will serve."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = self.folder(user) / f"{hashlib.sha256(data).hexdigest()[:24]}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return str(path)

    def copy(self, user: str, source: Path) -> str:
        """A copy of a workspace file (a thumbnail), named by its content so a changed file gets a new URL."""
        path = self.folder(user) / f"{_digest(source)[:24]}{source.suffix}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, path)
        return str(path)

    def move(self, user: str, source: Path) -> str:
        """Move a file the user downloads (an export) into the session's folder, under a fresh name."""
        path = self.folder(user) / uuid.uuid4().hex / source.name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, path)
        return str(path)

    def note_uploads(self, user: str, paths: Iterable[str]) -> None:
        """Remember the user's uploads (files in Gradio's upload folder) so ``drop`` removes them."""
        found = set()
        for item in paths:
            path = Path(item).resolve()
            if self.cache in path.parents and path.is_file() and _digest(path) not in self._keep:
                found.add(path)
        with self._lock:
            self._uploads.setdefault(user, set()).update(found)

    def drop(self, user: str) -> None:
        with self._lock:
            uploads = self._uploads.pop(user, set())
        for path in uploads:
            path.unlink(missing_ok=True)
            # Gradio keeps each upload in a folder of its own; one still holding a file is another name
            # for the same content, uploaded by someone else
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        shutil.rmtree(self.folder(user), ignore_errors=True)

    def sweep(self, max_age_s: float) -> None:
        """Remove output folders untouched for ``max_age_s`` (sessions that ended without telling us)."""
        root = self.cache / OUTPUTS
        now = time.time()
        for folder in root.iterdir() if root.exists() else []:
            if now - folder.stat().st_mtime > max_age_s:
                self.drop(folder.name)
