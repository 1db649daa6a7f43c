"""The Session tab: export the session as one file, import one, or start over."""

from __future__ import annotations

from typing import Any

import gradio as gr

from lifelong.service import Studio
from lifelong.ui.common import Page, Shown, hidden, refresh, user_errors, user_of
from lifelong.ui.files import SessionFiles

SESSION_NOTE = """Your concepts live in a private folder on this server **only while this tab is open**; it is
deleted when you leave, and a server restart loses it. **Export** to keep them: the file holds everything,
and **Import** restores it later, on any server running the same base model."""


class SessionTab:
    def __init__(self, studio: Studio, files: SessionFiles) -> None:
        self.studio = studio
        self.files = files

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
        user = user_of(self.studio, request)
        self.studio.reset(user)
        return (*refresh(self.studio, self.files, user), gr.update(visible=False))


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
    tab = SessionTab(studio, page.files)
    export_button.click(tab.export, None, export_file, api_name="export")
    import_button.upload(tab.import_file, import_button, page.shown, api_name="import")
    reset_button.click(tab.ask_reset, None, [reset_row, reset_question], api_name=False)
    keep_button.click(hidden, None, reset_row, api_name=False)
    confirm_reset.click(tab.reset, None, [*page.shown, reset_row], api_name="reset")
