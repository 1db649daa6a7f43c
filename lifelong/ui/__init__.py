"""The Gradio app, built as hysts' Spaces are: ``app.create_app`` only assembles the page, each tab is one
module with ``create_demo(studio, page)`` (its layout, its handlers, its events), the model jobs run in
``jobs`` (under ``@spaces.GPU``), and ``forms`` generates settings panels from the config dataclasses."""
