"""The Learn tab: images, name, class word and method in; a learned concept on the timeline out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from lifelong.configs import DEFAULT_METHOD, LearnConfig
from lifelong.errors import Cancelled, LifelongError
from lifelong.folders import load_examples
from lifelong.intake import load_images
from lifelong.methods import METHODS, get_method
from lifelong.service import Studio, upload_notes
from lifelong.ui.common import (
    GPU,
    QUEUED,
    TRACKER,
    Page,
    Shown,
    cancel_handler,
    paths,
    refresh,
    shown,
    user_errors,
    user_of,
)
from lifelong.ui.forms import Form
from lifelong.ui.jobs import check_learn, learn_job, on_model_thread


@dataclass(frozen=True)
class Example:
    name: str
    class_word: str
    images: list[str]
    captions: str  # one line per image


def examples(limit: int = 4) -> list[Example]:
    """The examples marked in assets/concepts/index.json: held-out emoji the base model never saw."""
    try:
        found = load_examples(limit=limit)
    except (OSError, ValueError):
        return []
    return [Example(c.name, c.class_word, [str(p) for p in c.images], "\n".join(c.captions)) for c in found]


def caption_lines(text: str | None) -> list[str]:
    """The captions box: one caption per line, in the images' order; empty: none."""
    lines = (text or "").strip("\n").split("\n")
    return [] if not any(line.strip() for line in lines) else lines


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


@dataclass
class LearnTab:
    studio: Studio
    page: Page
    images: gr.Gallery
    name: gr.Textbox
    class_word: gr.Textbox
    captions: gr.Textbox
    method: gr.Dropdown
    form: Form[LearnConfig]

    @property
    def inputs(self) -> dict[str, gr.components.Component]:
        """By name, as the HTTP API shows them: images, name, class word, captions, method and LearnConfig's
        fields."""
        named = {"images": self.images, "name": self.name, "class_word": self.class_word}
        return {**named, "captions": self.captions, "method": self.method, **self.form.named()}

    def check_images(self, images: list[Any] | None, request: gr.Request) -> None:
        """Warn right after an upload about anything that will not work or will be changed."""
        files = paths(images)
        if not files:
            return
        self.page.files.note_uploads(user_of(self.studio, request), files)
        try:
            load_images(files, self.studio.base.resolution)
        except LifelongError as error:
            gr.Warning(shown(f"{error} Remove it and add another image."))
            return
        for note in upload_notes(files):
            gr.Warning(shown(note))

    @user_errors
    def queued(self, request: gr.Request) -> None:
        """Runs at the click, before the learn waits in the queue: a Cancel from now on stops it."""
        self.studio.submit(user_of(self.studio, request), "learn")

    @user_errors
    def learn(self, request: gr.Request, progress: gr.Progress = TRACKER, **values: Any) -> Shown:
        user = user_of(self.studio, request)
        files = paths(values["images"])
        config = self.form.parse_named(values, method=values["method"] or DEFAULT_METHOD)
        self.page.files.note_uploads(user, files)
        check_learn(self.page.key, user, config)
        for note in upload_notes(files):
            gr.Warning(shown(note))
        try:
            captions = caption_lines(values["captions"])
            message = on_model_thread(
                learn_job,
                self.page.key,
                user,
                files,
                values["name"],
                values["class_word"],
                config,
                captions,
                progress,
            )
        except Cancelled as error:
            gr.Warning(shown(str(error)))
            timeline, chips, status = refresh(self.studio, self.page.files, user)
            return timeline, chips, shown(f"Cancelled: {error}")
        timeline, chips, status = refresh(self.studio, self.page.files, user)
        return timeline, chips, f"{message} {status}"


def _inputs() -> tuple[
    gr.Gallery, gr.Textbox, gr.Textbox, gr.Textbox, gr.Dropdown, gr.Markdown, Form[LearnConfig]
]:
    images = gr.Gallery(
        label="3–5 images of your concept (drop them here)",
        interactive=True,
        type="filepath",
        file_types=["image"],
        columns=5,
        height=220,
    )
    with gr.Row():
        name = gr.Textbox(
            label="Concept name", placeholder="rex", info="used as <name>", elem_id="concept-name"
        )
        class_word = gr.Textbox(label="Class word", placeholder="dog", info="what it is")
    captions = gr.Textbox(
        "",  # a default, so the HTTP API may leave it out
        label="Captions (optional)",
        placeholder="on a red background\non the beach\n…",
        info="one line per image, in order: what else each image shows, so the concept does not learn it",
        lines=2,
        max_lines=20,
    )
    method = gr.Dropdown(
        [(name, name) for name in METHODS],
        value=DEFAULT_METHOD,
        label="Method",
        allow_custom_value=True,
        info="combine with +, e.g. routed+dfkd",
    )
    method_text = gr.Markdown(method_help(DEFAULT_METHOD))
    with gr.Accordion("Advanced", open=False):
        form = Form.build(LearnConfig, exclude={"method"})
    return images, name, class_word, captions, method, method_text, form


def create_demo(studio: Studio, page: Page) -> None:
    """The tab's layout and events (inside ``gr.Tab``); sets ``page.timeline`` and ``page.status``."""
    with gr.Row():
        with gr.Column():
            images, name, class_word, captions, method, method_text, form = _inputs()
            with gr.Row():
                learn_button = gr.Button("Learn concept", variant="primary", elem_id="learn-button")
                cancel_button = gr.Button("Cancel", variant="stop")
            example_list = examples()
            if example_list:
                example_set = gr.Examples(
                    [[ex.images, ex.name, ex.class_word, ex.captions] for ex in example_list],
                    inputs=[images, name, class_word, captions],
                    label="Examples: one click fills the form and learns the concept",
                )
        with gr.Column():
            page.status = gr.Markdown(elem_id="status")
            page.timeline = gr.Gallery(
                label="Your concepts, in the order learned",
                columns=3,
                height="auto",
                allow_preview=False,
                fit_columns=False,  # thumbnails stay small when there are few concepts
                interactive=False,
            )
    tab = LearnTab(studio, page, images, name, class_word, captions, method, form)
    images.upload(tab.check_images, images, None, api_name=False)
    method.change(method_changed, method, [method_text, form.component("settings")], api_name=False)
    learn_button.click(tab.queued, None, None, **QUEUED).then(
        tab.learn, None, page.shown, api_name="learn", inputs_kwargs=tab.inputs, **GPU
    )
    if example_list:
        example_set.load_input_event.then(tab.queued, None, None, **QUEUED).then(
            tab.learn, None, page.shown, api_name=False, inputs_kwargs=tab.inputs, **GPU
        )
    cancel_button.click(cancel_handler(studio), None, None, api_name="cancel", concurrency_limit=None)
