"""What every tab of the app shares: the page's cross-tab components, error display and progress.

Every handler turns a :class:`~lifelong.errors.LifelongError` into a ``gr.Error`` with its message, so a user
reads what to do and never a traceback (nor a server path). Every file shown to a user is written to the
session's own folder of Gradio's cache (``page.files``, lifelong.ui.files), removed when the session ends.
"""

from __future__ import annotations

import functools
import html
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import gradio as gr

from lifelong.configs import GenerateConfig
from lifelong.errors import LifelongError
from lifelong.progress import Progress
from lifelong.service import Studio
from lifelong.ui.files import SessionFiles
from lifelong.ui.forms import Form

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
TRACKER = gr.Progress()  # the default that tells Gradio to pass a progress tracker to a handler
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}  # one model job at a time; others queue
# a job is first noted as submitted, at the click (``Studio.submit``), so a Cancel reaches it while it queues
QUEUED: dict[str, Any] = {"queue": False, "api_name": False}
Shown = tuple[list[tuple[str, str]], gr.Dataset, str]  # timeline, chips, status


@dataclass
class Page:
    """Components that more than one tab reads or writes, and the studio's key for the GPU jobs.

    ``chips`` is made unrendered here and placed by the Generate tab, so that the Learn tab, built first,
    can already name it as an output."""

    key: str
    files: SessionFiles  # what each session shows and uploads, in Gradio's cache
    timeline: gr.Gallery | None = None
    status: gr.Markdown | None = None
    chips: gr.Dataset = field(
        default_factory=lambda: gr.Dataset(
            components=[gr.Textbox(visible=False, render=False)],
            samples=[],
            label="Your concepts (click to insert)",
            layout="gallery",
            render=False,
        )
    )
    generate_form: Form[GenerateConfig] | None = None  # the Forgetting tab samples with it too

    @property
    def shown(self) -> list[gr.components.Component]:
        """What every change of the session refreshes: timeline, chips, status."""
        return [self.timeline, self.chips, self.status]


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


def paths(gallery: Sequence[Any] | None) -> list[str]:
    """File paths out of a Gallery value (a list of (path, caption) pairs)."""
    return [str(item[0] if isinstance(item, tuple | list) else item) for item in gallery or []]


def describe(progress: Progress) -> str:
    eta = "" if math.isnan(progress.eta_seconds) else f" · ETA {progress.eta_seconds:.0f} s"
    loss = "" if math.isnan(progress.loss) else f" · loss {progress.loss:.4f}"
    return f"{progress.message} · step {progress.step}/{progress.total}{loss}{eta}"


def reporter(bar: gr.Progress) -> Callable[[Progress], None]:
    return lambda p: bar((p.step, p.total), desc=describe(p), unit="steps")


def user_of(studio: Studio, request: gr.Request) -> str:
    """The session's id, refused (a typed error) unless it is a plain token."""
    return studio.folder(request.session_hash).name


def cancel_handler(studio: Studio) -> Callable[[gr.Request], None]:
    """Cancel, for the Learn and Forgetting tabs' buttons: stops this session's queued or running job (a
    running one after its current step)."""

    @user_errors
    def cancel(request: gr.Request) -> None:
        studio.cancel(user_of(studio, request))
        gr.Info("Cancelling: your queued or running job stops after its current step.")

    return cancel


def refresh(studio: Studio, files: SessionFiles, user: str) -> Shown:
    """Timeline, concept chips and status line of ``user``'s session (thumbnails served from ``files``)."""
    timeline = studio.timeline(user)
    status = (
        f"This session holds {len(timeline)} concept(s): "
        + ", ".join(f"`{entry.token}`" for entry in timeline)
        + ". Use them in prompts as written."
        if timeline
        else "No concepts yet: upload 3–5 images (or click an example) and press **Learn concept**."
    )
    thumbnails = [(files.copy(user, entry.thumbnail), entry.caption) for entry in timeline]
    return thumbnails, gr.Dataset(samples=[[token] for token in studio.tokens(user)]), status


def hidden() -> dict[str, Any]:
    return gr.update(visible=False)
