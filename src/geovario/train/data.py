"""Data adapters: what a training step reads, for this process's rows of each global batch.

``StoreData`` reads cached frozen features from a feature store (the default: the backbone is frozen,
so running it every step wastes ~99% of the compute). ``ImageData`` decodes, augments and runs the
backbone on every step. Both hand the step a ``Batch``: the features the image head is fed, the plain
centre-crop features the frozen dissimilarity compares, and the true GPS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geovario.config import Config
from geovario.data.store import FeatureStore
from geovario.errors import GeovarioError
from geovario.negatives import Batch


class StoreData:
    """Training samples from a feature store; one stored view per sample per step when there are views."""

    def __init__(self, store: FeatureStore, use_views: bool):
        self.store = store
        self.gps = torch.from_numpy(store.gps.astype(np.float32))
        self.views = store.n_views if use_views else 0
        self.dim = store.dim

    def __len__(self) -> int:
        return len(self.gps)

    def batch(self, index: np.ndarray, rows: slice, generator: torch.Generator, device) -> Batch:
        """``index[rows]``, this process's rows of the global batch ``index``."""
        own = index[rows]
        plain = torch.from_numpy(self.store.rows(own))
        features = plain
        if self.views:
            # View 0 is the plain centre crop, 1..K the augmented ones (GeoCLIP samples one per step),
            # drawn for the whole global batch so that every process count picks the same views.
            choice = torch.randint(0, self.views + 1, (len(index),), generator=generator)[rows]
            views = torch.from_numpy(self.store.view_rows(own))
            picked = views[torch.arange(len(own)), torch.clamp(choice - 1, min=0)]
            features = torch.where((choice == 0)[:, None], plain, picked)
        return Batch(features.to(device), plain.to(device), self.gps[own].to(device), index, rows)

    def fingerprint(self) -> str:
        return self.store.fingerprint()

    def gallery_features(self, rows: np.ndarray):
        """Plain features of the given store rows, for gallery negatives drawn from this store."""
        return lambda index: self.store.rows(rows[index])


class ImageData:
    """Image-level training: decode, augment and run the frozen backbone on every step.

    With ``reference=True`` (losses that need image dissimilarity) each image also goes through
    the backbone as its plain centre crop, which is what the fitted variogram describes.
    """

    def __init__(self, dataset, backbone, reference: bool = False):
        self.records, self.backbone, self.reference = dataset.records, backbone, reference
        self.source = dataset.source
        self.gps = torch.tensor([[r.lat, r.lon] for r in self.records], dtype=torch.float32)
        self.dim = backbone.feature_dim

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, index: np.ndarray, rows: slice, generator: torch.Generator, device) -> Batch:
        from geovario.augment import geoclip_train_view, view_rng
        from geovario.images import load_rgb

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        own = index[rows]
        images = [load_rgb(self.records[i].image) for i in own]
        pixels = [geoclip_train_view(image, view_rng(seed, int(i), 0), self.backbone.preprocess) for image, i in zip(images, own)]
        if self.reference:
            pixels += [self.backbone.preprocess(image) for image in images]
        encoded = self.backbone.encode_pixels(torch.from_numpy(np.stack(pixels))).clone()  # out of inference mode
        features = encoded[: len(own)]
        reference = encoded[len(own) :] if self.reference else features
        return Batch(features.float().to(device), reference.float().to(device), self.gps[own].to(device), index, rows)

    def fingerprint(self) -> str:
        """sha256 of the dataset file (of the names of a photo folder's usable photos)."""
        from geovario.hashing import sha256_bytes, sha256_file

        if Path(self.source).is_file():
            return sha256_file(self.source)
        return sha256_bytes("\n".join(f"{r.id},{r.lat!r},{r.lon!r}" for r in self.records).encode())

    def gallery_features(self, rows: np.ndarray):
        return None  # no stored features to draw gallery negatives' images from


def open_training_data(config: Config, device: torch.device, reference: bool = False):
    """The store (``data.train``) or the images (``data.images``) the config names."""
    if config.data.images:
        from geovario.backbones import ClipBackbone
        from geovario.data import read_dataset

        dataset = read_dataset(config.data.images, images=config.data.images_dir)
        return ImageData(dataset, ClipBackbone.load(config.data.backbone, device), reference)
    path = Path(config.data.train)
    if not path.is_dir():
        raise GeovarioError(f"config key data.train: feature store {path} not found")
    return StoreData(FeatureStore(path), config.data.use_views)


def training_positions(data, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(latlon, rows): up to ``data.gallery_max`` training positions and the sample rows they come from."""
    rows = np.arange(len(data))
    if len(rows) > config.data.gallery_max:
        rows = np.sort(np.random.default_rng(config.train.seed).choice(len(rows), config.data.gallery_max, replace=False))
    return data.gps.numpy().astype(np.float64)[rows], rows


def gallery_positions(spec: str | None, data, config: Config, key: str) -> np.ndarray:
    """A LAT,LON CSV, a store's positions, or (default) up to gallery_max training positions."""
    if not spec:
        return training_positions(data, config)[0]
    from geovario.evaluate import load_gallery

    try:
        return load_gallery(spec).astype(np.float64)
    except GeovarioError as e:
        raise GeovarioError(f"config key {key}: {e}") from None
