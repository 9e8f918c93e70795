"""Training: every loss and negative source of the paper and the thesis, from one config.

    data.py         data adapters: cached features from a store, or images through the backbone
    build.py        the model, the negative source and the loss's variogram a config asks for
    checkpoints.py  exact checkpoints and resume
    metrics_log.py  metrics.csv and TensorBoard
    loop.py         the Trainer: batch, candidates, loss, backward, step, commit

The negative sources themselves live in ``geovario.negatives``, the losses in ``geovario.losses``.
"""

from geovario.train.build import build_model, build_negatives
from geovario.train.checkpoints import TrainState, load_checkpoint, save_checkpoint
from geovario.train.data import ImageData, StoreData, open_training_data
from geovario.train.loop import MAX_LOGIT_SCALE, Trainer, train, validate

__all__ = ["MAX_LOGIT_SCALE", "ImageData", "StoreData", "TrainState", "Trainer", "build_model", "build_negatives", "load_checkpoint",
           "open_training_data", "save_checkpoint", "train", "validate"]
