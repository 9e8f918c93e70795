"""The field's geolocation metrics: accuracy within distance thresholds, errors, GeoScore, admin levels.

Conventions, and where they come from:
- "correct within t km" is d <= t in GeoCLIP (geoclip/train/eval.py) and most papers; OSV5M counts
  d < t (``strict_less=True``).
- Distances are great-circle on the R = 6371.0088 km sphere (geovario.geo). GeoCLIP's own eval uses
  geopy's WGS84 geodesic; the two differ by at most ~0.5%, which can move a prediction that lies
  within 0.5% of a threshold across it.
- GeoScore = mean of 5000 exp(-d / 1492.7), the OSV5M constant (Astruc et al. 2024, after GeoGuessr).
- Admin accuracy: the prediction is reverse-geocoded offline with reverse_geocoder (GeoNames places of
  1,000+ people) and its country, admin1 (region), admin2 (sub-region) and city compared with the
  ground-truth labels where the dataset has them (OSV5M), else with the reverse-geocoded truth.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from geovario.geo import EARTH_RADIUS_KM, haversine_km

THRESHOLDS_KM = (1, 25, 200, 750, 2500)  # street, city, region, country, continent (GeoCLIP, thesis)
GEOSCORE_SCALE_KM = 1492.7  # OSV5M GeoScore constant
GEOSCORE_MAX = 5000.0
ADMIN_LEVELS = ("country", "region", "sub-region", "city")


def errors_km(true_latlon: np.ndarray, pred_latlon: np.ndarray) -> np.ndarray:
    true_latlon, pred_latlon = np.asarray(true_latlon, np.float64), np.asarray(pred_latlon, np.float64)
    return haversine_km(true_latlon[:, 0], true_latlon[:, 1], pred_latlon[:, 0], pred_latlon[:, 1])


def threshold_accuracy(errors: np.ndarray, thresholds=THRESHOLDS_KM, strict_less: bool = False) -> dict[str, float]:
    """Percent of errors within each threshold, keyed by the threshold as written ("1", "25", ...)."""
    errors = np.asarray(errors)
    hit = (lambda t: errors < t) if strict_less else (lambda t: errors <= t)
    return {f"{t:g}": float(100 * np.mean(hit(t))) for t in thresholds}


WORST_ERROR_KM = math.pi * EARTH_RADIUS_KM  # a sample without a valid prediction counts as this far off


def geoscore(errors: np.ndarray, failed: np.ndarray | None = None) -> float:
    """Mean of 5000 exp(-d / 1492.7); a failed sample scores 0."""
    scores = GEOSCORE_MAX * np.exp(-np.asarray(errors, np.float64) / GEOSCORE_SCALE_KM)
    if failed is not None:
        scores = np.where(failed, 0.0, scores)
    return float(np.mean(scores))


def with_failures(errors: np.ndarray, failed: np.ndarray | None) -> np.ndarray:
    """Errors with every failed sample (no valid prediction) set to the largest possible error."""
    errors = np.asarray(errors, np.float64)
    return errors if failed is None else np.where(failed, WORST_ERROR_KM, errors)


def distance_summary(errors: np.ndarray, thresholds=THRESHOLDS_KM, strict_less: bool = False, failed: np.ndarray | None = None) -> dict:
    """n counts every sample; a failed one is wrong at every threshold, as far off as possible, and scores 0."""
    errors = with_failures(errors, failed)
    return {
        "n": int(len(errors)),
        "failed": 0 if failed is None else int(np.sum(failed)),
        "accuracy": threshold_accuracy(errors, thresholds, strict_less),
        "mean_km": float(np.mean(errors)),
        "median_km": float(np.median(errors)),
        "geoscore": geoscore(errors, failed),
        "convention": "d < t" if strict_less else "d <= t",
    }


def reverse_geocode_labels(latlon: np.ndarray) -> pd.DataFrame:
    """country (ISO 3166-1 alpha-2), region (admin1), sub-region (admin2) and city for each row."""
    from geovario.places import place_names

    places = place_names(latlon)
    return pd.DataFrame({
        "country": [p.country for p in places],
        "region": [p.region for p in places],
        "sub-region": [p.subregion for p in places],
        "city": [p.city for p in places],
    })


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    return (a.astype(str).str.strip().str.casefold() == b.astype(str).str.strip().str.casefold()).to_numpy()


def admin_accuracy(pred_latlon: np.ndarray, true_labels: pd.DataFrame | None = None, true_latlon: np.ndarray | None = None,
                   failed: np.ndarray | None = None) -> dict:
    """Percent of predictions in the true country / region / sub-region / city.

    Uses the dataset's labels where a row has one (OSV5M); rows without a label are compared with
    the reverse-geocoded true position instead (needs ``true_latlon``). A failed row (no valid
    prediction) is in no place.
    """
    pred_latlon = np.asarray(pred_latlon, np.float64)
    if failed is not None:
        pred_latlon = np.where(failed[:, None], 0.0, pred_latlon)  # geocoded, then blanked below
    predicted = reverse_geocode_labels(pred_latlon)
    if failed is not None:
        predicted.loc[failed, :] = ""
    truth = reverse_geocode_labels(true_latlon) if true_latlon is not None else None
    result: dict = {}
    for level in ADMIN_LEVELS:
        if true_labels is not None and level in true_labels.columns:
            labels = true_labels[level].fillna("").astype(str).reset_index(drop=True)
            given = labels.str.strip() != ""
            missing = ~given
            if truth is not None:
                labels = labels.where(given, truth[level])
                missing = labels.str.strip() == ""
            source = "labels" if given.all() else "reverse-geocoded" if not given.any() else "labels + reverse-geocoded"
        elif truth is not None:
            labels, missing, source = truth[level], truth[level].str.strip() == "", "reverse-geocoded"
        else:
            continue
        valid = ~missing.to_numpy()
        if valid.any():
            result[level] = float(100 * np.mean(_same(predicted[level], labels)[valid]))
        result.setdefault("_sources", {})[level] = source
    return result


@functools.lru_cache(maxsize=1)
def _continent_table() -> dict[str, str]:
    """ISO alpha-2 -> one of seven continents, from the table country_converter maintains.

    Read directly with ``keep_default_na=False``: its own reader turns Namibia's code "NA" into a
    missing value under pandas 3 and then fails to start.
    """
    from importlib.resources import files

    table = pd.read_csv(files("country_converter") / "country_data.tsv", sep="\t", dtype=str, keep_default_na=False,
                        usecols=["ISO2", "Continent_7"])
    return {code: continent for code, continent in zip(table["ISO2"], table["Continent_7"]) if code and continent}


def continent_of(countries: pd.Series) -> pd.Series:
    """Continent (Africa, Antarctica, Asia, Europe, North America, Oceania, South America) per ISO code."""
    return countries.astype(str).str.strip().str.upper().map(_continent_table()).fillna("unknown")


def by_continent(errors: np.ndarray, true_countries: pd.Series, thresholds=THRESHOLDS_KM, strict_less: bool = False,
                 failed: np.ndarray | None = None) -> dict:
    """The distance summary per continent of the true location."""
    continents = continent_of(true_countries.reset_index(drop=True))
    failed = np.zeros(len(errors), bool) if failed is None else failed
    summary = {}
    for name in sorted(continents.unique()):
        rows = (continents == name).to_numpy()
        summary[name] = distance_summary(errors[rows], thresholds, strict_less, failed[rows])
    return summary


def build_report(
    true_latlon: np.ndarray,
    pred_latlon: np.ndarray,
    thresholds=THRESHOLDS_KM,
    strict_less: bool = False,
    labels: pd.DataFrame | None = None,
    admin: bool = True,
    failed: np.ndarray | None = None,
) -> dict:
    """The report dict: distance metrics, admin-level accuracy and the per-continent breakdown.

    ``failed`` marks samples without a valid prediction (their predicted coordinates are ignored):
    they stay in n, wrong at every threshold, as far off as possible, with GeoScore 0.
    """
    errors = with_failures(errors_km(true_latlon, np.nan_to_num(pred_latlon)), failed)
    report = distance_summary(errors, thresholds, strict_less, failed)
    if admin:
        report["admin"] = admin_accuracy(pred_latlon, labels, true_latlon, failed)
        truth = reverse_geocode_labels(true_latlon)["country"]
        if labels is not None and "country" in labels.columns:
            given = labels["country"].fillna("").astype(str).reset_index(drop=True)
            truth = given.where(given.str.len() == 2, truth)  # OSV5M stores ISO codes; anything else is geocoded
        report["continents"] = by_continent(errors, truth, thresholds, strict_less, failed)
    return report
