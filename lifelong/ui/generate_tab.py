"""The Generate tab: a prompt with the session's concepts as chips, the settings from ``GenerateConfig``,
images and (on request) where each concept attends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from lifelong.configs import GenerateConfig
from lifelong.service import Studio
from lifelong.ui.common import GPU, TRACKER, Page, user_errors, user_of
from lifelong.ui.forms import Form
from lifelong.ui.jobs import check_generate, generate_job, on_model_thread

MAIN_SETTINGS = ("negative_prompt", "seed", "steps", "guidance_scale", "num_images", "icgen_strength")


def insert_token(sample: Any, prompt: str) -> str:
    """Append a clicked concept chip to the prompt."""
    token = sample[0] if isinstance(sample, list | tuple) else str(sample)
    return f"{prompt.rstrip()} {token}".strip() if prompt else f"a {token}"


@dataclass
class GenerateTab:
    studio: Studio
    page: Page
    prompt: gr.Textbox
    form: Form[GenerateConfig]
    show_maps: gr.Checkbox

    @property
    def inputs(self) -> dict[str, gr.components.Component]:
        """By name, as the HTTP API shows them: the prompt, the maps box and GenerateConfig's fields."""
        return {"prompt": self.prompt, "show_maps": self.show_maps, **self.form.named()}

    @user_errors
    def generate(
        self, request: gr.Request, progress: gr.Progress = TRACKER, **values: Any
    ) -> tuple[list[str], gr.Gallery]:
        """The images and overlays, saved to the session's own folder of Gradio's cache."""
        user = user_of(self.studio, request)
        config = self.form.parse_named(values)
        check_generate(self.page.key, config)
        maps = bool(values["show_maps"])
        images, overlays = on_model_thread(
            generate_job, self.page.key, user, values["prompt"], config, maps, progress
        )
        files = self.page.files
        shown_overlays = [(files.image(user, overlay), caption) for overlay, caption in overlays]
        return [files.image(user, image) for image in images], gr.Gallery(value=shown_overlays, visible=maps)


def create_demo(studio: Studio, page: Page) -> None:
    """The tab's layout and events (inside ``gr.Tab``); places ``page.chips``, sets ``page.generate_form``
    (the Forgetting tab samples with the same settings)."""
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(
                label="Prompt", placeholder="a <rex> dog on a blue background", elem_id="prompt"
            )
            page.chips.render()
            form = Form.build(GenerateConfig, only=MAIN_SETTINGS)
            with gr.Accordion("Multi-concept attention and more", open=False):
                show_maps = gr.Checkbox(
                    label="Show attention maps", info="where each concept of the prompt attends"
                )
                form += Form.build(GenerateConfig, exclude=MAIN_SETTINGS)
            generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
        with gr.Column():
            generated = gr.Gallery(
                label="Images",
                columns=2,
                fit_columns=False,
                format="png",
                interactive=False,
                elem_id="generated",
            )
            maps = gr.Gallery(label="Attention maps", columns=4, format="png", visible=False)
    tab = GenerateTab(studio, page, prompt, form, show_maps)
    page.generate_form = form
    page.chips.click(insert_token, [page.chips, prompt], prompt, api_name=False)
    outputs = [generated, maps]
    generate_button.click(tab.generate, None, outputs, api_name="generate", inputs_kwargs=tab.inputs, **GPU)
    prompt.submit(tab.generate, None, outputs, api_name=False, inputs_kwargs=tab.inputs, **GPU)
