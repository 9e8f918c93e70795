"""What a run logs: ``metrics.csv`` (one row per logged step, rewritten exactly on resume), TensorBoard
whenever the tensorboard package is installed, and Weights & Biases when ``train.wandb`` asks for it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from geovario.atomic import atomic_path
from geovario.errors import GeovarioError
from geovario.jsonio import read_json, write_json


class MetricsLog:
    """``metrics.csv`` beside a TensorBoard writer (when the tensorboard package is installed)."""

    def __init__(self, run_dir: Path, resumed_at: int, wandb: bool = False, project: str = "geovario", name: str = "",
                 config: dict | None = None):
        self.path = run_dir / "metrics.csv"
        _truncate(self.path, resumed_at)
        self.tensorboard = _tensorboard(run_dir)
        self.wandb = _wandb_run(run_dir, project, name, config) if wandb else None

    def write(self, row: dict) -> None:
        _append(self.path, row)
        scalars = {k: v for k, v in row.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, row["step"])
        if self.wandb is not None:
            self.wandb.log(scalars | {"epoch": row["epoch"]}, step=row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def require_wandb():
    """The wandb module, or one line naming the key that asked for it."""
    try:
        import wandb
    except ImportError:
        raise GeovarioError("config key train.wandb: the wandb package is not installed (pip install wandb), "
                            "or set train.wandb: false") from None
    return wandb


def _wandb_run(run_dir: Path, project: str, name: str, config: dict | None):
    """A W&B run that a --resume continues: its id is kept in the run directory (wandb.json)."""
    wandb = require_wandb()
    record = run_dir / "wandb.json"
    run_id = read_json(record, "W&B run record")["id"] if record.is_file() else wandb.util.generate_id()
    write_json(record, {"id": run_id, "project": project})
    return wandb.init(project=project, name=name or None, id=run_id, resume="allow", config=config, dir=str(run_dir))


def _truncate(path: Path, step: int) -> None:
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


def _append(path: Path, row: dict) -> None:
    try:
        _append_row(path, row)
    except OSError as e:  # a full disk: one line, and the run stops at its last checkpoint
        raise GeovarioError(f"{path}: cannot write ({e.strerror or e}); free space, then --resume") from None


def _append_row(path: Path, row: dict) -> None:
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
