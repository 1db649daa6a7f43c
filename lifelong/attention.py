"""Cross-attention maps of prompt words, and the multi-concept guidance built on them (L2DM's CAA and OAA).

Capture works as in diffusers' Attend-and-Excite pipeline: :class:`CaptureProcessor` replaces the UNet's
cross-attention processors (``unet.set_attn_processor``) for the duration of a generation and hands the
attention probabilities of the chosen resolution to an :class:`AttentionStore`, which averages them over
heads and layers (and, when recording, over sampling steps). A captured map, at each location, is a
distribution over the prompt's words: the start/end/padding tokens are dropped and the rest renormalised.

Guidance (:class:`AttentionControl`), in the first ``attention_steps`` sampling steps, runs the UNet once on
the conditional branch, computes the losses below on the concept maps A_c (each a map over L locations) and
moves the latents by ``-attention_step_size * grad``; the normal sampling step follows:

- CAA (concept attention): ``max_c max(0, τ_caa − max_x A_c(x))`` — the weakest concept is pushed until its
  peak reaches τ_caa (Attend-and-Excite) — plus ``mean_x (Σ_c A_c(x) − max_c A_c(x))``, the attention left to
  concepts that do not own location x, so each location goes to at most one concept (unmixing).
- OAA (orthogonal attention): mean over pairs of ``max(0, ⟨Â_i, Â_j⟩ − τ_oaa)`` with Â = A/‖A‖₂, for
  every pair of concepts and every (concept, attribute word bound to another concept).

Binding rule for attribute words: a word right after a concept token (its class word, "<rex> dog"), or
else right before it ("red <rex>"), is bound to that concept unless it is a function word (articles,
prepositions, conjunctions, punctuation) or another concept. On BPE tokenizers this works per token.

Guidance runs only when the prompt names two or more distinct concepts: it exists to keep concepts apart,
and single-concept generation stays exactly plain text-to-image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from lifelong.base import BaseModel
from lifelong.configs import GenerateConfig
from lifelong.encoding import tokenize

FUNCTION_WORDS = frozenset(
    {"a", "an", "the", "and", "or", "with", "without", "on", "in", "at", "of", "to", "by", "for", "from"}
    | {"near", "next", "beside", "behind", "under", "over", "above", "below", "into", "onto"}
    | {",", ".", ";", ":", "!"}
)
PALETTE = ((230, 57, 70), (29, 120, 230), (40, 170, 80), (240, 170, 20), (150, 60, 200), (20, 180, 190))


# --- which words to watch --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTokens:
    """The words of a tokenized prompt and which of them are concepts or bound to one.

    ``positions[i]`` is word i's index in the padded token sequence; ``concepts`` and ``attributes`` map a
    concept's label (``"<rex>"``) to word indices.
    """

    words: list[str]
    positions: list[int]
    concepts: dict[str, list[int]]
    attributes: dict[str, list[int]]


def prompt_tokens(base: BaseModel, text: str, names: Sequence[str]) -> PromptTokens:
    """Words of ``text`` (a prompt already rewritten to slot tokens); slot i is the concept ``names[i]``."""
    tokenizer = base.pipe.tokenizer
    ids = tokenize(base, [text])[0].tolist()
    boundary = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    slots = {token_id: f"<{name}>" for token_id, name in zip(base.slot_token_ids, names, strict=False)}
    positions = [i for i, token_id in enumerate(ids) if token_id not in boundary]
    words = [
        slots.get(ids[i]) or str(tokenizer.convert_ids_to_tokens(ids[i])).removesuffix("</w>")
        for i in positions
    ]
    concepts: dict[str, list[int]] = {}
    for index, position in enumerate(positions):
        if ids[position] in slots:
            concepts.setdefault(slots[ids[position]], []).append(index)
    owner: dict[int, str] = {}
    for offset in (1, -1):  # words after a concept bind first: "<rex> dog" beats "a red <rex>"
        for label, indices in concepts.items():
            for index in indices:
                neighbour = index + offset
                if (
                    0 <= neighbour < len(words)
                    and neighbour not in owner
                    and words[neighbour] not in slots.values()
                    and words[neighbour].lower() not in FUNCTION_WORDS
                ):
                    owner[neighbour] = label
    attributes = {label: sorted(i for i, o in owner.items() if o == label) for label in concepts}
    return PromptTokens(words, positions, concepts, attributes)


# --- capture ---------------------------------------------------------------------------------------------


class AttentionStore:
    """Per-location word distributions from cross-attention at one resolution (Attend-and-Excite's store).

    Modes: "off" (capture nothing), "guide" (keep this forward pass's maps with their graph, for a gradient),
    "record" (add the conditional half of each classifier-free-guidance batch, detached, over steps).
    ``width``: cells per row of the maps it takes (side by side, a window wider than its height).
    """

    def __init__(self, resolution: int, positions: Sequence[int]) -> None:
        self.resolution = resolution
        self.width = resolution
        self.positions = list(positions)
        self.mode = "off"
        self._guide: list[torch.Tensor] = []
        self._sum: torch.Tensor | None = None
        self._count = 0

    def wants(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None) -> bool:
        return (
            self.mode != "off"
            and encoder_hidden_states is not None
            and hidden_states.ndim == 3
            and hidden_states.shape[1] == self.resolution * self.width
        )

    def add(self, probs: torch.Tensor, heads: int) -> None:
        """``probs``: (batch·heads, locations, tokens), as ``Attention.get_attention_scores`` returns them."""
        words = probs.float().unflatten(0, (-1, heads)).mean(1)[..., self.positions]
        words = words / words.sum(-1, keepdim=True).clamp_min(1e-12)
        if self.mode == "guide":
            self._guide.append(words)
            return
        cond = words[len(words) // 2 :].detach()
        self._sum = cond if self._sum is None else self._sum + cond
        self._count += 1

    @contextmanager
    def guiding(self) -> Iterator[list[torch.Tensor]]:
        """Capture one forward pass for guidance; the caller reads the list after the pass."""
        previous, self.mode, self._guide = self.mode, "guide", []
        try:
            yield self._guide
        finally:
            self.mode = previous

    def recorded(self) -> torch.Tensor:
        """(images, res, width, words): the recorded maps averaged over layers and steps."""
        if self._sum is None:
            raise RuntimeError(f"no cross-attention was captured at {self.resolution}×{self.width}.")
        maps = self._sum / self._count
        return maps.unflatten(1, (self.resolution, self.width))


class CaptureProcessor:
    """Hands the probabilities of wanted cross-attention calls to the store, then runs the layer's own
    processor, so the layer's output is exactly what it would be without capture."""

    def __init__(self, store: AttentionStore, processor: Any) -> None:
        self.store = store
        self.processor = processor

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.store.wants(hidden_states, encoder_hidden_states):
            assert encoder_hidden_states is not None
            self.store.add(
                _probabilities(attn, hidden_states, encoder_hidden_states, attention_mask), attn.heads
            )
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def _probabilities(
    attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Softmax(QKᵀ·scale) the way diffusers' AttnProcessor computes it (3-D hidden states)."""
    mask = attn.prepare_attention_mask(mask, context.shape[1], context.shape[0])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(context))
    return attn.get_attention_scores(query, key, mask)


@contextmanager
def capture_processors(unet: UNet2DConditionModel, store: AttentionStore) -> Iterator[None]:
    """Swap every cross-attention processor for a capturing one for the block; put the originals back."""
    originals = dict(unet.attn_processors)
    swapped = {
        name: CaptureProcessor(store, processor) if ".attn2." in name else processor
        for name, processor in originals.items()
    }
    unet.set_attn_processor(swapped)
    try:
        yield
    finally:
        unet.set_attn_processor(originals)


def cross_attention_resolutions(unet: UNet2DConditionModel) -> set[int]:
    """Side lengths of the latent grids at which the UNet has cross-attention."""
    size = int(unet.config.sample_size)
    down = list(unet.config.down_block_types)
    found = {size >> i for i, kind in enumerate(down) if "CrossAttn" in kind}
    found |= {
        size >> (len(down) - 1 - i)
        for i, kind in enumerate(unet.config.up_block_types)
        if "CrossAttn" in kind
    }
    if "CrossAttn" in str(unet.config.mid_block_type):
        found.add(size >> (len(down) - 1))
    return found


def capture_resolution(unet: UNet2DConditionModel, requested: int = 0) -> int:
    """``requested`` if the UNet has cross-attention there; 0 picks the largest at most max(8, latent/4)
    (16×16 on SD-1.x at 512 px, as Attend-and-Excite uses; 8×8 on the bundled 16×16-latent model)."""
    available = cross_attention_resolutions(unet)
    if requested:
        if requested not in available:
            raise ValueError(
                f"no cross-attention at {requested}×{requested}; choose one of {sorted(available)}."
            )
        return requested
    limit = max(8, int(unet.config.sample_size) // 4)
    return max((r for r in available if r <= limit), default=min(available))


# --- losses ----------------------------------------------------------------------------------------------


def group_maps(words: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """(batch, locations, words) → (batch, groups, locations): each group's words summed."""
    return torch.stack([words[..., list(group)].sum(-1) for group in groups], dim=1)


def peaks(maps: torch.Tensor) -> torch.Tensor:
    """(batch, concepts, locations) → (batch, concepts): each concept's strongest location."""
    return maps.amax(-1)


def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inner product of L2-normalised maps along the last axis: 0 = disjoint, 1 = identical shape."""
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def concept_attention_loss(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """CAA per image: the weakest concept's missing peak, plus the attention of non-owners per location."""
    excite = (threshold - peaks(maps)).clamp_min(0).amax(-1)
    unmix = (maps.sum(1) - maps.amax(1)).mean(-1)
    return excite + unmix


def orthogonal_attention_loss(
    maps: torch.Tensor, attributes: torch.Tensor, owners: Sequence[int], threshold: float
) -> torch.Tensor:
    """OAA per image: mean overlap above ``threshold`` over concept pairs and (concept, other's attribute).

    ``maps``: (batch, concepts, locations); ``attributes``: (batch, attributes, locations), attribute k
    bound to concept ``owners[k]``.
    """
    count = maps.shape[1]
    terms = [overlap(maps[:, i], maps[:, j]) for i in range(count) for j in range(i + 1, count)]
    terms += [
        overlap(maps[:, i], attributes[:, k])
        for k, owner in enumerate(owners)
        for i in range(count)
        if i != owner
    ]
    return (torch.stack(terms, dim=1) - threshold).clamp_min(0).mean(1)


# --- guidance in the sampling loop -----------------------------------------------------------------------


@dataclass
class AttentionControl:
    """The sampling pipelines' step guide (lifelong.pipelines.StepHooks): moves the latents by the CAA/OAA
    gradient in early steps."""

    base: BaseModel
    store: AttentionStore
    tokens: PromptTokens
    cond: torch.Tensor
    config: GenerateConfig
    steps: int  # guided steps (0 when only recording)

    def loss(self, words: torch.Tensor) -> torch.Tensor:
        """Per-image guidance loss from (batch, locations, words) maps."""
        labels = list(self.tokens.concepts)
        maps = group_maps(words, [self.tokens.concepts[label] for label in labels])
        total = torch.zeros(len(words), device=words.device)
        if self.config.caa:
            total = total + concept_attention_loss(maps, self.config.caa_threshold)
        if self.config.oaa:
            owners = [c for c, label in enumerate(labels) for _ in self.tokens.attributes[label]]
            bound = [[i] for label in labels for i in self.tokens.attributes[label]]
            attributes = group_maps(words, bound) if bound else maps[:, :0]
            total = total + orthogonal_attention_loss(maps, attributes, owners, self.config.oaa_threshold)
        return total

    def guide(
        self, index: int, t: torch.Tensor, latents: torch.Tensor, scheduler: SchedulerMixin
    ) -> torch.Tensor:
        """Latents after one gradient step on the attention losses (step ``index`` < ``steps``), else as is."""
        if index >= self.steps:
            return latents
        with torch.enable_grad():
            latents = latents.detach().requires_grad_(True)
            model_input = scheduler.scale_model_input(latents, t).to(self.base.dtype)
            with self.store.guiding() as captured:
                self.base.pipe.unet(model_input, t, self.cond.expand(len(latents), -1, -1))
            loss = self.loss(torch.stack(captured).mean(0)).sum()
            if loss.item() == 0.0:
                return latents.detach()
            (grad,) = torch.autograd.grad(loss, latents)
        return (latents - self.config.attention_step_size * grad).detach()


@dataclass
class AttentionRecord:
    """The cross-attention maps of one generation (conditional branch, averaged over heads, layers, steps).

    ``maps``: (images, res, res · squares side by side, words), summing to one over ``words`` at each
    location.
    """

    words: list[str] = field(default_factory=list)
    concepts: dict[str, list[int]] = field(default_factory=dict)
    attributes: dict[str, list[int]] = field(default_factory=dict)
    maps: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def labels(self) -> list[str]:
        """Concepts if the prompt names any, else its content words: what the map images show."""
        if self.concepts:
            return list(self.concepts)
        return [word for word in dict.fromkeys(self.words) if word.lower() not in FUNCTION_WORDS]

    def label_maps(self, labels: Sequence[str] | None = None) -> torch.Tensor:
        """(images, labels, res, res): each label's map (a concept's tokens, or every copy of a word)."""
        labels = list(labels or self.labels())
        groups = [
            self.concepts.get(label) or [i for i, w in enumerate(self.words) if w == label]
            for label in labels
        ]
        flat = self.maps.flatten(1, 2)
        return group_maps(flat, groups).unflatten(-1, self.maps.shape[1:3])

    def peaks(self) -> torch.Tensor:
        """(images, concepts): each concept's peak attention."""
        return peaks(self.label_maps(list(self.concepts)).flatten(2))

    def overlap(self, first: str, second: str) -> torch.Tensor:
        """(images,): overlap of two labels' normalised maps."""
        maps = self.label_maps([first, second]).flatten(2)
        return overlap(maps[:, 0], maps[:, 1])

    def images(self, images: Sequence[Image.Image], strength: float = 0.7) -> list[tuple[Image.Image, str]]:
        """Each label's map over each generated image, as (overlay, caption) pairs for a gallery.

        A map is stretched to [0, 1] (its minimum to its maximum) and blended in the label's colour: where
        the colour is strong, that is where the label's word looks most.
        """
        labels = self.labels()
        maps = self.label_maps(labels)
        out = []
        for n, image in enumerate(images):
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
            for c, label in enumerate(labels):
                heat = maps[n, c] - maps[n, c].min()
                heat = heat / heat.max().clamp_min(1e-12)
                heat = F.interpolate(
                    heat[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False
                )
                alpha = heat[0, 0].clamp(0, 1).numpy()[..., None] * strength
                blended = rgb * (1 - alpha) + np.array(PALETTE[c % len(PALETTE)], dtype=np.float32) * alpha
                out.append((Image.fromarray(blended.round().astype(np.uint8)), f"image {n + 1}: {label}"))
        return out


@contextmanager
def attention_control(
    base: BaseModel,
    text: str,
    names: Sequence[str],
    cond: torch.Tensor,
    config: GenerateConfig,
    record: AttentionRecord | None = None,
) -> Iterator[AttentionControl | None]:
    """The control for one generation, with capturing processors swapped in; None (and nothing swapped)
    when there is nothing to guide or record. On exit, ``record`` holds the generation's maps."""
    tokens = prompt_tokens(base, text, names)
    guided = (config.caa or config.oaa) and len(tokens.concepts) >= 2 and config.attention_steps > 0
    if not guided and record is None:
        yield None
        return
    unet = base.pipe.unet
    store = AttentionStore(capture_resolution(unet, config.attention_res), tokens.positions)
    store.mode = "record" if record is not None else "off"
    control = AttentionControl(base, store, tokens, cond, config, config.attention_steps if guided else 0)
    with capture_processors(unet, store):
        yield control
    if record is not None:
        record.words, record.concepts, record.attributes = tokens.words, tokens.concepts, tokens.attributes
        record.maps = store.recorded().cpu()
