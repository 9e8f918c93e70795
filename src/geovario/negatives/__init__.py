"""Negative sources: where each training step's candidate locations come from.

Three sources keep one contract (``negatives.base``): GeoCLIP's batch + GPS queue + aligned feature
queue (``QueueNegatives``), per-sample gallery neighbours (``GalleryNegatives``), and
the thesis's shared negatives from the batch's gallery neighbourhoods (``NeighbourhoodNegatives``). All
three compute their columns' lags and dissimilarities with ``pair_geometry``.
"""

from geovario.negatives.base import Batch, Candidates, NegativeSource
from geovario.negatives.gallery import SELECTIONS, GalleryCandidates, GalleryNegatives, GalleryNeighbours
from geovario.negatives.geometry import pair_geometry
from geovario.negatives.neighbourhood import NeighbourhoodNegatives
from geovario.negatives.queue import NegativeQueue, QueueCandidates, QueueNegatives

__all__ = ["SELECTIONS", "Batch", "Candidates", "GalleryCandidates", "GalleryNegatives", "GalleryNeighbours", "NegativeQueue",
           "NegativeSource", "NeighbourhoodNegatives", "QueueCandidates", "QueueNegatives", "pair_geometry"]
