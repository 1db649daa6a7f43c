"""The Session tab: export the session as one file, import one, or start over; and concepts out to other
tools as a LoRA with embeddings, or a LoRA made elsewhere in as a concept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from lifelong.configs import ExportConfig
from lifelong.service import Studio
from lifelong.ui.common import GPU, Page, Shown, hidden, refresh, shown, user_errors, user_of
from lifelong.ui.forms import Form
from lifelong.ui.jobs import import_lora_job, on_model_thread

SESSION_NOTE = """Your concepts live in a private folder on this server **only while this tab is open**; it is
deleted when you leave, and a server restart loses it. **Export** to keep them: the file holds everything,
and **Import** restores it later, on any server running the same base model."""
LORA_NOTE = """Export concepts as a LoRA with one textual-inversion embedding per token: **diffusers** (a folder
for `load_lora_weights` and `load_textual_inversion`) or **kohya** (one file for A1111 and ComfyUI). Leave
*Concept* empty for every concept up to the checkpoint, as this session composes them. Its README says how to
load it. A LoRA and embedding made elsewhere **for this base model** import as your next concept."""


class SessionTab:
    def __init__(self, studio: Studio, page: Page, form: Form[ExportConfig]) -> None:
        self.studio = studio
        self.page = page
        self.files = page.files
        self.form = form

    @user_errors
    def export(self, request: gr.Request) -> str:
        """The session file, moved into the session's own folder of Gradio's cache (it goes with it)."""
        user = user_of(self.studio, request)
        path = self.files.move(user, self.studio.export(user))
        gr.Info("Exported: keep this file. Importing it restores the session, also after a server restart.")
        return path

    @user_errors
    def import_file(self, file: str | None, request: gr.Request) -> Shown:
        if not file:
            raise gr.Error("Choose an exported session file (.zip) to import.")
        user = user_of(self.studio, request)
        self.files.note_uploads(user, [file])
        session = on_model_thread(self.studio.import_file, user, file)
        gr.Info(f"Imported {len(session.concepts)} concept(s).")
        return refresh(self.studio, self.files, user)

    @user_errors
    def export_lora(
        self, request: gr.Request, checkpoint: float | None = None, **values: Any
    ) -> tuple[str, str]:
        """The LoRA export as one zip file, and what it holds (ranks, the SVD's error); ``checkpoint``
        defaults to the latest, also for API callers that leave it out."""
        user = user_of(self.studio, request)
        config = self.form.parse_named(values)
        at = None if checkpoint is None else int(checkpoint)
        path, report = on_model_thread(self.studio.export_lora, user, config, at)
        return self.files.move(user, path), shown(report.summary())

    @user_errors
    def import_lora(
        self, lora: str | None, embedding: str | None, name: str, class_word: str, request: gr.Request
    ) -> Shown:
        if not lora or not embedding:
            raise gr.Error("Choose a LoRA file and its embedding file (.safetensors) to import.")
        user = user_of(self.studio, request)
        self.files.note_uploads(user, [lora, embedding])
        message = on_model_thread(import_lora_job, self.page.key, user, lora, embedding, name, class_word)
        timeline, chips, status = refresh(self.studio, self.files, user)
        return timeline, chips, f"{message} {status}"

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
        user = user_of(self.studio, request)
        self.studio.reset(user)
        return (*refresh(self.studio, self.files, user), gr.update(visible=False))


@dataclass
class LoraPanel:
    """The components of concepts out as a LoRA + embeddings, and of a LoRA + embedding made elsewhere in."""

    form: Form[ExportConfig]
    checkpoint: gr.Number
    export_button: gr.Button
    report: gr.Markdown
    export_file: gr.File
    imports: list[gr.components.Component]  # LoRA file, embedding file, concept name, class word
    import_button: gr.Button


def _lora_panel() -> LoraPanel:
    gr.Markdown(LORA_NOTE)
    form = Form.build(ExportConfig)
    checkpoint = gr.Number(
        label="Checkpoint", info="export the state after this concept; empty = the latest", precision=0
    )
    export_button = gr.Button("Export LoRA + embeddings")
    report = gr.Markdown()
    export_file = gr.File(label="Your LoRA export (.zip)", interactive=False)
    with gr.Row():
        lora = gr.File(label="LoRA file (.safetensors)", file_types=[".safetensors"])
        embedding = gr.File(label="Embedding file (.safetensors)", file_types=[".safetensors"])
    with gr.Row():
        name = gr.Textbox(label="Concept name", info="empty: the embedding's own <token>")
        class_word = gr.Textbox(label="Class word", info="what it is")
    import_button = gr.Button("Import LoRA as a concept")
    imports: list[gr.components.Component] = [lora, embedding, name, class_word]
    return LoraPanel(form, checkpoint, export_button, report, export_file, imports, import_button)


def create_demo(studio: Studio, page: Page) -> None:
    """The tab's layout and events (inside ``gr.Tab``)."""
    gr.Markdown(SESSION_NOTE)
    with gr.Row():
        export_button = gr.Button("Export session")
        import_button = gr.UploadButton("Import session file", file_types=[".zip"])
        reset_button = gr.Button("Reset (deletes this session's concepts)", variant="stop")
    with gr.Row(visible=False) as reset_row:
        reset_question = gr.Markdown()
        confirm_reset = gr.Button("Yes, delete them", variant="stop", elem_id="confirm-reset")
        keep_button = gr.Button("Keep them")
    export_file = gr.File(label="Your session file", interactive=False)
    with gr.Accordion("Use your concepts in diffusers, A1111 or ComfyUI", open=False):
        lora = _lora_panel()
    tab = SessionTab(studio, page, lora.form)
    export_button.click(tab.export, None, export_file, api_name="export")
    import_button.upload(tab.import_file, import_button, page.shown, api_name="import")
    reset_button.click(tab.ask_reset, None, [reset_row, reset_question], api_name=False)
    keep_button.click(hidden, None, reset_row, api_name=False)
    confirm_reset.click(tab.reset, None, [*page.shown, reset_row], api_name="reset")
    named = {**lora.form.named(), "checkpoint": lora.checkpoint}
    outputs = [lora.export_file, lora.report]
    lora.export_button.click(tab.export_lora, None, outputs, api_name="export_lora", inputs_kwargs=named)
    lora.import_button.click(tab.import_lora, lora.imports, page.shown, api_name="import_lora", **GPU)
