"""The Forgetting tab: each earlier concept right after it was learned and now, its word (kept, faded,
forgotten) read from intervals, the IA matrix and the forgetting curves."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import gradio as gr
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

from lifelong.configs import GenerateConfig
from lifelong.errors import Cancelled
from lifelong.plots import forgetting_curves, ia_heatmap
from lifelong.retention import FADED, FORGOTTEN, KEPT, MIN_IMAGES, NOT_LEARNED, SMALL_DROP
from lifelong.service import ForgettingReport, Studio
from lifelong.ui.common import GPU, QUEUED, TRACKER, Page, cancel_handler, shown, user_errors, user_of
from lifelong.ui.forms import Form
from lifelong.ui.jobs import check_forgetting, forgetting_job, on_model_thread

FORGETTING_NOTE = """For every earlier concept: images right after it was learned and now, same prompt and
seeds (the Generate tab's settings; *Images per concept* here). IA is the mean similarity of an image to the
concept's own images; each number comes with its 95 % interval over the seeds, and the word is read from the
intervals, not from one noisy number."""
WORDS_NOTE = (
    f"**{KEPT}**: the drop's interval includes 0 or stays below {SMALL_DROP}. **{FADED}**: it dropped, but is "
    f"still clearly closer to its own images than to any other concept's. **{FORGOTTEN}**: it dropped, and is "
    f"now no closer to its own images than to another concept's. **{NOT_LEARNED}**: it was not clearly "
    f"itself right after learning either. Fewer than {MIN_IMAGES} images give no word; more images give "
    "narrower intervals."
)
IMAGES_PER_CONCEPT = 4  # the default: enough seeds for a first interval, ~4× one image's time per set
View = tuple[list[tuple[Image.Image, str]], Image.Image | None, Image.Image | None, str, str]


def _image(figure: Figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(buffer).convert("RGB")


def plots(report: ForgettingReport) -> tuple[Image.Image | None, Image.Image | None]:
    """The IA matrix as a heat map (rows = concepts, columns = checkpoints after which they were sampled)
    and the forgetting curves with their intervals."""
    if report.matrix is None or report.low is None or report.high is None:
        return None, None
    names = [f"<{name}>" for name in report.names]
    figure, axes = plt.subplots(figsize=(4.2 + 0.3 * len(names), 3.0), dpi=110)
    forgetting_curves(axes, report.matrix, report.low, report.high, names)
    axes.set_ylabel("IA, 95 % interval")
    axes.legend(fontsize=7)
    figure.tight_layout()
    return _image(ia_heatmap(report.matrix, names)), _image(figure)


def words_table(report: ForgettingReport) -> str:
    """One row per earlier concept: IA right after learning and now, the drop, the margin over the other
    concepts now, and the word."""
    rows = [(item, item.retention) for item in report.comparisons if item.retention is not None]
    if not rows:
        return ""
    lines = [
        "| concept | IA right after learning | IA now | drop | margin over other concepts now | word |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for item, r in rows:
        lines.append(
            f"| {shown(f'<{item.name}>')} | {r.after} | {r.now} | {r.drop.format('+.3f')} | "
            f"{r.margin_now.format('+.3f')} | **{r.word}**: {r.reason} |"
        )
    return "\n".join(lines) + "\n\n" + WORDS_NOTE


def forgetting_view(report: ForgettingReport) -> View:
    pairs: list[tuple[Image.Image, str]] = []
    for item in report.comparisons:
        r = item.retention
        now = "" if r is None else f" · IA {r.now} · {r.word}"
        pairs.append((item.after, f"<{item.name}> right after learning it (checkpoint {item.index})"))
        pairs.append((item.now, f"<{item.name}> now (checkpoint {len(report.names)}){now}"))
    heatmap, curves = plots(report)
    return pairs, heatmap, curves, words_table(report), report.note


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
    ) -> tuple[list[tuple[str, str]], str | None, str | None, str, str]:
        """The comparison, its images saved to the session's own folder of Gradio's cache."""
        user = user_of(self.studio, request)
        config = self.form.parse_named(values)
        check_forgetting(self.page.key, user, config)
        try:
            pairs, heatmap, curves, words, note = forgetting_view(
                on_model_thread(forgetting_job, self.page.key, user, config, progress)
            )
        except Cancelled as error:
            gr.Warning(shown(str(error)))
            return [], None, None, "", shown(f"Cancelled: {error}")
        files = self.page.files
        shown_pairs = [(files.image(user, image), caption) for image, caption in pairs]
        saved = [None if plot is None else files.image(user, plot) for plot in (heatmap, curves)]
        return shown_pairs, saved[0], saved[1], words, note


def create_demo(studio: Studio, page: Page) -> None:
    """The tab's layout and events (inside ``gr.Tab``), sampling with the Generate tab's settings and its
    own number of images per concept."""
    assert page.generate_form is not None, "build the Generate tab first"
    gr.Markdown(FORGETTING_NOTE)
    with gr.Row():
        images = gr.Slider(
            1,
            16,
            value=IMAGES_PER_CONCEPT,
            step=1,
            label="Images per concept",
            info="seeds per concept and checkpoint: more give narrower intervals and take longer",
        )
        compare_button = gr.Button("Regenerate comparison", variant="primary")
        cancel_button = gr.Button("Cancel", variant="stop")
    note = gr.Markdown()
    words = gr.Markdown()
    pairs = gr.Gallery(label="Right after learning | now", columns=2, format="png", interactive=False)
    with gr.Row():
        matrix = gr.Image(label="IA matrix", type="pil", interactive=False)
        curves = gr.Image(label="Forgetting curves", type="pil", interactive=False)
    tab = ForgettingTab(studio, page, page.generate_form)
    # the Generate tab's settings, but this tab's own image count: one image gives no interval
    inputs = tab.form.named() | {"num_images": images}
    compare_button.click(tab.queued, None, None, **QUEUED).then(
        tab.compare,
        None,
        [pairs, matrix, curves, words, note],
        api_name="forgetting",
        inputs_kwargs=inputs,
        **GPU,
    )
    cancel_button.click(cancel_handler(studio), None, None, api_name=False, concurrency_limit=None)
