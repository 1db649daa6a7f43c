"""Customisation and forgetting metrics with any transformers CLIP (CustomConcept101's evaluation).

- TA (text alignment): cosine(CLIP image, CLIP text of the prompt with the concept token replaced by its
  class word or name).
- IA(i, j) (image alignment): mean cosine between CLIP features of images generated for concept i after
  learning concept j and concept i's reference images. Row i of the matrix is concept i's forgetting curve.
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

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerBase

from lifelong.base import BUNDLED_EVAL_CLIP


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


def text_alignment(images: torch.Tensor, texts: torch.Tensor) -> float:
    """Mean cosine of paired rows: image k against the text it was generated for (normalised features)."""
    return float((images * texts).sum(-1).mean())


def image_alignment(generated: torch.Tensor, references: torch.Tensor) -> float:
    """Mean cosine over every (generated, reference) pair: one entry IA(i, j) of the matrix."""
    return float((generated @ references.T).mean())


def paired_drift(before: torch.Tensor, after: torch.Tensor) -> float:
    """1 − mean cosine of paired rows: base-model images against the final model's, same prompt and seed."""
    return 1.0 - float((before * after).sum(-1).mean())


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
