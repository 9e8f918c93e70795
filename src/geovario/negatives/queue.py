"""GeoCLIP's negatives: the rest of the batch, plus a queue of earlier batches' GPS.

Every image is contrasted with every location of the global batch and every queued location
(GeoCLIP 1.3.0: a 4096-entry GPS queue that wraps around). Beside the GPS queue runs a queue of
the same samples' frozen features, row-aligned, so that the semivariogram loss knows the image
dissimilarity of every queued negative.

Columns are [the global batch, then the queue in storage order]. Under torchrun each process
encodes its rows of the batch and its share of the queue; the embeddings are all-gathered with
gradient, so every process holds the columns one process would.

The queue also keeps each entry's sample id. From the second epoch on (at once, on a dataset smaller
than the queue) a sample can meet its own earlier entry in the queue, which would stand as a negative
of itself at lag 0; GeoCLIP 1.3.0 lets it. Here such columns are excluded from that sample's row
(``LossInputs.excluded``); the queue keeps its size, and other rows still use the entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geovario.distributed import Dist
from geovario.geo_tensors import add_gps_noise
from geovario.negatives.base import Batch, Candidates, NegativeSource
from geovario.negatives.geometry import pair_geometry


class NegativeQueue(nn.Module):
    """A ring buffer of past batch GPS with their frozen image features kept row-aligned.

    ``count`` tracks how much is filled, so an unfilled queue never contributes placeholder entries.
    """

    def __init__(self, size: int, feature_dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("gps", torch.zeros(size, 2))
        self.register_buffer("features", torch.zeros(size, feature_dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))  # each entry's sample id; -1: unknown
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, gps: torch.Tensor, features: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> None:
        """Append a batch, overwriting the oldest entries; a batch larger than the queue keeps its tail."""
        if self.size == 0:
            return
        n = gps.shape[0]
        for name, rows in (("feature", features), ("id", ids)):
            if rows is not None and rows.shape[0] != n:
                raise ValueError(f"enqueue: {n} GPS rows but {rows.shape[0]} {name} rows")
        if n >= self.size:
            gps, features, ids = (None if x is None else x[-self.size :] for x in (gps, features, ids))
            start, n = 0, self.size
        else:
            start = int(self.ptr)
        positions = (start + torch.arange(n, device=self.gps.device)) % self.size
        self.gps[positions] = gps.to(self.gps)
        if features is not None:
            self.features[positions] = features.to(self.features)
        self.ids[positions] = -1 if ids is None else ids.to(self.ids)
        self.ptr.fill_((start + n) % self.size)
        self.count.fill_(min(self.size, int(self.count) + n))

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the (gps, features) rows written so far, in storage order; the next enqueue overwrites them."""
        n = int(self.count)
        return self.gps[:n], self.features[:n]

    def filled_ids(self) -> torch.Tensor:
        """The sample ids of the rows :meth:`filled` returns."""
        return self.ids[: int(self.count)]

    @property
    def full(self) -> bool:
        return int(self.count) >= self.size


@dataclass(kw_only=True)
class QueueCandidates(Candidates):
    """Columns shared by every query: [global batch (B), queue (Q)]."""

    world: Dist
    batch_rows: int  # this process's rows of the batch
    share: int  # this process's padded share of the queue
    queue_len: int
    local_loss: bool
    new_gps: torch.Tensor  # what commit enqueues: the gathered batch's true GPS...
    new_features: torch.Tensor  # ...and its plain features...
    new_ids: torch.Tensor  # ...and its sample ids
    column_locations: torch.Tensor  # (B + Q, 2) the noisy GPS of every column, as encoded

    def loss_inputs(self, image, location_embeddings, scale):
        world, b = self.world, self.batch_rows
        gathered = world.gather_with_grad(location_embeddings).reshape(world.world_size, b + self.share, -1)
        columns = torch.cat([gathered[:, :b].flatten(0, 1), gathered[:, b:].flatten(0, 1)[: self.queue_len]])
        query = image if self.local_loss else world.gather_with_grad(image)
        return self._inputs(scale * query @ columns.T, scale)


def own_entries(query_ids: torch.Tensor, column_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(q, C) True where column j holds the same sample as query row i but is not its positive."""
    same = query_ids[:, None] == column_ids[None, :]
    same[torch.arange(len(query_ids), device=same.device), targets] = False
    return same & (query_ids[:, None] >= 0)


class QueueNegatives(NegativeSource):
    """The batch + GPS queue + aligned feature queue, with GeoCLIP's GPS noise on both."""

    def __init__(self, size: int, feature_dim: int, batch_noise_m: float = 150.0, queue_noise_m: float = 1000.0,
                 world: Dist | None = None, local_loss: bool = False, geometry: bool = False):
        self.queue = NegativeQueue(size, feature_dim)
        self.batch_noise_m, self.queue_noise_m = batch_noise_m, queue_noise_m
        self.world, self.local_loss, self.geometry = world or Dist(), local_loss, geometry

    def candidates(self, batch: Batch, generator, rng=None, embed=None) -> QueueCandidates:
        world = self.world
        all_gps, all_features = world.gather(batch.gps), world.gather(batch.reference)
        all_ids = torch.as_tensor(batch.index, dtype=torch.long, device=batch.gps.device)  # the global batch's sample ids
        # Noise is drawn for the whole gathered batch, then the queue, in the order one process draws it.
        noisy = add_gps_noise(all_gps, self.batch_noise_m, generator)
        queue_gps, queue_features = self.queue.filled()
        queue_noisy = add_gps_noise(queue_gps, self.queue_noise_m, generator)
        # This process encodes its rows of the batch and its share of the queue, padded to equal shares
        # for the all-gather.
        own = world.share(len(queue_noisy))
        share, mine = own.stop - own.start, queue_noisy[own]
        locations = torch.cat([noisy[batch.rows], F.pad(mine, (0, 0, 0, share - len(mine)))])
        if self.local_loss:  # open_clip's local loss: this process's rows against every column
            query_gps, query_features, query_ids = batch.gps, batch.reference, all_ids[batch.rows]
            targets = torch.arange(batch.rows.start, batch.rows.stop, device=batch.gps.device)
        else:
            query_gps, query_features, query_ids = all_gps, all_features, all_ids
            targets = torch.arange(len(all_gps), device=batch.gps.device)
        column_gps = torch.cat([all_gps, queue_gps])
        excluded = own_entries(query_ids, torch.cat([all_ids, self.queue.filled_ids()]), targets)
        lags = dissimilarity = None
        if self.geometry:
            lags, dissimilarity = pair_geometry(query_gps, column_gps, query_features, torch.cat([all_features, queue_features]), embed)
        return QueueCandidates(
            world=world, batch_rows=len(batch.gps), share=share, queue_len=len(queue_gps), local_loss=self.local_loss,
            new_gps=all_gps, new_features=all_features, new_ids=all_ids, column_locations=torch.cat([noisy, queue_noisy]),
            locations=locations, query_gps=query_gps, column_gps=column_gps, targets=targets, lags_km=lags,
            dissimilarity=dissimilarity, queue_full=self.queue.full, excluded=excluded if excluded.any() else None,
        )

    def commit(self, candidates: QueueCandidates) -> None:
        """As GeoCLIP: the step's own (gathered) batch joins the queue after the step has used it."""
        self.queue.enqueue(candidates.new_gps, candidates.new_features, candidates.new_ids)

    def state_dict(self):
        return {f"queue.{k}": v for k, v in self.queue.state_dict().items()}

    def load_state_dict(self, state):
        self.queue.load_state_dict({k.removeprefix("queue."): v for k, v in self.complete_state(state).items()})

    def complete_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint from before the queue kept sample ids: its entries' samples are unknown (-1), none excluded."""
        if "queue.gps" in state and "queue.ids" not in state:
            state = {**state, "queue.ids": torch.full((len(state["queue.gps"]),), -1, dtype=torch.long)}
        return state

    def to(self, device):
        self.queue.to(device)
        return self
