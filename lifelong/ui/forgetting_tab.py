"""The Forgetting tab: each earlier concept right after it was learned and now, and the IA matrix."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import gradio as gr
import matplotlib.pyplot as plt
from PIL import Image

from lifelong.configs import GenerateConfig
from lifelong.errors import Cancelled
from lifelong.plots import ia_heatmap
from lifelong.service import ForgettingReport, Studio
from lifelong.ui.common import GPU, QUEUED, TRACKER, Page, cancel_handler, shown, user_errors, user_of
from lifelong.ui.forms import Form
from lifelong.ui.jobs import check_forgetting, forgetting_job

FORGETTING_NOTE = """For every earlier concept: the image right after it was learned and the image now, same
prompt and seed (the Generate tab's settings). IA is the mean CLIP similarity to the concept's own images."""
View = tuple[list[tuple[Image.Image, str]], Image.Image | None, str]


def heatmap(report: ForgettingReport) -> Image.Image | None:
    """The IA matrix as an image: rows = concepts, columns = checkpoints after which they were sampled."""
    if report.matrix is None:
        return None
    figure = ia_heatmap(report.matrix, [f"<{name}>" for name in report.names])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(buffer).convert("RGB")


def forgetting_view(report: ForgettingReport) -> View:
    pairs: list[tuple[Image.Image, str]] = []
    for item in report.comparisons:
        drop = "" if item.ia_drop is None else f" · IA {item.ia_now:.3f} (drop {item.ia_drop:+.3f})"
        pairs.append((item.after, f"<{item.name}> right after learning it (checkpoint {item.index})"))
        pairs.append((item.now, f"<{item.name}> now (checkpoint {len(report.names)}){drop}"))
    return pairs, heatmap(report), report.note


@dataclass
class ForgettingTab:
    studio: Studio
    page: Page
    form: Form[GenerateConfig]

    @user_errors
    def queued(self, request: gr.Request) -> None:
        """Runs at the click, before the comparison waits in the queue: a Cancel from now on stops it."""
        self.studio.submit(user_of(self.studio, request), "forgetting")

    @user_errors
    def compare(
        self, request: gr.Request, progress: gr.Progress = TRACKER, **values: Any
    ) -> tuple[list[tuple[str, str]], str | None, str]:
        """The comparison, its images saved to the session's own folder of Gradio's cache."""
        user = user_of(self.studio, request)
        config = self.form.parse_named(values)
        check_forgetting(self.page.key, user, config)
        try:
            pairs, matrix, note = forgetting_view(forgetting_job(self.page.key, user, config, progress))
        except Cancelled as error:
            gr.Warning(shown(str(error)))
            return [], None, shown(f"Cancelled: {error}")
        files = self.page.files
        shown_pairs = [(files.image(user, image), caption) for image, caption in pairs]
        return shown_pairs, None if matrix is None else files.image(user, matrix), note


def create_demo(studio: Studio, page: Page) -> None:
    """The tab's layout and events (inside ``gr.Tab``), sampling with the Generate tab's settings."""
    assert page.generate_form is not None, "build the Generate tab first"
    gr.Markdown(FORGETTING_NOTE)
    with gr.Row():
        compare_button = gr.Button("Regenerate comparison", variant="primary")
        cancel_button = gr.Button("Cancel", variant="stop")
    note = gr.Markdown()
    pairs = gr.Gallery(label="Right after learning | now", columns=2, format="png", interactive=False)
    matrix = gr.Image(label="IA matrix", type="pil", interactive=False)
    tab = ForgettingTab(studio, page, page.generate_form)
    outputs = [pairs, matrix, note]
    compare_button.click(tab.queued, None, None, **QUEUED).then(
        tab.compare, None, outputs, api_name="forgetting", inputs_kwargs=tab.form.named(), **GPU
    )
    cancel_button.click(cancel_handler(studio), None, None, api_name=False, concurrency_limit=None)
