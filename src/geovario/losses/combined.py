"""A weighted sum of losses, as in DeCLIP-style combinations (Li et al., ICLR 2022): L = sum_k w_k L_k."""

from __future__ import annotations

import torch

from geovario.losses.base import ContrastiveLoss, LossInputs, LossOutput


class WeightedSum(ContrastiveLoss):
    def __init__(self, parts: list[tuple[str, float, ContrastiveLoss]]):
        super().__init__()
        self.names = [name for name, _, _ in parts]
        self.weights = [weight for _, weight, _ in parts]
        self.parts = torch.nn.ModuleList(loss for _, _, loss in parts)
        self.needs_geometry = any(p.needs_geometry for p in self.parts)

    def forward(self, inputs: LossInputs) -> LossOutput:
        total, stats = 0.0, {}
        for name, weight, part in zip(self.names, self.weights, self.parts):
            out = part(inputs)
            total = total + weight * out.loss
            stats[f"{name}_loss"] = float(out.loss.detach())
            stats |= {f"{name}_{k}": v for k, v in out.stats.items()}
        return LossOutput(total, stats)
