"""The training loop: every loss and negative strategy from one config; exact checkpoints and resume.

Readable in one sitting, nanoGPT-style. All randomness inside the loop comes from generators seeded
by (seed, step) or (seed, epoch): the epoch's sample order, the stored view picked per sample, the GPS
noise and the gallery negatives. A checkpoint (weights, queues, optimizer, scheduler, step, fitted
variogram, and the torch RNG state) therefore resumes bit for bit.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from geovario.atomic import atomic_path, atomic_write_bytes
from geovario.config import Config
from geovario.data.store import FeatureStore
from geovario.errors import GeovarioError
from geovario.geo import add_gps_noise, haversine_km_torch
from geovario.jsonio import read_json, write_json
from geovario.losses import LossInputs, build_loss
from geovario.metrics import distance_summary, errors_km
from geovario.model import GeoLocModel, ModelConfig
from geovario.modeldir import save_model_dir
from geovario.negatives import GalleryNegatives
from geovario.variogram import VariogramModel, empirical_for_loss, fit_for_loss


# --- data ------------------------------------------------------------------------------------------


class StoreData:
    """Training samples from a feature store; one stored view per sample per step when there are views."""

    def __init__(self, store: FeatureStore, use_views: bool):
        self.store = store
        self.gps = torch.from_numpy(store.gps.astype(np.float32))
        self.views = store.n_views if use_views else 0
        self.dim = store.dim

    def __len__(self) -> int:
        return len(self.gps)

    def features(self, index: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        plain = torch.from_numpy(self.store.rows(index))
        if not self.views:
            return plain
        # View 0 is the plain centre crop, 1..K the augmented ones (GeoCLIP samples one per step).
        choice = torch.randint(0, self.views + 1, (len(index),), generator=generator)
        views = torch.from_numpy(self.store.view_rows(index))
        picked = views[torch.arange(len(index)), torch.clamp(choice - 1, min=0)]
        return torch.where((choice == 0)[:, None], plain, picked)


class ImageData:
    """Image-level training: decode, augment and run the frozen backbone on every step."""

    def __init__(self, dataset, backbone, seed: int):
        self.records, self.backbone, self.seed = dataset.records, backbone, seed
        self.gps = torch.tensor([[r.lat, r.lon] for r in self.records], dtype=torch.float32)
        self.dim = backbone.feature_dim

    def __len__(self) -> int:
        return len(self.records)

    def features(self, index: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        from geovario.augment import geoclip_train_view, view_rng
        from geovario.images import load_rgb

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        pixels = [geoclip_train_view(load_rgb(self.records[i].image), view_rng(seed, int(i), 0), self.backbone.preprocess) for i in index]
        return self.backbone.encode_pixels(torch.from_numpy(np.stack(pixels))).cpu().clone()  # out of inference mode


def open_training_data(config: Config):
    if config.data.images:
        from geovario.backbones import ClipBackbone
        from geovario.data import read_dataset

        dataset = read_dataset(config.data.images, images=config.data.images_dir)
        return ImageData(dataset, ClipBackbone.load(config.data.backbone, "cpu"), config.train.seed)
    path = Path(config.data.train)
    if not path.is_dir():
        raise GeovarioError(f"config key data.train: feature store {path} not found")
    return StoreData(FeatureStore(path), config.data.use_views)


def _gallery_latlon(spec: str | None, data, config: Config, key: str) -> np.ndarray:
    """A LAT,LON CSV, a store's positions, or (default) up to gallery_max training positions."""
    if spec:
        from geovario.evaluate import load_gallery

        try:
            return load_gallery(spec).astype(np.float64)
        except GeovarioError as e:
            raise GeovarioError(f"config key {key}: {e}") from None
    gps = data.gps.numpy().astype(np.float64)
    if len(gps) > config.data.gallery_max:
        keep = np.random.default_rng(config.train.seed).choice(len(gps), config.data.gallery_max, replace=False)
        gps = gps[np.sort(keep)]
    return gps


# --- model, variogram ------------------------------------------------------------------------------


def build_model(config: Config, feature_dim: int) -> GeoLocModel:
    m = config.model
    shapes = ModelConfig(feature_dim=feature_dim, embed_dim=m.embed_dim, hidden_dim=m.hidden_dim, rff_dim=m.rff_dim,
                         sigmas=list(m.sigmas), queue_size=m.queue_size)
    torch.manual_seed(config.train.seed)
    if m.init == "random":
        return GeoLocModel(shapes)
    if m.init == "geoclip":
        from geovario.interop.geoclip import find_release, geoclip_model

        pretrained = geoclip_model(find_release(folder=m.geoclip_from))
    else:
        from geovario.modeldir import load_model_dir

        if not Path(m.init).is_dir():
            raise GeovarioError(f"config key model.init: {m.init!r} is neither random, geoclip nor a model directory")
        pretrained = load_model_dir(m.init).model
    if pretrained.config.feature_dim != feature_dim:
        raise GeovarioError(f"config key model.init: the initial model takes {pretrained.config.feature_dim}-d features, "
                            f"the store has {feature_dim}-d")
    model = GeoLocModel(ModelConfig.from_dict(pretrained.config.to_dict() | {"queue_size": m.queue_size}))
    model.load_state_dict(pretrained.weights_state_dict(), strict=False)
    return model


def initial_variogram(config: Config, data, run_dir: Path) -> VariogramModel:
    saved = run_dir / "variogram.json"
    if config.loss.variogram:
        try:
            return VariogramModel.load(config.loss.variogram)
        except GeovarioError as e:
            raise GeovarioError(f"config key loss.variogram: {e}") from None
    if saved.is_file():
        return VariogramModel.load(saved)
    if not isinstance(data, StoreData):
        raise GeovarioError("config key loss.variogram: image-level training needs a fitted variogram JSON")
    store = data.store
    features = store.features(dtype=np.float16) if len(store) > 20_000 else store.features()
    model = fit_for_loss(empirical_for_loss(features, store.gps, config.loss.variogram_bins), config.loss.variogram_model)
    model.save(saved)
    return model


# --- checkpoints -----------------------------------------------------------------------------------


@dataclass
class TrainState:
    step: int = 0
    variogram: dict | None = None


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: TrainState, keep: int = 2) -> Path:
    """Write checkpoints/step-N/ through a temporary folder renamed into place, then point ``latest`` at it."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state.step:08d}"
    tmp = folder / f".tmp-step-{state.step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors = {f"{pid}.{name}": value.detach().cpu().contiguous() for pid, slots in opt["state"].items() for name, value in slots.items()}
    tensors["torch_rng"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "state.json", {"step": state.step, "variogram": state.variogram, "scheduler": scheduler.state_dict(),
                                    "param_groups": opt["param_groups"]})
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_bytes(folder / "latest", final.name.encode())
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path, model, optimizer, scheduler) -> TrainState:
    folder = run_dir / "checkpoints"
    latest = folder / "latest"
    if not latest.is_file():
        raise GeovarioError(f"{run_dir}: no checkpoint to resume from")
    path = folder / latest.read_text().strip()
    try:
        weights = load_file(path / "model.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
    except (SafetensorError, OSError) as e:
        raise GeovarioError(f"{path}: unreadable checkpoint ({e})") from None
    state = read_json(path / "state.json", "checkpoint state")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise GeovarioError(f"{path}: checkpoint from an incompatible model (differs at {diff[:3]})")
    model.load_state_dict(weights)
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key != "torch_rng":
            pid, name = key.split(".", 1)
            slots.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["torch_rng"])
    return TrainState(step=state["step"], variogram=state["variogram"])


# --- one step ----------------------------------------------------------------------------------------


def contrastive_inputs(model: GeoLocModel, features, gps, config: Config, generator, negatives, rng, loss, learned_space: bool) -> LossInputs:
    """Build the logits (and, for the semivariogram loss, lags and dissimilarities) for one batch."""
    neg = config.negatives
    image = model.encode_images(features)
    scale = model.logit_scale.exp()
    noisy = add_gps_noise(gps, neg.batch_noise_m, generator)
    if neg.source == "queue":
        queue_gps, queue_features = model.queue.filled()
        candidates = torch.cat([noisy, add_gps_noise(queue_gps, neg.queue_noise_m, generator)])
        queue_full = int(model.queue.count) >= model.queue.size
        model.queue.enqueue(gps, features)  # as GeoCLIP: the step's own batch joins after it is read
        logits = scale * image @ model.encode_locations(candidates).T
        inputs = LossInputs(logits, torch.arange(len(gps), device=gps.device), scale, queue_full=queue_full)
        if loss.needs_geometry:
            clean = torch.cat([gps, queue_gps])
            all_features = torch.cat([features, queue_features])
            # Full precision even under autocast: delta = d - gamma(h) compares small differences.
            with torch.no_grad(), torch.autocast(gps.device.type, enabled=False):
                if learned_space:
                    query, pool = image.detach(), model.encode_images(all_features)
                else:
                    query, pool = F.normalize(features, dim=-1), F.normalize(all_features, dim=-1)
                inputs.dissimilarity = 1 - query.float() @ pool.float().T
                inputs.lags_km = haversine_km_torch(gps[:, None].double(), clean[None].double())
        return inputs
    picked = torch.from_numpy(negatives.gallery[negatives.select(gps.cpu().numpy(), neg.k, neg.selection, rng)]).float().to(gps.device)
    candidates = torch.cat([noisy[:, None], picked], dim=1)  # (B, 1 + k, 2): column 0 is the true location
    locations = model.encode_locations(candidates.reshape(-1, 2)).reshape(len(gps), 1 + neg.k, -1)
    logits = scale * torch.einsum("be,bke->bk", image, locations)
    inputs = LossInputs(logits, torch.zeros(len(gps), dtype=torch.long, device=gps.device), scale)
    if loss.needs_geometry:
        inputs.lags_km = haversine_km_torch(gps[:, None].double(), candidates.double())
    return inputs


# --- the loop ------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def validate(model: GeoLocModel, val: FeatureStore, gallery: np.ndarray, device) -> dict:
    from geovario.retrieval import topk_softmax

    model.eval()
    gallery_emb = torch.cat([model.encode_locations(torch.from_numpy(gallery[s : s + 8192]).float().to(device))
                             for s in range(0, len(gallery), 8192)])
    predicted = []
    for features, _, _ in val.iter_batches(1024):
        index, _, _ = topk_softmax(model.encode_images(torch.from_numpy(features).to(device)).float(), gallery_emb.float(),
                                   float(model.logit_scale.exp()), 1)
        predicted.append(gallery[index[:, 0].cpu().numpy()])
    model.train()
    return distance_summary(errors_km(val.gps, np.concatenate(predicted)))


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train, checkpointing into ``run_dir``; returns the final model directory."""
    run_dir = Path(run_dir)
    t = config.train
    device = _device(t.device)
    data = open_training_data(config)
    if len(data) < t.batch_size:
        raise GeovarioError(f"config key train.batch_size: {t.batch_size} is larger than the {len(data)} training samples")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_json(run_dir / "config.json", config.to_dict())
    model = build_model(config, data.dim).to(device)
    variogram = initial_variogram(config, data, run_dir) if _uses(config, "semivariogram") else None
    loss_fn = build_loss(config.loss.name, config.loss.__dict__, variogram)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.optim.step_gamma)
    state = TrainState()
    if resume:
        state = load_checkpoint(run_dir, model, optimizer, scheduler)
        if state.variogram:
            _set_variogram(loss_fn, VariogramModel.from_dict(state.variogram))
    gallery = _gallery_latlon(config.data.gallery, data, config, "data.gallery")
    negatives = None
    if config.negatives.source == "gallery":
        negatives = GalleryNegatives(_gallery_latlon(config.negatives.gallery, data, config, "negatives.gallery"),
                                     config.negatives.far_km, config.negatives.exclude_km)
    val = FeatureStore(config.data.val) if config.data.val else None

    steps_per_epoch = len(data) // t.batch_size
    total = steps_per_epoch * t.epochs if t.max_steps is None else min(t.max_steps, steps_per_epoch * t.epochs)
    metrics_path = run_dir / "metrics.csv"
    _truncate_metrics(metrics_path, state.step)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda")
    model.train()
    learned_space = False
    tensorboard = _tensorboard(run_dir)
    bar = tqdm(total=total, initial=state.step, unit="step", desc=config.name, disable=None if progress else True)
    window_start, window_samples = time.perf_counter(), 0
    while state.step < total:
        epoch, position = divmod(state.step, steps_per_epoch)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(t.seed * 1_000_003 + epoch))
        index = order[position * t.batch_size : (position + 1) * t.batch_size].numpy()
        generator = torch.Generator().manual_seed(t.seed * 1_000_003 + 7919 * (state.step + 1))
        rng = np.random.default_rng([t.seed, state.step])
        features = data.features(index, generator).float().to(device)
        gps = data.gps[index].to(device)
        with amp:
            inputs = contrastive_inputs(model, features, gps, config, generator, negatives, rng, loss_fn, learned_space)
            out = loss_fn(inputs)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        state.step += 1
        window_samples += len(index)
        bar.update(1)
        end_of_epoch = state.step % steps_per_epoch == 0
        if end_of_epoch:
            scheduler.step()
        if config.loss.refit_every and state.step % config.loss.refit_every == 0 and isinstance(data, StoreData):
            refitted = _refit_on_learned(model, data, config, device)
            if refitted is not None:
                _set_variogram(loss_fn, refitted)
                state.variogram, learned_space = refitted.to_dict(), True
        if state.step % t.log_every == 0 or end_of_epoch or state.step == total:
            rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
            row = {"step": state.step, "epoch": epoch, "loss": float(out.loss.detach()), "lr": optimizer.param_groups[0]["lr"],
                   "samples_per_s": rate, **out.stats}
            if end_of_epoch and val is not None:
                summary = validate(model, val, gallery, device)
                row |= {f"val_acc_{k}km": v for k, v in summary["accuracy"].items()} | {"val_median_km": summary["median_km"]}
            _append_metrics(metrics_path, row)
            if tensorboard is not None:
                for key, value in row.items():
                    if key not in ("step", "epoch") and isinstance(value, (int, float)):
                        tensorboard.add_scalar(key, value, state.step)
            bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{rate:.0f}")
            window_start, window_samples = time.perf_counter(), 0
        if state.step % t.checkpoint_every == 0 or end_of_epoch or state.step == total:
            save_checkpoint(run_dir, model, optimizer, scheduler, state)
    bar.close()
    if tensorboard is not None:
        tensorboard.close()
    final = save_model_dir(run_dir / "model", model.cpu(), backbone=config.data.backbone, gallery=gallery.astype(np.float32),
                           meta={"trained": {"config": config.name, "steps": state.step, "loss": config.loss.name}})
    return final


def _tensorboard(run_dir: Path):
    """A TensorBoard writer beside metrics.csv when the tensorboard package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _uses(config: Config, name: str) -> bool:
    return config.loss.name == name or any(p.get("name") == name for p in config.loss.parts)


def _set_variogram(loss_fn, variogram: VariogramModel) -> None:
    for module in loss_fn.modules():
        if hasattr(module, "variogram"):
            module.variogram = variogram


@torch.no_grad()
def _refit_on_learned(model, data: StoreData, config: Config, device) -> VariogramModel | None:
    """Re-estimate the variogram on learned image embeddings of a fixed sample of training images."""
    sample = np.sort(np.random.default_rng(config.train.seed).choice(len(data), min(len(data), 4000), replace=False))
    embeddings = model.encode_images(torch.from_numpy(data.store.rows(sample)).float().to(device)).cpu().numpy()
    try:
        return fit_for_loss(empirical_for_loss(embeddings, data.store.gps[sample], config.loss.variogram_bins), config.loss.variogram_model)
    except GeovarioError:
        return None  # keep the previous fit


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint, so no step appears twice."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["step"]) <= step]
    if len(kept) != len(rows):
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(kept)


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.is_file()
    fields = list(row) if new else next(csv.reader(open(path)))
    extra = [k for k in row if k not in fields]
    if extra:  # a column appears later (e.g. validation): rewrite with the wider header
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        fields += extra
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()})
