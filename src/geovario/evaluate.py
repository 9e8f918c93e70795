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
from geovario.errors import GeovarioError, ParameterError
from geovario.metrics import THRESHOLDS_KM, build_report, errors_km
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
                   progress: bool = True, faiss_factory: str | None = None, pool_km: float | None = None) -> pd.DataFrame:
    """One row per query: id, true and predicted (top-1) coordinates, error, probability, top-k indices.

    ``prob`` is the top-1 gallery point's probability, with the temperature ``geovario calibrate`` fitted (the
    ranking does not depend on it). With ``faiss_factory`` (e.g. "Flat", "HNSW32") retrieval goes through FAISS;
    ``prob`` is then a softmax over the top-k candidates rather than the whole gallery. With ``pool_km``, the
    predictions are the distinct places ``predict`` answers (:mod:`geovario.confidence`): the top-1 is the place
    gathering the most probability mass, ``prob`` that mass, and the indices those of the places' peaks.
    """
    if not 1 <= top_k <= len(predictor.gallery):
        raise ParameterError("top_k", f"must be between 1 and the gallery size {len(predictor.gallery)}, got {top_k}")
    if source.dim != predictor.feature_dim:
        raise GeovarioError(f"the features are {source.dim}-d but the model expects {predictor.feature_dim}-d")
    if pool_km is not None and faiss_factory:
        raise ParameterError("pool_km", "pools the probability over the whole gallery; it does not go with FAISS's top-k")
    index_faiss = faiss_index(np.asarray(predictor.gallery_embeddings), faiss_factory) if faiss_factory else None
    indices, probs = [], []
    with progress_bar(len(source), "retrieving", "img", enabled=progress) as bar:
        for start, (features, _, _) in zip(range(0, len(source), batch_size), source.iter_batches(batch_size)):
            if pool_km is not None:
                places = predictor.predict_features(features, top_k, pool_km)
                if any(len(p) < top_k for p in places):  # the whole gallery pooled into fewer places than asked for
                    raise ParameterError("top_k", f"{top_k} distinct places at pool_km {pool_km:g} do not exist in this gallery")
                indices.append(np.array([[p.gallery_index for p in row] for row in places]))
                probs.append(np.array([[p.prob for p in row] for row in places]))
                bar.update(len(features))
                continue
            queries = predictor.encode_queries(features, start)
            if index_faiss is not None:
                index, prob, _ = faiss_topk(index_faiss, queries, predictor.logit_scale / predictor.temperature, top_k)
            else:
                index, prob, _ = topk_softmax(queries, predictor.gallery_embeddings, predictor.logit_scale / predictor.temperature, top_k)
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


def prediction_coordinates(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 2) true and predicted (top-1) coordinates of a :func:`predict_source` frame."""
    return frame[["true_lat", "true_lon"]].to_numpy(), frame[["pred_lat", "pred_lon"]].to_numpy()


def frame_report(frame: pd.DataFrame, thresholds=THRESHOLDS_KM, strict_less: bool = False, labels: pd.DataFrame | None = None,
                 admin: bool = True) -> dict:
    """The report (:func:`geovario.metrics.build_report`) of a :func:`predict_source` frame."""
    return build_report(*prediction_coordinates(frame), thresholds, strict_less, labels, admin=admin)


def store_labels(source: FeatureSource) -> pd.DataFrame | None:
    """The admin labels a store carries (OSV5M's country, region, sub-region, city), if any."""
    if isinstance(source, FeatureStore):
        meta = source.meta
        present = [c for c in ("country", "region", "sub-region", "city") if c in meta.columns]
        if present:
            return meta[present].reset_index(drop=True)
    return None


def evaluate_model(model_dir: str | Path, source: FeatureSource, predictions_path: Path, gallery: str | None = None,
                   top_k: int | None = None, thresholds=THRESHOLDS_KM, strict_less: bool = False, admin: bool = True,
                   faiss_factory: str | None = None, device: str | None = None, progress: bool = True,
                   calibration: bool = False, pool_km: float | None = None) -> tuple[dict, pd.DataFrame]:
    """``geovario evaluate``: the report dict and the per-image predictions, written to ``predictions_path`` (CSV). With
    ``calibration``, the report's "calibration" holds how honest the confidence of each photo's best place is
    (:func:`calibration_of`)."""
    from geovario.atomic import atomic_write_bytes

    predictor = Predictor(model_dir, gallery=load_gallery(gallery), device=device, progress=progress)
    frame = predict_source(predictor, source, top_k or min(5, len(predictor.gallery)), progress=progress, faiss_factory=faiss_factory,
                           pool_km=pool_km)
    report = frame_report(frame, thresholds, strict_less, store_labels(source), admin=admin)
    atomic_write_bytes(predictions_path, frame.to_csv(index=False).encode())
    report |= {"model": str(model_dir), "gallery": str(gallery or "model"),
               "retrieval": f"faiss:{faiss_factory}" if faiss_factory else "exact", "pool_km": pool_km, "predictions": str(predictions_path),
               "dropped_rows": []}
    if calibration:
        report["calibration"] = calibration_of(predictor, source, progress=progress)
    return report, frame


def calibration_of(predictor: Predictor, source: FeatureSource, batch_size: int = 1024, progress: bool = True) -> dict:
    """The calibration of the predictor's best places on a source, streamed a batch at a time: each within-t
    probability's mean, the rate observed and the ECE, the coverage of the 90 % radius, and the reliability diagram's
    bins (:class:`geovario.calibration.BestGuesses`)."""
    from geovario.calibration import best_guesses

    def batches():
        with progress_bar(len(source), "calibration", "img", enabled=progress) as bar:
            for features, gps, _ in source.iter_batches(batch_size):
                yield features, gps
                bar.update(len(features))

    guesses = best_guesses(predictor, batches())
    return guesses.report(predictor.temperature, predictor.platt) | {"reliability": guesses.reliability(predictor.platt)}
