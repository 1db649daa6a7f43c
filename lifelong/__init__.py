"""Lifelong Studio: teach a text-to-image diffusion model concepts one after another, without forgetting.

The library in a few lines (every call takes the base first, then the session, then what it works on, then
its config)::

    import lifelong

    base = lifelong.load_base()  # the bundled model; or a hub id, a folder, or from_pipe(your_pipeline)
    session = lifelong.open_session(base, "my-session")  # a folder: opened, or created empty
    lifelong.learn(base, session, ["rex1.png", "rex2.png", "rex3.png"], "rex", "dog")
    images = lifelong.generate(base, session, "a <rex> dog on the beach", lifelong.GenerateConfig(seed=1))
    lifelong.export(base, session, "rex-lora")  # for load_lora_weights and load_textual_inversion

``lifelong.generate`` and ``lifelong.export`` are functions; their modules are ``lifelong.generation`` and
``lifelong.lora_export``.
"""

from lifelong.base import BaseConfig, BaseModel, from_pipe, load_base
from lifelong.concepts import Session, open_session
from lifelong.configs import ExportConfig, GenerateConfig, LearnConfig
from lifelong.generation import generate
from lifelong.learner import LearnResult, learn
from lifelong.lora_export import ExportReport, export
from lifelong.lora_import import import_lora

__all__ = [
    "BaseConfig",
    "BaseModel",
    "ExportConfig",
    "ExportReport",
    "GenerateConfig",
    "LearnConfig",
    "LearnResult",
    "Session",
    "export",
    "from_pipe",
    "generate",
    "import_lora",
    "learn",
    "load_base",
    "open_session",
]
