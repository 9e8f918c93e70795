"""What every contrastive loss receives, and what it reports.

All losses work on one logits matrix: row i holds the scaled cosines between image i and its
candidate locations, ``targets[i]`` is the column of its true location, and every other column is a
negative. With GeoCLIP's batch-plus-queue negatives the candidates are shared (columns = batch GPS
then queue GPS, targets = arange(B)); with gallery negatives each row has its own (column 0 = true).

``excluded`` marks columns that are neither the positive nor a negative of their row: a queued copy of
the row's own sample (from the queue's second pass over a small dataset), which would otherwise stand
as a negative of itself at lag 0. Every loss leaves them out, as if the column were absent from that row.
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
    excluded: torch.Tensor | None = None  # (B, C) True for a column left out of its row (the row's own sample, queued)
    # the ssl loss only: the same rows' second view against the same columns, and SimSiam's (z1, z2, p1, p2)
    second_view: "LossInputs | None" = None
    siamese: tuple[torch.Tensor, ...] | None = None

    def negatives_mask(self) -> torch.Tensor:
        """(B, C) True for every negative: not the positive, not excluded."""
        mask = torch.ones_like(self.logits, dtype=torch.bool)
        mask[torch.arange(len(self.targets), device=mask.device), self.targets] = False
        if self.excluded is not None:
            mask &= ~self.excluded
        return mask

    def present(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (or logits derived from them) with excluded columns at -inf, so a softmax never sees them."""
        if self.excluded is None:
            return logits
        return logits.masked_fill(self.excluded, float("-inf"))


@dataclass
class LossOutput:
    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)  # what the loss did, for metrics.csv


class ContrastiveLoss(torch.nn.Module):
    """Base class: ``needs_geometry`` losses get lags and dissimilarities filled in by the trainer."""

    needs_geometry = False

    def forward(self, inputs: LossInputs) -> LossOutput:  # pragma: no cover - interface
        raise NotImplementedError
