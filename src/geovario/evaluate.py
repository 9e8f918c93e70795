"""Evaluate a model on a feature store (or arrays): retrieve, measure, report.

Queries go through the same cached-gallery retrieval as ``predict``; the gallery is the model's own,
a LAT/LON CSV, or the GPS of another feature store (e.g. the training positions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from geovario.progress import progress as progress_bar

from geovario.data.store import FeatureSource, FeatureStore, open_feature_source
from geovario.errors import GeovarioError
from geovario.metrics import (THRESHOLDS_KM, admin_accuracy, by_continent, distance_summary, errors_km, reverse_geocode_labels,
                              with_failures)
from geovario.predict import Predictor
from geovario.retrieval import faiss_index, faiss_topk, topk_softmax


def load_gallery(spec: str | Path | None) -> np.ndarray | None:
    """A gallery CSV, or a feature store folder whose GPS serve as the gallery."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_dir():
        return open_feature_source(store=path).gps.astype(np.float32)
    from geovario.modeldir import read_gallery

    return read_gallery(path)


@torch.inference_mode()
def predict_source(predictor: Predictor, source: FeatureSource, top_k: int = 5, batch_size: int = 1024,
                   progress: bool = True, faiss_factory: str | None = None) -> pd.DataFrame:
    """One row per query: id, true and predicted (top-1) coordinates, error, probability, top-k indices.

    With ``faiss_factory`` (e.g. "Flat", "HNSW32") retrieval goes through FAISS; ``prob`` is then a
    softmax over the top-k candidates rather than the whole gallery.
    """
    if not 1 <= top_k <= len(predictor.gallery):
        raise GeovarioError(f"--top-k must be between 1 and the gallery size {len(predictor.gallery)}, got {top_k}")
    if source.dim != predictor.feature_dim:
        raise GeovarioError(f"the features are {source.dim}-d but the model expects {predictor.feature_dim}-d")
    index_faiss = faiss_index(np.asarray(predictor.gallery_embeddings), faiss_factory) if faiss_factory else None
    indices, probs = [], []
    with progress_bar(len(source), "retrieving", "img", enabled=progress) as bar:
        for features, _, _ in source.iter_batches(batch_size):
            queries = predictor.model.encode_images(torch.tensor(features, device=predictor.device)).float()  # a copy: stores are read-only
            if index_faiss is not None:
                index, prob, _ = faiss_topk(index_faiss, queries, predictor.logit_scale, top_k)
            else:
                index, prob, _ = topk_softmax(queries, predictor.gallery_embeddings, predictor.logit_scale, top_k)
            indices.append(index.cpu().numpy())
            probs.append(prob.cpu().numpy())
            bar.update(len(features))
    index, prob = np.concatenate(indices), np.concatenate(probs)
    predicted = predictor.gallery[index[:, 0]].astype(np.float64)
    true = np.asarray(source.gps, np.float64)
    frame = pd.DataFrame({
        "id": [str(i) for i in source.ids],
        "true_lat": true[:, 0], "true_lon": true[:, 1],
        "pred_lat": predicted[:, 0], "pred_lon": predicted[:, 1],
        "error_km": errors_km(true, predicted),
        "prob": prob[:, 0],
    })
    if top_k > 1:
        frame["topk_gallery_index"] = [" ".join(map(str, row)) for row in index]
    return frame


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


def store_labels(source: FeatureSource) -> pd.DataFrame | None:
    """The admin labels a store carries (OSV5M's country, region, sub-region, city), if any."""
    if isinstance(source, FeatureStore):
        meta = source.meta
        present = [c for c in ("country", "region", "sub-region", "city") if c in meta.columns]
        if present:
            return meta[present].reset_index(drop=True)
    return None
