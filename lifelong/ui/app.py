"""The whole page: a title, one tab per module, and the session's load and unload events (which also
clear the session's files out of Gradio's cache), and the upload limit to launch it with."""

from __future__ import annotations

import gradio as gr

from lifelong.base import BaseModel, get_base
from lifelong.concepts import max_session_bytes
from lifelong.folders import BUNDLED_CONCEPTS
from lifelong.intake import MAX_IMAGES
from lifelong.service import SESSION_MAX_AGE_S, Studio, default_scorer
from lifelong.signature import BaseSignature
from lifelong.ui import forgetting_tab, generate_tab, learn_tab, session_tab
from lifelong.ui.common import Page, Shown, refresh, user_errors, user_of
from lifelong.ui.files import SessionFiles
from lifelong.ui.jobs import on_model_thread, register, start_on_model_thread

DESCRIPTION = """# Lifelong Studio
Teach the model your own concepts from 3–5 images each, one after another, and check that it keeps the
earlier ones. Learned concepts are written `<name>` in prompts."""
TABS = (
    ("Learn", learn_tab),
    ("Generate", generate_tab),
    ("Forgetting", forgetting_tab),
    ("Session", session_tab),
)
MAX_IMAGE_UPLOAD_BYTES = 50 << 20  # a 100-megapixel JPEG or WebP fits


def max_upload_bytes(base: BaseModel) -> int:
    """Gradio's upload limit (``launch(max_file_size=...)``): the largest image we take, or the largest
    session file for this base."""
    slots = len(base.slot_token_ids)
    session = max_session_bytes(BaseSignature.of(base), slots) + (1 + slots * (MAX_IMAGES + 1)) * 1024
    return max(MAX_IMAGE_UPLOAD_BYTES, session)


def default_studio() -> Studio:
    """A Studio on the bundled base model (or $LIFELONG_BASE_MODEL), loaded on the model thread, which then
    compiles sampling before it takes the first job."""

    def build() -> Studio:
        scorer, why = default_scorer()
        return Studio(get_base(), scorer=scorer, scorer_note=why)

    studio = on_model_thread(build)
    start_on_model_thread(studio.compile_sampling)
    return studio


def create_app(studio: Studio | None = None) -> gr.Blocks:
    """The whole app on ``studio`` (default: ``default_studio()``)."""
    studio = studio or default_studio()
    # the examples' images: Gradio's copies of them are shared by every session, never removed with one
    page = Page(register(studio), SessionFiles(keep=BUNDLED_CONCEPTS.rglob("*.png")))

    @user_errors
    def load(request: gr.Request) -> Shown:
        for user in studio.sweep():
            page.files.drop(user)
        page.files.sweep(SESSION_MAX_AGE_S)
        return refresh(studio, page.files, user_of(studio, request))

    def unload(request: gr.Request) -> None:
        """The tab closed: its workspace and everything it left in Gradio's cache go."""
        user = user_of(studio, request)
        studio.drop(user)
        page.files.drop(user)

    # uploads no event ever saw (sent straight to the upload route) age out of Gradio's cache as unused
    # workspaces do; everything an event saw goes with its session (lifelong.ui.files)
    cache_sweep = (3600, SESSION_MAX_AGE_S)
    with gr.Blocks(title="Lifelong Studio", delete_cache=cache_sweep) as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Tabs():
            for title, tab in TABS:
                with gr.Tab(title):
                    tab.create_demo(studio, page)
        demo.load(load, outputs=page.shown, api_name="session")
        demo.unload(unload)
    return demo.queue(max_size=20, default_concurrency_limit=1)
