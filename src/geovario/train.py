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

from geovario import distributed
from geovario.atomic import atomic_path, atomic_write_bytes
from geovario.config import Config
from geovario.data.store import FeatureStore
from geovario.distributed import Dist, DistributedBatchSampler
from geovario.errors import GeovarioError
from geovario.geo import add_gps_noise, haversine_km_torch
from geovario.jsonio import read_json, write_json
from geovario.losses import LossInputs, LossOutput, build_loss
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

    def features(self, index: np.ndarray, rows: slice, generator: torch.Generator) -> torch.Tensor:
        """Features of ``index[rows]``, this rank's rows of the global batch ``index``."""
        if not self.views:
            return torch.from_numpy(self.store.rows(index[rows]))
        # View 0 is the plain centre crop, 1..K the augmented ones (GeoCLIP samples one per step),
        # drawn for the whole global batch so that every process count picks the same views.
        choice = torch.randint(0, self.views + 1, (len(index),), generator=generator)[rows]
        index = index[rows]
        plain = torch.from_numpy(self.store.rows(index))
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

    def features(self, index: np.ndarray, rows: slice, generator: torch.Generator) -> torch.Tensor:
        from geovario.augment import geoclip_train_view, view_rng
        from geovario.images import load_rgb

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        pixels = [geoclip_train_view(load_rgb(self.records[i].image), view_rng(seed, int(i), 0), self.backbone.preprocess)
                  for i in index[rows]]
        return self.backbone.encode_pixels(torch.from_numpy(np.stack(pixels))).cpu().clone()  # out of inference mode


def open_training_data(config: Config, device: torch.device):
    if config.data.images:
        from geovario.backbones import ClipBackbone
        from geovario.data import read_dataset

        dataset = read_dataset(config.data.images, images=config.data.images_dir)
        return ImageData(dataset, ClipBackbone.load(config.data.backbone, device), config.train.seed)
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


# --- the loop ------------------------------------------------------------------------------------------


class _Encoders(torch.nn.Module):
    """What DDP wraps: one forward that runs every trained part, so DDP syncs all their gradients."""

    def __init__(self, model: GeoLocModel):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, locations: torch.Tensor):
        m = self.model
        return m.encode_images(features), m.encode_locations(locations), m.logit_scale.exp()


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


class Trainer:
    """One training run, on one process or as one rank of a torchrun job (see geovario.distributed).

    ``train.batch_size`` is the global batch: each of the W processes encodes batch_size / W samples,
    image and location embeddings are all-gathered with gradient, and the loss sees the same logits
    one process would. Every rank enqueues the gathered batch, so the queues stay identical. Only rank
    0 writes logs and checkpoints.
    """

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.config, self.run_dir = config, Path(run_dir)
        t = config.train
        self.world, self.device = distributed.setup(t.device)
        self.data = open_training_data(config, self.device)
        if len(self.data) < t.batch_size:
            raise GeovarioError(f"config key train.batch_size: {t.batch_size} is larger than the {len(self.data)} training samples")
        self.sampler = DistributedBatchSampler(len(self.data), t.batch_size, t.seed, self.world)
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                write_json(self.run_dir / "config.json", config.to_dict())
        self.model = build_model(config, self.data.dim).to(self.device)
        self.encoders = _Encoders(self.model)
        if self.world.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # The queues are kept identical by construction; broadcasting them every step would cost ~12 MB.
            self.encoders = DistributedDataParallel(self.encoders, device_ids=[self.device] if self.device.type == "cuda" else None,
                                                    broadcast_buffers=False)
        variogram = None
        if _uses(config, "semivariogram"):
            fitted = initial_variogram(config, self.data, self.run_dir).to_dict() if self.world.is_main else None
            variogram = VariogramModel.from_dict(self.world.broadcast(fitted))
        self.loss_fn = build_loss(config.loss.name, config.loss.__dict__, variogram)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.optim.lr,
                                          weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=config.optim.step_gamma)
        self.state = TrainState()
        self.learned_space = False
        if resume:
            self.world.barrier()  # rank 0 may have just created the run directory
            self.state = load_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler)
            if self.state.variogram:
                _set_variogram(self.loss_fn, VariogramModel.from_dict(self.state.variogram))
                self.learned_space = True
        self.gallery = _gallery_latlon(config.data.gallery, self.data, config, "data.gallery")
        self.negatives = None
        if config.negatives.source == "gallery":
            self.negatives = GalleryNegatives(_gallery_latlon(config.negatives.gallery, self.data, config, "negatives.gallery"),
                                              config.negatives.far_km, config.negatives.exclude_km)
        self.val = FeatureStore(config.data.val) if config.data.val and self.world.is_main else None
        steps = self.sampler.steps_per_epoch
        self.total = steps * t.epochs if t.max_steps is None else min(t.max_steps, steps * t.epochs)
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and self.device.type == "cuda")
        self.progress = progress and self.world.is_main

    # --- one step ---

    def loss_inputs(self, features: torch.Tensor, gps: torch.Tensor, generator, rng) -> LossInputs:
        """The logits (and, for the semivariogram loss, lags and dissimilarities) for this rank's rows.

        ``features`` and ``gps`` are this rank's rows of the global batch. Randomness is drawn for the
        whole gathered batch, in the same order as one process, and each rank keeps its rows.
        """
        neg, world, model = self.config.negatives, self.world, self.model
        rows = world.local_rows(len(gps) * world.world_size)
        all_gps, all_features = world.gather(gps), world.gather(features)
        noisy = add_gps_noise(all_gps, neg.batch_noise_m, generator)[rows]
        if neg.source == "queue":
            queue_gps, queue_features = model.queue.filled()
            queue_noisy = add_gps_noise(queue_gps, neg.queue_noise_m, generator)
            queue_full = int(model.queue.count) >= model.queue.size
            model.queue.enqueue(all_gps, all_features)  # as GeoCLIP: the step's own batch joins after it is read
            # Each rank encodes its rows of the batch and its share of the queue (padded to equal shares
            # for the all-gather); the gathered embeddings are [batch, queue] in single-process order.
            own = world.share(len(queue_noisy))
            b, share, mine = len(gps), own.stop - own.start, queue_noisy[own]
            image, locations, scale = self.encoders(features, torch.cat([noisy, F.pad(mine, (0, 0, 0, share - len(mine)))]))
            gathered = world.gather_with_grad(locations).reshape(world.world_size, b + share, -1)
            candidates = torch.cat([gathered[:, :b].flatten(0, 1), gathered[:, b:].flatten(0, 1)[: len(queue_noisy)]])
            if self.config.train.local_loss:  # open_clip's local loss: own rows against every candidate
                query, targets, query_gps, query_features = image, torch.arange(rows.start, rows.stop), gps, features
            else:
                query, targets, query_gps, query_features = world.gather_with_grad(image), torch.arange(len(all_gps)), all_gps, all_features
            inputs = LossInputs(scale * query @ candidates.T, targets.to(gps.device), scale, queue_full=queue_full)
            if self.loss_fn.needs_geometry:
                clean = torch.cat([all_gps, queue_gps])
                pool_features = torch.cat([all_features, queue_features])
                # Full precision even under autocast: delta = d - gamma(h) compares small differences.
                with torch.no_grad(), torch.autocast(gps.device.type, enabled=False):
                    if self.learned_space:
                        query_space, pool = query.detach(), model.encode_images(pool_features)
                    else:
                        query_space, pool = F.normalize(query_features, dim=-1), F.normalize(pool_features, dim=-1)
                    inputs.dissimilarity = 1 - query_space.float() @ pool.float().T
                    inputs.lags_km = haversine_km_torch(query_gps[:, None].double(), clean[None].double())
            return inputs
        # Gallery negatives: every row has its own candidates, so each rank's rows stand alone.
        picked = self.negatives.gallery[self.negatives.select(all_gps.cpu().numpy(), neg.k, neg.selection, rng)[rows]]
        candidates = torch.cat([noisy[:, None], torch.from_numpy(picked).float().to(gps.device)], dim=1)  # column 0: the truth
        image, locations, scale = self.encoders(features, candidates.reshape(-1, 2))
        logits = scale * torch.einsum("be,bke->bk", image, locations.reshape(len(gps), 1 + neg.k, -1))
        inputs = LossInputs(logits, torch.zeros(len(gps), dtype=torch.long, device=gps.device), scale)
        if self.loss_fn.needs_geometry:
            inputs.lags_km = haversine_km_torch(gps[:, None].double(), candidates.double())
        return inputs

    def step(self) -> LossOutput:
        """One optimizer step on the next global batch; the gradients stay in ``.grad`` until the next."""
        t, step = self.config.train, self.state.step
        index, rows = self.sampler.batch(step)
        generator = torch.Generator().manual_seed(t.seed * 1_000_003 + 7919 * (step + 1))
        rng = np.random.default_rng([t.seed, step])
        features = self.data.features(index, rows, generator).float().to(self.device)
        gps = self.data.gps[index[rows]].to(self.device)
        with self.amp:
            out = self.loss_fn(self.loss_inputs(features, gps, generator, rng))
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.state.step += 1
        if self.state.step % self.sampler.steps_per_epoch == 0:
            self.scheduler.step()
        refit = self.config.loss.refit_every
        if refit and self.state.step % refit == 0 and isinstance(self.data, StoreData):
            refitted = _refit_on_learned(self.model, self.data, self.config, self.device, self.world)
            if refitted is not None:
                _set_variogram(self.loss_fn, refitted)
                self.state.variogram, self.learned_space = refitted.to_dict(), True
        return out

    # --- the run ---

    def run(self) -> Path:
        """Train to the end, checkpointing into the run directory; returns the final model directory."""
        config, t, world = self.config, self.config.train, self.world
        metrics_path = self.run_dir / "metrics.csv"
        tensorboard = None
        if world.is_main:
            _truncate_metrics(metrics_path, self.state.step)
            tensorboard = _tensorboard(self.run_dir)
        self.model.train()
        bar = tqdm(total=self.total, initial=self.state.step, unit="step", desc=config.name, disable=None if self.progress else True)
        window_start, window_samples = time.perf_counter(), 0
        while self.state.step < self.total:
            epoch = self.state.step // self.sampler.steps_per_epoch
            out = self.step()
            step = self.state.step
            window_samples += t.batch_size
            bar.update(1)
            end_of_epoch = step % self.sampler.steps_per_epoch == 0
            if step % t.log_every == 0 or end_of_epoch or step == self.total:
                rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
                loss = world.mean(float(out.loss.detach()))  # with local_loss, each rank holds its rows' loss
                if world.is_main:
                    row = {"step": step, "epoch": epoch, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                           "samples_per_s": rate, **out.stats}
                    if end_of_epoch and self.val is not None:
                        summary = validate(self.model, self.val, self.gallery, self.device)
                        row |= {f"val_acc_{k}km": v for k, v in summary["accuracy"].items()} | {"val_median_km": summary["median_km"]}
                    _append_metrics(metrics_path, row)
                    if tensorboard is not None:
                        for key, value in row.items():
                            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                                tensorboard.add_scalar(key, value, step)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{rate:.0f}")
                window_start, window_samples = time.perf_counter(), 0
            if step % t.checkpoint_every == 0 or end_of_epoch or step == self.total:
                if world.is_main:
                    save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.state)
                world.barrier()  # nobody runs ahead of a checkpoint it might resume from
        bar.close()
        if tensorboard is not None:
            tensorboard.close()
        final = self.run_dir / "model"
        if world.is_main:
            save_model_dir(final, self.model.cpu(), backbone=config.data.backbone, gallery=self.gallery.astype(np.float32),
                           meta={"trained": {"config": config.name, "steps": self.state.step, "loss": config.loss.name,
                                             "processes": world.world_size}})
        world.barrier()
        return final


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train, checkpointing into ``run_dir``; returns the final model directory (written by rank 0)."""
    return Trainer(config, run_dir, resume=resume, progress=progress).run()


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
def _refit_on_learned(model, data: StoreData, config: Config, device, world: Dist) -> VariogramModel | None:
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
