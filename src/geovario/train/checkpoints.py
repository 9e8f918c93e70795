"""Exact checkpoints: everything a run needs to continue bit for bit after ``kill -9``.

``checkpoints/step-N/`` holds the model weights, the optimizer state with the torch RNG state, the
negative source's state (GeoCLIP's queues) and ``state.json`` (step, scheduler, refitted variogram).
It is written to a temporary folder, synced, and renamed into place; ``latest`` then points at it.
``checksums.json`` holds every file's sha256, checked before a resume reads anything.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geovario.atomic import atomic_write_bytes, output_dir, replace_folder
from geovario.errors import GeovarioError
from geovario.hashing import sha256_file
from geovario.jsonio import read_json, write_json
from geovario.modeldir import require_finite


CHECKSUMS = "checksums.json"


@dataclass
class TrainState:
    step: int = 0
    variogram: dict | None = None  # the fit on learned embeddings, once refitted
    best: dict | None = None  # train.keep_best: {"metric", "value", "step"} of the model in best/


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, negatives, state: TrainState, scaler=None, keep: int = 2,
                    extra: torch.nn.Module | None = None) -> Path:
    """Write checkpoints/step-N/ through a temporary folder renamed into place, then point ``latest`` at it.
    ``extra``: modules trained beside the model but not part of it (the ssl loss's SimSiam heads), in extra.safetensors."""
    folder = run_dir / "checkpoints"
    output_dir(folder)
    final = folder / f"step-{state.step:08d}"
    tmp = folder / f".tmp-step-{state.step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(_cpu(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_cpu(negatives.state_dict()), str(tmp / "negatives.safetensors"))
        if extra is not None:
            save_file(_cpu(extra.state_dict()), str(tmp / "extra.safetensors"))
        opt = optimizer.state_dict()
        tensors = {f"{pid}.{name}": value for pid, slots in opt["state"].items() for name, value in slots.items()}
        tensors["torch_rng"] = torch.get_rng_state()
        save_file(_cpu(tensors), str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {"step": state.step, "variogram": state.variogram, "best": state.best,
                                        "scheduler": scheduler.state_dict(), "param_groups": opt["param_groups"],
                                        "grad_scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None})
        write_json(tmp / CHECKSUMS, {path.name: sha256_file(path) for path in sorted(tmp.iterdir())})
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    except (OSError, SafetensorError, GeovarioError) as e:  # a full disk, a read-only folder: the last checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        latest = folder / "latest"
        kept = f"checkpoints/{latest.read_text().strip()}" if latest.is_file() else "none yet"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).split(": ", 1)[-1]
        raise GeovarioError(f"{final}: cannot write the checkpoint of step {state.step} ({reason}); the last one ({kept}) "
                            "is intact: free space, then --resume") from None
    replace_folder(tmp, final)
    atomic_write_bytes(folder / "latest", final.name.encode())
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, negatives, scaler=None, extra: torch.nn.Module | None = None) -> TrainState:
    folder = run_dir / "checkpoints"
    latest = folder / "latest"
    if not latest.is_file():
        raise GeovarioError(f"{run_dir}: no checkpoint to resume from")
    path = folder / latest.read_text().strip()
    verify_checkpoint(path)
    try:
        weights = load_file(path / "model.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
        source = negatives.complete_state(load_file(path / "negatives.safetensors"))
        extra_weights = None
        if extra is not None:
            if not (path / "extra.safetensors").is_file():
                raise GeovarioError(f"{path}: checkpoint from a run without the ssl loss's heads (extra.safetensors); "
                                    "resume it with its own loss")
            extra_weights = load_file(path / "extra.safetensors")
    except (SafetensorError, OSError) as e:
        raise GeovarioError(f"{path}: unreadable checkpoint ({e})") from None
    require_finite(weights, path / "model.safetensors")
    state = read_json(path / "state.json", "checkpoint state")
    _check_shapes(path, model.state_dict(), weights, "checkpoint from an incompatible model")
    _check_shapes(path, negatives.state_dict(), source, "checkpoint from a run with other negatives (another queue size or source)")
    model.load_state_dict(weights)
    negatives.load_state_dict(source)
    if extra is not None:
        require_finite(extra_weights, path / "extra.safetensors")
        _check_shapes(path, extra.state_dict(), extra_weights, "checkpoint from a run with other ssl heads")
        extra.load_state_dict(extra_weights)
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key != "torch_rng":
            pid, name = key.split(".", 1)
            slots.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["torch_rng"])
    if scaler is not None and scaler.is_enabled() and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    return TrainState(step=state["step"], variogram=state["variogram"], best=state.get("best"))


def _check_shapes(path: Path, ours: dict, found: dict, problem: str) -> None:
    expected = {k: tuple(v.shape) for k, v in ours.items()}
    shapes = {k: tuple(v.shape) for k, v in found.items()}
    if expected != shapes:
        diff = sorted(k for k in expected.keys() | shapes.keys() if expected.get(k) != shapes.get(k))
        raise GeovarioError(f"{path}: {problem} (differs at {diff[:3]})")


def verify_checkpoint(path: Path) -> None:
    """Every file of the checkpoint has the sha256 recorded when it was written."""
    recorded = read_json(path / CHECKSUMS, "checkpoint checksums")
    files = {p.name for p in path.iterdir() if p.name != CHECKSUMS}
    if not isinstance(recorded, dict) or set(recorded) != files:
        raise GeovarioError(f"{path}: its files ({', '.join(sorted(files))}) are not the ones written; the checkpoint was altered")
    for name, digest in recorded.items():
        if sha256_file(path / name) != digest:
            raise GeovarioError(f"{path / name}: sha256 differs from the one recorded when it was written; "
                                "the checkpoint was modified or truncated")


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Checkpoint folders a killed run left half-written (``.tmp-step-*``): never valid, only disk."""
    stale = sorted((run_dir / "checkpoints").glob(".tmp-step-*"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale
