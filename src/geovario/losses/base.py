"""What every contrastive loss receives, and what it reports.

All losses work on one logits matrix: row i holds the scaled cosines between image i and its
candidate locations, ``targets[i]`` is the column of its true location, and every other column is a
negative. With GeoCLIP's batch-plus-queue negatives the candidates are shared (columns = batch GPS
then queue GPS, targets = arange(B)); with gallery negatives each row has its own (column 0 = true).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossInputs:
    logits: torch.Tensor  # (B, C) = logit_scale * cos(image_i, location_j)
    targets: torch.Tensor  # (B,) column of the true location
    logit_scale: torch.Tensor  # scalar, exp of the learned log-scale
    lags_km: torch.Tensor | None = None  # (B, C) great-circle distance from image i's GPS to candidate j
    dissimilarity: torch.Tensor | None = None  # (B, C) 1 - cos of frozen (or learned) image features, detached
    queue_full: bool = True

    def negatives_mask(self) -> torch.Tensor:
        """(B, C) True for every negative."""
        mask = torch.ones_like(self.logits, dtype=torch.bool)
        mask[torch.arange(len(self.targets), device=mask.device), self.targets] = False
        return mask


@dataclass
class LossOutput:
    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)  # what the loss did, for metrics.csv


class ContrastiveLoss(torch.nn.Module):
    """Base class: ``needs_geometry`` losses get lags and dissimilarities filled in by the trainer."""

    needs_geometry = False

    def forward(self, inputs: LossInputs) -> LossOutput:  # pragma: no cover - interface
        raise NotImplementedError
