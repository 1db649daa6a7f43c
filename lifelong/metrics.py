"""Customisation and forgetting metrics (CustomConcept101's evaluation, with DreamBooth's CLIP-T and DINO).

- TA (text alignment): cosine(CLIP image, CLIP text of the prompt with the concept token replaced by its
  class word or name), with any transformers CLIP.
- IA(i, j) (image alignment): mean cosine between *identity* features of images generated for concept i
  after learning concept j and concept i's reference images. Row i of the matrix is concept i's forgetting
  curve. Identity features come from an image-only model trained to tell instances apart (DreamBooth's
  DINO score): any transformers vision model with a pooled output, by default the bundled
  `assets/eval-identity`; a CLIP's image tower is too coarse for this (it separates names, not instances).
- IAD: mean over i < N of IA(i, i) − IA(i, N). TFR: mean over i < N of (IA(i, i) − IA(i, N)) / IA(i, i).
- Base drift: 1 − mean cosine between images of base-model prompts made by the base model and by the final
  model with the same seeds (a drift: 0 means the base model's knowledge is untouched).

Features are L2-normalised, computed in batches without grad; :class:`FeatureCache` keeps the features of
reference images so they are computed once per benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lifelong.base import BUNDLED_EVAL_CLIP, BUNDLED_EVAL_IDENTITY
from lifelong.colors import NAMED_COLORS


@dataclass
class EvalClip:
    """A CLIPModel with the image processor and tokenizer that go with it."""

    model: CLIPModel
    image_processor: CLIPImageProcessor
    tokenizer: PreTrainedTokenizerBase

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, path: str | Path = "", device: str | torch.device = "cpu") -> EvalClip:
        """A CLIP folder or hub id (default: the bundled eval CLIP), in float32 on ``device``, frozen."""
        path = str(path or BUNDLED_EVAL_CLIP)
        model = CLIPModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        model.requires_grad_(False)
        return cls(model, CLIPImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path))


@dataclass
class IdentityEncoder:
    """An image model whose pooled output tells instances apart (a DINO, or the bundled eval-identity)."""

    model: PreTrainedModel
    image_processor: object

    @classmethod
    def load(cls, path: str | Path = "", device: str | torch.device = "cpu") -> IdentityEncoder:
        """A folder or hub id (default: the bundled identity encoder), in float32 on ``device``, frozen."""
        path = str(path or BUNDLED_EVAL_IDENTITY)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        model.requires_grad_(False)
        return cls(model, AutoImageProcessor.from_pretrained(path))


@torch.no_grad()
def identity_features(
    encoder: IdentityEncoder, images: Sequence[Image.Image], batch: int = 64
) -> torch.Tensor:
    """L2-normalised identity features, one row per image, float32 on the CPU."""
    device = next(encoder.model.parameters()).device
    rows = []
    for start in range(0, len(images), batch):
        chunk = [image.convert("RGB") for image in images[start : start + batch]]
        pixels = encoder.image_processor(images=chunk, return_tensors="pt").pixel_values  # type: ignore[operator]
        pooled = encoder.model(pixel_values=pixels.to(device)).pooler_output
        rows.append(pooled.flatten(1).float().cpu())
    return F.normalize(torch.cat(rows), dim=-1)


def alignment_features(
    images: Sequence[Image.Image], clip: EvalClip, identity: IdentityEncoder | None = None
) -> torch.Tensor:
    """The features IA compares: the identity encoder's when there is one, else the CLIP's image tower's."""
    return identity_features(identity, images) if identity is not None else image_features(clip, images)


def _pooled(output: torch.Tensor | object) -> torch.Tensor:
    """transformers 5 may return a model output rather than a tensor from ``get_*_features``."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


@torch.no_grad()
def image_features(clip: EvalClip, images: Sequence[Image.Image], batch: int = 64) -> torch.Tensor:
    """L2-normalised CLIP image features, one row per image, float32 on the CPU."""
    rows = []
    for start in range(0, len(images), batch):
        chunk = [image.convert("RGB") for image in images[start : start + batch]]
        pixels = clip.image_processor(images=chunk, return_tensors="pt").pixel_values.to(clip.device)
        rows.append(_pooled(clip.model.get_image_features(pixel_values=pixels)).float().cpu())
    return F.normalize(torch.cat(rows), dim=-1)


@torch.no_grad()
def text_features(clip: EvalClip, texts: Sequence[str], batch: int = 64) -> torch.Tensor:
    """L2-normalised CLIP text features, one row per text, float32 on the CPU."""
    rows = []
    for start in range(0, len(texts), batch):
        tokens = clip.tokenizer(
            list(texts[start : start + batch]),
            padding=True,
            truncation=True,
            max_length=clip.tokenizer.model_max_length,
            return_tensors="pt",
        ).to(clip.device)
        output = clip.model.get_text_features(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        )
        rows.append(_pooled(output).float().cpu())
    return F.normalize(torch.cat(rows), dim=-1)


@dataclass
class FeatureCache:
    """Features computed once per key (e.g. a concept's reference images) and reused."""

    store: dict[Hashable, torch.Tensor] = field(default_factory=dict)

    def get(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self.store:
            self.store[key] = compute()
        return self.store[key]


def leave_one_out_identification(groups: Sequence[torch.Tensor]) -> float:
    """How often an image is nearest (cosine) to its own concept's centroid, among all concepts' centroids,
    when that centroid is taken over its concept's *other* images. ``groups[k]`` holds concept k's
    normalised features, one row per image (each group needs at least two)."""
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        raise ValueError("leave-one-out identification needs two concepts with two images each")
    sums = torch.stack([g.sum(0) for g in groups])
    hits = total = 0
    for k, group in enumerate(groups):
        for row in group:
            centroids = sums.clone()
            centroids[k] -= row
            counts = torch.tensor([len(g) for g in groups], dtype=torch.float32)
            counts[k] -= 1
            centroids = F.normalize(centroids / counts[:, None], dim=-1)
            hits += int((centroids @ row).argmax().item() == k)
            total += 1
    return hits / total


def background_color(
    image: Image.Image, palette: dict[str, tuple[int, int, int]] = NAMED_COLORS, border: int = 3
) -> str:
    """Name of the palette colour nearest to the median of the image's border pixels."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).float()
    mask = torch.ones(pixels.shape[:2], dtype=torch.bool)
    mask[border:-border, border:-border] = False
    median = pixels[mask].median(dim=0).values
    names = list(palette)
    distances = torch.stack(
        [torch.linalg.norm(median - torch.tensor(palette[c], dtype=torch.float32)) for c in names]
    )
    return names[int(distances.argmin())]


def text_alignments(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Cosine of paired rows, one per image: image k against the text it was generated for (normalised)."""
    return (images * texts).sum(-1)


def text_alignment(images: torch.Tensor, texts: torch.Tensor) -> float:
    """TA: the mean of :func:`text_alignments`."""
    return float(text_alignments(images, texts).mean())


def image_alignments(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per generated image, its mean cosine to the references; their mean is one entry IA(i, j). Kept per
    image so that intervals can be drawn over seeds (lifelong.stats)."""
    return (generated @ references.T).mean(1)


def paired_drifts(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """1 − cosine of paired rows, one per image: a base-model image against the final model's, same prompt
    and seed; their mean is the base drift."""
    return 1.0 - (before * after).sum(-1)


@dataclass(frozen=True)
class Forgetting:
    """What an IA matrix says: alignment right after learning, at the end, and how much was lost."""

    ia_own: float  # mean IA(i, i) over all concepts: how well each was learned
    ia_final: float  # mean IA(i, N) over all concepts
    iad: float  # mean over i < N of IA(i, i) − IA(i, N)
    tfr: float  # mean over i < N of (IA(i, i) − IA(i, N)) / IA(i, i)


def forgetting(matrix: Sequence[Sequence[float | None]]) -> Forgetting:
    """Summarise an N×N IA matrix (row i = concept i, column j = after concept j, None where j < i).

    With a single concept nothing can be forgotten yet, so IAD and TFR are NaN.
    """
    n = len(matrix)
    if n == 0 or any(len(row) != n for row in matrix):
        raise ValueError("the IA matrix must be square and non-empty")
    if any(matrix[i][j] is None for i in range(n) for j in range(i, n)):
        raise ValueError("the IA matrix needs every entry with j >= i")
    own = [float(matrix[i][i]) for i in range(n)]  # type: ignore[arg-type]
    final = [float(matrix[i][n - 1]) for i in range(n)]  # type: ignore[arg-type]
    drops = [own[i] - final[i] for i in range(n - 1)]
    ratios = [drops[i] / own[i] for i in range(n - 1)]
    return Forgetting(
        ia_own=sum(own) / n,
        ia_final=sum(final) / n,
        iad=sum(drops) / len(drops) if drops else math.nan,
        tfr=sum(ratios) / len(ratios) if ratios else math.nan,
    )
