"""The whole page: a title, one tab per module, and the session's load and unload events."""

from __future__ import annotations

import gradio as gr

from lifelong.base import get_base
from lifelong.service import Studio, default_scorer
from lifelong.ui import forgetting_tab, generate_tab, learn_tab, session_tab
from lifelong.ui.common import Page, Shown, refresh, user_errors
from lifelong.ui.jobs import register

DESCRIPTION = """# Lifelong Studio
Teach the model your own concepts from 3–5 images each, one after another, and check that it keeps the
earlier ones. Learned concepts are written `<name>` in prompts."""
TABS = (
    ("Learn", learn_tab),
    ("Generate", generate_tab),
    ("Forgetting", forgetting_tab),
    ("Session", session_tab),
)


def default_studio() -> Studio:
    """A Studio on the bundled base model (or $LIFELONG_BASE_MODEL), compiling sampling in the background."""
    scorer, why = default_scorer()
    studio = Studio(get_base(), scorer=scorer, scorer_note=why)
    studio.warm_up()
    return studio


def create_app(studio: Studio | None = None) -> gr.Blocks:
    """The whole app on ``studio`` (default: ``default_studio()``)."""
    studio = studio or default_studio()
    page = Page(register(studio))

    @user_errors
    def load(request: gr.Request) -> Shown:
        studio.sweep()
        return refresh(studio, request.session_hash)

    def unload(request: gr.Request) -> None:
        studio.drop(request.session_hash)

    with gr.Blocks(title="Lifelong Studio") as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Tabs():
            for title, tab in TABS:
                with gr.Tab(title):
                    tab.create_demo(studio, page)
        demo.load(load, outputs=page.shown, api_name="session")
        demo.unload(unload)
    return demo.queue(max_size=20, default_concurrency_limit=1)
