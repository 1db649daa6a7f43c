"""C-LoRA's forgetting penalty: the new LoRA update must avoid the weights earlier concepts changed.

With P_m = Σ_{j<k} ΔW_m^j the sum of earlier concepts' updates of module m and ΔW_m = B_m A_m the live
LoRA update,

    L = λ · Σ_m mean((P_m ⊙ ΔW_m)²)

zero for the first concept, growing with the element-wise overlap. (C-LoRA, Smith et al. 2023; we average
over a module's elements so λ does not depend on the model's width.) Default λ = 1e3: on the tiny test
pipeline (3 concepts, 60 steps, lr 3e-3) it cut the third concept's overlap with the first 20× while its
update kept half the norm it has without the penalty; λ = 1e6 froze later concepts (norm ÷ 100).
"""

from __future__ import annotations

import torch

from lifelong.settings import Setting
from lifelong.step import BuildContext, StepContext

SETTINGS = {"clora_weight": Setting(1e3, "λ: weight of the overlap penalty", 0.0)}


class OverlapPenalty:
    name = "c-lora"

    def __init__(self, earlier: dict[str, torch.Tensor], weight: float) -> None:
        self.earlier, self.weight = earlier, weight

    def loss(self, ctx: StepContext) -> torch.Tensor:
        total = ctx.latents.new_zeros(())
        trained = set(ctx.trainset.modules)
        for module, previous in self.earlier.items():
            # a module this set does not train has ΔW_m = 0: no overlap (an earlier concept trained with
            # LoRA on every attention projection, e.g. by dfkd, changed modules a K/V LoRA leaves alone)
            if module in trained:
                total = total + ((previous * ctx.trainset.live_dense(module)) ** 2).mean()
        return self.weight * total


def build(ctx: BuildContext) -> OverlapPenalty:
    device = ctx.base.device
    earlier = {module: delta.to(device) for module, delta in ctx.state.weight_deltas.items()}
    return OverlapPenalty(earlier, float(ctx.settings["clora_weight"]))
