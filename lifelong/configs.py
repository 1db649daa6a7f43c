"""The user-facing configs, each setting written once: its default, bounds and help on the field.

``LearnConfig`` and ``GenerateConfig`` are what the library takes, what the app's forms are generated from
(``lifelong.ui.forms``) and what the CLI's options are built from (``lifelong.cli``). A field's
``metadata`` holds its ``help`` text and, for numbers with a sensible range, ``low``/``high`` (and the
slider ``step``); :func:`check` refuses values outside them. This module imports nothing of the library
but the errors, so every layer can read it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lifelong.errors import LimitError

# The app's and the library's default method: routed (never forgets) learning each concept as dfkd does.
# The measured best on the full benchmark (docs/BENCHMARKS.md, "Full run with the images as given" and "Full
# run with intervals, six methods": 10 held-out animals in a row, 200 steps, 95 % bootstrap intervals over
# concepts and seeds, paired with finetune): IA right after learning 0.503 (+0.211 [+0.137, +0.288] over
# finetune), after the tenth concept the same (+0.302 [+0.207, +0.389]), TFR 0, base drift 0 (each concept's
# deltas are learned from the base and applied only when a prompt names it), TA +0.023 [−0.006, +0.056].
# With augmentation (the six-method run) routed alone ended at 0.410 and routed+dfkd at 0.448. The stacking
# methods that forget least on the same run, dfkd and lfs at λ 200 (IAD 0.010 and 0.004, TFR 0.013 and
# −0.004) and l2dm (0.005), still forget some, drift the base (0.055 and more) and learn each concept less
# well (IA right after learning 0.42, 0.41, 0.28).
DEFAULT_METHOD = "routed+dfkd"
MAX_LORA_RANK = 64  # also bounds the rank of an imported checkpoint's LoRA factors (lifelong.signature)
MAX_REGIONS = 3  # routed concepts one regional generation draws apart: one UNet pass each (lifelong.limits)
MAX_SEED = 2**31 - 1  # memory samples derive seeds as seed × 1000 + i: keep that inside 64 bits


def setting(
    default: Any,
    help: str,
    low: float | None = None,
    high: float | None = None,
    step: float | None = None,
    low_open: bool = False,
    flag: str | None = None,
    slider: bool = True,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field with its help text and bounds (``low_open``: ``low`` itself is not allowed).

    ``flag`` names the field's CLI option where it differs from ``--field-name``. A bounded number is a
    slider in the app unless ``slider`` is False (a bound that only guards, e.g. a seed's); ``choices`` are
    the only values a text field may take."""
    metadata = {
        "help": help,
        "low": low,
        "high": high,
        "step": step,
        "low_open": low_open,
        "flag": flag,
        "slider": slider,
        "choices": choices,
    }
    return dataclasses.field(default=default, metadata=metadata)


def field_help(cls: type) -> dict[str, str]:
    """The help text of each field of a config dataclass."""
    return {item.name: item.metadata["help"] for item in dataclasses.fields(cls) if "help" in item.metadata}


def bounds(item: dataclasses.Field[Any]) -> tuple[float, float, float] | None:
    """(low, high, step) of a number field shown as a slider, or None."""
    low, high = item.metadata.get("low"), item.metadata.get("high")
    if low is None or high is None or not item.metadata.get("slider", True):
        return None
    return float(low), float(high), float(item.metadata.get("step") or 1)


def check(config: Any) -> None:
    """Refuse a config whose bounded fields are outside their bounds (or not finite numbers), or whose
    text fields with choices hold another value, naming the field and what it may be (a LimitError)."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        choices = item.metadata.get("choices")
        if choices is not None and value not in choices:
            shown = ", ".join(repr(choice) for choice in choices)
            raise LimitError(f"{item.name} must be one of {shown}.")
        low, high = item.metadata.get("low"), item.metadata.get("high")
        if low is not None and high is not None and not _within(value, low, high, item.metadata["low_open"]):
            side = "above" if item.metadata.get("low_open") else "from"
            raise LimitError(
                f"{item.name}={_short(value)} is out of range: use a value {side} {low:g} to {high:g}."
            )


def _within(value: Any, low: float, high: float, low_open: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return False
    return math.isfinite(number) and (low < number if low_open else low <= number) and number <= high


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


@dataclass
class LearnConfig:
    """How to learn one concept. The UI's "Advanced" panel is generated from these fields."""

    method: str = setting(
        DEFAULT_METHOD, "see `python -m lifelong methods`; combine with +, e.g. routed+dfkd"
    )
    steps: int = setting(200, "training steps", 1, 2000)
    # the bounds without a slider only guard (a public app's budget, lifelong.limits, refuses the rest)
    batch_size: int = setting(4, "images per step", 1, 64, slider=False)
    gradient_accumulation: int = setting(1, "batches per optimiser step", 1, 16, slider=False)
    learning_rate: float = setting(
        1e-3, "for the K/V increments (or LoRA factors)", 0.0, 1.0, low_open=True, slider=False
    )
    token_learning_rate: float = setting(
        5e-3, "for the concept's token embedding", 0.0, 1.0, low_open=True, slider=False
    )
    weight_decay: float = setting(0.0, "AdamW weight decay", 0.0, 1.0, slider=False)
    params: str = setting(
        "",
        '"kv" (full K/V increments), "lora" (peft LoRA on K/V) or "lora-attn" (LoRA on q, k, v and out of '
        'every attention layer); "" = the method\'s choice',
        choices=("", "kv", "lora", "lora-attn"),
    )
    # 16: on the learnability benchmark (12 concepts, images as given) identification 0.76 against 0.66 at
    # rank 8, normalised IA 0.64 against 0.59, at about the same time on the bundled model
    lora_rank: int = setting(16, "rank of the LoRA factors", 1, MAX_LORA_RANK)
    # off: on the learnability benchmark (12 held-out concepts, the default method, docs/BENCHMARKS.md) the
    # images as given learned better than with flips and crops (identification 0.66 against 0.62, normalised
    # IA 0.59 against 0.47) or flips alone (0.54, 0.49): a mirrored or zoomed emoji is another picture
    augment: bool = setting(False, "horizontal flips and random crops, encoded once")
    # 1: on the learnability benchmark the noisiest quarter at ×3 gave identification 0.72 against 0.84 on the
    # same 8 concepts, at ×0.5 0.71 against 0.81 on 6 (docs/BENCHMARKS.md, "Timestep sampling")
    noisy_bias: float = setting(
        1.0,
        "how much likelier the noisiest quarter of training timesteps is than the rest (1 = uniform): "
        "those steps set a concept's colours and shape",
        0.25,
        8.0,
        slider=False,
    )
    seed: int = setting(0, "seed of the noise, timesteps and augmentation", 0, MAX_SEED, slider=False)
    prompt_template: str = setting("a {token} {class_word}", "the training prompt")
    settings: dict[str, float | int | str | bool] = dataclasses.field(
        default_factory=dict, metadata={"help": "the method's settings, see `python -m lifelong methods`"}
    )


@dataclass
class GenerateConfig:
    """How to sample. The UI's generation settings are generated from these fields."""

    steps: int = setting(25, "sampling steps", 1, 200)
    # 3: learned concepts keep their colours and shapes better than at 5 (learnability benchmark: with rank-16
    # LoRA, identification 0.78 against 0.76, normalised IA 0.68 against 0.64, background 1.00 against 0.96)
    guidance_scale: float = setting(3.0, "classifier-free guidance", 0.0, 20.0, 0.5, flag="--guidance")
    negative_prompt: str = setting("", "what the images should not show", flag="--negative")
    num_images: int = setting(1, "images per prompt", 1, 16)
    seed: int = setting(0, "image i uses seed + i", 0, MAX_SEED, slider=False)
    # multi-concept attention (lifelong.attention): only for prompts naming two or more concepts. Off by
    # default: on the bundled model it lowered concept IA at +60 % time per image (docs/BENCHMARKS.md)
    caa: bool = setting(False, "each concept gets a strong attention peak; each location goes to one concept")
    oaa: bool = setting(False, "concepts' (and other concepts' attributes') attention maps kept apart")
    attention_steps: int = setting(10, "guided steps at the start of sampling", 0, 200, slider=False)
    attention_step_size: float = setting(
        20.0, "how far one guided step moves the latents", 0.0, 1000.0, slider=False
    )
    caa_threshold: float = setting(
        0.8,
        "peak attention (share of the words at a location) each concept should reach",
        0.0,
        1.0,
        slider=False,
    )
    oaa_threshold: float = setting(
        0.0, "overlap of normalised maps tolerated between concepts", 0.0, 1.0, slider=False
    )
    attention_res: int = setting(0, "side of the attention grid to use; 0 = automatic", 0, 1024, slider=False)
    regional: bool = setting(
        False,
        f"prompts naming 2–{MAX_REGIONS} routed concepts: each concept's own UNet pass draws it where its "
        "words attend (one pass per concept) instead of all their deltas mixed at part weight",
    )
    # On by default: for the app's four examples in pairs (6 pairs × blue and yellow × 4 seeds, routed+dfkd),
    # both concepts were found in 0.708 [0.521, 0.854] of the images against 0.042 for the plain mix
    # (+0.667 [+0.458, +0.833]); min similarity 0.512 against 0.191 (docs/BENCHMARKS.md, "Side by side")
    side_by_side: bool = setting(
        True,
        f"prompts naming 2–{MAX_REGIONS} routed concepts: a canvas one square per concept wide, each concept "
        "drawn whole in its own square from its own phrase of the prompt (one pass per concept); regional, "
        "CAA/OAA or an ICGen start, when on, take its place",
    )
    icgen_strength: float = setting(
        1.0,
        "below 1: start from a named concept's stored image latent noised to this strength (ICGen); "
        "1 = plain text-to-image",
        0.0,
        1.0,
        0.05,
        low_open=True,
    )
    icgen_context: str = setting("mean", "which stored latent: 'mean' of them, or an image index 0, 1, ...")


EXPORT_FORMATS = ("diffusers", "kohya")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and in which format (lifelong.lora_export)."""

    format: str = setting(
        "diffusers",
        "diffusers: a LoRA folder for load_lora_weights and embeddings for load_textual_inversion; "
        "kohya: one kohya-keyed LoRA file and A1111 embeddings (A1111, ComfyUI)",
        choices=EXPORT_FORMATS,
    )
    concept: str = setting(
        "", "a concept's name to export it alone; '' = every concept up to the checkpoint, as composed"
    )
    energy: float = setting(
        0.99,
        "share of a dense (K/V) delta's energy, Σσ², that its truncated SVD keeps (LoRA deltas are exact)",
        0.5,
        1.0,
        0.001,
    )
    max_rank: int = setting(MAX_LORA_RANK, "the highest rank a truncated SVD may use", 1, 1024, slider=False)
