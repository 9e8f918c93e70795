"""The training loop: one config, one run, on one process or as one rank of a torchrun job.

All randomness inside the loop comes from generators seeded by (seed, step) or (seed, epoch): the
epoch's sample order, the stored view picked per sample, the GPS noise and the gallery negatives. A
checkpoint therefore resumes bit for bit.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from geovario import distributed
from geovario.atomic import output_dir
from geovario.config import Config
from geovario.data.store import FeatureStore
from geovario.distributed import DistributedBatchSampler
from geovario.errors import GeovarioError
from geovario.jsonio import read_json, write_json
from geovario.losses import LossOutput, build_loss
from geovario.metrics import distance_summary, errors_km
from geovario.progress import progress
from geovario.model import GeoLocModel
from geovario.modeldir import save_model_dir
from geovario.train.build import build_model, build_negatives, initial_variogram, refit_on_learned, set_variogram
from geovario.train.checkpoints import TrainState, load_checkpoint, remove_stale_temporaries, save_checkpoint
from geovario.train.data import StoreData, gallery_positions, open_training_data, step_generator
from geovario.train.metrics_log import MetricsLog
from geovario.variogram import VariogramModel

# CLIP (Radford et al. 2021) and open_clip (src/open_clip_train/train.py) clamp the learned logit
# scale at ln 100 after every step, so the softmax temperature never falls below 0.01.
MAX_LOGIT_SCALE = math.log(100)


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
    one process would. Every rank commits the gathered batch to the queue, so the queues stay
    identical. Only rank 0 writes logs and checkpoints.
    """

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.config, self.run_dir = config, Path(run_dir)
        t = config.train
        self.world, self.device = distributed.setup(t.device)
        self.data = open_training_data(config, self.device, reference=_uses(config, "semivariogram"))
        if len(self.data) < t.batch_size:
            raise GeovarioError(f"config key train.batch_size: {t.batch_size} is larger than the {len(self.data)} training samples")
        self.sampler = DistributedBatchSampler(len(self.data), t.batch_size, t.seed, self.world)
        self.val, problem = None, None
        if self.world.is_main:  # checked before any work; every rank learns of a problem, so none waits for ever
            try:
                self.val = open_validation_store(config, self.data.dim)
                output_dir(self.run_dir)
                check_training_data(self.run_dir, self.data.fingerprint(), config, resume)
                if not resume:
                    write_json(self.run_dir / "config.json", config.to_dict())
            except GeovarioError as e:
                problem = str(e)
        problem = self.world.broadcast(problem)
        if problem:
            raise GeovarioError(problem)
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
        self.negatives = build_negatives(config, self.data, self.world, self.loss_fn.needs_geometry).to(self.device)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.optim.lr,
                                          weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=config.optim.step_gamma)
        self.state = TrainState()
        self.learned_space = False
        if resume:
            if self.world.is_main:
                remove_stale_temporaries(self.run_dir)
            self.world.barrier()  # rank 0 may have just created the run directory
            self.state = load_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.negatives)
            if self.state.variogram:
                set_variogram(self.loss_fn, VariogramModel.from_dict(self.state.variogram))
                self.learned_space = True
        self.gallery = gallery_positions(config.data.gallery, self.data, config, "data.gallery")
        steps = self.sampler.steps_per_epoch
        self.total = steps * t.epochs if t.max_steps is None else min(t.max_steps, steps * t.epochs)
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and self.device.type == "cuda")
        self.progress = progress and self.world.is_main
        self.last_candidates = None  # the latest step's candidates, for inspection

    # --- one step ---

    def step(self) -> LossOutput:
        """One optimizer step on the next global batch; the gradients stay in ``.grad`` until the next."""
        t, step = self.config.train, self.state.step
        generator = step_generator(t.seed, step)
        rng = np.random.default_rng([t.seed, step])
        batch = self.data.batch(*self.sampler.batch(step), generator, self.device)
        embed = self.model.encode_images if self.learned_space else None
        candidates = self.negatives.candidates(batch, generator, rng, embed)
        with self.amp:
            out = self.loss_fn(candidates.loss_inputs(*self.encoders(batch.features, candidates.locations)))
        self._stop_unless_finite(out.loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used, logged before any scheduler step
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.negatives.commit(candidates)
        self.last_candidates = candidates
        self.state.step += 1
        if self.state.step % self.sampler.steps_per_epoch == 0:
            self.scheduler.step()
        refit = self.config.loss.refit_every
        if refit and self.state.step % refit == 0 and isinstance(self.data, StoreData):
            refitted = refit_on_learned(self.model, self.data, self.config, self.device, self.world)
            if refitted is not None:
                set_variogram(self.loss_fn, refitted)
                self.state.variogram, self.learned_space = refitted.to_dict(), True
        return out

    def _stop_unless_finite(self, loss: torch.Tensor, step: int) -> None:
        """A NaN or infinite loss on any rank stops the run before it touches the weights or the queue."""
        value = float(loss.detach())
        bad = not math.isfinite(value)
        if self.world.enabled:
            bad = bool(self.world.all_reduce_sum(np.array([float(bad)]))[0])
        if bad:
            latest = self.run_dir / "checkpoints" / "latest"
            kept = f"checkpoints/{latest.read_text().strip()}" if latest.is_file() else "no checkpoint yet"
            raise GeovarioError(f"step {step + 1}: the loss is {value:g}, not finite; stopped before updating the weights "
                                f"(the last good state: {kept} in {self.run_dir}). Lower optim.lr or check the data, then --resume")

    # --- the run ---

    def run(self) -> Path:
        """Train to the end, checkpointing into the run directory; returns the final model directory."""
        config, t, world = self.config, self.config.train, self.world
        log = MetricsLog(self.run_dir, self.state.step) if world.is_main else None
        self.model.train()
        bar = progress(self.total, config.name, "step", initial=self.state.step, enabled=self.progress)
        window_start, window_samples = time.perf_counter(), 0
        if hasattr(self.data, "prefetch"):  # image-level training: decode the coming steps in worker processes
            self.data.prefetch(self.sampler.batch, t.seed, self.state.step, self.total)
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
                if log is not None:
                    row = {"step": step, "epoch": epoch, "loss": loss, "lr": self.step_lr,
                           "samples_per_s": rate, **out.stats}
                    if end_of_epoch and self.val is not None:
                        summary = validate(self.model, self.val, self.gallery, self.device)
                        row |= {f"val_acc_{k}km": v for k, v in summary["accuracy"].items()} | {"val_median_km": summary["median_km"]}
                    log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{rate:.0f}")
                window_start, window_samples = time.perf_counter(), 0
            if step % t.checkpoint_every == 0 or end_of_epoch or step == self.total:
                if world.is_main:
                    save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.negatives, self.state)
                world.barrier()  # nobody runs ahead of a checkpoint it might resume from
        bar.close()
        if log is not None:
            log.close()
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


def _uses(config: Config, name: str) -> bool:
    return config.loss.name == name or any(p.get("name") == name for p in config.loss.parts)


def open_validation_store(config: Config, dim: int) -> FeatureStore | None:
    """``data.val``, checked before the first step: a store of the training features' width."""
    if not config.data.val:
        return None
    try:
        val = FeatureStore(config.data.val)
    except GeovarioError as e:
        raise GeovarioError(f"config key data.val: {e}") from None
    if val.dim != dim:
        raise GeovarioError(f"config key data.val: {config.data.val} holds {val.dim}-d features, the training data {dim}-d")
    return val


def check_training_data(run_dir: Path, fingerprint: str, config: Config, resume: bool) -> None:
    """Record the training data's fingerprint when a run starts; on --resume, refuse data that changed."""
    record = run_dir / "data.json"
    source = config.data.images or config.data.train
    if not resume:
        write_json(record, {"train": source, "fingerprint": fingerprint})
        return
    if not record.is_file():
        raise GeovarioError(f"{run_dir}: no data.json, so the training data cannot be checked; start a new run")
    started = read_json(record, "run data record").get("fingerprint")
    if started != fingerprint:
        raise GeovarioError(f"{source}: the training data changed since the run started (fingerprint {str(started)[:12]} then, "
                            f"{fingerprint[:12]} now); resume only onto the data the run began with, or start a new run")
