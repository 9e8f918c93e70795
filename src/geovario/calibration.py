"""Calibrated confidence: a temperature for a model's softmax over its gallery, then Platt scaling of each within-t
probability, both fitted on a validation split.

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

One temperature cannot serve every scale: on the simulated world the 25 km forecasts want a sharper softmax and
the 2,500 km ones a flatter one, so T trades them against each other. Platt scaling (Platt 1999; a logistic
regression on the forecast's log-odds, scikit-learn's) then maps each within-t forecast of the best place at
the fitted T to sigmoid(a_t * logit(p) + b_t), fitted per t on the same validation photos; forecasts stay
non-decreasing in t (each at least the one of the smaller t). The radius comes from the tempered distribution
alone: its coverage is what T is checked against. The places' ranking and masses (``prob``) are the tempered
softmax's; Platt scaling touches only ``within_km``, of every place (fitted on best places, where it is
measured).

``calibration.json`` in the model directory records T, the Platt coefficients, the sha256 of the weights and of
the gallery it was fitted for, the validation store, and the calibration before, after the temperature alone
and after both: the expected calibration error (ECE, 10 equal-width bins) of each within-t forecast and how often
the 90 % radius holds the photo (its coverage).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
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
PLATT_EPS = 1e-6  # forecasts are clipped to [eps, 1 - eps] before their log-odds


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


@dataclass
class BestGuesses:
    """Each photo's best place as a prediction reports it: (N, len(WITHIN_KM)) within-t forecasts, the (N,) error in km
    and the (N,) radius at ``level``."""

    forecasts: np.ndarray
    error_km: np.ndarray
    radius_km: np.ndarray
    level: float = LEVEL

    def report(self, temperature: float, platt: dict | None = None) -> dict:
        """Per within-t forecast its mean, the rate it forecasts, and the ECE; the coverage and median of the radius;
        with ``platt`` (per-t coefficients), of the Platt-scaled forecasts."""
        forecasts = self.forecasts if platt is None else platt_scaled(self.forecasts, platt)
        report = {"temperature": temperature, "platt": platt is not None, "photos": len(self.error_km), "within_km": {}}
        for column, t in enumerate(WITHIN_KM):
            hit = self.error_km <= t
            report["within_km"][str(t)] = {"forecast": float(forecasts[:, column].mean()), "observed": float(hit.mean()),
                                           "ece": expected_calibration_error(forecasts[:, column], hit)}
        report["radius"] = {"level": self.level, "coverage": float((self.error_km <= self.radius_km).mean()),
                            "median_km": float(np.median(self.radius_km))}
        return report

    def reliability(self, platt: dict | None = None, bins: int = ECE_BINS) -> dict:
        """Per within-t forecast and equal-width bin: the photos, their mean forecast and the rate observed (None in an
        empty bin), the reliability diagram's points."""
        forecasts = self.forecasts if platt is None else platt_scaled(self.forecasts, platt)
        curves = {}
        for column, t in enumerate(WITHIN_KM):
            which = np.minimum((forecasts[:, column] * bins).astype(int), bins - 1)
            count = np.bincount(which, minlength=bins)
            sums = {"forecast": np.bincount(which, forecasts[:, column], bins), "observed": np.bincount(which, self.error_km <= t, bins)}
            curves[str(t)] = {"photos": count.tolist()} | {
                name: [float(total / n) if n else None for total, n in zip(values, count)] for name, values in sums.items()}
        return curves


def best_guesses(predictor, batches, level: float = LEVEL) -> BestGuesses:
    """The best place of every photo in ``batches`` ((features, (B, 2) true lat/lon) pairs, streamed), before Platt
    scaling (the predictor's own Platt coefficients are set aside for the pass)."""
    platt, predictor.platt = predictor.platt, None
    forecasts, errors, radii = [], [], []
    try:
        for features, truth in batches:
            best = [places[0] for places in predictor.predict_features(features, top_k=1, level=level)]
            forecasts.append(np.array([[p.within_km[t] for t in WITHIN_KM] for p in best]).reshape(-1, len(WITHIN_KM)))
            errors.append(haversine_km(np.array([p.lat for p in best]), np.array([p.lon for p in best]),
                                       np.asarray(truth, np.float64)[:, 0], np.asarray(truth, np.float64)[:, 1]))
            radii.append(np.array([p.radius_km for p in best]))
    finally:
        predictor.platt = platt
    return BestGuesses(np.concatenate(forecasts), np.concatenate(errors), np.concatenate(radii), level)


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), PLATT_EPS, 1 - PLATT_EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(forecasts: np.ndarray, outcomes: np.ndarray) -> dict[str, list[float]]:
    """Per threshold t (a column), the [a_t, b_t] of sigmoid(a_t * logit(p) + b_t) that best predict the outcomes: an
    unpenalised logistic regression on the log-odds. A column whose outcomes are all equal keeps p (a = 1, b = 0)."""
    from sklearn.linear_model import LogisticRegression

    platt = {}
    for column, t in enumerate(WITHIN_KM):
        hit = np.asarray(outcomes[:, column], bool)
        if hit.all() or not hit.any():
            platt[str(t)] = [1.0, 0.0]
            continue
        fit = LogisticRegression(C=1e6, max_iter=1000).fit(_log_odds(forecasts[:, column])[:, None], hit)
        platt[str(t)] = [float(fit.coef_[0, 0]), float(fit.intercept_[0])]
    return platt


def platt_scaled(forecasts: np.ndarray, platt: dict) -> np.ndarray:
    """(N, len(WITHIN_KM)) forecasts mapped through each threshold's Platt coefficients, then made non-decreasing in t."""
    forecasts = np.asarray(forecasts, np.float64).reshape(-1, len(WITHIN_KM))
    scaled = np.empty_like(forecasts)
    for column, t in enumerate(WITHIN_KM):
        a, b = platt[str(t)]
        scaled[:, column] = 1 / (1 + np.exp(-(a * _log_odds(forecasts[:, column]) + b)))
    return np.maximum.accumulate(scaled, axis=1)


def platt_within(within_km: dict[int, float], platt: dict) -> dict[int, float]:
    """One place's within-t probabilities (keyed by WITHIN_KM) after Platt scaling."""
    return dict(zip(WITHIN_KM, platt_scaled(np.array([within_km[t] for t in WITHIN_KM]), platt)[0].tolist()))


def calibration_report(predictor, features: np.ndarray, truth: np.ndarray, level: float = LEVEL) -> dict:
    """How calibrated the predictor's best places are on these photos, with its temperature and Platt coefficients:
    per within-t forecast its mean, the rate it forecasts, and the ECE; the coverage and median of the radius."""
    guesses = best_guesses(predictor, [(features, truth)], level)
    return guesses.report(predictor.temperature, predictor.platt)


def calibrate(predictor, store, max_photos: int | None = None, seed: int = 0) -> dict:
    """Fit the predictor's temperature, then the Platt coefficients of its within-t forecasts, on a validation feature
    store (all its photos, or ``max_photos`` drawn at random); set them and return the record for calibration.json,
    with the report before, with the temperature alone and with both."""
    rows = np.arange(len(store))
    if max_photos is not None and max_photos < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_photos, replace=False))
    if len(rows) < 10:
        raise GeovarioError(f"{store.folder}: {len(rows)} photos are too few to calibrate on (10 or more)")
    if store.dim != predictor.feature_dim:
        raise GeovarioError(f"{store.folder}: {store.dim}-d features, but the model expects {predictor.feature_dim}-d")
    features, truth = store.rows(rows), np.asarray(store.gps, np.float64)[rows]
    predictor.temperature, predictor.platt = 1.0, None
    before = best_guesses(predictor, [(features, truth)]).report(1.0)
    predictor.temperature = fit_temperature(predictor, features, truth)
    if not COARSE[0] < predictor.temperature < COARSE[-1]:
        warnings.warn(f"{store.folder}: the fitted temperature is the search's bound ({predictor.temperature:.3g}): on these photos "
                      "the model's probabilities carry little or no information about where they are", GeovarioWarning, stacklevel=2)
    tempered = best_guesses(predictor, [(features, truth)])
    predictor.platt = fit_platt(tempered.forecasts, tempered.error_km[:, None] <= np.array(WITHIN_KM))
    return {"temperature": predictor.temperature, "platt": predictor.platt, "weights_sha256": predictor.weights_sha256,
            "gallery_sha256": gallery_sha256(predictor.gallery), "fitted_on": {"store": str(store.folder),
                                                                               "fingerprint": store.fingerprint(), "photos": len(rows)},
            "before": before, "temperature_only": tempered.report(predictor.temperature),
            "after": tempered.report(predictor.temperature, predictor.platt)}


def save_calibration(model_dir: str | Path, record: dict) -> Path:
    path = Path(model_dir) / CALIBRATION_FILE
    write_json(path, record)
    return path


def read_calibration(model_dir: Path, weights_sha256: str, gallery: np.ndarray) -> tuple[float, dict | None, str | None]:
    """The model directory's fitted temperature and Platt coefficients, and why not where they do not apply:
    (1.0, None, None) without a calibration; a calibration fitted for other weights, or not a valid one, is refused;
    for another gallery, (1.0, None, the reason)."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return 1.0, None, None
    record = read_json(path, "calibration")
    temperature = record.get("temperature") if isinstance(record, dict) else None
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature <= 0:
        raise GeovarioError(f"{path}: temperature must be a positive number, got {temperature!r}; rerun `geovario calibrate`")
    platt = record.get("platt")
    if platt is not None and not _valid_platt(platt):
        raise GeovarioError(f"{path}: platt must map each of {', '.join(map(str, WITHIN_KM))} km to two finite numbers, "
                            f"got {platt!r}; rerun `geovario calibrate`")
    if record.get("weights_sha256") != weights_sha256:
        raise GeovarioError(f"{path}: fitted for other weights than model.safetensors; rerun `geovario calibrate` or remove it")
    if record.get("gallery_sha256") != gallery_sha256(gallery):
        return 1.0, None, f"{path}: fitted for another gallery; probabilities are uncalibrated (temperature 1, no Platt scaling)"
    return float(temperature), platt, None


def _valid_platt(platt) -> bool:
    return (isinstance(platt, dict) and set(platt) == {str(t) for t in WITHIN_KM}
            and all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                and np.isfinite(x) for x in v) for v in platt.values()))
