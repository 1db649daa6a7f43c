"""Gradio forms generated from config dataclasses, so a new field shows up in the UI by itself.

``Form.build(LearnConfig)`` makes one component per field (bool → checkbox, int/float → number or slider,
str → textbox, or a dropdown when it has choices, the ``settings`` dict → a ``key=value`` box) with the help
text and bounds written on the field (``lifelong.configs``); ``form.parse(*values)`` turns the components'
values back into a config through :func:`lifelong.overrides.override`, the same path the CLI's ``--set``
takes. Events take a form's values by field name (``form.named()`` as ``inputs_kwargs``), so the app's HTTP
API names its parameters like the UI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_type_hints

import gradio as gr

from lifelong.configs import bounds
from lifelong.overrides import override, parse_pairs

C = TypeVar("C")


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _component(
    item: dataclasses.Field[Any], hint: Any, default: Any, elem_id: str
) -> gr.components.Component:
    """A slider for bounded numbers, a number box for others, a checkbox, a dropdown for text with choices,
    a textbox or a key=value box."""
    info = item.metadata.get("help")
    common = {"label": _label(item.name), "info": info, "elem_id": elem_id}
    choices = item.metadata.get("choices")
    if choices:
        return gr.Dropdown([(choice or "default", choice) for choice in choices], value=default, **common)
    if hint is bool:
        return gr.Checkbox(value=default, **common)
    if hint in (int, float):
        span = bounds(item)
        if span is not None:
            low, high, step = span
            return gr.Slider(low, high, value=default, step=step, **common)
        return gr.Number(value=default, precision=0 if hint is int else None, **common)
    if isinstance(default, dict):
        common["info"] = (info + "; " if info else "") + "one key=value per line"
        return gr.Textbox(value="\n".join(f"{k}={v}" for k, v in default.items()), lines=2, **common)
    return gr.Textbox(value="" if default is None else str(default), **common)


@dataclass
class Form(Generic[C]):
    """Components for some fields of a config dataclass, and the way back to a config."""

    cls: type[C]
    names: list[str]
    components: list[gr.components.Component]

    @classmethod
    def build(
        cls,
        config_cls: type[C],
        exclude: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> Form[C]:
        """Create the components (inside a Blocks context) for the fields in ``only`` (default: all) that
        are not in ``exclude``; each field's default, bounds and help come from its definition."""
        hints = get_type_hints(config_cls)
        instance = config_cls()
        names, components = [], []
        for item in dataclasses.fields(config_cls):  # type: ignore[arg-type]
            if item.name in set(exclude) or (only is not None and item.name not in set(only)):
                continue
            default = getattr(instance, item.name)
            names.append(item.name)
            owner = config_cls.__name__
            elem_id = f"{owner.lower()}-{item.name}"  # e.g. learnconfig-steps, for browser tests
            components.append(_component(item, hints[item.name], default, elem_id))
        return cls(config_cls, names, components)

    def component(self, name: str) -> gr.components.Component:
        return self.components[self.names.index(name)]

    def __add__(self, other: Form[C]) -> Form[C]:
        """One form from two built for the same config in different places of the layout."""
        return Form(self.cls, self.names + other.names, self.components + other.components)

    def parse(self, *values: Any, **fixed: Any) -> C:
        """A config from the components' values (in ``components`` order) plus ``fixed`` fields."""
        changes: dict[str, Any] = dict(fixed)
        for name, value in zip(self.names, values, strict=True):
            if name == "settings":
                changes.update(parse_pairs([line for line in str(value or "").splitlines() if line.strip()]))
            elif value is not None:
                changes[name] = value
        return override(self.cls(), changes)

    def named(self) -> dict[str, gr.components.Component]:
        """The components by field name: an event's ``inputs_kwargs``, so the HTTP API names each parameter
        as the config does (``steps``, ``guidance_scale``…)."""
        return dict(zip(self.names, self.components, strict=True))

    def parse_named(self, values: dict[str, Any], **fixed: Any) -> C:
        """Like ``parse``, from an event's values by field name (inputs given as ``inputs_kwargs``)."""
        return self.parse(*(values[name] for name in self.names), **fixed)
