"""The training loop: one config, one run, on one process or as one rank of a torchrun job.

All randomness inside the loop comes from generators seeded by (seed, step) or (seed, epoch): the
epoch's sample order, the stored view picked per sample, the GPS noise and the gallery negatives. A
checkpoint therefore resumes bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geovario import distributed
from geovario.atomic import output_dir, replace_folder
from geovario.config import Config
from geovario.data.store import FeatureStore
from geovario.distributed import DistributedBatchSampler
from geovario.errors import GeovarioError
from geovario.jsonio import read_json, write_json
from geovario.losses import LossInputs, LossOutput, SimSiamHeads, build_loss, loss_needs_geometry, loss_needs_variogram
from geovario.progress import progress
from geovario.model import GeoLocModel
from geovario.modeldir import save_model_dir
from geovario.train.build import (build_model, build_negatives, check_step_memory, initial_variogram, refit_on_learned,
                                  set_variogram)
from geovario.train.checkpoints import TrainState, load_checkpoint, remove_stale_temporaries, save_checkpoint
from geovario.train.data import StoreData, gallery_positions, open_training_data, step_generator
from geovario.train.metrics_log import MetricsLog, require_wandb
from geovario.train.optim import Schedule, build_optimizer
from geovario.variogram import VariogramModel

# CLIP (Radford et al. 2021) and open_clip (src/open_clip_train/train.py) clamp the learned logit
# scale at ln 100 after every step, so the softmax temperature never falls below 0.01.
MAX_LOGIT_SCALE = math.log(100)
LOWER_IS_BETTER = ("median_km", "mean_km")  # train.keep_best metrics where smaller wins; accuracies and GeoScore grow


class _Encoders(torch.nn.Module):
    """What DDP wraps: one forward that runs every trained part, so DDP syncs all their gradients."""

    def __init__(self, model: GeoLocModel, ssl_heads: SimSiamHeads | None = None):
        super().__init__()
        self.model, self.ssl_heads = model, ssl_heads

    def forward(self, features: torch.Tensor, locations: torch.Tensor, second: torch.Tensor | None = None):
        """(images, locations, scale); with ``second`` (the ssl loss) the images of both views, stacked, and SimSiam's
        (z, p) of both, from the head's output before normalisation."""
        m = self.model
        if second is None:
            return m.encode_images(features), m.encode_locations(locations), m.logit_scale.exp()
        raw = m.image_head(torch.cat([features, second]))
        b = len(features)
        (z1, p1), (z2, p2) = self.ssl_heads(raw[:b]), self.ssl_heads(raw[b:])  # batch norm per view, as the thesis
        return F.normalize(raw, dim=-1), m.encode_locations(locations), m.logit_scale.exp(), torch.cat([z1, z2]), torch.cat([p1, p2])


def validate(model: GeoLocModel, val, gallery: np.ndarray, device) -> dict:
    """Accuracy at every threshold, median and mean error and GeoScore of ``model`` on the store ``val``,
    through evaluation's own retrieval (geovario.evaluate.predict_source)."""
    from geovario.evaluate import frame_report, predict_source
    from geovario.predict import Predictor

    model.eval()
    try:
        frame = predict_source(Predictor.from_model(model, gallery, device), val, top_k=1, progress=False)
    finally:
        model.train()
    return frame_report(frame, admin=False)


def validation_row(summary: dict) -> dict:
    """The metrics.csv columns of one validation: val_acc_<t>km, val_median_km, val_mean_km, val_geoscore."""
    return ({f"val_acc_{k}km": v for k, v in summary["accuracy"].items()}
            | {"val_median_km": summary["median_km"], "val_mean_km": summary["mean_km"], "val_geoscore": summary["geoscore"]})


def autocast_enabled(train, device) -> bool:
    """Autocast (``train.amp``) on CUDA only: on CPU, bfloat16 matmuls are slower than float32 ones on the machines
    geovario is built on, and float16 ones slower still. (Tests force it on CPU to run the CUDA-only branches.)"""
    return bool(train.amp and device.type == "cuda")


def uses_loss_scaling(train, device) -> bool:
    """float16 autocast needs loss scaling for its narrow range; bfloat16 has float32's exponent and does not."""
    return autocast_enabled(train, device) and train.amp_dtype == "float16"


class Trainer:
    """One training run, on one process or as one rank of a torchrun job (see geovario.distributed).

    ``train.batch_size`` is the global batch: each of the W processes encodes batch_size / W samples,
    image and location embeddings are all-gathered with gradient, and the loss sees the same logits
    one process would. Every rank commits the gathered batch to the queue, so the queues stay
    identical. Only rank 0 writes logs and checkpoints.
    """

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True):
        run_dir = Path(run_dir)
        new_folder = not run_dir.exists()
        try:
            self._start(config, run_dir, resume, progress)
        except BaseException:
            world = getattr(self, "world", None)
            if new_folder and (world is None or world.is_main) and run_dir.is_dir() and not any(run_dir.iterdir()):
                try:
                    run_dir.rmdir()  # made only to check it can be written: a refused start leaves no trace
                except OSError:
                    pass
            raise

    def _start(self, config: Config, run_dir: Path, resume: bool, progress: bool) -> None:
        self.config, self.run_dir = config, run_dir
        t = config.train
        self.world, self.device = distributed.setup(t.device)
        geometry = loss_needs_geometry(config.loss.name, config.loss.__dict__)
        self.data = open_training_data(config, self.device, reference=geometry)
        if len(self.data) < t.batch_size:
            raise GeovarioError(f"config key train.batch_size: {t.batch_size} is larger than the {len(self.data)} training samples")
        self.sampler = DistributedBatchSampler(len(self.data), t.batch_size, t.seed, self.world)
        steps = self.sampler.steps_per_epoch
        self.total = steps * t.epochs if t.max_steps is None else min(t.max_steps, steps * t.epochs)
        if config.optim.warmup_steps >= self.total:
            raise GeovarioError(f"config key optim.warmup_steps: {config.optim.warmup_steps} warmup steps in a run of {self.total} "
                                "steps would keep the rate below optim.lr all run; warm up for fewer steps")
        # Everything is checked and built before anything is written: a refused start leaves no trace.
        self.val = None  # rank 0 validates
        fingerprint = self._on_main(lambda: self._check_run(resume))
        self.model = build_model(config, self.data.dim)
        self.ssl_heads = SimSiamHeads(self.model.config.embed_dim) if config.loss.name == "ssl" else None  # seeded by build_model
        if self.ssl_heads is not None and not (getattr(self.data, "views", 0) or config.data.view_noise):
            raise GeovarioError(f"config key data.train: the ssl loss needs two views of each image, and {config.data.train} has only "
                                "the plain features; extract it with `geovario extract --views K` (K >= 1), or set data.view_noise")
        check_step_memory(config, self.model.config, self.device, self.world.world_size)
        self.model = self.model.to(self.device)
        if self.ssl_heads is not None:
            self.ssl_heads = self.ssl_heads.to(self.device)
        self.encoders = _Encoders(self.model, self.ssl_heads)
        if self.world.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # The queues are kept identical by construction (and live outside the module); the module's only
            # buffers are the fixed random Fourier frequencies, the same on every rank: no sync per forward.
            self.encoders = DistributedDataParallel(self.encoders, device_ids=[self.device] if self.device.type == "cuda" else None,
                                                    forward_sync_buffers=False)
        self.negatives = build_negatives(config, self.data, self.world, geometry).to(self.device)
        self.gallery = gallery_positions(config.data.gallery, self.data, config, "data.gallery")
        fitted = None
        if loss_needs_variogram(config.loss.name, config.loss.__dict__):
            fitted = self._on_main(lambda: initial_variogram(config, self.data, self.run_dir, resume).to_dict())
        self.loss_fn = build_loss(config.loss.name, config.loss.__dict__, None if fitted is None else VariogramModel.from_dict(fitted))
        # what the optimizer trains: the model, and the ssl loss's heads beside it
        self.trained = self.model if self.ssl_heads is None else torch.nn.ModuleDict({"model": self.model, "ssl": self.ssl_heads})
        self.optimizer = build_optimizer(self.trained, config.optim)
        self.scheduler = Schedule(self.optimizer, config.optim, self.total)
        self.amp = torch.autocast(self.device.type, dtype=getattr(torch, t.amp_dtype), enabled=autocast_enabled(t, self.device))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=uses_loss_scaling(t, self.device))
        self.state = TrainState()
        self.learned_space = False
        if resume:
            if self.world.is_main:
                remove_stale_temporaries(self.run_dir)
            self.world.barrier()
            self.state = load_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.negatives, self.scaler,
                                         extra=self.ssl_heads)
            if self.state.variogram:
                set_variogram(self.loss_fn, VariogramModel.from_dict(self.state.variogram))
                self.learned_space = True
        elif self.world.is_main:  # the run starts: its config, its data's fingerprint and the variogram it fitted
            write_json(self.run_dir / "config.json", config.to_dict())
            write_json(self.run_dir / "data.json", {"train": config.data.images or config.data.train, "fingerprint": fingerprint})
            if fitted is not None and not config.loss.variogram:
                write_json(self.run_dir / "variogram.json", fitted)
        self.world.barrier()
        self.progress = progress and self.world.is_main
        self.last_candidates = None  # the latest step's candidates, for inspection

    def _on_main(self, work):
        """``work()`` on rank 0 only; its result, or the one line of its GeovarioError, reaches every rank, so no rank
        waits for ever on a rank that stopped."""
        result = problem = None
        if self.world.is_main:
            try:
                result = work()
            except GeovarioError as e:
                problem = str(e)
        result, problem = self.world.broadcast((result, problem))
        if problem:
            raise GeovarioError(problem)
        return result

    def _check_run(self, resume: bool) -> str:
        """The checks only rank 0 makes (the validation store, wandb, the run folder); the training data's fingerprint."""
        config = self.config
        self.val = open_validation_store(config, self.data.dim)
        if config.train.wandb:
            require_wandb()  # here, where every rank hears of it, not when rank 0 opens the log
        output_dir(self.run_dir)
        fingerprint = self.data.fingerprint()
        check_training_data(self.run_dir, fingerprint, config, resume)
        return fingerprint

    # --- one step ---

    def step(self) -> LossOutput:
        """One optimizer step on the next global batch; the gradients stay in ``.grad`` until the next."""
        t, step = self.config.train, self.state.step
        generator = step_generator(t.seed, step)
        rng = np.random.default_rng([t.seed, step])
        batch = self.data.batch(*self.sampler.batch(step), generator, self.device, second_view=self.ssl_heads is not None)
        embed = self.model.encode_images if self.learned_space else None
        candidates = self.negatives.candidates(batch, generator, rng, embed)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ssl_heads is not None:
            with self.amp:
                out = self.loss_fn(self._two_view_inputs(batch, candidates))
            self._stop_unless_finite(out.loss, step)
            self.scaler.scale(out.loss).backward()
        elif t.accumulate == 1:
            with self.amp:
                out = self.loss_fn(candidates.loss_inputs(*self.encoders(batch.features, candidates.locations)))
            self._stop_unless_finite(out.loss, step)
            self.scaler.scale(out.loss).backward()
        else:
            out = self._accumulated_step(batch.features, candidates, step)
        if candidates.excluded is not None:  # the rows' own queued entries, left out (negatives.queue)
            out.stats["own_entries_excluded"] = int(candidates.excluded.sum())
        if self.config.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trained.parameters(), self.config.optim.grad_clip)
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used, logged before any scheduler step
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.negatives.commit(candidates)
        self.last_candidates = candidates
        self.state.step += 1
        self.scheduler.after_step(end_of_epoch=self.state.step % self.sampler.steps_per_epoch == 0)
        refit = self.config.loss.refit_every
        if refit and self.state.step % refit == 0 and isinstance(self.data, StoreData):
            refitted = refit_on_learned(self.model, self.data, self.config, self.device, self.world)
            if refitted is not None:
                set_variogram(self.loss_fn, refitted)
                self.state.variogram, self.learned_space = refitted.to_dict(), True
        return out

    def _two_view_inputs(self, batch, candidates) -> LossInputs:
        """The ssl loss's inputs: each view's logits against the same columns, and SimSiam's outputs of both views."""
        images, locations, scale, z, p = self.encoders(batch.features, candidates.locations, batch.second)
        b = len(batch.features)
        inputs = candidates.loss_inputs(images[:b], locations, scale)
        inputs.second_view = candidates.loss_inputs(images[b:], locations, scale)
        inputs.siamese = (z[:b], z[b:], p[:b], p[b:])
        return inputs

    def _accumulated_step(self, features: torch.Tensor, candidates, step: int) -> LossOutput:
        """The whole batch's gradient in ``train.accumulate`` micro-batches (GradCache, Gao et al. 2021).

        1. Encode every micro-batch without a graph. 2. Take the loss of the whole batch on those
        embeddings as leaves: their gradients are the batch's. 3. Encode each micro-batch again with
        a graph and backpropagate its slice of those gradients. The parameters' gradients sum to the
        whole batch's, while only one micro-batch's activations are alive at a time.
        """
        parts = self.config.train.accumulate
        image_parts = torch.tensor_split(torch.arange(len(features)), parts)
        location_parts = torch.tensor_split(torch.arange(len(candidates.locations)), parts)
        with torch.no_grad(), self.amp:
            encoded = [self.encoders(features[i], candidates.locations[j]) for i, j in zip(image_parts, location_parts)]
        leaves = [torch.cat([e[k] for e in encoded]).detach().requires_grad_() for k in (0, 1)]
        scale = encoded[0][2].detach().requires_grad_()
        with self.amp:
            out = self.loss_fn(candidates.loss_inputs(leaves[0], leaves[1], scale))
        self._stop_unless_finite(out.loss, step)
        self.scaler.scale(out.loss).backward()
        syncing = self.encoders.no_sync if self.world.enabled else contextlib.nullcontext
        for part, (i, j) in enumerate(zip(image_parts, location_parts)):
            last = part == parts - 1
            with (contextlib.nullcontext() if last else syncing()), self.amp:  # DDP all-reduces once, on the last
                image, locations, part_scale = self.encoders(features[i], candidates.locations[j])
            # the scale's gradient is the whole batch's: it goes through the first micro-batch only
            torch.autograd.backward([image, locations, part_scale],
                                    [leaves[0].grad[i], leaves[1].grad[j], scale.grad if part == 0 else torch.zeros_like(scale)])
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
            what = f"the loss is {value:g}, not finite" if not math.isfinite(value) else "another process's loss is not finite"
            raise GeovarioError(f"step {step + 1}: {what}; stopped before updating the weights "
                                f"(the last good state: {kept} in {self.run_dir}). Lower optim.lr or check the data, then --resume")

    # --- the run ---

    def _keep_if_best(self, row: dict, step: int) -> None:
        """Write best/ (a model directory, atomically) when ``train.keep_best`` improved; state.best remembers it across resumes."""
        metric = self.config.train.keep_best
        if metric is None:
            return
        value, best = row[f"val_{metric}"], self.state.best
        if best is not None and not (value < best["value"] if metric in LOWER_IS_BETTER else value > best["value"]):
            return
        self.state.best = {"metric": metric, "value": value, "step": step}
        staged = self.run_dir / ".best.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        self._save_model(staged, extra={"best": self.state.best})
        replace_folder(staged, self.run_dir / "best")

    def _save_model(self, folder: Path, extra: dict | None = None) -> None:
        config = self.config
        save_model_dir(folder, self.model, backbone=config.data.backbone, gallery=self.gallery.astype(np.float32),
                       meta={"trained": {"config": config.name, "steps": self.state.step, "loss": config.loss.name,
                                         "processes": self.world.world_size, **(extra or {})}})

    def run(self) -> Path:
        """Train to the end, checkpointing into the run directory; returns the final model directory."""
        config, t, world = self.config, self.config.train, self.world
        log = MetricsLog(self.run_dir, self.state.step, wandb=t.wandb, project=t.wandb_project, name=config.name,
                         config=config.to_dict()) if world.is_main else None
        self.model.train()
        bar = progress(self.total, config.name, "step", initial=self.state.step, enabled=self.progress)
        window_start, window_samples = time.perf_counter(), 0
        # Store rows read by a thread, or images decoded by worker processes, for the coming steps.
        self.data.prefetch(self.sampler.batch, t.seed, self.state.step, self.total)
        while self.state.step < self.total:
            epoch = self.state.step // self.sampler.steps_per_epoch
            out = self.step()
            step = self.state.step
            window_samples += t.batch_size
            bar.update(1)
            end_of_epoch = step % self.sampler.steps_per_epoch == 0
            # Validation at every epoch end, every val_every steps, and at the last step (so a run cut short by
            # max_steps is validated too, and keep_best always has its best/).
            validating = self.val is not None and (end_of_epoch or step == self.total
                                                   or (t.val_every is not None and step % t.val_every == 0))
            if step % t.log_every == 0 or end_of_epoch or step == self.total or validating:
                rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
                loss = world.mean(float(out.loss.detach()))  # with local_loss, each rank holds its rows' loss
                if log is not None:
                    row = {"step": step, "epoch": epoch, "loss": loss, "lr": self.step_lr,
                           "samples_per_s": rate, **out.stats}
                    if validating:
                        row |= validation_row(validate(self.model, self.val, self.gallery, self.device))
                        self._keep_if_best(row, step)
                    log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{rate:.0f}")
                window_start, window_samples = time.perf_counter(), 0
            if step % t.checkpoint_every == 0 or end_of_epoch or step == self.total:
                if world.is_main:
                    save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.negatives, self.state, self.scaler,
                                    extra=self.ssl_heads)
                world.barrier()  # nobody runs ahead of a checkpoint it might resume from
        bar.close()
        if log is not None:
            log.close()
        final = self.run_dir / "model"
        if world.is_main:
            self._save_model(final)
        world.barrier()
        return final


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train, checkpointing into ``run_dir``; returns the final model directory (written by rank 0)."""
    return Trainer(config, run_dir, resume=resume, progress=progress).run()


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


RUN_FILES = ("config.json", "data.json", "metrics.csv", "checkpoints", "model", "best")  # what a started run has written


def check_training_data(run_dir: Path, fingerprint: str, config: Config, resume: bool) -> None:
    """A new run: refuse a folder where a run has trained already (it would overwrite parts of it). On --resume:
    refuse training data that changed since the run started (``data.json``, written when it started)."""
    record = run_dir / "data.json"
    source = config.data.images or config.data.train
    if not resume:
        found = [name for name in RUN_FILES if (run_dir / name).exists()]
        if found:
            raise GeovarioError(f"{run_dir}: holds a training run already ({', '.join(found)}); continue it with "
                                f"`geovario train --resume {run_dir}`, or give another --out")
        return
    if not record.is_file():
        raise GeovarioError(f"{run_dir}: no data.json, so the training data cannot be checked; start a new run")
    started = read_json(record, "run data record").get("fingerprint")
    if started != fingerprint:
        raise GeovarioError(f"{source}: the training data changed since the run started (fingerprint {str(started)[:12]} then, "
                            f"{fingerprint[:12]} now); resume only onto the data the run began with, or start a new run")
