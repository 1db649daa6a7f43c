"""Two or more routed concepts in one image, each drawn by its own deltas in its own region.

A routed concept's deltas are learned alone from the base and applied only when a prompt names it
(``Session.weights``). A prompt naming two of them gets both at half weight, everywhere: each object then
shows a blend of both concepts at half strength. Regional composition instead runs the UNet once per named
concept at every sampling step, with that concept's deltas alone at full weight and the prompt without the
other routed concepts' tokens (so that pass draws them as their class words: what its deltas were learned
with), and blends the noise predictions per latent location: a location takes the prediction of the
concept whose words (its token and the words bound to it, e.g. its class word) attend there most in that
concept's own pass. This is the
regionally controllable sampling of Mix-of-Show and OMG, with the regions read from cross-attention at each
step instead of drawn by the user. It costs one UNet pass per named concept instead of one.

The wrapper stands in for the UNet in diffusers' pipelines (lifelong.pipelines.sampling_pipeline); the
maps come from the capture processors of lifelong.attention.

Side by side, the canvas is one square per concept wide and the regions are fixed: concept i's pass draws
its own square and an eighth of a square of each neighbour (MultiDiffusion's windows), the windows blend
linearly where they overlap, and the pass's prompt is its own phrase of the prompt with the shared words
(``prompts.square_prompts``). Each concept is drawn at the size it was learned at, where two objects sharing
one square are each drawn at half size (on a small base, too small to tell apart), and no pass sees the
other concepts' squares beyond the overlap (over a whole wide canvas one concept's pass drew noise there).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.adapters import ModelState, use_state
from lifelong.attention import (
    AttentionRecord,
    AttentionStore,
    PromptTokens,
    capture_processors,
    capture_resolution,
    group_maps,
)
from lifelong.base import BaseModel

# Weights are softmax(peak-normalised map / SHARPNESS) over the concepts: a location goes almost wholly
# (e^3 : 1 at 0.3) to a concept whose map there is 0.3 of its peak above the other's
SHARPNESS = 0.1
SEAM = 0.25  # side by side: neighbouring squares' windows overlap by this share of a square, blended


def seam_margin(square: int, factor: int) -> int:
    """Latent columns a square's window reaches into each neighbour: half of ``SEAM`` of a square, a multiple
    of ``factor`` (latent columns per attention-map cell) so that every window's maps have whole cells."""
    return factor * max(1, round(SEAM * square / 2 / factor))


def square_weights(count: int, height: int, width: int, margin: int) -> torch.Tensor:
    """(1, count, height, width) weights of ``count`` squares side by side: square i owns the i-th
    ``width / count`` columns, and across each inner boundary the two neighbours blend linearly over
    ``2 · margin`` columns (zero outside a square's window); they sum to one at each location."""
    square = width / count
    x = torch.arange(width, dtype=torch.float32) + 0.5
    # rising edge of "square ≥ i": 0 left of boundary i, 1 right of it, linear across the overlap
    edges = [torch.ones(width)]
    edges += [((x - i * square) / (2 * margin) + 0.5).clamp(0, 1) for i in range(1, count)]
    edges.append(torch.zeros(width))
    columns = torch.stack([edges[i] - edges[i + 1] for i in range(count)])
    return columns[None, :, None, :].expand(1, count, height, width).clone()


def region_weights(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(images, concepts, res, res) attention maps → (images, concepts, size, size) blend weights that sum
    to one over the concepts at each location (each map scaled to its own peak first, so a concept whose
    words attend weakly overall still owns the places it attends most)."""
    peak = maps.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    weights = torch.softmax((maps / peak) / SHARPNESS, dim=1)
    return F.interpolate(weights, size=(size, size), mode="bilinear", align_corners=False)


@dataclass
class RegionalPass:
    """One concept's pass: its state, its prompt's conditional text states (the prompt with the other
    routed concepts' tokens left out, so the pass draws them as their class words), a store for that
    prompt's words, the concept's word indices in it, and for each word of the full prompt its index in
    this pass's words (-1: a token this pass leaves out)."""

    state: ModelState
    cond: torch.Tensor  # (1, tokens, width)
    store: AttentionStore
    group: list[int]
    to_pass: list[int]


class _Switch:
    """The store the capture processors hand maps to: the current pass's."""

    def __init__(self) -> None:
        self.current: AttentionStore | None = None

    def wants(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None) -> bool:
        return self.current is not None and self.current.wants(hidden_states, encoder_hidden_states)

    def add(self, probs: torch.Tensor, heads: int) -> None:
        assert self.current is not None
        self.current.add(probs, heads)


class RegionalUNet(nn.Module):
    """Calls the base's UNet once per pass (one per named routed concept) and blends the outputs by region.

    ``images``: images per prompt, so the conditional half of a classifier-free-guidance batch can be told
    from the unconditional one. ``side_by_side``: each pass on its own square's window (``square_weights``)
    instead of the regions the maps give. ``composed_maps()``: the full prompt's word maps as composed,
    averaged over the steps (each location's words from each pass, in that pass's share of the location).
    """

    def __init__(
        self,
        base: BaseModel,
        passes: Sequence[RegionalPass],
        switch: _Switch,
        images: int,
        side_by_side: bool = False,
    ) -> None:
        super().__init__()
        self.base, self.passes, self.switch, self.images = base, list(passes), switch, images
        self.side_by_side = side_by_side
        self.inner = base.pipe.unet
        self._sum: torch.Tensor | None = None
        self._count = 0

    @property
    def config(self) -> Any:
        return self.inner.config

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, **kwargs: Any
    ) -> Any:
        if self.side_by_side:
            return self._side_by_side(sample, timestep, encoder_hidden_states, **kwargs)
        outputs, words = [], []
        for one in self.passes:
            output, captured = self._pass(one, sample, timestep, encoder_hidden_states, **kwargs)
            outputs.append(output)
            words.append(captured)
        res = self.passes[0].store.resolution
        maps = torch.stack(
            [group_maps(w, [one.group])[:, 0] for w, one in zip(words, self.passes, strict=True)], dim=1
        )
        shares = region_weights(maps.unflatten(-1, (res, res)), res)  # (images, passes, res, res)
        self._record(words, shares.flatten(2))
        weights = F.interpolate(shares, size=sample.shape[-2:], mode="bilinear", align_corners=False)
        weights = weights.to(outputs[0].dtype).repeat(len(sample) // self.images, 1, 1, 1)  # both CFG halves
        return (sum(weights[:, i : i + 1] * out for i, out in enumerate(outputs)),)

    def _side_by_side(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, **kwargs: Any
    ) -> Any:
        """Each pass on its own square's window (the square and ``seam_margin`` columns of each neighbour),
        at close to the size the UNet draws at; the windows blend linearly where they overlap."""
        res, count = self.passes[0].store.resolution, len(self.passes)
        height, width = sample.shape[-2:]
        square, factor = width // count, height // res
        margin = seam_margin(square, factor)
        weights = square_weights(count, height, width, margin).to(sample.device, sample.dtype)
        blended = torch.zeros_like(sample)
        words = []
        for i, one in enumerate(self.passes):
            start, end = max(0, i * square - margin), min(width, (i + 1) * square + margin)
            one.store.width = (end - start) // factor
            window = sample[..., start:end].contiguous()
            output, captured = self._pass(one, window, timestep, encoder_hidden_states, **kwargs)
            blended[..., start:end] += weights[:, i, :, start:end] * output.to(sample.dtype)
            placed = captured.new_zeros(self.images, res, width // factor, captured.shape[-1])
            placed[:, :, start // factor : end // factor] = captured.unflatten(1, (res, one.store.width))
            words.append(placed.flatten(1, 2))
        shares = square_weights(count, res, width // factor, margin // factor)
        self._record(words, shares.expand(self.images, -1, -1, -1).flatten(2).to(words[0].device))
        return (blended,)

    def _pass(
        self,
        one: RegionalPass,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One concept's UNet pass: its output and its conditional rows' word maps (images, locations,
        words)."""
        context = encoder_hidden_states.clone()
        context[-self.images :] = one.cond.to(context.dtype)  # the conditional rows
        self.switch.current = one.store
        try:
            with use_state(self.base, one.state), one.store.guiding() as captured:
                output = self.inner(sample, timestep, context, **kwargs)
        finally:
            self.switch.current = None
        words = torch.stack(captured).mean(0)[-self.images :]
        return (output[0] if isinstance(output, tuple) else output.sample), words

    def _record(self, words: Sequence[torch.Tensor], shares: torch.Tensor) -> None:
        parts = []
        for i, (own, one) in enumerate(zip(words, self.passes, strict=True)):
            padded = torch.cat([own, torch.zeros_like(own[..., :1])], dim=-1)  # index -1: a left-out token
            parts.append(shares[:, i, :, None] * padded[..., one.to_pass])
        composed = torch.stack(parts).sum(0)
        composed = composed / composed.sum(-1, keepdim=True).clamp_min(1e-12)
        self._sum = composed if self._sum is None else self._sum + composed
        self._count += 1

    def composed_maps(self) -> torch.Tensor:
        """(images, res, res · squares, words of the full prompt): one square, or a square per pass side
        by side."""
        if self._sum is None:
            raise RuntimeError("no sampling step ran through the regional UNet.")
        res = self.passes[0].store.resolution
        squares = len(self.passes) if self.side_by_side else 1
        return (self._sum / self._count).unflatten(1, (res, res * squares))


def concept_group(tokens: PromptTokens, label: str) -> list[int]:
    """A concept's word indices: its own token(s) and the words bound to it."""
    return sorted({*tokens.concepts[label], *tokens.attributes.get(label, [])})


def word_alignment(full: PromptTokens, own: PromptTokens) -> list[int]:
    """For each word of the full prompt, its index among a pass's words (-1 for the words the pass leaves
    out): the pass's prompt is the full one with some words left out (the other routed concepts' tokens,
    or side by side their phrases), so its words are matched in order."""
    alignment, j = [], 0
    for word in full.words:
        if j < len(own.words) and own.words[j] == word:
            alignment.append(j)
            j += 1
        else:
            alignment.append(-1)
    return alignment


@contextmanager
def regional_unet(
    base: BaseModel,
    passes: Sequence[tuple[ModelState, torch.Tensor, PromptTokens, str]],
    full: PromptTokens,
    images: int,
    attention_res: int = 0,
    record: AttentionRecord | None = None,
    side_by_side: bool = False,
) -> Iterator[RegionalUNet]:
    """The wrapper for one generation from (state, conditional text states, the pass prompt's tokens, the
    concept's label) per concept and the full prompt's tokens, with map-capturing processors swapped into
    the UNet meanwhile; ``side_by_side``: on a canvas one square per concept wide, each in its own. On exit,
    ``record`` holds the composed maps of the full prompt's words."""
    unet = base.pipe.unet
    resolution = capture_resolution(unet, attention_res)
    built = [
        RegionalPass(
            state,
            cond,
            AttentionStore(resolution, tokens.positions),
            concept_group(tokens, label),
            word_alignment(full, tokens),
        )
        for state, cond, tokens, label in passes
    ]
    switch = _Switch()
    with capture_processors(unet, switch):  # type: ignore[arg-type]
        wrapper = RegionalUNet(base, built, switch, images, side_by_side)
        yield wrapper
    if record is not None:
        record.words, record.concepts, record.attributes = full.words, full.concepts, full.attributes
        record.maps = wrapper.composed_maps().cpu()
