"""Methods: how a session learns the next concept, as named configurations of the one learner."""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.errors import UnknownMethodError


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    kind: str = "kv"  # trainable parametrization: "kv" (full K/V increments) or "lora"
    stack: bool = True  # learn on top of the previous checkpoint; False: from the base (kept separate)


METHODS: dict[str, Method] = {
    "finetune": Method(
        "finetune", "Plain sequential fine-tuning of cross-attention K/V and the token (forgets)."
    ),
}

DEFAULT_METHOD = "finetune"


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError as error:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}.") from error
