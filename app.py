import spaces  # noqa: F401, I001 - first: on a ZeroGPU Space it must patch torch before anything else loads it

import gradio as gr

from lifelong import ui
from lifelong.base import get_base
from lifelong.generate import GenerateConfig
from lifelong.learner import LearnConfig
from lifelong.methods import DEFAULT_METHOD
from lifelong.service import SESSION_MAX_AGE_S, Studio, default_scorer
from lifelong.ui_forms import Form

MAIN_SETTINGS = ("negative_prompt", "seed", "steps", "guidance_scale", "num_images", "icgen_strength")
DESCRIPTION = """# Lifelong Studio
Teach the model your own concepts from 3–5 images each, one after another, and check that it keeps the
earlier ones. Learned concepts are written `<name>` in prompts."""

SESSION_NOTE = """Your concepts live in a private folder on this server **only while this tab is open**; it is
deleted when you leave, and a server restart loses it. **Export** to keep them: the file holds everything,
and **Import** restores it later, on any server running the same base model."""

FORGETTING_NOTE = """For every earlier concept: the image right after it was learned and the image now, same
prompt and seed (the Generate tab's settings). IA is the mean CLIP similarity to the concept's own images."""


def default_studio() -> Studio:
    """The bundled base model (or $LIFELONG_BASE_MODEL), compiling in the background, with the eval CLIP."""
    scorer, why = default_scorer()
    studio = Studio(get_base(), scorer=scorer, scorer_note=why)
    studio.warm_up()
    return studio


def create_app(studio: Studio | None = None) -> gr.Blocks:
    """The whole app on ``studio`` (default: ``default_studio()``)."""
    studio = studio or default_studio()
    # uploads no event ever saw (sent straight to the upload route) age out of Gradio's cache as unused
    # workspaces do; everything an event saw goes with its session (lifelong.ui_files)
    cache_sweep = (3600, SESSION_MAX_AGE_S)
    with gr.Blocks(title="Lifelong Studio", delete_cache=cache_sweep) as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Tabs():
            with gr.Tab("Learn"), gr.Row():
                with gr.Column():
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
                            label="Concept name",
                            placeholder="rex",
                            info="used as <name>",
                            elem_id="concept-name",
                        )
                        class_word = gr.Textbox(label="Class word", placeholder="dog", info="what it is")
                    method = gr.Dropdown(
                        ui.method_choices(),
                        value=DEFAULT_METHOD,
                        label="Method",
                        allow_custom_value=True,
                        info="combine with +, e.g. routed+dfkd",
                    )
                    method_help = gr.Markdown(ui.method_help(DEFAULT_METHOD))
                    with gr.Accordion("Advanced", open=False):
                        learn_form = Form.build(LearnConfig, exclude={"method"})
                    with gr.Row():
                        learn_button = gr.Button("Learn concept", variant="primary", elem_id="learn-button")
                        cancel_button = gr.Button("Cancel", variant="stop")
                    example_list = ui.examples()
                    if example_list:
                        examples = gr.Examples(
                            [[ex.images, ex.name, ex.class_word] for ex in example_list],
                            inputs=[images, name, class_word],
                            label="Examples: one click fills the form and learns the concept",
                        )
                with gr.Column():
                    status = gr.Markdown(elem_id="status")
                    timeline = gr.Gallery(
                        label="Your concepts, in the order learned",
                        columns=3,
                        height="auto",
                        allow_preview=False,
                        fit_columns=False,  # thumbnails stay small when there are few concepts
                        interactive=False,
                    )
            with gr.Tab("Generate"), gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(
                        label="Prompt", placeholder="a <rex> dog on a blue background", elem_id="prompt"
                    )
                    chips = gr.Dataset(
                        components=[gr.Textbox(visible=False)],
                        samples=[],
                        label="Your concepts (click to insert)",
                        layout="gallery",
                    )
                    generate_form = Form.build(GenerateConfig, only=MAIN_SETTINGS)
                    with gr.Accordion("Multi-concept attention and more", open=False):
                        show_maps = gr.Checkbox(
                            label="Show attention maps", info="where each concept of the prompt attends"
                        )
                        generate_form += Form.build(GenerateConfig, exclude=MAIN_SETTINGS)
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
            with gr.Tab("Forgetting"):
                gr.Markdown(FORGETTING_NOTE)
                with gr.Row():
                    compare_button = gr.Button("Regenerate comparison", variant="primary")
                    compare_cancel = gr.Button("Cancel", variant="stop")
                forgetting_note = gr.Markdown()
                pairs = gr.Gallery(
                    label="Right after learning | now", columns=2, format="png", interactive=False
                )
                matrix = gr.Image(label="IA matrix", type="pil", interactive=False)
            with gr.Tab("Session"):
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

        handlers = ui.Handlers(
            studio, images, name, class_word, method, learn_form, prompt, generate_form, show_maps
        )
        shown = [timeline, chips, status]
        gpu = {"concurrency_id": "gpu", "concurrency_limit": 1}  # one model job at a time; others queue
        demo.load(handlers.load, outputs=shown, api_name="session")
        demo.unload(handlers.unload)
        images.upload(handlers.check_images, images, None, api_name=False)
        method.change(
            ui.method_changed, method, [method_help, learn_form.component("settings")], api_name=False
        )
        # each job is first noted as submitted, at the click, so a Cancel reaches it while it still queues
        queued = {"queue": False, "api_name": False}
        learn_button.click(handlers.learn_queued, None, None, **queued).then(
            handlers.learn, handlers.learn_inputs, shown, api_name="learn", **gpu
        )
        if example_list:
            examples.load_input_event.then(handlers.learn_queued, None, None, **queued).then(
                handlers.learn, handlers.learn_inputs, shown, api_name=False, **gpu
            )
        cancel_button.click(handlers.cancel, None, None, api_name="cancel", concurrency_limit=None)
        compare_cancel.click(handlers.cancel, None, None, api_name=False, concurrency_limit=None)
        chips.click(ui.insert_token, [chips, prompt], prompt, api_name=False)
        generate_button.click(
            handlers.generate, handlers.generate_inputs, [generated, maps], api_name="generate", **gpu
        )
        prompt.submit(handlers.generate, handlers.generate_inputs, [generated, maps], api_name=False, **gpu)
        compare_button.click(handlers.forgetting_queued, None, None, **queued).then(
            handlers.forgetting,
            handlers.generate_inputs,
            [pairs, matrix, forgetting_note],
            api_name="forgetting",
            **gpu,
        )
        export_button.click(handlers.export, None, export_file, api_name="export")
        import_button.upload(handlers.import_file, import_button, shown, api_name="import")
        reset_button.click(handlers.ask_reset, None, [reset_row, reset_question], api_name=False)
        keep_button.click(ui.hidden, None, reset_row, api_name=False)
        confirm_reset.click(handlers.reset, None, [*shown, reset_row], api_name="reset")
    return demo.queue(max_size=20, default_concurrency_limit=1)


if __name__ == "__main__":
    studio = default_studio()
    create_app(studio).launch(max_file_size=ui.max_upload_bytes(studio.base))
