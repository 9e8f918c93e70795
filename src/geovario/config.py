"""Experiment configs: one YAML file per experiment, overridable with ``--set key=value``.

Every key is declared below with its type and default; an unknown key, a wrong type or an
inconsistent combination is a one-line error that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from geovario.errors import GeovarioError


@dataclass
class DataConfig:
    train: str = ""  # feature store to train on (required)
    val: str | None = None  # feature store for validation at the end of every epoch
    gallery: str | None = None  # LAT,LON CSV or store for validation and the final model (default: train positions)
    gallery_max: int = 100_000  # train positions kept as the default gallery (GeoCLIP's is 100K of MP-16)
    use_views: bool = True  # sample one stored augmented view per step when the store has them
    # Without stored views: feed each image's features plus Gaussian noise of this norm relative to theirs (a
    # feature-space stand-in for augmentation, e.g. the ssl loss's two views on a simulated world); 0: none
    view_noise: float = 0.0
    images: str | None = None  # image-level training instead: a dataset CSV or photo folder...
    images_dir: str | None = None  # ...its images folder...
    backbone: str = "openai/clip-vit-large-patch14"  # ...and the frozen backbone run on every step
    workers: int | None = None  # ...decoded ahead in this many processes (default: the cores; 0: in the training process)
    expects: str = ""  # the dataset this experiment was designed for (documentation)


@dataclass
class ModelSection:
    init: str = "random"  # random | geoclip | path to a geovario model directory
    geoclip_from: str | None = None  # folder of GeoCLIP release files for init: geoclip (default: find or download)
    queue_size: int = 4096  # GeoCLIP 1.3.0's GPS queue (batch + queue negatives; kept by geovario.negatives)
    # Shapes; unset, a random model takes GeoCLIP 1.3.0's (512, 1024, 256, [1, 16, 256]) and a
    # pretrained one keeps its own. Set against a pretrained model, they must agree with it.
    embed_dim: int | None = None
    hidden_dim: int | None = None
    rff_dim: int | None = None
    sigmas: list[float] | None = None


@dataclass
class LossSection:
    name: str = "infonce"  # infonce | semivariogram | hcl_weighted | hcl_debiased | triplet | haversine_smoothing | ssl | combined
    # semivariogram (DESIGN.md §4; defaults documented in geovario/losses/semivariogram.py)
    mode: str = "paper"  # paper | soft_positives | penalty | logit_abs | logit_excess | beta_abs | beta_excess (thesis variants)
    theta1_km: float | None = None  # hard negatives at h >= theta1 (default: the variogram's range)
    theta2_km: float = 25.0  # false negatives at h <= theta2
    s1: float = 5.0
    s2: float = 5.0
    mask_km: float | None = None
    penalty_range: str = "effective"  # where the thesis modes' excess stops: the variogram's range, or the thesis function's own rule
    variogram: str | None = None  # fitted variogram JSON; default: fit on the train store before training
    variogram_model: str = "stable"  # fitted on log lags with equal bin weights (variogram.fit_for_loss)
    variogram_bins: int = 40
    refit_every: int | None = None  # re-estimate on the learned embeddings every N steps
    # hcl_weighted / hcl_debiased (thesis: beta = 1, tau+ = 0.1)
    beta: float = 1.0
    tau_plus: float = 0.1
    # triplet (thesis: margin 1)
    margin: float = 1.0
    distance: str = "cosine"  # cosine | l2
    # haversine_smoothing: targets decay as exp(-km / tau) (PIGEON's 75 km)
    tau_km: float = 75.0
    # ssl: InfoNCE on two stored views + this weight times SimSiam's loss (thesis: 0.9 clip + 0.1 simsiam)
    ssl_weight: float = 0.1
    # combined: [{name: infonce, weight: 0.5}, ...]
    parts: list[dict] = field(default_factory=list)


@dataclass
class NegativesSection:
    source: str = "queue"  # queue (GeoCLIP: batch + GPS queue) | gallery (per-sample gallery negatives)
    #                        | neighbourhood (the thesis's get_neg: model.queue_size negatives from the batch's neighbourhoods)
    batch_noise_m: float = 150.0  # thesis: 150 m on batch GPS
    queue_noise_m: float = 1000.0  # and 1000 m on queue GPS
    selection: str = "mixed"  # gallery negatives: random | far | near | mixed (half near, half far)
    k: int = 64  # gallery negatives per sample (thesis: 64 for InfoNCE, 4 x batch for triplet)
    far_km: float = 2500.0  # "far" means at least this far from the true location
    exclude_km: float = 1.0  # a negative lies at least this far from the true location (closer neighbours are left out)
    gallery: str | None = None  # CSV or store to draw from (default: train positions)
    neighbours: int = 8  # neighbourhood: each batch location's k nearest are "near", its next k "far" (thesis: 8)


@dataclass
class OptimSection:
    lr: float = 3e-5  # thesis / GeoCLIP
    weight_decay: float = 1e-6
    # The learning-rate schedule. "step": GeoCLIP's StepLR, the rate times step_gamma after every epoch.
    # "cosine": a linear warmup over warmup_steps optimizer steps, then cosine decay to min_lr at the
    # last step (Loshchilov & Hutter 2017, as open_clip and most CLIP fine-tuning recipes use).
    schedule: str = "step"  # step | cosine
    step_gamma: float = 0.87  # StepLR(step_size=1 epoch, gamma=0.87)
    warmup_steps: int = 0  # cosine only: steps of linear warmup from lr / warmup_steps up to lr
    min_lr: float = 0.0  # cosine only: the rate at the last step
    # Weight decay on every trained parameter (GeoCLIP's Adam), or, with decay_weights_only, on the
    # weight matrices alone: no decay on biases, norm layers or the logit scale (open_clip's rule,
    # every parameter with fewer than 2 dimensions).
    decay_weights_only: bool = False
    grad_clip: float | None = None


@dataclass
class TrainSection:
    batch_size: int = 128  # thesis; the global batch, split evenly over torchrun's processes
    local_loss: bool = False  # under torchrun: each process takes the loss of its own rows only (open_clip's --local-loss)
    epochs: int = 10
    max_steps: int | None = None  # stop early after this many steps
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # autocast on CUDA (nothing on CPU)
    amp_dtype: str = "bfloat16"  # bfloat16 | float16; float16 adds a dynamic gradient scaler (torch.amp.GradScaler)
    # Split every step's encoder passes into this many micro-batches. The embeddings' gradients are
    # cached (GradCache, Gao et al. 2021; open_clip's accum_freq), so the update is the one of the whole
    # train.batch_size batch, every negative included, while activations take 1/accumulate of the memory.
    accumulate: int = 1
    checkpoint_every: int = 500  # steps; also at every epoch end and at the end
    log_every: int = 10
    val_every: int | None = None  # also validate on data.val every this many steps (it always does at epoch ends)
    # Keep best/: the model at the validation with the best value of this metric, one of acc_<t>km
    # (t in 1, 25, 200, 750, 2500), geoscore (higher is better), median_km or mean_km (lower is better).
    keep_best: str | None = None
    wandb: bool = False  # also log to Weights & Biases (needs `pip install wandb`; TensorBoard logs whenever installed)
    wandb_project: str = "geovario"
    out: str = ""  # run directory (default runs/<name>)


@dataclass
class Config:
    name: str = "experiment"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    negatives: NegativesSection = field(default_factory=NegativesSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "loss.name": ("infonce", "semivariogram", "hcl_weighted", "hcl_debiased", "triplet", "haversine_smoothing", "ssl", "combined"),
    "loss.mode": ("paper", "soft_positives", "penalty", "logit_abs", "logit_excess", "beta_abs", "beta_excess"),
    "loss.penalty_range": ("effective", "thesis"),
    "loss.distance": ("cosine", "l2"),
    "loss.variogram_model": ("spherical", "exponential", "gaussian", "stable"),
    "negatives.source": ("queue", "gallery", "neighbourhood"),
    "negatives.selection": ("random", "far", "near", "mixed"),
    "model.init": None,  # free-form: checked when loading
    "optim.schedule": ("step", "cosine"),
    "train.amp_dtype": ("bfloat16", "float16"),
    "train.keep_best": ("acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km", "geoscore", "median_km", "mean_km"),
}


COMBINABLE = [name for name in CHOICES["loss.name"] if name not in ("ssl", "combined")]  # ssl needs its own step
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _check_type(key: str, value, annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if annotation is float and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; the key says it is a number
    if annotation is int and isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        value = int(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise GeovarioError(f"config key {key}: must be a finite number, got {value}")
        return float(value)
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is str and isinstance(value, str):
        return value
    if origin is list and isinstance(value, list):
        inner = typing.get_args(annotation)[0]
        return [_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if annotation is dict and isinstance(value, dict):
        return value
    expected = getattr(annotation, "__name__", str(annotation))
    raise GeovarioError(f"config key {key}: expected {expected}, got {type(value).__name__} {value!r}")


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise GeovarioError(f"config key {prefix.rstrip('.') or '(top level)'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise GeovarioError(f"unknown config key {path} (known in {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(known))})")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value or {}, f"{path}.")
        else:
            kwargs[key] = _check_type(path, value, hints[key])
            if path in CHOICES and CHOICES[path] and kwargs[key] is not None and kwargs[key] not in CHOICES[path]:
                raise GeovarioError(f"config key {path}: {kwargs[key]!r} is not one of {', '.join(CHOICES[path])}")
    return cls(**kwargs)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """``section.key=value`` strings, the value parsed as YAML (so 3e-5, true, null and [1, 2] work)."""
    for item in overrides:
        if "=" not in item:
            raise GeovarioError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise GeovarioError(f"--set {key}: cannot parse {raw!r} ({e})") from None
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise GeovarioError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = value
    return values


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise GeovarioError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise GeovarioError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise GeovarioError(f"{path}: a config must be a mapping of sections")
    config = _build(Config, apply_overrides(values, overrides or []), "")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks across keys: every message names the key to change."""
    t, loss, neg = config.train, config.loss, config.negatives
    for key, value in (("train.batch_size", t.batch_size), ("train.epochs", t.epochs), ("train.checkpoint_every", t.checkpoint_every),
                       ("train.log_every", t.log_every), ("negatives.k", neg.k), ("negatives.neighbours", neg.neighbours), ("loss.variogram_bins", loss.variogram_bins),
                       ("train.max_steps", t.max_steps), ("loss.refit_every", loss.refit_every), ("model.queue_size", config.model.queue_size),
                       ("data.gallery_max", config.data.gallery_max), ("train.accumulate", t.accumulate),
                       ("train.val_every", t.val_every), ("model.embed_dim", config.model.embed_dim),
                       ("model.hidden_dim", config.model.hidden_dim), ("model.rff_dim", config.model.rff_dim)):
        if value is not None and value < 1:
            raise GeovarioError(f"config key {key}: must be at least 1, got {value}")
    for key, value in (("optim.weight_decay", config.optim.weight_decay), ("negatives.batch_noise_m", neg.batch_noise_m),
                       ("negatives.queue_noise_m", neg.queue_noise_m), ("negatives.far_km", neg.far_km),
                       ("negatives.exclude_km", neg.exclude_km), ("data.view_noise", config.data.view_noise), ("loss.s1", loss.s1), ("loss.s2", loss.s2),
                       ("loss.theta2_km", loss.theta2_km), ("loss.beta", loss.beta), ("loss.margin", loss.margin)):
        if value < 0:
            raise GeovarioError(f"config key {key}: must not be negative, got {value}")
    for key, value in (("loss.theta1_km", loss.theta1_km), ("loss.mask_km", loss.mask_km), ("optim.grad_clip", config.optim.grad_clip),
                       ("loss.tau_km", loss.tau_km)):
        if value is not None and value <= 0:
            raise GeovarioError(f"config key {key}: must be positive (or null), got {value}")
    sigmas = config.model.sigmas
    if sigmas is not None and (not sigmas or any(not (math.isfinite(v) and v > 0) for v in sigmas)):
        raise GeovarioError(f"config key model.sigmas: a non-empty list of positive scales (GeoCLIP's [1, 16, 256]), got {sigmas}")
    optim = config.optim
    if optim.warmup_steps < 0 or optim.min_lr < 0:
        raise GeovarioError("config keys optim.warmup_steps and optim.min_lr: must not be negative")
    if optim.schedule == "step" and (optim.warmup_steps or optim.min_lr):
        key = "optim.warmup_steps" if optim.warmup_steps else "optim.min_lr"
        raise GeovarioError(f"config key {key}: belongs to optim.schedule: cosine (the step schedule has neither)")
    if t.accumulate > t.batch_size:
        raise GeovarioError(f"config key train.accumulate: {t.accumulate} micro-batches are more than train.batch_size {t.batch_size} samples")
    if (t.keep_best or t.val_every) and not config.data.val:
        raise GeovarioError(f"config key train.{'keep_best' if t.keep_best else 'val_every'}: needs a validation store in data.val")
    if not 0 < config.optim.step_gamma <= 1:
        raise GeovarioError(f"config key optim.step_gamma: must lie in (0, 1], got {config.optim.step_gamma}")
    if not 0 <= loss.tau_plus < 1:
        raise GeovarioError(f"config key loss.tau_plus: must lie in [0, 1), got {loss.tau_plus}")
    if t.seed < 0:
        raise GeovarioError(f"config key train.seed: must not be negative, got {t.seed}")
    if config.data.workers is not None and config.data.workers < 0:
        raise GeovarioError(f"config key data.workers: must not be negative (0 decodes in the training process), got {config.data.workers}")
    if t.batch_size < 2 and neg.source == "queue":
        raise GeovarioError("config key train.batch_size: batch negatives need at least 2 samples per batch")
    if not 0 <= loss.ssl_weight <= 1:
        raise GeovarioError(f"config key loss.ssl_weight: must lie in [0, 1], got {loss.ssl_weight}")
    if loss.name == "ssl" and t.accumulate > 1:
        raise GeovarioError("config key train.accumulate: the ssl loss's batch norm needs the whole batch in one pass; use 1")
    if loss.name == "ssl" and config.data.images:
        raise GeovarioError("config key data.images: the ssl loss trains on two stored views of each image; extract a store "
                            "with `geovario extract --views K` and set data.train")
    if loss.mode == "soft_positives" and loss.mask_km is not None:
        raise GeovarioError("config key loss.mask_km: it would mask the near look-alikes that mode soft_positives counts as partial "
                            "positives; unset it, or use mode: paper")
    if t.local_loss and neg.source == "neighbourhood":
        raise GeovarioError("config key train.local_loss: the neighbourhood negatives are drawn for the whole batch and every row "
                            "meets all of them; use negatives.source: queue for open_clip's local loss")
    if neg.source == "queue" and config.model.queue_size < t.batch_size:
        raise GeovarioError(f"config key model.queue_size: {config.model.queue_size} is smaller than train.batch_size "
                            f"{t.batch_size}; the queue must hold at least one batch")
    if not config.data.train and not config.data.images:
        raise GeovarioError("config key data.train: no training store given (or data.images for image-level training)")
    if config.optim.lr <= 0:
        raise GeovarioError(f"config key optim.lr: must be positive, got {config.optim.lr}")
    if optim.min_lr > optim.lr:
        raise GeovarioError(f"config key optim.min_lr: {optim.min_lr} is above optim.lr {optim.lr}")
    if loss.name == "combined":
        if not loss.parts:
            raise GeovarioError("config key loss.parts: a combined loss needs parts, e.g. [{name: infonce, weight: 1.0}]")
        for i, part in enumerate(loss.parts):
            if set(part) - {"name", "weight"} or part.get("name") not in COMBINABLE or not isinstance(part.get("weight", 1.0), (int, float)):
                raise GeovarioError(f"config key loss.parts[{i}]: expected {{name: <loss>, weight: <number>}}, got {part}")
            part.setdefault("weight", 1.0)


# What --resume may change: how long the run goes on, how often it logs and checkpoints, where it runs.
# Anything else (the data, the model, the loss, the optimiser's settings) would silently not apply, or
# apply to half a run, so it is refused.
RESUMABLE_KEYS = ("train.max_steps", "train.epochs", "train.log_every", "train.checkpoint_every", "train.device", "data.workers")


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run directory was started with (its ``config.json``), with ``--set`` overrides, for ``--resume``.

    Only :data:`RESUMABLE_KEYS` may take another value than the run started with."""
    from geovario.jsonio import read_json

    saved = Path(run_dir) / "config.json"
    if not saved.is_file():
        raise GeovarioError(f"{run_dir}: no config.json; not a geovario run directory")
    values = read_json(saved, "run config")
    started = _build(Config, values, "").to_dict()
    config = _build(Config, apply_overrides(values, overrides or []), "")
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        section, _, name = key.partition(".")
        before, after = started.get(section, {}).get(name), config.to_dict().get(section, {}).get(name)
        if key not in RESUMABLE_KEYS and before != after:
            raise GeovarioError(f"--set {key}: the run in {run_dir} started with {key} = {before!r}, and a resumed run keeps "
                                f"its config; on --resume only {', '.join(RESUMABLE_KEYS)} may change. "
                                f"Start a new run to change {key}")
    validate(config)
    return config
