"""The parts a run's config asks for: the model, the negative source, and the loss's variogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geovario.config import Config
from geovario.data.store import FeatureStore
from geovario.distributed import Dist
from geovario.errors import GeovarioError
from geovario.model import GeoLocModel, ModelConfig
from geovario.negatives import GalleryNegatives, NegativeSource, NeighbourhoodNegatives, QueueNegatives
from geovario.train.data import StoreData, gallery_positions, training_positions
from geovario.variogram import VariogramModel, empirical_for_loss, fit_for_loss

SHAPE_KEYS = ("embed_dim", "hidden_dim", "rff_dim", "sigmas")


def build_model(config: Config, feature_dim: int) -> GeoLocModel:
    """A random model of the configured shapes, or a pretrained one loaded strictly (``model.init``).

    Shape keys left unset take GeoCLIP 1.3.0's shapes for a random model, and the pretrained model's
    otherwise; a shape key set to something else than the pretrained model has is an error.
    """
    m = config.model
    torch.manual_seed(config.train.seed)
    chosen = {key: getattr(m, key) for key in SHAPE_KEYS if getattr(m, key) is not None}
    if m.init == "random":
        return GeoLocModel(ModelConfig(feature_dim=feature_dim, **chosen))
    if m.init == "geoclip":
        from geovario.interop.geoclip import find_release, geoclip_model

        pretrained = geoclip_model(find_release(folder=m.geoclip_from))
    else:
        from geovario.modeldir import load_model_dir

        if not Path(m.init).is_dir():
            raise GeovarioError(f"config key model.init: {m.init!r} is neither random, geoclip nor a model directory")
        pretrained = load_model_dir(m.init).model
    shapes = pretrained.config
    if shapes.feature_dim != feature_dim:
        raise GeovarioError(f"config key model.init: the initial model takes {shapes.feature_dim}-d features, "
                            f"the store has {feature_dim}-d")
    for key, value in chosen.items():
        theirs = getattr(shapes, key)
        if (list(map(float, value)) != list(map(float, theirs))) if key == "sigmas" else value != theirs:
            raise GeovarioError(f"config key model.{key}: {value} contradicts the initial model ({m.init}), which has {theirs}; "
                                "leave it unset to fine-tune")
    model = GeoLocModel(ModelConfig.from_dict(shapes.to_dict()))
    model.load_state_dict(pretrained.state_dict())  # strict: every weight, no more, no less
    return model


def step_memory_bytes(config: Config, model: ModelConfig, world_size: int = 1) -> tuple[int, str]:
    """A rough upper estimate of one training step's memory on one process, and what dominates it.

    Each candidate location runs through every scale's MLP: about (2 rff_dim + hidden_layers x hidden_dim +
    embed_dim) float32 activations per scale, counted three times (activations, their gradients, workspace)
    and divided by train.accumulate; every column's embedding and its geometry (lag, dissimilarity) stay whole.
    """
    t, neg = config.train, config.negatives
    batch = t.batch_size // world_size
    if neg.source in ("queue", "neighbourhood"):
        columns, what = t.batch_size + config.model.queue_size, f"model.queue_size {config.model.queue_size:,}"
        fixed = config.model.queue_size * (model.feature_dim + 3) * 4  # the GPS, feature and id queues
        geometry = t.batch_size * columns * 12
    else:
        columns, what = batch * (neg.k + 1), f"negatives.k {neg.k:,} for each of {batch:,} samples"
        fixed = batch * neg.k * 24  # the chosen indices and their GPS
        geometry = columns * 12
    per_location = len(model.sigmas) * (2 * model.rff_dim + model.hidden_layers * model.hidden_dim + model.embed_dim) * 4 * 3
    return int(columns * per_location / t.accumulate + columns * model.embed_dim * 8 + geometry + fixed), what


def check_step_memory(config: Config, model: ModelConfig, device, world_size: int = 1) -> None:
    """Refuse, before allocating anything, a step that could not fit in the device's memory at all."""
    from geovario.machine import memory_bytes

    needed, what = step_memory_bytes(config, model, world_size)
    available = memory_bytes(device)
    if available is not None and needed > available:
        key = "negatives.k" if config.negatives.source == "gallery" else "model.queue_size"
        raise GeovarioError(f"config key {key}: {what} would take about {needed / 2**30:,.0f} GB per training step, more than the "
                            f"{available / 2**30:,.0f} GB of {device}; lower it (GeoCLIP's queue holds 4,096, the thesis drew 64 "
                            "gallery negatives per sample)")


def build_negatives(config: Config, data, world: Dist, geometry: bool) -> NegativeSource:
    """The configured source; ``geometry`` when the loss needs lags and image dissimilarities."""
    neg = config.negatives
    if neg.source == "queue":
        return QueueNegatives(config.model.queue_size, data.dim, neg.batch_noise_m, neg.queue_noise_m, world,
                              config.train.local_loss, geometry)
    if neg.gallery:
        latlon = gallery_positions(neg.gallery, data, config, "negatives.gallery")
        features = _store_gallery_features(neg.gallery, data.dim) if geometry else None
    else:
        latlon, rows = training_positions(data, config)
        features = data.gallery_features(rows) if geometry else None
    if geometry and features is None:
        raise GeovarioError(f"config key negatives.gallery: the {config.loss.name} loss needs the image of every gallery negative, "
                            "so the gallery must be a feature store of the same features (unset, it is data.train's store)")
    if neg.source == "neighbourhood":
        return NeighbourhoodNegatives(latlon, config.model.queue_size, neg.neighbours, neg.batch_noise_m, neg.queue_noise_m, features,
                                      world, geometry)
    return GalleryNegatives(latlon, neg.k, neg.selection, neg.far_km, neg.exclude_km, neg.batch_noise_m, features, world, geometry)


def _store_gallery_features(spec: str, dim: int):
    if not Path(spec).is_dir():
        return None
    store = FeatureStore(spec)
    if store.dim != dim:
        raise GeovarioError(f"config key negatives.gallery: {spec} holds {store.dim}-d features, the training data {dim}-d")
    return store.rows


def initial_variogram(config: Config, data, run_dir: Path, resume: bool = False) -> VariogramModel:
    """``loss.variogram``, the run's own fit when it resumes, or a fit on the training store's frozen features
    (which the trainer saves as the run's variogram.json once the run starts)."""
    saved = run_dir / "variogram.json"
    if config.loss.variogram:
        try:
            return VariogramModel.load(config.loss.variogram)
        except GeovarioError as e:
            raise GeovarioError(f"config key loss.variogram: {e}") from None
    if resume and saved.is_file():
        return VariogramModel.load(saved)
    if not isinstance(data, StoreData):
        raise GeovarioError("config key loss.variogram: image-level training needs a fitted variogram JSON")
    return store_variogram(data.store, config.loss.variogram_bins, config.loss.variogram_model)


def store_variogram(store, bins: int = 40, model: str = "stable") -> VariogramModel:
    """The semivariogram loss's fit on a feature store's frozen features: what a run without loss.variogram uses,
    and what the lab's benchmarks and study give their runs. The store is read lazily (``store.lazy()``): above the
    exact path's size only the sampled pairs' rows, so a store of millions of rows is never loaded whole."""
    return fit_for_loss(empirical_for_loss(store.lazy(), store.gps, bins), model)


def set_variogram(loss_fn, variogram: VariogramModel) -> None:
    for module in loss_fn.modules():
        if hasattr(module, "variogram"):
            module.variogram = variogram


@torch.no_grad()
def refit_on_learned(model, data: StoreData, config: Config, device, world: Dist) -> VariogramModel | None:
    """Re-estimate the variogram on learned image embeddings of a fixed sample of training images.

    Each rank embeds its share of the sample; with every embedding gathered, each rank bins its share
    of the pairs, the per-bin sums are all-reduced, and rank 0's fit is broadcast.
    """
    sample = np.sort(np.random.default_rng(config.train.seed).choice(len(data), min(len(data), 4000), replace=False))
    own = world.share(len(sample))
    local = model.encode_images(torch.from_numpy(data.store.rows(sample[own])).float().to(device))
    padded = F.pad(local, (0, 0, 0, own.stop - own.start - len(local)))  # all_gather wants equal sizes
    embeddings = world.gather(padded)[: len(sample)].float().cpu().numpy()
    empirical = empirical_for_loss(embeddings, data.store.gps[sample], config.loss.variogram_bins,
                                   shard=(world.rank, world.world_size), reduce_sum=world.all_reduce_sum)
    fitted = None
    if world.is_main:
        try:
            fitted = fit_for_loss(empirical, config.loss.variogram_model).to_dict()
        except GeovarioError:
            pass  # keep the previous fit
    fitted = world.broadcast(fitted)
    return None if fitted is None else VariogramModel.from_dict(fitted)
