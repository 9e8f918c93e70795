"""Negative sources: where each training step's candidate locations come from.

Two sources keep one contract (``negatives.base``): GeoCLIP's batch + GPS queue + aligned feature
queue (``QueueNegatives``), and per-sample gallery neighbours (``GalleryNegatives``). Both compute
their columns' lags and dissimilarities with ``pair_geometry``.
"""

from geovario.negatives.base import Batch, Candidates, NegativeSource
from geovario.negatives.gallery import SELECTIONS, GalleryCandidates, GalleryNegatives, GalleryNeighbours
from geovario.negatives.geometry import pair_geometry
from geovario.negatives.queue import NegativeQueue, QueueCandidates, QueueNegatives

__all__ = ["SELECTIONS", "Batch", "Candidates", "GalleryCandidates", "GalleryNegatives", "GalleryNeighbours", "NegativeQueue",
           "NegativeSource", "QueueCandidates", "QueueNegatives", "pair_geometry"]
