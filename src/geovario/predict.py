"""Geolocate images or backbone features with a model directory and its cached gallery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geovario.backbones import ClipBackbone, ClipTextTower, resolve_device
from geovario.errors import GeovarioError
from geovario.modeldir import load_model_dir, read_gallery
from geovario.retrieval import cached_gallery_embeddings, topk_softmax


@dataclass
class Prediction:
    lat: float
    lon: float
    prob: float
    gallery_index: int

    def to_dict(self) -> dict:
        return {"lat": self.lat, "lon": self.lon, "prob": self.prob}


class Predictor:
    """Loads a model once, then answers many queries against the cached gallery embeddings."""

    def __init__(
        self,
        model_dir: str | Path,
        gallery: str | Path | np.ndarray | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
    ):
        self.device = resolve_device(device)
        loaded = load_model_dir(model_dir, self.device)
        self.model = loaded.model
        self.model_dir = loaded.path
        self.backbone_name = loaded.backbone
        if isinstance(gallery, np.ndarray):  # (N, 2) lat/lon, e.g. a feature store's positions
            self.gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        else:
            gallery_path = Path(gallery) if gallery else loaded.gallery_path
            if gallery_path is None:
                raise GeovarioError(f"{model_dir}: the model has no gallery; pass --gallery CSV")
            self.gallery = read_gallery(gallery_path)
        self.gallery_embeddings = cached_gallery_embeddings(
            self.model, self.gallery, loaded.weights_sha256, self.model_dir, progress=progress
        )
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        self._backbone: ClipBackbone | None = None
        self._text_tower: ClipTextTower | None = None

    @property
    def feature_dim(self) -> int:
        return self.model.config.feature_dim

    def backbone(self, name_or_dir: str | None = None) -> ClipBackbone:
        """The image backbone, loaded on first use (``name_or_dir`` defaults to the model's)."""
        if self._backbone is None:
            backbone = ClipBackbone.load(name_or_dir or self.backbone_name, self.device)
            if backbone.feature_dim != self.feature_dim:
                raise GeovarioError(
                    f"backbone {backbone.name!r} gives {backbone.feature_dim}-d features but the model "
                    f"expects {self.feature_dim}-d"
                )
            self._backbone = backbone
        return self._backbone

    def text_tower(self, name_or_dir: str | None = None) -> ClipTextTower:
        """CLIP's text tower of the backbone, loaded on the first text query."""
        if self._text_tower is None:
            tower = ClipTextTower.load(name_or_dir or self.backbone_name, self.device)
            if tower.feature_dim != self.feature_dim:
                raise GeovarioError(f"backbone {tower.name!r} gives {tower.feature_dim}-d text embeddings but the model "
                                    f"expects {self.feature_dim}-d")
            self._text_tower = tower
        return self._text_tower

    def predict_texts(self, texts: list[str], top_k: int = 5, backbone: str | None = None) -> list[list[Prediction]]:
        """Geolocate text queries: CLIP's text embedding through the image head, as GeoCLIP's paper does."""
        return self.predict_features(self.text_tower(backbone).encode_texts(texts), top_k)

    def check_features(self, features: np.ndarray, source: str = "features") -> np.ndarray:
        """Validate an (N, feature_dim) array: shape, emptiness and finiteness."""
        return check_feature_array(features, source, self.feature_dim)

    @torch.inference_mode()
    def predict_features(self, features: np.ndarray | torch.Tensor, top_k: int = 5, batch_size: int = 1024) -> list[list[Prediction]]:
        """Top-k gallery locations for each feature row, best first."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        features = self.check_features(features)
        if not 1 <= top_k <= len(self.gallery):
            raise GeovarioError(f"--top-k must be between 1 and the gallery size {len(self.gallery)}, got {top_k}")
        results: list[list[Prediction]] = []
        for start in range(0, len(features), batch_size):
            batch = torch.from_numpy(features[start : start + batch_size]).to(self.device)
            queries = self.model.encode_images(batch).float()
            index, prob, _ = topk_softmax(queries, self.gallery_embeddings, self.logit_scale, top_k)
            for row_index, row_prob in zip(index.cpu().numpy(), prob.cpu().numpy()):
                results.append([
                    Prediction(float(self.gallery[i, 0]), float(self.gallery[i, 1]), float(p), int(i))
                    for i, p in zip(row_index, row_prob)
                ])
        return results


def check_feature_array(features: np.ndarray, source: str = "features", expected_dim: int | None = None) -> np.ndarray:
    """An (N, D) float32 array of finite numbers, or a one-line error naming ``source`` and the problem."""
    features = np.asarray(features)
    if features.ndim == 1:
        features = features[None, :]
    width = expected_dim if expected_dim is not None else "D"
    if features.ndim != 2:
        raise GeovarioError(f"{source}: expected an (N, {width}) array, got shape {features.shape}")
    if features.shape[0] == 0:
        raise GeovarioError(f"{source}: no feature rows")
    if expected_dim is not None and features.shape[1] != expected_dim:
        raise GeovarioError(
            f"{source}: features are {features.shape[1]}-d but the model expects {expected_dim}-d (shape {features.shape})"
        )
    if not np.issubdtype(features.dtype, np.number):
        raise GeovarioError(f"{source}: features must be numeric, got dtype {features.dtype}")
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad):
        raise GeovarioError(f"{source}: row {bad[0]} contains NaN or inf ({len(bad)} bad rows)")
    return features.astype(np.float32, copy=False)

