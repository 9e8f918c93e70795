"""Calibrated confidence: one temperature for a model's softmax over its gallery, fitted on a validation split.

A model's logit scale is learned for ranking, not for honest probabilities: its softmax over a large gallery
can be far too sure or not sure enough. Temperature scaling (Guo et al., ICML 2017, "On Calibration of Modern
Neural Networks") divides the logits by one number T fitted on held-out photos; the ranking, and so the
accuracy, does not change.

What T is fitted to: for each validation photo and each distance t of 25, 200, 750 and 2,500 km, the forecast
is the probability mass within t km of the most probable gallery point, and the outcome whether the photo lies
within t km of that point. T minimises the mean binary cross-entropy of forecasts against outcomes (a proper
scoring rule) over a log-spaced grid, refined once around its best point. The most probable gallery point does
not depend on T; predictions centre their confidence on the most probable *place* (pooled mass,
:mod:`geovario.confidence`), the same point in the common case, and the report below measures those.

``calibration.json`` in the model directory records T, the sha256 of the weights and of the gallery it was
fitted for, the validation store, and the calibration before and after: the expected calibration error (ECE,
10 equal-width bins) of each within-t forecast and how often the 90 % radius holds the photo (its coverage).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from geovario.confidence import LEVEL, WITHIN_KM
from geovario.errors import GeovarioError, GeovarioWarning
from geovario.geo import haversine_km
from geovario.jsonio import read_json, write_json

CALIBRATION_FILE = "calibration.json"
COARSE = np.exp(np.linspace(np.log(1 / 30), np.log(30), 49))  # neighbours 15 % apart
ECE_BINS = 10


def gallery_sha256(gallery: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(gallery, dtype=np.float32).tobytes()).hexdigest()


def expected_calibration_error(forecast: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width forecast bins of (share of photos in the bin) x |outcome rate - mean forecast|."""
    forecast, outcome = np.asarray(forecast, np.float64), np.asarray(outcome, np.float64)
    which = np.minimum((forecast * bins).astype(int), bins - 1)  # a forecast of 1.0 falls in the last bin
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(outcome[inside].mean() - forecast[inside].mean())
    return float(ece)


@torch.inference_mode()
def within_forecasts(predictor, features: np.ndarray, truth: np.ndarray, temperatures: np.ndarray,
                     within_km: tuple[int, ...] = WITHIN_KM) -> tuple[np.ndarray, np.ndarray]:
    """(len(temperatures), photos, len(within_km)) forecasts around each photo's most probable gallery point, at
    each temperature, and the (photos, len(within_km)) outcomes; one pass over the photos."""
    from geovario.predict import PROBABILITY_BLOCK

    gallery = predictor.gallery.astype(np.float64)
    forecasts = np.zeros((len(temperatures), len(features), len(within_km)))
    outcomes = np.zeros((len(features), len(within_km)), dtype=bool)
    rows = max(1, PROBABILITY_BLOCK // len(gallery))
    for start in range(0, len(features), rows):
        queries = predictor.encode_queries(features[start : start + rows], start)
        cosines = predictor.logits(queries)  # (B, N) logit_scale * cos, float64
        best = cosines.argmax(axis=1)
        distance = haversine_km(gallery[best, 0][:, None], gallery[best, 1][:, None], gallery[None, :, 0], gallery[None, :, 1])
        masks = [distance <= t for t in within_km]
        error = haversine_km(gallery[best, 0], gallery[best, 1], truth[start : start + rows, 0], truth[start : start + rows, 1])
        outcomes[start : start + rows] = np.stack([error <= t for t in within_km], 1)
        for k, temperature in enumerate(temperatures):
            scaled = cosines / temperature
            prob = np.exp(scaled - scaled.max(axis=1, keepdims=True))
            prob /= prob.sum(axis=1, keepdims=True)
            forecasts[k, start : start + rows] = np.stack([(prob * mask).sum(axis=1) for mask in masks], 1)
    return forecasts, outcomes


def _cross_entropy(forecasts: np.ndarray, outcomes: np.ndarray) -> np.ndarray:
    """Mean binary cross-entropy per temperature of (T, photos, thresholds) forecasts."""
    p = np.clip(forecasts, 1e-12, 1 - 1e-12)
    return -(outcomes * np.log(p) + (~outcomes) * np.log1p(-p)).mean(axis=(1, 2))


def fit_temperature(predictor, features: np.ndarray, truth: np.ndarray) -> float:
    """The temperature minimising the within-t forecasts' cross-entropy: a 49-point grid from 1/30 to 30, then 21
    points between the best one's neighbours."""
    forecasts, outcomes = within_forecasts(predictor, features, truth, COARSE)
    best = int(np.argmin(_cross_entropy(forecasts, outcomes)))
    fine = np.exp(np.linspace(np.log(COARSE[max(best - 1, 0)]), np.log(COARSE[min(best + 1, len(COARSE) - 1)]), 21))
    forecasts, _ = within_forecasts(predictor, features, truth, fine)
    return float(fine[int(np.argmin(_cross_entropy(forecasts, outcomes)))])


def calibration_report(predictor, features: np.ndarray, truth: np.ndarray, level: float = LEVEL) -> dict:
    """How calibrated the predictor's best guesses are on these photos, at its current temperature: per within-t
    forecast its mean, the rate it forecasts, and the ECE; the coverage and median of the ``level`` radius."""
    best = [places[0] for places in predictor.predict_features(features, top_k=1, level=level)]
    error = haversine_km(np.array([p.lat for p in best]), np.array([p.lon for p in best]), truth[:, 0], truth[:, 1])
    radius = np.array([p.radius_km for p in best])
    report = {"temperature": predictor.temperature, "photos": len(best), "within_km": {}}
    for t in WITHIN_KM:
        forecast = np.array([p.within_km[t] for p in best])
        report["within_km"][str(t)] = {"forecast": float(forecast.mean()), "observed": float((error <= t).mean()),
                                       "ece": expected_calibration_error(forecast, error <= t)}
    report["radius"] = {"level": level, "coverage": float((error <= radius).mean()), "median_km": float(np.median(radius))}
    return report


def calibrate(predictor, store, max_photos: int | None = None, seed: int = 0) -> dict:
    """Fit the predictor's temperature on a validation feature store (all its photos, or ``max_photos`` drawn at
    random), set it, and return the record for calibration.json with the report before and after."""
    rows = np.arange(len(store))
    if max_photos is not None and max_photos < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_photos, replace=False))
    if len(rows) < 10:
        raise GeovarioError(f"{store.folder}: {len(rows)} photos are too few to calibrate on (10 or more)")
    if store.dim != predictor.feature_dim:
        raise GeovarioError(f"{store.folder}: {store.dim}-d features, but the model expects {predictor.feature_dim}-d")
    features, truth = store.rows(rows), np.asarray(store.gps, np.float64)[rows]
    predictor.temperature = 1.0
    before = calibration_report(predictor, features, truth)
    predictor.temperature = fit_temperature(predictor, features, truth)
    if not COARSE[0] < predictor.temperature < COARSE[-1]:
        warnings.warn(f"{store.folder}: the fitted temperature is the search's bound ({predictor.temperature:.3g}): on these photos "
                      "the model's probabilities carry little or no information about where they are", GeovarioWarning, stacklevel=2)
    after = calibration_report(predictor, features, truth)
    return {"temperature": predictor.temperature, "weights_sha256": predictor.weights_sha256,
            "gallery_sha256": gallery_sha256(predictor.gallery), "fitted_on": {"store": str(store.folder),
                                                                               "fingerprint": store.fingerprint(), "photos": len(rows)},
            "before": before, "after": after}


def save_calibration(model_dir: str | Path, record: dict) -> Path:
    path = Path(model_dir) / CALIBRATION_FILE
    write_json(path, record)
    return path


def read_temperature(model_dir: Path, weights_sha256: str, gallery: np.ndarray) -> tuple[float, str | None]:
    """The model directory's fitted temperature, and why not where it does not apply: (1.0, None) without a
    calibration; a calibration fitted for other weights is refused; for another gallery, (1.0, the reason)."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return 1.0, None
    record = read_json(path, "calibration")
    temperature = record.get("temperature") if isinstance(record, dict) else None
    if not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature <= 0:
        raise GeovarioError(f"{path}: temperature must be a positive number, got {temperature!r}; rerun `geovario calibrate`")
    if record.get("weights_sha256") != weights_sha256:
        raise GeovarioError(f"{path}: fitted for other weights than model.safetensors; rerun `geovario calibrate` or remove it")
    if record.get("gallery_sha256") != gallery_sha256(gallery):
        return 1.0, f"{path}: fitted for another gallery; probabilities are uncalibrated (temperature 1)"
    return float(temperature), None
