"""What a concept changes in the frozen base, and how to train, store, compose and apply it.

Trainable sets (``kind``), plus the concept's token embedding (a forward hook on the text encoder's
embedding table) in every case:

- ``"kv"``: full fp32 increments (a torch parametrization W + ΔW) on the UNet's cross-attention K and V
  projections (Custom Diffusion);
- ``"lora"``: a peft LoRA on the same K/V projections;
- ``"lora-attn"``: a peft LoRA on every attention projection, q, k, v and out of self- and cross-attention
  (what diffusers' DreamBooth-LoRA script and CIDM train on SD-1.5). K/V alone can only change what the
  text *says* to the image; detail drawn by self-attention and the output projections needs the rest.

A concept's :class:`ConceptDelta` is what *it* changed. A model state is a weighted sum of deltas over the
frozen base, written into the base weights in place for the duration of :func:`use_state`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn
from torch.nn.utils import parametrize

from lifelong.base import BaseModel

KINDS = ("kv", "lora", "lora-attn")
_ADAPTER = "lifelong"
_KV = ("attn2.to_k", "attn2.to_v")
_ATTENTION = tuple(
    f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")
)


def target_module_names(unet: nn.Module, kind: str = "kv") -> list[str]:
    """Names of the linear layers a trainable set of ``kind`` changes: the cross-attention K and V
    projections, or for "lora-attn" every attention projection (a superset)."""
    suffixes = _ATTENTION if kind == "lora-attn" else _KV
    return [
        name
        for name, module in unet.named_modules()
        if name.endswith(suffixes)
        and isinstance(getattr(module, "base_layer", module), nn.Linear)  # also while a LoRA wraps it
    ]


@dataclass
class ConceptDelta:
    """What learning one concept changed: weight increments on the targets and its token's embedding.

    ``tensors`` holds, per target module, ``"<module>"`` (dense ΔW, kind "kv") or ``"<module>.lora_A"`` and
    ``"<module>.lora_B"`` (kind "lora", ΔW = B @ A: LoRA's α equals its rank).
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    embedding: torch.Tensor

    def modules(self) -> list[str]:
        if self.kind == "kv":
            return list(self.tensors)
        return [key.removesuffix(".lora_A") for key in self.tensors if key.endswith(".lora_A")]

    def dense(self, module: str) -> torch.Tensor:
        if self.kind == "kv":
            return self.tensors[module]
        a, b = self.tensors[f"{module}.lora_A"], self.tensors[f"{module}.lora_B"]
        return b.float() @ a.float()


@dataclass
class ModelState:
    """Weights to add to the base (dense ΔW per module) and embeddings for slot token ids."""

    weight_deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    embeddings: dict[int, torch.Tensor] = field(default_factory=dict)


def compose(
    deltas: Sequence[ConceptDelta], token_ids: Sequence[int], weights: Sequence[float] | None = None
) -> ModelState:
    """Sum concept deltas (optionally weighted) into one state; every concept's token keeps its embedding."""
    weights = list(weights) if weights is not None else [1.0] * len(deltas)
    state = ModelState()
    for delta, token_id, weight in zip(deltas, token_ids, weights, strict=True):
        state.embeddings[token_id] = delta.embedding
        if weight == 0.0:
            continue
        for module in delta.modules():
            increment = delta.dense(module).float() * weight
            previous = state.weight_deltas.get(module)
            state.weight_deltas[module] = increment if previous is None else previous + increment
    return state


def _base_weights(base: BaseModel, modules: Iterator[str] | Sequence[str]) -> dict[str, torch.Tensor]:
    """Pristine copies of the weights of ``modules``, each taken the first time a state touches it (always
    outside a state), so a state can always be taken out exactly."""
    cache = base.pristine
    unet = base.pipe.unet
    for name in modules:
        if name not in cache:
            cache[name] = _raw_weight(unet.get_submodule(name)).detach().clone()
    return cache


def _raw_weight(layer: nn.Module) -> torch.Tensor:
    """The stored weight, without a "kv" trainable set's W + ΔW parametrization (peft's LoRA layers
    already answer ``weight`` with their base layer's)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations["weight"].original  # type: ignore[union-attr,index]
    return layer.weight  # type: ignore[return-value]


@contextmanager
def use_state(base: BaseModel, state: ModelState) -> Iterator[None]:
    """Write ``state`` into the shared base for the block (holding the base's lock), then restore it.

    Every slot's embedding row starts from the base's own (``pristine_rows``), not from whatever the last
    job left, and the rows found are put back exactly afterwards: a slot no concept of this state fills
    reads as the untrained base row, whoever used it before.
    """
    with base.lock:
        unet = base.pipe.unet
        table = base.pipe.text_encoder.get_input_embeddings().weight
        unseen = set(state.weight_deltas) - set(base.pristine)  # modules named before were checked then
        unknown = unseen - set(target_module_names(unet, "lora-attn")) if unseen else set()
        if unknown:
            raise ValueError(f"state names modules this base does not have: {sorted(unknown)[:3]}")
        if not set(state.embeddings) <= set(base.slot_token_ids):
            raise ValueError("state writes embedding rows that are not concept slots")
        pristine = _base_weights(base, list(state.weight_deltas))
        slots = torch.tensor(base.slot_token_ids, device=table.device)
        found = table[slots].detach().clone()
        try:
            with torch.no_grad():
                for name, delta in state.weight_deltas.items():
                    weight = _raw_weight(unet.get_submodule(name))
                    weight.copy_((pristine[name].float() + delta.to(weight.device)).to(weight.dtype))
                table[slots] = base.pristine_rows.to(table.device)
                for token_id, vector in state.embeddings.items():
                    table[token_id] = vector.to(table.device, table.dtype)
            yield
        finally:
            with torch.no_grad():
                for name in state.weight_deltas:
                    _raw_weight(unet.get_submodule(name)).copy_(pristine[name])
                table[slots] = found


class _AddDelta(nn.Module):
    """Parametrization W -> W + ΔW with ΔW an fp32 master copy, whatever the base's dtype."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(like.shape, dtype=torch.float32, device=like.device))
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta.to(weight.dtype) if self.enabled else weight


def _add_delta(unet: nn.Module, name: str) -> _AddDelta:
    parametrization = unet.get_submodule(name).parametrizations["weight"][0]  # type: ignore[index]
    assert isinstance(parametrization, _AddDelta)
    return parametrization


@dataclass
class TrainableSet:
    """The parameters one concept trains, live on the base while learning.

    ``disabled()`` turns the new weights and the new token off: the model is then exactly the state it was
    trained on top of, which is what distillation teachers need, without a second copy of the model.
    """

    base: BaseModel
    kind: str
    modules: list[str]
    token_id: int
    embedding: nn.Parameter
    _enabled: bool = True
    _layers: list[Any] = field(default_factory=list)  # the peft LoRA layers (not kind "kv")

    def weight_parameters(self) -> list[nn.Parameter]:
        unet = self.base.pipe.unet
        if self.kind == "kv":
            return [_add_delta(unet, name).delta for name in self.modules]
        return [p for n, p in unet.named_parameters() if f".{_ADAPTER}." in n and "lora_" in n]

    def lora_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per module, the live (A, B) LoRA factors (kind "lora" only)."""
        unet = self.base.pipe.unet
        factors = {}
        for name in self.modules:
            layer = unet.get_submodule(name)
            factors[name] = (layer.lora_A[_ADAPTER].weight, layer.lora_B[_ADAPTER].weight)
        return factors

    def live_dense(self, module: str) -> torch.Tensor:
        """The current ΔW of one module, differentiable."""
        unet = self.base.pipe.unet
        if self.kind == "kv":
            return _add_delta(unet, module).delta
        a, b = self.lora_factors()[module]
        return b @ a

    @contextmanager
    def disabled(self) -> Iterator[None]:
        unet = self.base.pipe.unet
        self._set_enabled(unet, False)
        try:
            yield
        finally:
            self._set_enabled(unet, True)

    def _set_enabled(self, unet: Any, on: bool) -> None:
        self._enabled = on
        if self.kind == "kv":
            for name in self.modules:
                _add_delta(unet, name).enabled = on
        else:  # the LoRA layers, found once: unet.enable_adapters() walks every module of the UNet
            self._layers = self._layers or [unet.get_submodule(name) for name in self.modules]
            for layer in self._layers:
                layer.enable_adapters(on)

    def extract(self) -> ConceptDelta:
        """Detach the learned increments to CPU float32 tensors."""
        unet = self.base.pipe.unet
        if self.kind == "kv":
            tensors = {name: self.live_dense(name).detach().float().cpu().clone() for name in self.modules}
        else:
            state = get_peft_model_state_dict(unet, adapter_name=_ADAPTER)
            tensors = {
                key.replace(".weight", "").replace(f".{_ADAPTER}", ""): value.detach().float().cpu().clone()
                for key, value in state.items()
            }
        return ConceptDelta(self.kind, tensors, self.embedding.detach().float().cpu().clone())


@contextmanager
def trainable(
    base: BaseModel,
    kind: str,
    token_id: int,
    init_embedding: torch.Tensor,
    lora_rank: int = 4,
    seed: int = 0,
) -> Iterator[TrainableSet]:
    """Attach a fresh trainable set to the base for the block and take it off afterwards, always.

    LoRA's random init is drawn from ``seed`` (not the global generator), so learning is reproducible.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown trainable kind {kind!r}; choose one of {KINDS}")
    unet = base.pipe.unet
    modules = target_module_names(unet, kind)
    embedding = nn.Parameter(init_embedding.detach().float().to(base.device).clone())
    if kind == "kv":
        for name in modules:
            linear = unet.get_submodule(name)
            parametrize.register_parametrization(linear, "weight", _AddDelta(linear.weight))
    else:
        with torch.random.fork_rng(devices=[base.device] if base.device.type == "cuda" else []):
            torch.manual_seed(seed)
            unet.add_adapter(
                LoraConfig(
                    r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian", target_modules=modules
                ),
                adapter_name=_ADAPTER,
            )
        for name, param in unet.named_parameters():
            if f".{_ADAPTER}." in name:
                param.data = param.data.float()
                param.requires_grad_(True)
    encoder_embeddings = base.pipe.text_encoder.get_input_embeddings()
    trainset = TrainableSet(base, kind, modules, token_id, embedding)

    def inject_token(
        _module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor:
        if not trainset._enabled:
            return output
        mask = (inputs[0] == token_id).unsqueeze(-1)
        return torch.where(mask, embedding.to(output.dtype), output)

    hook = encoder_embeddings.register_forward_hook(inject_token)
    base.trainable_attached = True
    try:
        yield trainset
    finally:
        base.trainable_attached = False
        hook.remove()
        if kind == "kv":
            for name in modules:
                parametrize.remove_parametrizations(
                    unet.get_submodule(name), "weight", leave_parametrized=False
                )
        else:
            unet.unload_lora()


def token_embedding(base: BaseModel, words: str) -> torch.Tensor:
    """Mean input embedding of the tokens of ``words`` (the class word a new token starts from)."""
    tokenizer = base.pipe.tokenizer
    table = base.pipe.text_encoder.get_input_embeddings().weight
    ids = [i for i in tokenizer(words, add_special_tokens=False).input_ids if i != tokenizer.unk_token_id]
    if not ids:
        ids = [
            i for i in tokenizer("object", add_special_tokens=False).input_ids if i != tokenizer.unk_token_id
        ]
    if not ids:
        return table[: min(len(tokenizer), table.shape[0])].float().mean(0).detach().cpu()
    return table[ids].float().mean(0).detach().cpu()
