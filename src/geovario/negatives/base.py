"""The contract every negative source keeps.

A training step asks its source for the step's candidates and, after the optimizer step, commits:

    candidates = source.candidates(batch, generator, rng)           # reads state, changes nothing
    image, locations, scale = encoders(batch.features, candidates.locations)
    out = loss(candidates.loss_inputs(image, locations, scale))
    ... backward, optimizer step ...
    source.commit(candidates)                                       # the only place state changes

``candidates`` decides every column of the logits and, for losses that need geometry, the lag and
the image dissimilarity of exactly that column, from the column's own GPS and frozen feature.
Nothing a step computes can then describe an entry that ``commit`` has since overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geovario.losses import LossInputs


@dataclass
class Batch:
    """This process's rows of one global batch, as a data adapter hands them to the step."""

    features: torch.Tensor  # (b, D) what the image head is fed: a stored (augmented) view, or an augmented image's features
    reference: torch.Tensor  # (b, D) the plain centre-crop features (view 0), which the frozen dissimilarity compares
    gps: torch.Tensor  # (b, 2) true (lat, lon) degrees, without noise
    index: np.ndarray  # sample indices of the whole global batch
    rows: slice  # this process's rows of it
    second: torch.Tensor | None = None  # (b, D) another view of each row, for the ssl loss


@dataclass(kw_only=True)
class Candidates:
    """One step's candidate locations for the query rows, and the geometry of every column.

    ``column_gps`` holds the true GPS of every column: (C, 2) when all query rows share the
    columns, (q, C, 2) when each row has its own. ``locations`` is what this process runs through
    the location encoder (noisy GPS, in the order ``loss_inputs`` expects).
    """

    locations: torch.Tensor
    query_gps: torch.Tensor  # (q, 2) true GPS of the query rows
    column_gps: torch.Tensor
    targets: torch.Tensor  # (q,) column of each row's true location
    lags_km: torch.Tensor | None = None  # (q, C) great-circle km from each query to each column
    dissimilarity: torch.Tensor | None = None  # (q, C) 1 - cos of the two images' features
    queue_full: bool = True
    excluded: torch.Tensor | None = None  # (q, C) columns left out of a row: the row's own sample, queued earlier

    def loss_inputs(self, image: torch.Tensor, location_embeddings: torch.Tensor, scale: torch.Tensor) -> LossInputs:
        """The logits of this process's image embeddings against the encoded ``locations``."""
        raise NotImplementedError

    def _inputs(self, logits: torch.Tensor, scale: torch.Tensor) -> LossInputs:
        return LossInputs(logits, self.targets, scale, lags_km=self.lags_km, dissimilarity=self.dissimilarity,
                          queue_full=self.queue_full, excluded=self.excluded)


class NegativeSource:
    """Base class of the queue and the gallery sources (see the module docstring)."""

    def candidates(self, batch: Batch, generator: torch.Generator, rng: np.random.Generator, embed=None) -> Candidates:
        """This step's candidates; ``embed`` maps features to learned embeddings for learned-space geometry."""
        raise NotImplementedError

    def commit(self, candidates: Candidates) -> None:
        """Update the source's state once the step that used ``candidates`` is done."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def complete_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's state with what older versions did not save filled in."""
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)[:3]}")

    def to(self, device) -> "NegativeSource":
        return self
