"""Train-and-evaluate runs on a simulated world, shared by the demo, the loss benchmark, the study and
the world's calibration.

The lab's training budget: a small GeoCLIP-shaped model (embed 64, hidden 128, 32 Fourier features per
scale, a 1,024-entry queue), batch 128, Adam at lr 1e-3 halved every epoch, 5 epochs. The loss,
negatives and optimiser otherwise follow the named config. On an earlier draw of the default world, 10 epochs
instead of 5 changed GeoCLIP's recipe by 0.4 points or less at every threshold while its training loss still
fell (README at commit 5054e9d). A run takes about a minute on one core (the study's runs record their time).
The learning rate is higher than GeoCLIP's 3e-5 because these runs start from random weights and last a
few epochs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from geovario.config import load_config
from geovario.data.store import FeatureStore
from geovario.evaluate import frame_report, predict_source, prediction_coordinates
from geovario.predict import Predictor
from geovario.train import train

LAB_BATCH_SIZE = 128
LAB = ["model.embed_dim=64", "model.hidden_dim=128", "model.rff_dim=32", "model.queue_size=1024",
       f"train.batch_size={LAB_BATCH_SIZE}", "optim.lr=0.001", "optim.step_gamma=0.5", "train.log_every=50", "train.checkpoint_every=100000"]
LAB_EPOCHS = 5
# Part of every study run's cache key: raise it with any change to the code that can move a lab run's numbers
# (training, losses, negatives, evaluation, the world), so that a study retrains instead of mixing old runs in.
# Nothing enforces it: a test pins only that a run retrained from the cache gives identical numbers.
LAB_VERSION = 2


def train_and_evaluate(world: Path, run_dir: Path, overrides: list[str], epochs: int = LAB_EPOCHS, seed: int = 0,
                       variogram: Path | None = None, progress: bool = True, keep_checkpoints: bool = False,
                       eval_stores: dict[str, Path] | None = None) -> dict:
    """Train on ``world/train`` with ``overrides`` and evaluate against the train positions as the gallery.

    Evaluates on ``world/test``, or, with ``eval_stores``, on each of those stores: the report then holds one
    report per name under ``"sets"``. Each report has the per-photo ``errors_km`` and ``true_latlon``; the
    training loss per epoch is ``epoch_loss``. The run's checkpoints are deleted once its model is written,
    unless ``keep_checkpoints``.
    """
    import pandas as pd

    shutil.rmtree(run_dir, ignore_errors=True)  # the lab's own scratch run: each call starts it afresh
    settings = LAB + [f"data.train={world / 'train'}", f"train.epochs={epochs}", f"train.seed={seed}"]
    if variogram is not None:
        settings.append(f"loss.variogram={variogram}")
    config = load_config(None, settings + overrides)
    model_dir = train(config, run_dir, progress=progress)
    if not keep_checkpoints:
        shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
    gallery = FeatureStore(world / "train").gps.astype(np.float32)
    predictor = Predictor(model_dir, gallery=gallery, device="cpu", progress=False)
    epoch_loss = pd.read_csv(Path(run_dir) / "metrics.csv").groupby("epoch")["loss"].mean().tolist()

    def evaluate(store: Path) -> dict:
        frame = predict_source(predictor, FeatureStore(store), top_k=1, progress=False)
        report = frame_report(frame, admin=False)
        report["errors_km"] = frame["error_km"].to_numpy()
        report["true_latlon"] = prediction_coordinates(frame)[0]
        return report

    if eval_stores is None:
        return evaluate(world / "test") | {"epoch_loss": epoch_loss}
    return {"sets": {name: evaluate(store) for name, store in eval_stores.items()}, "epoch_loss": epoch_loss}
