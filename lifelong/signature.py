"""What a concept checkpoint may hold to fit the running base: every tensor's name, shape and dtype.

A checkpoint from a session file is untrusted: it is checked against this before a single tensor is read,
from the safetensors header alone, so a file that does not fit (another model, extra tensors, a 1 GiB
"embedding") is refused without being loaded. The same numbers bound how large a session file can be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from lifelong.adapters import KINDS, target_module_names
from lifelong.archive import brief
from lifelong.base import BaseModel
from lifelong.configs import MAX_LORA_RANK
from lifelong.errors import SessionFormatError
from lifelong.intake import MAX_IMAGES

MAX_FEATURE_WIDTH = 4096  # image features of the memory (a CLIP's projection, or pooled VAE latents)
MAX_MEMORY_SAMPLES = 16  # memory_samples' upper bound (mechanisms/memory.py)
MAX_CONTEXT_IMAGES = MAX_IMAGES  # icgen_images' upper bound (mechanisms/icgen.py)
HEADER_BYTES = 1 << 20  # safetensors JSON header and metadata: names of a few hundred tensors
FLOAT32 = "F32"  # every checkpoint tensor is written as float32 (ConceptDelta.extract, after_learn hooks)


@dataclass(frozen=True)
class Shaped:
    """One tensor as the header describes it."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BaseSignature:
    """The shapes a concept checkpoint must have to be applied to one base model."""

    # every attention projection a checkpoint may change (the "lora-attn" superset of the K/V projections)
    # -> weight shape (out, in)
    modules: Mapping[str, tuple[int, int]]
    embedding_width: int
    latent_shape: tuple[int, int, int]  # (channels, height, width) of one VAE latent
    image_side: int  # session images are stored at the base's resolution

    @classmethod
    def of(cls, base: BaseModel) -> BaseSignature:
        unet = base.pipe.unet
        modules = {}
        for name in target_module_names(unet, "lora-attn"):
            out, inp = unet.get_submodule(name).weight.shape
            modules[name] = (int(out), int(inp))
        width = int(base.pipe.text_encoder.get_input_embeddings().weight.shape[1])
        size = int(unet.config.sample_size)
        return cls(modules, width, (int(unet.config.in_channels), size, size), base.resolution)

    # --- sizes ----------------------------------------------------------------------------------------

    def max_checkpoint_bytes(self) -> int:
        """The largest checkpoint that can fit: LoRA at the highest rank or dense increments on every
        attention projection, plus every extra."""
        dense = sum(out * inp for out, inp in self.modules.values())
        lora = sum(MAX_LORA_RANK * (out + inp) for out, inp in self.modules.values())
        latent = math.prod(self.latent_shape)
        extras = (MAX_CONTEXT_IMAGES + MAX_MEMORY_SAMPLES) * latent + (
            MAX_MEMORY_SAMPLES + MAX_IMAGES
        ) * MAX_FEATURE_WIDTH
        return 4 * (max(dense, lora) + self.embedding_width + extras) + HEADER_BYTES

    def max_image_bytes(self) -> int:
        """A stored PNG of the base's resolution, even uncompressed (RGB, one filter byte per row)."""
        return 3 * self.image_side * self.image_side + self.image_side + (64 << 10)

    # --- checking -------------------------------------------------------------------------------------

    def check(self, label: str, metadata: Mapping[str, str], tensors: Mapping[str, Shaped]) -> None:
        """Refuse a checkpoint whose header does not describe exactly what this base can use."""
        kind = metadata.get("kind")
        if kind not in KINDS:
            raise SessionFormatError(f"{label} has an unknown kind of weights.")
        expected = self._weights(kind, tensors)
        expected["embedding"] = (self.embedding_width,)
        for key in tensors:
            if key.startswith("extra."):
                expected[key] = self._extra(label, key, tensors)
        unexpected = sorted(set(tensors) - set(expected))
        if unexpected:
            raise SessionFormatError(f"{label} holds tensors this app does not use ({brief(unexpected[0])}).")
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise SessionFormatError(
                f"{label} lacks {brief(missing[0])}: it was learned on another base model, or is damaged."
            )
        for key, shape in expected.items():
            found = tensors[key]
            if found.dtype != FLOAT32:
                raise SessionFormatError(f"{label}: {key} is {found.dtype}, not float32.")
            if found.shape != shape:
                raise SessionFormatError(
                    f"{label}: {key} has shape {_shape(found.shape)} where this app's base model needs "
                    f"{_shape(shape)}; it was learned on another base model."
                )

    def _weights(self, kind: str, tensors: Mapping[str, Shaped]) -> dict[str, tuple[int, ...]]:
        """The weight tensors a checkpoint of ``kind`` must hold for the modules it changes: any of this
        base's attention projections, as dense increments (kind "kv") or LoRA factors of a rank up to
        MAX_LORA_RANK (each module with both). A name outside them is left for ``check`` to refuse."""
        suffixes = ("",) if kind == "kv" else (".lora_A", ".lora_B")
        named = {key.removeprefix("delta.") for key in tensors if key.startswith("delta.")}
        changed = [name for name in self.modules if any(f"{name}{suffix}" in named for suffix in suffixes)]
        expected: dict[str, tuple[int, ...]] = {}
        for name in changed:
            out, inp = self.modules[name]
            if kind == "kv":
                expected[f"delta.{name}"] = (out, inp)
                continue
            found = tensors.get(f"delta.{name}.lora_A")
            rank = found.shape[0] if found is not None and len(found.shape) == 2 else 0
            rank = rank if 1 <= rank <= MAX_LORA_RANK else 1  # a bad rank fails the shape check
            expected[f"delta.{name}.lora_A"] = (rank, inp)
            expected[f"delta.{name}.lora_B"] = (out, rank)
        return expected

    def _extra(self, label: str, key: str, tensors: Mapping[str, Shaped]) -> tuple[int, ...]:
        """The shape an extra must have: its row count is free within bounds, the rest is fixed."""
        shape = tensors[key].shape
        rows = shape[0] if shape else 0
        features = tensors.get("extra.memory.features")
        width = features.shape[-1] if features is not None and len(features.shape) == 2 else 0
        limits: dict[str, tuple[int, tuple[int, ...]]] = {
            "extra.context": (MAX_CONTEXT_IMAGES, self.latent_shape),
            "extra.memory.latents": (MAX_MEMORY_SAMPLES, self.latent_shape),
            "extra.memory.features": (MAX_MEMORY_SAMPLES, (width,)),
            "extra.memory.ltm": (MAX_IMAGES, (width,)),
        }
        if key not in limits:
            raise SessionFormatError(f"{label} holds tensors this app does not use ({brief(key)}).")
        most, rest = limits[key]
        if not 1 <= rows <= most or (rest and not 1 <= rest[-1] <= MAX_FEATURE_WIDTH):
            raise SessionFormatError(f"{label}: {key} has an impossible shape {_shape(shape)}.")
        return (rows, *rest)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(size) for size in shape) or "scalar"
