"""A LoRA and a textual-inversion embedding made elsewhere, for the same base, as the session's next concept.

Both files are a stranger's, so they pass the checks a session import does (lifelong.signature): safetensors
only (never pickle), the file size and then every tensor's name, dtype and shape read from the header before
a single tensor is loaded, shapes against the running base, values finite. The LoRA may use diffusers' or
peft's keys (``unet.<module>.lora_A.weight``, ``….lora.down.weight``) or kohya's
(``lora_unet_<module_with_underscores>.lora_down.weight`` and ``.alpha``), on the UNet's attention
projections only: that is all a concept here can hold. The embedding is diffusers' ``{"<token>": vector}``
or A1111's ``{"emb_params": vector}``, one vector. An imported concept came without images, so the images it
keeps (the timeline's thumbnail, the forgetting view's references) are ones it draws on import.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from lifelong.adapters import ConceptDelta, compose, target_module_names, use_state
from lifelong.archive import brief
from lifelong.base import BaseModel, slot_token
from lifelong.concepts import Concept, Session
from lifelong.configs import MAX_LORA_RANK, GenerateConfig
from lifelong.encoding import decode, encode_text
from lifelong.errors import DuplicateConceptError, LoraImportError, SessionFullError
from lifelong.generation import denoise
from lifelong.intake import validate_class_word, validate_name
from lifelong.prompts import TOKEN_PATTERN, fill_template
from lifelong.signature import HEADER_BYTES, BaseSignature, Shaped

IMPORTED = "imported"  # the method an imported concept is recorded with
REFERENCE_IMAGES = 3
FLOATS = ("F32", "F16", "BF16")
INTEGERS = ("I64", "I32", "I16", "I8", "U8")  # an alpha may be whole (diffusers' convert_state_dict_to_kohya)
_PARTS = {
    ".lora_A.weight": "A",  # peft
    ".lora_B.weight": "B",
    ".lora.down.weight": "A",  # diffusers (convert_state_dict_to_diffusers)
    ".lora.up.weight": "B",
    ".lora_down.weight": "A",  # kohya
    ".lora_up.weight": "B",
    ".alpha": "alpha",  # kohya's scale: ΔW = alpha / rank · up @ down
}
_TEXT_ENCODER = ("text_encoder", "lora_te")
MAX_VECTORS = 75  # the most an A1111 embedding could hold in one prompt: its header is read, never more


@dataclass
class ForeignLora:
    """A checked LoRA: factors per module (alpha folded into B) and the key naming it came in."""

    tensors: dict[str, torch.Tensor]  # "<module>.lora_A" / "<module>.lora_B", as ConceptDelta keeps them
    naming: str  # "kohya" or "diffusers"

    @property
    def rank(self) -> int:
        return max(len(a) for key, a in self.tensors.items() if key.endswith(".lora_A"))


def read_header(path: Path, label: str, max_bytes: int) -> dict[str, Shaped]:
    """Every tensor's dtype and shape from a safetensors header, once the file's size and the header's
    length are within bounds (a safetensors file starts with its header's length)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise LoraImportError(
            f"{label} is {size / 1e6:.1f} MB; for this base model it can be at most {max_bytes / 1e6:.1f} MB."
        )
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or int.from_bytes(head, "little") > HEADER_BYTES:
        raise LoraImportError(f"{label} is not a safetensors file.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {
                key: Shaped(handle.get_slice(key).get_dtype(), tuple(handle.get_slice(key).get_shape()))
                for key in handle.keys()  # noqa: SIM118 - not a dict
            }
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraImportError(f"{label} is not a readable safetensors file.") from error


def _spellings(signature: BaseSignature) -> dict[str, str]:
    """Each attention projection of the base under diffusers' and kohya's names."""
    names = {}
    for module in signature.modules:
        names[f"unet.{module}"] = module
        names["lora_unet_" + module.replace(".", "_")] = module
    return names


def _split(key: str) -> tuple[str, str]:
    for suffix, part in _PARTS.items():
        if key.endswith(suffix):
            return key.removesuffix(suffix), part
    return key, ""


def lora_layout(shapes: dict[str, Shaped], signature: BaseSignature, label: str) -> dict[str, dict[str, str]]:
    """Per base module, the keys of its A, B (and alpha) factors, or a LoraImportError naming what is wrong:
    shapes of another base first (the likeliest mistake), then layers a concept cannot hold."""
    spellings = _spellings(signature)
    layout: dict[str, dict[str, str]] = {}
    unknown = []
    for key in shapes:
        prefix, part = _split(key)
        module = spellings.get(prefix)
        if module is None or not part:
            unknown.append(key)
        elif part in layout.setdefault(module, {}):
            raise LoraImportError(f"{label} holds the factors of one layer twice ({brief(key)}).")
        else:
            layout[module][part] = key
    for module, parts in layout.items():
        _check_module(module, parts, shapes, signature, label)
    if unknown:
        first = brief(unknown[0])
        if unknown[0].startswith(_TEXT_ENCODER):
            raise LoraImportError(
                f"{label} also changes the text encoder ({first}); a concept here changes only the UNet's "
                "attention layers and its own token."
            )
        raise LoraImportError(
            f"{label} holds weights for a layer this base model has not, or that a concept cannot change "
            f"({first}): only diffusers or kohya LoRAs on the UNet's attention projections import."
        )
    if not layout:
        raise LoraImportError(f"{label} holds no LoRA weights.")
    return layout


def _check_module(
    module: str, parts: dict[str, str], shapes: dict[str, Shaped], signature: BaseSignature, label: str
) -> None:
    if "A" not in parts or "B" not in parts:
        raise LoraImportError(f"{label} has only one of the two LoRA factors of {brief(module)}.")
    a, b = shapes[parts["A"]], shapes[parts["B"]]
    out, inp = signature.modules[module]
    rank = a.shape[0] if len(a.shape) == 2 else 0
    if a.shape != (rank, inp) or b.shape != (out, rank):
        raise LoraImportError(
            f"{label}: the LoRA of {brief(module)} has shapes {_shape(b.shape)} @ {_shape(a.shape)} where this "
            f"base model's layer is {out}×{inp}; it was made for another base model."
        )
    if not 1 <= rank <= MAX_LORA_RANK:
        raise LoraImportError(
            f"{label}: rank {rank} of {brief(module)} is above {MAX_LORA_RANK}, this app's most."
        )
    alpha = shapes.get(parts.get("alpha", ""))
    if alpha is not None and (alpha.shape not in ((), (1,)) or alpha.dtype not in (*FLOATS, *INTEGERS)):
        raise LoraImportError(f"{label}: the alpha of {brief(module)} is not one number.")
    if a.dtype not in FLOATS or b.dtype not in FLOATS:
        raise LoraImportError(f"{label}: the factors of {brief(module)} are not floating-point numbers.")


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(size) for size in shape) or "scalar"


def read_lora(path: Path, signature: BaseSignature, label: str = "the LoRA file") -> ForeignLora:
    """The LoRA's factors as float32, alpha folded in (ΔW = B @ A), checked before and after loading."""
    layout = lora_layout(read_header(path, label, signature.max_checkpoint_bytes()), signature, label)
    tensors = {}
    with safe_open(str(path), framework="pt") as handle:
        for module, parts in layout.items():
            a, b = handle.get_tensor(parts["A"]).float(), handle.get_tensor(parts["B"]).float()
            if "alpha" in parts:
                b = b * (handle.get_tensor(parts["alpha"]).float().reshape(()) / len(a))
            tensors[f"{module}.lora_A"], tensors[f"{module}.lora_B"] = a, b
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise LoraImportError(f"{label} holds values that are not finite numbers.")
    kohya = any(key.startswith("lora_unet_") for parts in layout.values() for key in parts.values())
    return ForeignLora(tensors, "kohya" if kohya else "diffusers")


def read_embedding(path: Path, width: int, label: str = "the embedding file") -> tuple[str, torch.Tensor]:
    """(the name its diffusers key gives, or "") and its one vector, checked against the text width."""
    shapes = read_header(path, label, MAX_VECTORS * width * 4 + HEADER_BYTES)
    if len(shapes) != 1:
        raise LoraImportError(
            f"{label} holds {len(shapes)} tensors; a textual-inversion embedding holds one "
            '(diffusers: {"<token>": vector}, A1111: emb_params).'
        )
    [(key, shaped)] = shapes.items()
    if len(shaped.shape) not in (1, 2) or shaped.shape[-1] != width or shaped.dtype not in FLOATS:
        raise LoraImportError(
            f"{label} holds a {_shape(shaped.shape)} {shaped.dtype} tensor where this base model's text encoder "
            f"takes vectors of {width} numbers; it was made for another base model."
        )
    if len(shaped.shape) == 2 and shaped.shape[0] != 1:
        raise LoraImportError(f"{label} holds {shaped.shape[0]} vectors per token; a concept here has one.")
    with safe_open(str(path), framework="pt") as handle:
        vector = handle.get_tensor(key).float().reshape(width)
    if not torch.isfinite(vector).all():
        raise LoraImportError(f"{label} holds values that are not finite numbers.")
    match = TOKEN_PATTERN.fullmatch(key)
    return (match.group(1) if match else ""), vector


def reference_images(
    base: BaseModel, session: Session, delta: ConceptDelta, prompt: str, config: GenerateConfig
) -> list[Image.Image]:
    """What the session draws for ``prompt`` (its slot-token form) with ``delta`` as its next concept."""
    slot = len(session.concepts)
    deltas = [*(session.checkpoint(i)[0] for i in range(1, slot + 1)), delta]
    # the earlier concepts as a prompt naming none of them composes them: stacked ones in, routed ones out
    state = compose(deltas, base.slot_token_ids[: slot + 1], [*session.weights(slot), 1.0])
    seeds = [config.seed + i for i in range(config.num_images)]
    with use_state(base, state), torch.no_grad():
        cond, uncond = encode_text(base, [prompt]), encode_text(base, [config.negative_prompt])
        return decode(base, denoise(base, seeds, cond, uncond, config))


def import_lora(
    base: BaseModel,
    session: Session,
    lora: str | Path,
    embedding: str | Path,
    name: str = "",
    class_word: str = "",
    config: GenerateConfig | None = None,
) -> Concept:
    """Add a LoRA + textual-inversion pair made for this base as the session's next concept, ``<name>``
    (default: the embedding's own diffusers token). ``config`` draws the images it keeps."""
    signature = BaseSignature.of(base)
    foreign = read_lora(Path(lora), signature)
    token, vector = read_embedding(Path(embedding), signature.embedding_width)
    name, class_word = validate_name(name or token), validate_class_word(class_word)
    if name in session.names():
        raise DuplicateConceptError(f"<{name}> is already in this session; choose another name.")
    slot = len(session.concepts)
    if slot >= len(base.slot_token_ids):
        raise SessionFullError(f"this session already holds {slot} concepts, the most it can.")
    modules = {key.rsplit(".", 1)[0] for key in foreign.tensors}
    kind = "lora" if modules <= set(target_module_names(base.pipe.unet, "kv")) else "lora-attn"
    delta = ConceptDelta(kind, foreign.tensors, vector)
    template = "a {token} {class_word}"
    config = config or GenerateConfig(num_images=REFERENCE_IMAGES)
    images = reference_images(
        base, session, delta, fill_template(template, slot_token(slot), class_word), config
    )
    concept = Concept(
        name=name,
        class_word=class_word,
        method=IMPORTED,
        images=[],
        checkpoint="",
        prompts=[fill_template(template, f"<{name}>", class_word)],
        settings={"source": f"{foreign.naming} LoRA", "rank": foreign.rank},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return session.add_concept(concept, images, delta)
