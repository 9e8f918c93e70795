"""What a run logs: ``metrics.csv`` (one row per logged step, rewritten exactly on resume) and TensorBoard."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from geovario.atomic import atomic_path


class MetricsLog:
    """``metrics.csv`` beside a TensorBoard writer (when the tensorboard package is installed)."""

    def __init__(self, run_dir: Path, resumed_at: int):
        self.path = run_dir / "metrics.csv"
        _truncate(self.path, resumed_at)
        self.tensorboard = _tensorboard(run_dir)

    def write(self, row: dict) -> None:
        _append(self.path, row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


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
