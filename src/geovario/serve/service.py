"""What the web page asks of a model: geolocate one uploaded photo, with place names and its EXIF truth.

Everything slow is loaded once, when the service is built: the model, its gallery embeddings (from
the cache), the CLIP backbone and the GeoNames table. Uploads are decoded from memory; nothing is
written to disk here.
"""

from __future__ import annotations

import io
import math
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from geovario.data.exif_folder import read_exif_gps
from geovario.errors import GeovarioError
from geovario.geo import coordinate_problems, haversine_km
from geovario.image_batches import encode_decoded
from geovario.images import ImageError, open_image
from geovario.places import names_people_use
from geovario.predict import Predictor

# What a browser or camera hands over; PIL identifies each by its magic bytes, not by the name.
ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP", "TIFF": "TIFF"}


class UploadError(Exception):
    """An upload the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


MAX_TOP_K = 100  # places one request may ask for


@dataclass
class ServeSettings:
    top_k: int = 5
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # decompression-bomb guard: about 8K x 6K, more than any camera photo needs
    tiles: str | None = None  # a tile URL template, or None: the bundled outline only, and nothing leaves the machine


class GeoService:
    def __init__(self, model_dir: str, backbone: str | None = None, device: str | None = None, settings: ServeSettings | None = None):
        self.settings = settings or ServeSettings()
        self.predictor = Predictor(model_dir, device=device, progress=False)
        limit = min(MAX_TOP_K, len(self.predictor.gallery))
        if not 1 <= self.settings.top_k <= limit:  # before the slow backbone load
            raise ValueError(f"top_k must be between 1 and {limit} (a request's cap, or the gallery size), got {self.settings.top_k}")
        self.backbone = self.predictor.backbone(backbone)  # a backbone of the wrong width is refused here...
        self.predictor.gallery_embeddings  # ...before a cold gallery is encoded (minutes for GeoCLIP's 100K)
        names_people_use([[0.0, 0.0]])  # load the GeoNames table now, not on the first request
        self._lock = threading.Lock()  # one forward pass at a time; torch uses every core for each

    def info(self) -> dict:
        return {"model": str(self.predictor.model_dir), "backbone": self.backbone.name, "gallery_size": len(self.predictor.gallery),
                "device": str(self.predictor.device), "top_k": self.settings.top_k,
                "max_upload_bytes": self.settings.max_upload_bytes, "max_pixels": self.settings.max_pixels,
                "tiles": self.settings.tiles}

    def decode(self, data: bytes, filename: str, content_type: str | None) -> tuple[Image.Image, str]:
        """The upload as an upright RGB image and its format, or an :class:`UploadError`."""
        if not data:
            raise UploadError(400, f"{filename}: the upload is empty (0 bytes)")
        if content_type and not content_type.startswith("image/") and content_type != "application/octet-stream":
            raise UploadError(415, f"{filename}: not an image (sent as {content_type}); upload a JPEG, PNG or WebP photo")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # open_image below decides
                with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                    format = probe.format
        except Image.DecompressionBombError as e:  # PIL refuses twice its MAX_IMAGE_PIXELS even to open
            raise UploadError(413, f"{filename}: refused, too many pixels ({e})") from None
        except Exception:  # PIL raises many kinds for non-images; each means the same here
            raise UploadError(415, f"{filename}: not an image file; upload a JPEG, PNG or WebP photo") from None
        if format not in ACCEPTED_FORMATS:
            raise UploadError(415, f"{filename}: {format} images are not accepted; upload a JPEG, PNG or WebP photo")
        try:
            image, _ = open_image(io.BytesIO(data), name=filename, max_pixels=self.settings.max_pixels)
        except ImageError as e:
            raise UploadError({"too_large": 413, "not_image": 415}.get(e.kind, 422), str(e)) from None
        return image, ACCEPTED_FORMATS[format]

    def predict(self, data: bytes, filename: str = "upload", content_type: str | None = None, top_k: int | None = None,
                heat: bool = False) -> dict:
        """The JSON answer for one upload: top-k places with probabilities, and the EXIF truth when present; with
        ``heat``, the probability over the gallery for the map's shading (:func:`geovario.maps.heat_points`)."""
        top_k = self.settings.top_k if top_k is None else top_k
        if not 1 <= top_k <= min(MAX_TOP_K, len(self.predictor.gallery)):
            raise UploadError(422, f"top_k must be between 1 and {min(MAX_TOP_K, len(self.predictor.gallery))}, got {top_k}")
        start = time.perf_counter()
        image, format = self.decode(data, filename, content_type)
        with self._lock, torch.inference_mode():
            features = encode_decoded([image], self.backbone)
            predictions = self.predictor.predict_features(features, top_k=top_k)[0]
            prob = self.predictor.probabilities(self.predictor.encode_queries(features))[0] if heat else None
        places = names_people_use([[p.lat, p.lon] for p in predictions])
        answer = {
            "filename": filename,
            "image": {"width": image.width, "height": image.height, "format": format},
            "predictions": [{"rank": i + 1, **p.to_dict(), "place": place.to_dict(), "label": str(place)}
                            for i, (p, place) in enumerate(zip(predictions, places))],
            "exif": None,
        }
        if heat:
            from geovario.maps import DECADES, heat_points

            answer["heat"] = {"points": heat_points(self.predictor.gallery, prob), "decades": DECADES}
        truth = exif_location(data)
        if truth is not None:
            best = predictions[0]
            answer["exif"] = {"lat": truth[0], "lon": truth[1],
                              "error_km": float(haversine_km(truth[0], truth[1], best.lat, best.lon))}
        answer["elapsed_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return answer


    def predict_text(self, text: str, top_k: int | None = None) -> dict:
        """The JSON answer for a text query; the text tower loads on the first one."""
        from geovario.backbones import check_texts

        top_k = self.settings.top_k if top_k is None else top_k
        if not 1 <= top_k <= min(MAX_TOP_K, len(self.predictor.gallery)):
            raise UploadError(422, f"top_k must be between 1 and {min(MAX_TOP_K, len(self.predictor.gallery))}, got {top_k}")
        try:
            check_texts([text])
        except GeovarioError as e:
            raise UploadError(422, str(e)) from None
        start = time.perf_counter()
        try:
            with self._lock, torch.inference_mode():
                predictions = self.predictor.predict_texts([text], top_k=top_k, backbone=self.backbone.name)[0]
        except GeovarioError as e:  # e.g. a backbone without a text tower
            raise UploadError(422, str(e)) from None
        places = names_people_use([[p.lat, p.lon] for p in predictions])
        return {
            "text": text,
            "predictions": [{"rank": i + 1, **p.to_dict(), "place": place.to_dict(), "label": str(place)}
                            for i, (p, place) in enumerate(zip(predictions, places))],
            "exif": None,
            "elapsed_ms": round(1000 * (time.perf_counter() - start), 1),
        }


def exif_location(data: bytes) -> tuple[float, float] | None:
    """The photo's EXIF GPS position when it has a valid one."""
    try:
        found = read_exif_gps(io.BytesIO(data))
    except Exception:  # a photo with broken EXIF is still a photo; it just has no truth to show
        return None
    if found is None or not all(math.isfinite(v) for v in found) or coordinate_problems(np.array([found[0]]), np.array([found[1]])):
        return None
    return found
