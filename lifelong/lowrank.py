"""Concept deltas as LoRA factors, the form every other tool loads: ΔW = B @ A per module.

LoRA deltas are factors already and pass through exactly; a sum of them (a checkpoint of several LoRA
concepts) is exact too, as their factors stacked along the rank. Dense K/V increments (kind "kv") become
factors by a truncated SVD: the rank keeps a stated share of the energy (the squared singular values), so
the relative Frobenius error of each module is at most sqrt(1 − share).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lifelong.adapters import ConceptDelta


@dataclass
class Factors:
    """Per module, LoRA factors A (rank × in) and B (out × rank) with ΔW = B @ A, and what the SVD lost."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    svd_ranks: dict[str, int] = field(default_factory=dict)  # modules whose dense part was truncated
    residual_sq: float = 0.0  # Σ ‖ΔW − B @ A‖²_F over the modules
    total_sq: float = 0.0  # Σ ‖ΔW‖²_F

    @property
    def relative_error(self) -> float:
        """‖ΔW − B @ A‖_F / ‖ΔW‖_F over all modules together (0 for LoRA deltas)."""
        return math.sqrt(self.residual_sq / self.total_sq) if self.total_sq > 0 else 0.0

    def ranks(self) -> dict[str, int]:
        return {module: int(a.shape[0]) for module, (a, _) in self.factors.items()}


def truncated_svd(dense: torch.Tensor, energy: float, max_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the smallest rank whose singular values keep ``energy`` of Σσ², at most ``max_rank``.

    √σ goes to each side, so neither factor is much larger than the other (as trained LoRAs are)."""
    u, s, vh = torch.linalg.svd(dense.double(), full_matrices=False)
    kept = torch.cumsum(s**2, 0) / (s**2).sum()
    rank = min(int((kept < energy - 1e-12).sum()) + 1, max_rank, len(s))
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).float(), (u[:, :rank] * root).float()


def to_factors(deltas: Sequence[ConceptDelta], energy: float = 0.99, max_rank: int = 64) -> Factors:
    """LoRA factors of the sum of ``deltas``: LoRA parts stacked exactly, the dense part by truncated SVD.

    A module no delta changes, or whose change is zero, is left out."""
    result = Factors()
    for module in dict.fromkeys(module for delta in deltas for module in delta.modules()):
        parts = [delta for delta in deltas if module in delta.modules()]
        total_sq = float((torch.stack([d.dense(module).double() for d in parts]).sum(0) ** 2).sum())
        if total_sq == 0:
            continue
        result.total_sq += total_sq
        a_parts = [d.tensors[f"{module}.lora_A"].float() for d in parts if d.kind != "kv"]
        b_parts = [d.tensors[f"{module}.lora_B"].float() for d in parts if d.kind != "kv"]
        dense = [d.tensors[module].float() for d in parts if d.kind == "kv"]
        summed = torch.stack(dense).sum(0) if dense else None
        if summed is not None and summed.any():
            a, b = truncated_svd(summed, energy, max_rank)
            a_parts.append(a)
            b_parts.append(b)
            result.svd_ranks[module] = int(a.shape[0])
            result.residual_sq += float(((summed.double() - b.double() @ a.double()) ** 2).sum())
        result.factors[module] = (torch.cat(a_parts, 0), torch.cat(b_parts, 1))
    return result
