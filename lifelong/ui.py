"""Event handlers of the Gradio app: from component values to ``Studio`` calls and back.

``app.py`` builds the layout and wires these. Every handler turns a :class:`~lifelong.errors.LifelongError`
into a ``gr.Error`` with its message, so a user reads what to do and never a traceback. The jobs that use
the model run under ``@spaces.GPU`` (a no-op off a ZeroGPU Space) with a duration computed from their
settings by lifelong.limits, which also refuses a job over the app's budget before it waits for the GPU;
what crosses into them is plain data (strings, paths, config dataclasses), and they find the model through
``_STUDIOS``, which a ZeroGPU worker inherits when it forks. Every file shown to a user is written to the
session's own folder of Gradio's cache (lifelong.ui_files), removed when the session ends.
"""

from __future__ import annotations

import functools
import html
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import gradio as gr
import spaces
from PIL import Image

from lifelong.base import REPO_ROOT, BaseModel
from lifelong.concepts import max_session_bytes
from lifelong.errors import Cancelled, LifelongError
from lifelong.generate import GenerateConfig
from lifelong.intake import MAX_IMAGES, load_images
from lifelong.learner import LearnConfig
from lifelong.limits import generate_seconds, learn_seconds
from lifelong.methods import DEFAULT_METHOD, METHODS, get_method
from lifelong.progress import Progress
from lifelong.service import SESSION_MAX_AGE_S, ForgettingReport, Studio, upload_notes
from lifelong.signature import BaseSignature
from lifelong.ui_files import SessionFiles
from lifelong.ui_forms import Form

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
EXAMPLES_DIR = REPO_ROOT / "assets" / "concepts"
MAX_IMAGE_UPLOAD_BYTES = 50 << 20  # a 100-megapixel JPEG or WebP fits
_STUDIOS: dict[str, Studio] = {}
TRACKER = gr.Progress()  # the default that tells Gradio to pass a progress tracker to a handler


def register(studio: Studio) -> str:
    """A picklable key for ``studio``, so GPU jobs receive the key rather than the model."""
    key = str(id(studio))
    _STUDIOS[key] = studio
    return key


def shown(text: str) -> str:
    """Text for a toast or Markdown, which render HTML: ``<rex>`` would vanish as an unknown tag."""
    return html.escape(text, quote=False)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Show LifelongError as gr.Error; log anything unexpected and show a short message instead."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except LifelongError as error:
            raise gr.Error(shown(str(error))) from None
        except FloatingPointError as error:
            raise gr.Error(shown(f"{error} Nothing was changed.")) from None
        except Exception as error:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"Something went wrong ({type(error).__name__}); nothing learned was lost. "
                "Try again, or export your session and reload the page."
            ) from None

    return wrapper


def max_upload_bytes(base: BaseModel) -> int:
    """Gradio's upload limit: the largest image we take, or the largest session file for this base."""
    slots = len(base.slot_token_ids)
    session = max_session_bytes(BaseSignature.of(base), slots) + (1 + slots * (MAX_IMAGES + 1)) * 1024
    return max(MAX_IMAGE_UPLOAD_BYTES, session)


def _paths(gallery: Sequence[Any] | None) -> list[str]:
    """File paths out of a Gallery value (a list of (path, caption) pairs)."""
    return [str(item[0] if isinstance(item, tuple | list) else item) for item in gallery or []]


def _describe(progress: Progress) -> str:
    eta = "" if math.isnan(progress.eta_seconds) else f" · ETA {progress.eta_seconds:.0f} s"
    loss = "" if math.isnan(progress.loss) else f" · loss {progress.loss:.4f}"
    return f"{progress.message} · step {progress.step}/{progress.total}{loss}{eta}"


def _reporter(bar: gr.Progress) -> Callable[[Progress], None]:
    return lambda p: bar((p.step, p.total), desc=_describe(p), unit="steps")


# --- example concepts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    name: str
    class_word: str
    images: list[str]


def examples(limit: int = 4) -> list[Example]:
    """Held-out emoji concepts shipped in assets/concepts (the base model never saw them)."""
    index = EXAMPLES_DIR / "index.json"
    if not index.exists():
        return []
    found = []
    for entry in json.loads(index.read_text()):
        images = sorted(str(p) for p in (EXAMPLES_DIR / entry["name"]).glob("*.png"))[:4]
        if images:
            found.append(Example(entry["name"], entry.get("class_word", ""), images))
    return found[:limit]


# --- what the page shows --------------------------------------------------------------------------------


def method_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in METHODS]


def method_help(name: str) -> str:
    """The method's description and its settings (they go in Advanced → Settings as key=value)."""
    try:
        method = get_method(name or DEFAULT_METHOD)
    except LifelongError as error:
        return str(error)
    lines = [f"**{method.name}**: {method.description}"]
    lines += [
        f"- `{key}={setting.default}`: {setting.description}" for key, setting in method.settings().items()
    ]
    return "\n".join(lines)


def method_changed(name: str) -> tuple[str, str]:
    """Help text for the chosen method, and its settings with their defaults for the Settings box."""
    try:
        settings = get_method(name or DEFAULT_METHOD).settings()
    except LifelongError:
        settings = {}
    return method_help(name), "\n".join(f"{key}={setting.default}" for key, setting in settings.items())


def timeline_view(studio: Studio, files: SessionFiles, user: str) -> list[tuple[str, str]]:
    return [(files.copy(user, entry.thumbnail), entry.caption) for entry in studio.timeline(user)]


def chips_view(studio: Studio, user: str) -> gr.Dataset:
    return gr.Dataset(samples=[[token] for token in studio.tokens(user)])


def refresh(studio: Studio, files: SessionFiles, user: str) -> tuple[list[tuple[str, str]], gr.Dataset, str]:
    timeline = studio.timeline(user)
    status = (
        f"This session holds {len(timeline)} concept(s): "
        + ", ".join(f"`{entry.token}`" for entry in timeline)
        + ". Use them in prompts as written."
        if timeline
        else "No concepts yet: upload 3–5 images (or click an example) and press **Learn concept**."
    )
    return timeline_view(studio, files, user), chips_view(studio, user), status


def heatmap(report: ForgettingReport) -> Image.Image | None:
    """The IA matrix as an image: rows = concepts, columns = checkpoints after which they were sampled."""
    if report.matrix is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(report.names)
    figure, axis = plt.subplots(figsize=(1.2 + 0.7 * count, 0.9 + 0.6 * count), dpi=110)
    picture = axis.imshow(report.matrix, cmap="viridis")
    axis.set_xticks(range(count), [str(j + 1) for j in range(count)])
    axis.set_yticks(range(count), [f"<{name}>" for name in report.names])
    axis.set_xlabel("after learning concept #")
    for i in range(count):
        for j in range(i, count):
            axis.text(j, i, f"{report.matrix[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    figure.colorbar(picture, ax=axis, label="IA")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(buffer).convert("RGB")


# --- GPU jobs (plain-data arguments; durations from the settings) ----------------------------------------


def _learn_duration(
    key: str,
    user: str,
    images: list[str],
    name: str,
    class_word: str,
    config: LearnConfig,
    progress: gr.Progress,
) -> int:
    """Seconds to ask ZeroGPU for (spaces calls it with the job's own arguments)."""
    return int(learn_seconds(config))


@spaces.GPU(duration=_learn_duration)
def learn_job(
    key: str,
    user: str,
    images: list[str],
    name: str,
    class_word: str,
    config: LearnConfig,
    progress: gr.Progress,
) -> str:
    concept = _STUDIOS[key].learn(user, images, name, class_word, config, _reporter(progress))
    return f"Learned **{shown(concept.token)}** with {concept.method} in {concept.seconds:.1f} s."


def _generate_duration(
    key: str, user: str, prompt: str, config: GenerateConfig, maps: bool, progress: gr.Progress
) -> int:
    return int(generate_seconds(config))


@spaces.GPU(duration=_generate_duration)
def generate_job(
    key: str, user: str, prompt: str, config: GenerateConfig, maps: bool, progress: gr.Progress
) -> tuple[list[Image.Image], list[tuple[Image.Image, str]]]:
    studio = _STUDIOS[key]
    if maps:
        return studio.generate_with_maps(user, prompt, config, progress=_reporter(progress))
    return studio.generate(user, prompt, config, progress=_reporter(progress)), []


def _forgetting_duration(key: str, user: str, config: GenerateConfig, progress: gr.Progress) -> int:
    return int(generate_seconds(config, _STUDIOS[key].forgetting_generations(user)))


@spaces.GPU(duration=_forgetting_duration)
def forgetting_job(key: str, user: str, config: GenerateConfig, progress: gr.Progress) -> ForgettingReport:
    def report(done: int, total: int) -> None:
        progress((done, total), desc=f"comparing checkpoints · image set {done}/{total}", unit="sets")

    return _STUDIOS[key].forgetting(user, config, report)


def forgetting_view(
    report: ForgettingReport,
) -> tuple[list[tuple[Image.Image, str]], Image.Image | None, str]:
    pairs: list[tuple[Image.Image, str]] = []
    for item in report.comparisons:
        drop = "" if item.ia_drop is None else f" · IA {item.ia_now:.3f} (drop {item.ia_drop:+.3f})"
        pairs.append((item.after, f"<{item.name}> right after learning it (checkpoint {item.index})"))
        pairs.append((item.now, f"<{item.name}> now (checkpoint {len(report.names)}){drop}"))
    return pairs, heatmap(report), report.note


# --- handlers wired by app.py ---------------------------------------------------------------------------


class Handlers:
    """The app's events, bound to one Studio and to the components whose values they read.

    Inputs arrive as ``{component: value}`` dicts (app.py passes input sets), so a field added to
    LearnConfig or GenerateConfig reaches the job without touching the wiring.
    """

    def __init__(
        self,
        studio: Studio,
        images: gr.Gallery,
        name: gr.Textbox,
        class_word: gr.Textbox,
        method: gr.Dropdown,
        learn_form: Form[LearnConfig],
        prompt: gr.Textbox,
        generate_form: Form[GenerateConfig],
        show_maps: gr.Checkbox,
    ) -> None:
        self.studio = studio
        self.files = SessionFiles(keep=EXAMPLES_DIR.rglob("*.png"))
        self.key = register(studio)
        self.images, self.name, self.class_word, self.method = images, name, class_word, method
        self.learn_form, self.prompt, self.generate_form = learn_form, prompt, generate_form
        self.show_maps = show_maps

    @property
    def learn_inputs(self) -> set[gr.components.Component]:
        return {self.images, self.name, self.class_word, self.method, *self.learn_form.components}

    @property
    def generate_inputs(self) -> set[gr.components.Component]:
        return {self.prompt, self.show_maps, *self.generate_form.components}

    def _user(self, request: gr.Request) -> str:
        """The session's id, refused (a typed error) unless it is a plain token."""
        return self.studio.folder(request.session_hash).name

    @user_errors
    def load(self, request: gr.Request) -> tuple[list[tuple[str, str]], gr.Dataset, str]:
        for user in self.studio.sweep():
            self.files.drop(user)
        self.files.sweep(SESSION_MAX_AGE_S)
        return refresh(self.studio, self.files, self._user(request))

    def unload(self, request: gr.Request) -> None:
        """The tab closed: its workspace and everything it left in Gradio's cache go."""
        user = self._user(request)
        self.studio.drop(user)
        self.files.drop(user)

    @user_errors
    def learn_queued(self, request: gr.Request) -> None:
        """Runs at the click, before the learn waits in the queue: a Cancel from now on stops it."""
        self.studio.submit(self._user(request), "learn")

    @user_errors
    def forgetting_queued(self, request: gr.Request) -> None:
        self.studio.submit(self._user(request), "forgetting")

    def check_images(self, images: list[Any] | None, request: gr.Request) -> None:
        """Warn right after an upload about anything that will not work or will be changed."""
        paths = _paths(images)
        if not paths:
            return
        self.files.note_uploads(self._user(request), paths)
        try:
            load_images(paths, self.studio.base.resolution)
        except LifelongError as error:
            gr.Warning(shown(f"{error} Remove it and add another image."))
            return
        for note in upload_notes(paths):
            gr.Warning(shown(note))

    @user_errors
    def learn(
        self, data: dict[Any, Any], request: gr.Request, progress: gr.Progress = TRACKER
    ) -> tuple[list[tuple[str, str]], gr.Dataset, str]:
        user = self._user(request)
        paths = _paths(data[self.images])
        config = self.learn_form.parse_dict(data, method=data[self.method] or DEFAULT_METHOD)
        self.files.note_uploads(user, paths)
        self.studio.check_learn(config)
        for note in upload_notes(paths):
            gr.Warning(shown(note))
        try:
            message = learn_job(
                self.key, user, paths, data[self.name], data[self.class_word], config, progress
            )
        except Cancelled as error:
            gr.Warning(shown(str(error)))
            timeline, chips, status = refresh(self.studio, self.files, user)
            return timeline, chips, shown(f"Cancelled: {error}")
        timeline, chips, status = refresh(self.studio, self.files, user)
        return timeline, chips, f"{message} {status}"

    @user_errors
    def cancel(self, request: gr.Request) -> None:
        self.studio.cancel(self._user(request))
        gr.Info("Cancelling: your queued or running job stops after its current step.")

    @user_errors
    def generate(
        self, data: dict[Any, Any], request: gr.Request, progress: gr.Progress = TRACKER
    ) -> tuple[list[str], gr.Gallery]:
        user = self._user(request)
        config = self.generate_form.parse_dict(data)
        self.studio.check_generate(config)
        maps = bool(data[self.show_maps])
        images, overlays = generate_job(self.key, user, data[self.prompt], config, maps, progress)
        shown_overlays = [(self.files.image(user, overlay), caption) for overlay, caption in overlays]
        return [self.files.image(user, image) for image in images], gr.Gallery(
            value=shown_overlays, visible=maps
        )

    @user_errors
    def forgetting(
        self, data: dict[Any, Any], request: gr.Request, progress: gr.Progress = TRACKER
    ) -> tuple[list[tuple[str, str]], str | None, str]:
        user = self._user(request)
        config = self.generate_form.parse_dict(data)
        self.studio.check_forgetting(user, config)
        try:
            pairs, matrix, note = forgetting_view(forgetting_job(self.key, user, config, progress))
        except Cancelled as error:
            gr.Warning(shown(str(error)))
            return [], None, shown(f"Cancelled: {error}")
        shown_pairs = [(self.files.image(user, image), caption) for image, caption in pairs]
        return shown_pairs, None if matrix is None else self.files.image(user, matrix), note

    @user_errors
    def export(self, request: gr.Request) -> str:
        user = self._user(request)
        path = self.files.move(user, self.studio.export(user))
        gr.Info("Exported: keep this file. Importing it restores the session, also after a server restart.")
        return path

    @user_errors
    def import_file(
        self, file: str | None, request: gr.Request
    ) -> tuple[list[tuple[str, str]], gr.Dataset, str]:
        if not file:
            raise gr.Error("Choose an exported session file (.zip) to import.")
        user = self._user(request)
        self.files.note_uploads(user, [file])
        session = self.studio.import_file(user, file)
        gr.Info(f"Imported {len(session.concepts)} concept(s).")
        return refresh(self.studio, self.files, user)

    def ask_reset(self, request: gr.Request) -> tuple[dict[str, Any], str]:
        """Reset deletes what a user would hate to lose: say what goes and ask first (shows the row)."""
        tokens = self.studio.tokens(request.session_hash)
        question = (
            f"Delete all {len(tokens)} concept(s) of this session ({', '.join(tokens)})? "
            "**Export** first to keep them."
            if tokens
            else "This session has no concepts yet: there is nothing to delete."
        )
        return gr.update(visible=True), question

    @user_errors
    def reset(self, request: gr.Request) -> tuple[list[tuple[str, str]], gr.Dataset, str, dict[str, Any]]:
        user = self._user(request)
        self.studio.reset(user)
        return (*refresh(self.studio, self.files, user), gr.update(visible=False))


def hidden() -> dict[str, Any]:
    return gr.update(visible=False)


def insert_token(sample: Any, prompt: str) -> str:
    """Append a clicked concept chip to the prompt."""
    token = sample[0] if isinstance(sample, list | tuple) else str(sample)
    return f"{prompt.rstrip()} {token}".strip() if prompt else f"a {token}"
