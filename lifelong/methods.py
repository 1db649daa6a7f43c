"""Methods: how a session learns the next concept, as named configurations of the one learner.

A method picks the trainable parametrization (``kind``), whether it learns on top of the previous
checkpoint (``stack``) and a set of *components*. A component is one mechanism: its settings (with defaults,
bounds and a one-line description), a regulariser factory called before training, and/or an after-learn
hook whose tensors are stored with the concept (``extra.*`` in its checkpoint). Methods combine with ``+``
("routed+dfkd", "finetune+icgen"): the components are merged, kinds and stacking must agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lifelong.configs import DEFAULT_METHOD
from lifelong.errors import IncompatibleMethodsError, InvalidSettingError, UnknownMethodError
from lifelong.mechanisms import clora, dfkd, ecd, icgen, memory, prior, tame
from lifelong.settings import Cost, Setting, Value
from lifelong.step import AfterLearnContext, BuildContext, Regularizer

__all__ = ["DEFAULT_METHOD", "METHODS", "Method", "describe", "get_method"]


@dataclass(frozen=True)
class Component:
    name: str
    settings: dict[str, Setting]
    build: Callable[[BuildContext], Regularizer] | None = None
    after_learn: Callable[[AfterLearnContext], dict[str, torch.Tensor]] | None = None
    # what it adds to learning, from its settings and the concepts already learned (lifelong.limits)
    cost: Callable[[Mapping[str, Value], int], Cost] | None = None


COMPONENTS: dict[str, Component] = {
    "prior": Component("prior", prior.SETTINGS, build=prior.build, cost=prior.cost),
    "clora": Component("clora", clora.SETTINGS, build=clora.build),
    "dfkd": Component("dfkd", dfkd.SETTINGS, build=dfkd.build, cost=dfkd.cost),
    "icgen": Component("icgen", icgen.SETTINGS, after_learn=icgen.after_learn),
    "memory": Component("memory", memory.SETTINGS, after_learn=memory.after_learn, cost=memory.cost),
    "tame": Component("tame", tame.SETTINGS, build=tame.build, cost=tame.cost),
    "ecd": Component("ecd", ecd.SETTINGS, build=ecd.build, cost=ecd.cost),
}


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    kind: str | None = None  # "kv" (full K/V increments), "lora", "lora-attn", or None: no preference (kv)
    stack: bool = True  # learn on top of the previous checkpoint; False: from the base, mixed by prompt
    components: tuple[str, ...] = ()
    # GenerateConfig values that suit concepts learned this way (the bench and the app start from them)
    generate_settings: Mapping[str, Value] = field(default_factory=dict)
    # component settings whose default differs for this method (measured for its way of stacking)
    defaults: Mapping[str, Value] = field(default_factory=dict)

    @property
    def trainable_kind(self) -> str:
        return self.kind or "kv"

    def settings(self) -> dict[str, Setting]:
        """The components' settings, with this method's own defaults where it has them."""
        merged: dict[str, Setting] = {}
        for name in self.components:
            merged.update(COMPONENTS[name].settings)
        return {
            key: dataclasses.replace(setting, default=self.defaults[key]) if key in self.defaults else setting
            for key, setting in merged.items()
        }

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Value]:
        """Every setting of the method: defaults overridden by ``given``; unknown names are refused."""
        known = self.settings()
        unknown = sorted(set(given) - set(known))
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            raise InvalidSettingError(
                f"{self.name} has no setting {unknown[0]!r}; its settings are: {names}."
            )
        return {key: setting.convert(key, given.get(key, setting.default)) for key, setting in known.items()}

    def cost(self, settings: Mapping[str, Value], concepts: int) -> Cost:
        """The components' extra UNet passes for learning a concept after ``concepts`` others."""
        total = Cost()
        for name in self.components:
            estimate = COMPONENTS[name].cost
            total = total + (estimate(settings, concepts) if estimate is not None else Cost())
        return total

    def regularizers(self, build: BuildContext) -> list[Regularizer]:
        factories = [COMPONENTS[name].build for name in self.components]
        return [factory(build) for factory in factories if factory is not None]

    def after_learn(self, ctx: AfterLearnContext) -> dict[str, torch.Tensor]:
        extras: dict[str, torch.Tensor] = {}
        for name in self.components:
            hook = COMPONENTS[name].after_learn
            if hook is not None:
                extras.update(hook(ctx))
        return extras


# Stacked distillation pulls 200 times harder than the component's default: over 10 held-out animals in a
# row (200 steps, guidance 5, paired with finetune; docs/BENCHMARKS.md, "dfkd's distillation weight") IAD
# fell with λ = 1, 5, 20, 50, 200 from 0.170 to 0.103, 0.080, 0.057 and 0.010 (Δ vs finetune −0.091
# [−0.173, −0.017]), IA right after learning +0.131 over finetune, TFR 0.013, base drift 0.055 (finetune's
# 0.533); lfs at 200: IAD 0.004 (Δ −0.097 [−0.172, −0.029]). Learning a concept alone from the base (routed)
# keeps λ = 1: at 200 the learnability benchmark's identification fell from 0.84 to 0.54.
STACKED_DISTILLATION = {"dfkd_weight": 200.0}
ICGEN_STRENGTH = 0.8  # start from the context noised to 80 %: its colours and layout, details re-drawn

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("finetune", "Plain sequential fine-tuning of cross-attention K/V and the token (forgets)."),
        Method(
            "custom-diffusion",
            "K/V + token with prior preservation on class images the base model generates (cached).",
            components=("prior",),
        ),
        Method(
            "c-lora",
            "LoRA on K/V, penalising overlap with the sum of earlier concepts' updates (C-LoRA).",
            kind="lora",
            components=("clora",),
        ),
        Method(
            "dfkd",
            "Data-free distillation from the previous checkpoint over a prompt pool; LoRA on every attention layer.",
            # LoRA on every attention projection: on the learnability benchmark (12 concepts, with captions)
            # the same identification as K/V (0.57), normalised IA 0.48 against 0.43, background 0.92 against
            # 0.90, at 1.2× the time; with dfkd's defaults of one row per step and one pseudo-sample per pool
            # prompt 0.62 / 0.47 / 0.92 (docs/BENCHMARKS.md, "Learnability")
            kind="lora-attn",
            components=("dfkd",),
            defaults=STACKED_DISTILLATION,
        ),
        Method(
            "icgen",
            "Stores a few image latents as vision context; generation can start from them (icgen_strength).",
            components=("icgen",),
            generate_settings={"icgen_strength": ICGEN_STRENGTH},
        ),
        Method(
            "tame",
            "Rainbow memory: replays earlier concepts' images (or samples), most-forgotten first (diffusion loss).",
            components=("memory", "tame"),
        ),
        Method(
            "ecd",
            "Distils the previous checkpoint on memory samples, weighted by each concept's forgetting.",
            components=("memory", "ecd"),
        ),
        Method("l2dm", "L2DM: tame + ecd.", components=("memory", "tame", "ecd")),
        Method(
            "lfs",
            "LFS-Diffusion: dfkd + icgen.",
            # dfkd's trainable set: the paper fine-tunes the attention layers' weights (until 2026-12-02 lfs
            # trained K/V, so the earlier lfs rows in docs/BENCHMARKS.md are dfkd on K/V + icgen)
            kind="lora-attn",
            components=("dfkd", "icgen"),
            generate_settings={"icgen_strength": ICGEN_STRENGTH},
            defaults=STACKED_DISTILLATION,
        ),
        Method(
            "routed",
            "Each concept's deltas learned from the base, kept apart, mixed by the concepts a prompt names.",
            stack=False,
        ),
    )
}


def get_method(name: str) -> Method:
    """A registered method, or a ``+`` combination of them (components merged in order)."""
    parts = [part.strip() for part in name.split("+")]
    unknown = [part for part in parts if part not in METHODS]
    if unknown or not parts:
        raise UnknownMethodError(
            f"unknown method {unknown[0] if unknown else name!r}; choose one of: {', '.join(METHODS)} "
            "(combine with +, e.g. routed+dfkd)."
        )
    if len(parts) == 1:
        return METHODS[name]
    methods = [METHODS[part] for part in parts]
    kinds = {method.kind for method in methods if method.kind is not None}
    if len(kinds) > 1:
        raise IncompatibleMethodsError(
            f"{name} mixes trainable kinds {sorted(kinds)}; pick methods that agree."
        )
    components = tuple(dict.fromkeys(c for method in methods for c in method.components))
    stack = all(method.stack for method in methods)
    return Method(
        "+".join(parts),
        " + ".join(method.name for method in methods),
        kind=next(iter(kinds), None),
        stack=stack,
        components=components,
        generate_settings={k: v for method in methods for k, v in method.generate_settings.items()},
        # a part's defaults were measured for its own stacking: routed+dfkd learns from the base with λ 1
        defaults={k: v for method in methods if method.stack == stack for k, v in method.defaults.items()},
    )


def describe() -> str:
    """Every method with its description and settings, as ``python -m lifelong methods`` prints it."""
    lines = []
    for method in METHODS.values():
        lines.append(f"{method.name:17s} {method.description}")
        for key, setting in method.settings().items():
            bounds = "" if setting.high is None else f" (max {setting.high:g})"
            pair = f"{key}={setting.default}"
            lines.append(f"    {pair:<30} {setting.description}{bounds}")
    lines.append("Combine methods with +, e.g. routed+dfkd or tame+icgen; set options with --set key=value.")
    return "\n".join(lines)
