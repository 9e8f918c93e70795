"""Geolocate images or backbone features with a model directory and its cached gallery."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from geovario.backbones import ClipBackbone, ClipTextTower, resolve_device
from geovario.calibration import platt_within, read_calibration
from geovario.confidence import LEVEL, POOL_KM, GalleryPlaces, Prediction
from geovario.data.feature_arrays import check_feature_array
from geovario.errors import GeovarioError, GeovarioWarning, ParameterError
from geovario.gps_embeddings import embed_locations
from geovario.modeldir import load_model_dir, read_gallery
from geovario.retrieval import cached_gallery_embeddings


# (queries x gallery) probabilities computed at a time: 4M floats, 16 MB, whatever the gallery's size.
PROBABILITY_BLOCK = 1 << 22


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
                raise GeovarioError(f"{model_dir}: the model has no gallery; give one (a LAT/LON CSV or an (N, 2) array)")
            self.gallery = read_gallery(gallery_path)
        self.weights_sha256, self._progress, self._gallery_embeddings = loaded.weights_sha256, progress, None
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        # The temperature and Platt coefficients `geovario calibrate` fitted for these weights and this gallery (1 and
        # None without them).
        self.temperature, self.platt, uncalibrated = read_calibration(self.model_dir, self.weights_sha256, self.gallery)
        if uncalibrated:
            warnings.warn(uncalibrated, GeovarioWarning, stacklevel=2)
        self._backbone: ClipBackbone | None = None
        self._text_tower: ClipTextTower | None = None
        self._places: GalleryPlaces | None = None

    @classmethod
    def from_model(cls, model, gallery: np.ndarray, device: str | torch.device) -> Predictor:
        """A predictor for a model in memory (validation during training): its gallery encoded now, not cached."""
        self = cls.__new__(cls)
        self.device, self.model, self.model_dir, self.backbone_name, self.weights_sha256 = torch.device(device), model, None, None, None
        self.gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        self._gallery_embeddings = embed_locations(model, self.gallery, batch_size=8192, normalize=True, device=self.device)
        self.logit_scale, self.temperature, self.platt = float(model.logit_scale.detach().exp()), 1.0, None
        self._backbone, self._text_tower, self._places = None, None, None
        return self

    @property
    def gallery_embeddings(self) -> np.ndarray:
        """(N, embed_dim) unit embeddings of the gallery, from the cache (computed there on first use).

        Loaded on first use, so that whatever can be refused cheaply (a backbone of the wrong width, a
        bad --top-k) is refused before a cold gallery takes minutes to encode.
        """
        if self._gallery_embeddings is None:
            self._gallery_embeddings = cached_gallery_embeddings(self.model, self.gallery, self.weights_sha256, self.model_dir,
                                                                 progress=self._progress)
        return self._gallery_embeddings

    @property
    def feature_dim(self) -> int:
        return self.model.config.feature_dim

    @torch.inference_mode()
    def encode_queries(self, features: np.ndarray, first_row: int = 0) -> torch.Tensor:
        """Unit image embeddings of a block of feature rows; a row the image head cannot encode (features so large
        that float32 overflows to infinity or NaN, or that the norm overflows and the embedding comes out zero) is
        a one-line error naming it, never a silent answer."""
        queries = self.model.encode_images(torch.tensor(features, device=self.device)).float()  # a copy: stores are read-only
        finite = torch.isfinite(queries).all(dim=1) & ((queries.norm(dim=1) - 1).abs() < 1e-3)
        if not bool(finite.all()):
            row = int(torch.argmin(finite.int()))
            largest = float(np.max(np.abs(np.asarray(features[row], dtype=np.float64))))
            raise GeovarioError(f"features row {first_row + row}: the image head's output is not finite (the row's largest "
                                f"value is {largest:.3g}; values this large overflow float32)")
        return queries

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

    def predict_texts(self, texts: list[str], top_k: int = 5, backbone: str | None = None, pool_km: float | None = POOL_KM,
                      level: float = LEVEL) -> list[list[Prediction]]:
        """Geolocate text queries: CLIP's text embedding through the image head, as GeoCLIP's paper does."""
        from geovario.backbones import check_texts

        check_texts(texts)
        return self.predict_features(self.text_tower(backbone).encode_texts(texts), top_k, pool_km, level)

    def predict_images(self, images, top_k: int = 5, backbone: str | None = None, batch_size: int = 32, workers: int = 0,
                       pool_km: float | None = POOL_KM, level: float = LEVEL,
                       tta: str = "none") -> list[list[Prediction] | str] | list[Prediction]:
        """Geolocate images: one (a path) or a list (paths or archive members).

        For one image, its top-k predictions, best first; a :class:`GeovarioError` if it cannot be read.
        For a list, one entry per image in order: its top-k predictions, or (a string) why it could not
        be read, so one bad file does not lose the others.

        Images stream through :mod:`geovario.image_batches` (the pipeline ``extract`` uses). With
        ``workers=0`` the backbone loads only once a readable image exists; worker processes need its
        preprocessing up front. ``tta="ten-crop"`` averages the logits of each image's ten crops
        (:meth:`geovario.backbones.Preprocess.ten_crop`), ten times the backbone's work.
        """
        if isinstance(images, (str, os.PathLike)):
            result = self.predict_images([images], top_k, backbone, batch_size, workers, pool_km, level, tta)[0]
            if isinstance(result, str):
                raise GeovarioError(result)
            return result
        self._check_top_k(top_k)
        results: list[list[Prediction] | str] = [""] * len(images)
        for failed, kept, features in self._image_batches(images, backbone, batch_size, workers, tta):
            for position, why in failed:
                results[position] = why
            if kept:
                for position, predictions in zip(kept, self.predict_features(features, top_k, pool_km, level)):
                    results[position] = predictions
        return results

    def encode_images(self, images, backbone: str | None = None, batch_size: int = 32, workers: int = 0,
                      tta: str = "none") -> list[np.ndarray | str]:
        """Each image's backbone features in order ((D,), or (V, D) with test-time augmentation), or (a string) why it
        could not be read; all in memory (the heatmap's path; ``predict_images`` streams instead)."""
        found: list[np.ndarray | str] = [""] * len(images)
        for failed, kept, features in self._image_batches(images, backbone, batch_size, workers, tta):
            for position, why in failed:
                found[position] = why
            for position, row in zip(kept, features):
                found[position] = row
        return found

    def _image_batches(self, images, backbone: str | None, batch_size: int, workers: int, tta: str):
        """(failed (position, why) pairs, kept positions, their features) per batch of the image pipeline."""
        from geovario.image_batches import image_features

        source = _LazyBackbone(self, backbone) if workers == 0 else self.backbone(backbone)
        for batch, features in image_features(images, source, batch_size, workers, tta):
            yield batch["failed"], batch["kept"], features

    def _check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= len(self.gallery):
            raise ParameterError("top_k", f"must be between 1 and the gallery size {len(self.gallery)}, got {top_k}")

    def check_features(self, features: np.ndarray, source: str = "features") -> np.ndarray:
        """Validate an (N, feature_dim) array: shape, emptiness and finiteness."""
        return check_feature_array(features, source, self.feature_dim).astype(np.float32, copy=False)

    @property
    def places(self) -> GalleryPlaces:
        """The gallery's geometry for pooling probability into distinct places (built on first use)."""
        if self._places is None:
            self._places = GalleryPlaces(self.gallery)
        return self._places

    @torch.inference_mode()
    def logits(self, queries: torch.Tensor) -> np.ndarray:
        """(B, N) float64 logit_scale * cos against the whole gallery, for (B, D) unit query embeddings (before the
        temperature); B x N should stay near PROBABILITY_BLOCK."""
        gallery = self.gallery_embeddings
        cosines = torch.empty((len(queries), len(gallery)), dtype=torch.float32, device=queries.device)
        rows = max(1, PROBABILITY_BLOCK // max(1, len(queries)))
        for start in range(0, len(gallery), rows):
            block = torch.from_numpy(np.ascontiguousarray(gallery[start : start + rows])).to(queries.device, queries.dtype)
            cosines[:, start : start + len(block)] = queries @ block.T
        return (cosines.double() * self.logit_scale).cpu().numpy()

    def probabilities(self, queries: torch.Tensor, views: int = 1) -> np.ndarray:
        """(B, N) float64 softmax over the whole gallery of the logits divided by the temperature; with ``views`` > 1,
        ``queries`` holds B x views rows, each photo's views in a row, and a photo's logits are its views' mean (as
        GeoCLIP's authors average ten crops)."""
        logits = self.logits(queries)
        if views > 1:
            logits = logits.reshape(-1, views, logits.shape[1]).mean(axis=1)
        return torch.softmax(torch.from_numpy(logits) / self.temperature, dim=1).numpy()

    @torch.inference_mode()
    def predict_features(self, features: np.ndarray | torch.Tensor, top_k: int = 5, pool_km: float | None = POOL_KM,
                         level: float = LEVEL, batch_size: int = 1024) -> list[list[Prediction]]:
        """For each feature row, its ``top_k`` distinct places, most probable first, each with its confidence
        (see :mod:`geovario.confidence`; its within-t probabilities Platt-scaled where ``geovario calibrate`` fitted
        that, :mod:`geovario.calibration`); fewer where the whole gallery pools into fewer places. ``pool_km=None``
        pools nothing: the top-k gallery points, as GeoCLIP's ``predict`` gives them. (N, V, D) features are V views
        of each photo (test-time augmentation): one prediction per photo, from its views' mean logits."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        views = features.shape[1] if getattr(features, "ndim", 0) == 3 else 1
        if views == 0:
            raise GeovarioError(f"features: no views (shape {features.shape})")
        features = self.check_features(features.reshape(-1, features.shape[-1]) if getattr(features, "ndim", 0) == 3 else features)
        self._check_top_k(top_k)
        results: list[list[Prediction]] = []
        rows = views * max(1, PROBABILITY_BLOCK // (len(self.gallery) * views))  # whole photos, about PROBABILITY_BLOCK
        for start in range(0, len(features), batch_size * views):
            queries = self.encode_queries(features[start : start + batch_size * views], start)
            for first in range(0, len(queries), rows):
                for prob in self.probabilities(queries[first : first + rows], views):
                    places = self.places.places(prob, top_k, pool_km, level)
                    if self.platt is not None:
                        for place in places:
                            place.within_km = platt_within(place.within_km, self.platt)
                    results.append(places)
        return results


class _LazyBackbone:
    """The predictor's backbone as the image pipeline sees it, loaded on the first batch with a readable image."""

    def __init__(self, predictor: Predictor, name_or_dir: str | None):
        self.predictor, self.name_or_dir = predictor, name_or_dir
        self.device = predictor.device
        self.preprocess = _LazyPreprocess(self)

    def encode_pixels(self, pixels):
        return self.predictor.backbone(self.name_or_dir).encode_pixels(pixels)

    @property
    def feature_dim(self) -> int:
        return self.predictor.feature_dim


class _LazyPreprocess:
    """The backbone's preprocessing (one view, or ten crops), loading the backbone on first use."""

    def __init__(self, lazy: _LazyBackbone):
        self.lazy = lazy

    def __call__(self, image):
        return self.lazy.predictor.backbone(self.lazy.name_or_dir).preprocess(image)

    def ten_crop(self, image):
        return self.lazy.predictor.backbone(self.lazy.name_or_dir).preprocess.ten_crop(image)
