"""Triplet loss (thesis 12.01.2024): max(0, D(a, p) - D(a, n) + margin), averaged over every negative.

a is the image embedding, p its true location's embedding, n each negative location's. D is 1 - cos
(faster to converge in the thesis) or the L2 distance of the unit embeddings, sqrt(2 - 2 cos) (the
triplet default, better final accuracy there). The margin is 1, as in the thesis.
"""

from __future__ import annotations

import torch

from geovario.losses.base import ContrastiveLoss, LossInputs, LossOutput

DISTANCES = ("cosine", "l2")


class Triplet(ContrastiveLoss):
    def __init__(self, margin: float = 1.0, distance: str = "cosine"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.margin, self.distance = margin, distance

    def _distance(self, cosine: torch.Tensor) -> torch.Tensor:
        if self.distance == "cosine":
            return 1 - cosine
        return torch.sqrt(torch.clamp(2 - 2 * cosine, min=1e-12))

    def forward(self, inputs: LossInputs) -> LossOutput:
        cosine = inputs.logits / inputs.logit_scale
        rows = torch.arange(len(cosine), device=cosine.device)
        d_pos = self._distance(cosine[rows, inputs.targets])[:, None]
        d_neg = self._distance(cosine)
        violation = torch.clamp(d_pos - d_neg + self.margin, min=0)[inputs.negatives_mask()]
        return LossOutput(violation.mean(), {"active_fraction": float((violation > 0).float().mean())})
