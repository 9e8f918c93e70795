"""The one-line API, as simple as GeoCLIP's ``GeoCLIP().predict("photo.jpg", top_k=5)``::

    import geovario
    g = geovario.load("models/geoclip")      # a model directory; or "geoclip": GeoCLIP's weights, fetched once
    g.predict("photo.jpg", top_k=5)          # one image (a path, a PIL image or an (H, W, 3) uint8 array)
    g.predict(["a.jpg", "b.jpg"])            # several: one list of places per image, in order
    g.predict_features(features)             # (N, D) CLIP features

Each place is a :class:`geovario.confidence.Prediction`: ``lat``, ``lon``, ``prob`` (the mass of the place),
``within_km`` and ``radius_km`` (its confidence), best first. An image that cannot be read raises a
:class:`GeovarioError` naming it; with ``errors="report"``, a list keeps going and that image's entry is the
reason (a string) instead of its places. Nothing is dropped silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geovario.confidence_defaults import LEVEL, POOL_KM
from geovario.errors import GeovarioError

GEOCLIP = "geoclip"


def models_dir() -> Path:
    """Where ``load("geoclip")`` keeps GeoCLIP's weights: ``$GEOVARIO_CACHE_DIR/models``, else ``~/.cache/geovario/models``."""
    from geovario.retrieval import CACHE_ENV

    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "geovario") / "models"


def load(model: str | os.PathLike = GEOCLIP, backbone: str | None = None, device: str | None = None, gallery=None,
         progress: bool = False) -> "Geolocator":
    """A geolocator for a model directory, or for ``"geoclip"``: GeoCLIP 1.3.0's weights and gallery, converted once
    into ``models_dir()`` the way ``geovario weights geoclip`` does (an installed ``geoclip`` package, else PyPI),
    every file checked against the release's sha256. ``backbone``: a CLIP checkpoint (hub id or local folder) for
    images, default the model's own; ``gallery``: a LAT/LON CSV or (N, 2) array instead of the model's."""
    from geovario.predict import Predictor

    path = Path(model)
    if str(model) == GEOCLIP and not path.is_dir():
        path = models_dir() / "geoclip-1.3.0"
        if not (path / "config.json").is_file():
            from geovario.interop.geoclip import find_release, write_geoclip_model_dir

            write_geoclip_model_dir(path, find_release())
    return Geolocator(Predictor(path, gallery=gallery, device=device, progress=progress), backbone)


class Geolocator:
    """A loaded model that geolocates images and features (see the module)."""

    def __init__(self, predictor, backbone: str | None = None):
        self.predictor, self.backbone_name = predictor, backbone

    def predict(self, images, top_k: int = 5, pool_km: float | None = POOL_KM, level: float = LEVEL, errors: str = "raise",
                tta: str = "none"):
        """One image: its ``top_k`` places, best first. A list (or tuple) of images: one such list per image, in order.
        ``errors="raise"`` (default) raises for the first image that cannot be read, naming it; ``"report"`` puts the
        reason (a string) in its place and predicts the others. ``tta="ten-crop"``: the mean logits of ten crops."""
        if errors not in ("raise", "report"):
            raise ValueError(f'errors must be "raise" or "report", got {errors!r}')
        one = not isinstance(images, (list, tuple))
        items = [images] if one else list(images)
        results: list = [None] * len(items)
        paths = [i for i, item in enumerate(items) if isinstance(item, (str, os.PathLike))]
        if paths:
            found = self.predictor.predict_images([items[i] for i in paths], top_k, self.backbone_name, pool_km=pool_km, level=level,
                                                  tta=tta)
            for i, result in zip(paths, found):
                results[i] = result
        decoded = {}
        for i, item in enumerate(items):
            if results[i] is None:
                try:
                    decoded[i] = _as_rgb(item, f"images[{i}]" if not one else "the image")
                except GeovarioError as e:
                    results[i] = str(e)
        if decoded:
            from geovario.image_batches import encode_decoded

            features = encode_decoded(list(decoded.values()), self.predictor.backbone(self.backbone_name), tta)
            for i, places in zip(decoded, self.predictor.predict_features(features, top_k, pool_km, level)):
                results[i] = places
        if errors == "raise":
            for result in results:
                if isinstance(result, str):
                    raise GeovarioError(result)
        return results[0] if one else results

    def predict_features(self, features, top_k: int = 5, pool_km: float | None = POOL_KM, level: float = LEVEL):
        """(N, D) backbone features: one list of places per row."""
        return self.predictor.predict_features(features, top_k, pool_km, level)

    def predict_text(self, texts, top_k: int = 5, pool_km: float | None = POOL_KM, level: float = LEVEL):
        """One text query (or a list): its places, through CLIP's text tower and the image head."""
        one = isinstance(texts, str)
        found = self.predictor.predict_texts([texts] if one else list(texts), top_k, self.backbone_name, pool_km, level)
        return found[0] if one else found


def _as_rgb(item, name: str):
    """A PIL image (turned upright by its EXIF orientation, as files are) or an (H, W, 3) / (H, W) uint8 array, as
    an RGB PIL image."""
    from PIL import Image, ImageOps

    if isinstance(item, Image.Image):
        return ImageOps.exif_transpose(item).convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))) or min(item.shape[:2]) < 1:
            raise GeovarioError(f"{name}: an image array must be (H, W), (H, W, 3) or (H, W, 4) uint8, got {item.shape} {item.dtype}")
        return Image.fromarray(item).convert("RGB")
    raise GeovarioError(f"{name}: expected a path, a PIL image or a uint8 array, got {type(item).__name__}")
