"""The app's logic without the UI: one workspace folder per user, each holding one Session.

``Studio`` is what the Gradio app calls: learn / generate / compare before-and-after / export / import /
reset (the session as one file, or concepts as a LoRA for other tools and back), and the timeline of what
a user has learned. It knows nothing about Gradio; the user key is any short token (the app passes
Gradio's session hash). Workspaces live under ``root`` (env ``LIFELONG_SESSIONS_DIR``, default a folder in
the system temp dir) and are swept when unused.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from lifelong.base import BUNDLED_EVAL_IDENTITY, BaseModel
from lifelong.concepts import MANIFEST, Concept, Session
from lifelong.configs import ExportConfig, check
from lifelong.errors import Cancelled, ExportError, ImageCountError, SessionFormatError
from lifelong.files import atomic_write
from lifelong.generation import GenerateConfig, generate, generate_with_maps, warm_up
from lifelong.intake import RECOMMENDED, WORKING_SIDE, ImageSource
from lifelong.learner import LearnConfig, learn
from lifelong.limits import Budget, check_generate, check_learn, generate_seconds, learn_seconds
from lifelong.lora_export import ExportReport, chosen_concepts, export
from lifelong.lora_import import import_lora
from lifelong.metrics import EvalClip, IdentityEncoder, identity_features, image_alignments, image_features
from lifelong.progress import Progress, ProgressFn
from lifelong.retention import Retention, retention
from lifelong.stats import cluster_bootstrap

SESSIONS_ENV = "LIFELONG_SESSIONS_DIR"
SESSION_MAX_AGE_S = 24 * 3600  # a workspace untouched this long belongs to a tab that is gone
_USER_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def sessions_root() -> Path:
    return Path(os.environ.get(SESSIONS_ENV) or Path(tempfile.gettempdir()) / "lifelong-sessions")


class Scorer(Protocol):
    """The image features IA compares (L2-normalised rows): IA = mean cosine between generated images and
    a concept's reference images (lifelong.metrics)."""

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor: ...


@dataclass(frozen=True)
class TimelineEntry:
    index: int  # checkpoint index: 1 = the first concept learned
    name: str
    class_word: str
    method: str
    seconds: float
    thumbnail: Path

    @property
    def token(self) -> str:
        return f"<{self.name}>"

    @property
    def caption(self) -> str:
        return f"{self.index}. {self.token} · {self.method} · {self.seconds:.1f} s"


@dataclass
class Comparison:
    """One earlier concept: its first image right after it was learned and now, same prompt and seed, and
    (with a scorer) its IA then and now with intervals over the seeds and the word they give."""

    index: int
    name: str
    prompt: str
    after: Image.Image
    now: Image.Image
    retention: Retention | None = None


@dataclass
class ForgettingReport:
    comparisons: list[Comparison]
    matrix: np.ndarray | None  # IA(i, j): concept i (rows) at checkpoint j (columns), NaN where j < i
    note: str  # what the report shows and, when IA is missing, why
    names: list[str] = field(default_factory=list)
    low: np.ndarray | None = None  # the 95 % interval of each IA(i, j) over its images (seeds)
    high: np.ndarray | None = None


def upload_notes(sources: Sequence[ImageSource]) -> list[str]:
    """What will happen to uploaded images that are usable but not ideal (count, transparency, size...)."""
    notes = []
    if len(sources) < 3:
        notes.append(f"{len(sources)} image(s): learning works, but {RECOMMENDED} images work best.")
    elif len(sources) > 5:
        notes.append(f"{len(sources)} images: learning works, but {RECOMMENDED} are enough.")
    for index, source in enumerate(sources):
        label = Path(source).name if isinstance(source, str | Path) else f"image {index + 1}"
        try:
            image = source if isinstance(source, Image.Image) else Image.open(source)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # load_images names unreadable and oversized files with the exact reason
        changes = []
        if getattr(image, "n_frames", 1) > 1:
            changes.append("only its first frame is used")
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            changes.append("transparent areas become white")
        if image.mode in ("CMYK", "I;16", "I;16B", "I;16L", "I", "F"):
            changes.append(f"its {image.mode} pixels are converted to RGB")
        if max(image.size) > WORKING_SIDE:
            changes.append(f"it is shrunk from {image.width}×{image.height} px")
        if image.width != image.height:
            changes.append("it is centre-cropped to a square")
        if changes:
            notes.append(f"{label}: {', '.join(changes)}.")
    return notes


@dataclass(frozen=True)
class CancelFlag:
    """A job's cancel token: Cancel clicks are kept as a file in the workspace, so a click reaches a job
    running in another process (a ZeroGPU worker) as well as one in a thread.

    The file holds the time of the last click, and a job is cancelled by any click made after it was
    submitted: a click while the job still waits in the queue is not lost, and one made before it (or
    while nothing ran) never stops it.
    """

    path: Path
    since: float  # when the job was submitted

    def is_set(self) -> bool:
        try:
            return float(self.path.read_text()) >= self.since
        except (OSError, ValueError):
            return False

    def raise_if_set(self, message: str) -> None:
        if self.is_set():
            raise Cancelled(message)


def _write_time(path: Path) -> None:
    now = repr(time.time())

    def write(tmp: Path) -> None:
        tmp.write_text(now)

    atomic_write(path, write)


def _stamp(path: Path) -> tuple[int, int]:
    """Identity of a file version: manifests are replaced atomically, so each write is a new inode."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


class Studio:
    """Per-user sessions on one shared base model."""

    def __init__(
        self,
        base: BaseModel,
        root: str | Path | None = None,
        scorer: Scorer | None = None,
        scorer_note: str = "",
        budget: Budget | None = None,
    ) -> None:
        self.base = base
        self.root = Path(root) if root is not None else sessions_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.scorer = scorer
        self.scorer_note = scorer_note  # why there is no scorer, shown instead of IA numbers
        self.budget = budget or Budget.from_env()
        self._locks: dict[str, threading.RLock] = {}
        self._sessions: dict[str, tuple[Session, tuple[int, int]]] = {}
        self._guard = threading.Lock()

    def compile_sampling(self) -> None:
        """Compile sampling now (generation.warm_up), so no user waits for it later."""
        warm_up(self.base)

    def warm_up(self) -> threading.Thread:
        """``compile_sampling`` in a background thread."""
        thread = threading.Thread(target=self.compile_sampling, name="warm-up", daemon=True)
        thread.start()
        return thread

    # --- workspaces ---------------------------------------------------------------------------------

    def folder(self, user: str) -> Path:
        if not _USER_KEY.match(user or ""):
            raise SessionFormatError("this browser session has no valid id; reload the page.")
        return self.root / user

    def _lock(self, user: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(user, threading.RLock())

    def submit(self, user: str, job: str) -> None:
        """Note that a ``job`` ("learn", "forgetting") of this user was just queued: a cancel from now on
        stops it, even before it starts."""
        _write_time(self.folder(user) / f"submitted-{job}")

    def cancel(self, user: str) -> None:
        """Stop this user's queued and running jobs (a running one at its next step)."""
        _write_time(self.folder(user) / "cancel")

    def cancel_flag(self, user: str, job: str) -> CancelFlag:
        """The cancel token of a ``job`` starting now: clicks since it was submitted stop it (since now,
        for a job nobody submitted, e.g. a direct library call)."""
        marker = self.folder(user) / f"submitted-{job}"
        try:
            since = float(marker.read_text())
            marker.unlink()
        except (OSError, ValueError):
            since = time.time()
        return CancelFlag(self.folder(user) / "cancel", since)

    def session(self, user: str) -> Session:
        """The user's session, reopened whenever its manifest changed on disk (a ZeroGPU worker, which
        runs jobs in a forked process, writes it there)."""
        with self._lock(user):
            _recover(self.folder(user))
            root = self.folder(user) / "session"
            cached = self._sessions.get(user)
            if cached is None or cached[1] != _stamp(root / MANIFEST):
                session = Session.create(root, self.base.name)
                self._sessions[user] = cached = (session, _stamp(root / MANIFEST))
            os.utime(self.folder(user))  # the sweep keeps workspaces in use
            return cached[0]

    def drop(self, user: str) -> None:
        """Forget a user's workspace (their tab closed); an exported file is all that remains."""
        with self._lock(user):
            self._sessions.pop(user, None)
            shutil.rmtree(self.folder(user), ignore_errors=True)
        with self._guard:
            self._locks.pop(user, None)

    def sweep(self, max_age_s: float = SESSION_MAX_AGE_S) -> list[str]:
        """Remove workspaces untouched for ``max_age_s`` (tabs that closed without telling us)."""
        now = time.time()
        removed = []
        for folder in self.root.iterdir():
            if folder.is_dir() and now - folder.stat().st_mtime > max_age_s:
                self.drop(folder.name)
                removed.append(folder.name)
        return removed

    # --- what a user sees ---------------------------------------------------------------------------

    def timeline(self, user: str) -> list[TimelineEntry]:
        session = self.session(user)
        return [
            TimelineEntry(
                index,
                concept.name,
                concept.class_word,
                concept.method,
                concept.seconds,
                session.root / concept.images[0],
            )
            for index, concept in enumerate(session.concepts, start=1)
        ]

    def tokens(self, user: str) -> list[str]:
        return [f"<{name}>" for name in self.session(user).names()]

    # --- jobs ---------------------------------------------------------------------------------------

    def learn(
        self,
        user: str,
        images: Sequence[ImageSource],
        name: str,
        class_word: str,
        config: LearnConfig,
        progress: ProgressFn | None = None,
        captions: Sequence[str] = (),
    ) -> Concept:
        """Learn the next concept (``captions``: one per image, or none; see ``lifelong.learner.learn``); a
        cancel (``cancel(user)``) or bad input leaves the session as it was."""
        cancel = self.cancel_flag(user, "learn")
        if not images:
            raise ImageCountError(f"Add {RECOMMENDED} images of the concept first.")
        with self._lock(user):
            session = self.session(user)
            self.check_learn(config, len(session.concepts))
            return learn(
                self.base, session, images, name, class_word, config, progress, cancel, captions=captions
            ).concept

    def check_learn(self, config: LearnConfig, concepts: int = 0) -> None:
        """Refuse a learn whose settings are out of range or whose expected seconds, after ``concepts``
        others, exceed the budget, before it waits for the GPU."""
        check_learn(config)
        self.budget.check(
            learn_seconds(config, concepts),
            f"Learning {config.steps} steps at batch size {config.batch_size}",
            "Use fewer steps, a smaller batch size or less gradient accumulation.",
        )

    def check_generate(self, config: GenerateConfig) -> None:
        """Refuse generation settings out of range or over the budget, before the job waits for the GPU."""
        check_generate(config)
        self.budget.check(
            generate_seconds(config),
            f"Generating {config.num_images} image(s) at {config.steps} steps",
            "Use fewer steps or images.",
        )

    def check_forgetting(self, user: str, config: GenerateConfig) -> None:
        check_generate(config)
        generations = self.forgetting_generations(user)
        self.budget.check(
            generate_seconds(config, generations),
            f"Comparing {generations} image set(s) of {config.num_images} image(s) at {config.steps} steps",
            "Use fewer steps or images in the Generate tab's settings.",
        )

    def concept_count(self, user: str) -> int:
        """How many concepts the user's session holds (what the next learn's cost depends on)."""
        return len(self.session(user).concepts)

    def forgetting_generations(self, user: str) -> int:
        """How many generations the forgetting view runs: IA(i, j) for every j ≥ i with a scorer (n(n+1)/2),
        else each earlier concept at two checkpoints."""
        count = self.concept_count(user)
        if count < 2:
            return 0
        return count * (count + 1) // 2 if self.scorer else 2 * (count - 1)

    def generate(
        self,
        user: str,
        prompt: str,
        config: GenerateConfig,
        checkpoint: int | None = None,
        progress: ProgressFn | None = None,
    ) -> list[Image.Image]:
        self.check_generate(config)
        with self._lock(user):
            return generate(self.base, self.session(user), prompt, config, checkpoint, progress)

    def generate_with_maps(
        self,
        user: str,
        prompt: str,
        config: GenerateConfig,
        checkpoint: int | None = None,
        progress: ProgressFn | None = None,
    ) -> tuple[list[Image.Image], list[tuple[Image.Image, str]]]:
        """Images and, per image, where each concept (or content word) attends, as captioned overlays."""
        self.check_generate(config)
        with self._lock(user):
            images, overlays, _ = generate_with_maps(
                self.base, self.session(user), prompt, config, checkpoint, progress
            )
            return images, overlays

    def forgetting(
        self, user: str, config: GenerateConfig, progress: Callable[[int, int], None] | None = None
    ) -> ForgettingReport:
        """Each earlier concept at its own checkpoint and at the latest one, same prompt and seeds.

        With a scorer, also IA(i, j) for every checkpoint j ≥ i (the forgetting matrix) with its interval
        over the seeds, and per earlier concept its retention (lifelong.retention: IA then and now, the
        drop, the margin over the other concepts, and the word). ``progress`` hears of every image set; a
        cancel (``cancel(user)``), queued or running, stops it within one step.
        """
        cancel = self.cancel_flag(user, "forgetting")
        self.check_forgetting(user, config)
        with self._lock(user):
            session = self.session(user)
            count = len(session.concepts)
            names = session.names()
            if count < 2:
                return ForgettingReport(
                    [], None, "Learn at least two concepts: forgetting shows on the earlier ones.", names
                )
            rows = range(1, count + 1) if self.scorer else range(1, count)
            jobs = [
                (i, j) for i in rows for j in (range(i, count + 1) if self.scorer else sorted({i, count}))
            ]
            # per image set, each image's IA to every concept's references: (images, concepts)
            scores: dict[tuple[int, int], torch.Tensor] = {}
            references = [self.scorer.features(session.images(k)) for k in rows] if self.scorer else []
            images: dict[tuple[int, int], list[Image.Image]] = {}
            for done, (i, j) in enumerate(jobs):
                message = f"the comparison was cancelled after {done} of {len(jobs)} image sets."

                def step(_: Progress, message: str = message) -> None:
                    cancel.raise_if_set(message)

                step(Progress(0, 0))
                prompt = session.concepts[i - 1].prompts[0]
                images[i, j] = generate(self.base, session, prompt, config, j, step)
                if self.scorer is not None:
                    features = self.scorer.features(images[i, j])
                    scores[i, j] = torch.stack([image_alignments(features, r) for r in references], dim=1)
                if progress is not None:
                    progress(done + 1, len(jobs))
            comparisons = [
                Comparison(
                    i, names[i - 1], session.concepts[i - 1].prompts[0], images[i, i][0], images[i, count][0]
                )
                for i in range(1, count)
            ]
            if not self.scorer:
                note = f"Same prompt and seed {config.seed}. No IA numbers: {self.scorer_note}"
                return ForgettingReport(comparisons, None, note, names)
            for item in comparisons:
                item.retention = retention(*_own_and_unrelated(scores, item.index, count))
            matrix, low, high = _ia_matrix(scores, count)
            note = (
                f"Same prompt, seeds {config.seed}–{config.seed + config.num_images - 1}; IA = mean similarity "
                "of an image to the concept's own images, [low, high] its 95 % interval over the "
                f"{config.num_images} seed(s)."
            )
            return ForgettingReport(comparisons, matrix, note, names, low, high)

    # --- files --------------------------------------------------------------------------------------

    def export(self, user: str) -> Path:
        """The whole session as one zip file in the user's workspace (replaced on every export)."""
        with self._lock(user):
            session = self.session(user)
            if not session.concepts:
                raise SessionFormatError("Nothing to export yet: learn a concept first.")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = self.folder(user) / "export"
            shutil.rmtree(out, ignore_errors=True)
            return session.export(out / f"lifelong-session-{stamp}.zip")

    def export_lora(
        self, user: str, config: ExportConfig, checkpoint: int | None = None
    ) -> tuple[Path, ExportReport]:
        """Concepts as a LoRA + embeddings for diffusers, A1111 or ComfyUI (lifelong.lora_export), zipped into one
        file in the user's workspace (replaced on every export)."""
        with self._lock(user):
            session = self.session(user)
            if not session.concepts:
                raise ExportError("Nothing to export yet: learn a concept first.")
            check(config)
            indices = chosen_concepts(session, config, checkpoint)  # the folder is named by checked values
            what = session.names()[indices[0] - 1] if config.concept else f"checkpoint-{indices[-1]}"
            out = self.folder(user) / "export"
            shutil.rmtree(out, ignore_errors=True)
            folder = out / f"lifelong-{what}-{config.format}-{time.strftime('%Y%m%d-%H%M%S')}"
            report = export(self.base, session, folder, config, checkpoint)
            archive = folder.with_suffix(".zip")

            def write(tmp: Path) -> None:
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as handle:
                    for relative in report.files:
                        handle.write(folder / relative, f"{folder.name}/{relative}")

            atomic_write(archive, write)
            return archive, report

    def import_lora(
        self, user: str, lora: str | Path, embedding: str | Path, name: str = "", class_word: str = ""
    ) -> Concept:
        """Add a LoRA + embedding made elsewhere for this base as the user's next concept (lifelong.lora_import);
        a refused file leaves the session as it was."""
        with self._lock(user):
            return import_lora(self.base, self.session(user), lora, embedding, name, class_word)

    def import_file(self, user: str, path: str | Path) -> Session:
        """Replace the user's session by an exported one; if the file is refused, nothing changes.

        The file is checked whole into a staging folder (``Session.import_file``); only then is it swapped in.
        """
        with self._lock(user):
            folder = self.folder(user)
            folder.mkdir(parents=True, exist_ok=True)
            _recover(folder)
            staging = Path(tempfile.mkdtemp(prefix=".import.", dir=folder))
            try:
                Session.import_file(path, staging / "session", self.base)
                _swap_in(folder, staging / "session")
            except OSError as error:  # the server's side (disk full…): its message would name paths
                reason = error.strerror or type(error).__name__
                raise SessionFormatError(
                    f"the session file could not be imported ({reason}); your session is unchanged."
                ) from error
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._sessions.pop(user, None)
            return self.session(user)

    def reset(self, user: str) -> None:
        """Start this user over with an empty session."""
        with self._lock(user):
            self._sessions.pop(user, None)
            shutil.rmtree(self.folder(user) / "session", ignore_errors=True)
            self.session(user)


def _ia_matrix(
    scores: dict[tuple[int, int], torch.Tensor], count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IA(i, j) and the bounds of its 95 % interval over the image set's seeds; NaN where j < i."""
    matrix, low, high = (np.full((count, count), np.nan) for _ in range(3))
    for (i, j), table in scores.items():
        interval = cluster_bootstrap(table[None, :, i - 1].numpy())  # one concept: over its seeds
        cell = (i - 1, j - 1)
        matrix[cell], low[cell], high[cell] = interval.mean, interval.low, interval.high
    return matrix, low, high


def _own_and_unrelated(
    scores: dict[tuple[int, int], torch.Tensor], i: int, count: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Concept i's per-image IA right after learning and now, and per image the unrelated level: its
    highest IA to any other concept's references (``scores[i, j]``: images × concepts)."""
    others = [k for k in range(count) if k != i - 1]
    values = []
    for j in (i, count):
        table = scores[i, j]
        values.append((table[:, i - 1].tolist(), table[:, others].max(dim=1).values.tolist()))
    (after, unrelated_after), (now, unrelated_now) = values
    return after, now, unrelated_after, unrelated_now


def _swap_in(folder: Path, new: Path) -> None:
    """Put the session folder ``new`` in place of the workspace's session: the old one is renamed aside,
    and removed only once the new one is in place (``_recover`` finishes or undoes a swap a crash cut)."""
    current, old = folder / "session", folder / ".replaced"
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        current.rename(old)
    try:
        new.rename(current)
    except OSError:
        if old.exists() and not current.exists():
            old.rename(current)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _recover(folder: Path) -> None:
    """After a crash inside ``_swap_in``: keep the new session if it made it into place, else the old one."""
    current, old = folder / "session", folder / ".replaced"
    if not old.exists():
        return
    if current.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.rename(current)


class ClipScorer:
    """IA with a CLIP's image tower (e.g. a small test CLIP); the app uses :class:`IdentityScorer`."""

    def __init__(self, clip: EvalClip) -> None:
        self.clip = clip

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return image_features(self.clip, images)


class IdentityScorer:
    """IA with the identity encoder (lifelong.metrics): features that tell instances apart."""

    def __init__(self, encoder: IdentityEncoder) -> None:
        self.encoder = encoder

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return identity_features(self.encoder, images)


def default_scorer() -> tuple[Scorer | None, str]:
    """The IA scorer on the bundled identity encoder, or None and the reason it is unavailable."""
    if not BUNDLED_EVAL_IDENTITY.exists():
        return None, "the identity encoder (assets/eval-identity) is not installed in this copy."
    return IdentityScorer(IdentityEncoder.load(BUNDLED_EVAL_IDENTITY)), ""
