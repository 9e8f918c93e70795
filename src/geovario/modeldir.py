"""A geovario model directory: ``config.json`` + ``model.safetensors`` + ``gallery.csv``.

``config.json`` records the architecture, the backbone the image head expects, the gallery file
and the sha256 of the weights, so a truncated or modified weights file is caught on load instead
of silently giving wrong answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geovario.errors import GeovarioError
from geovario.jsonio import read_json, write_json
from geovario.atomic import atomic_path, atomic_write_bytes, output_dir
from geovario.data.latlon_csv import read_latlon_csv
from geovario.hashing import sha256_file
from geovario.model import GeoLocModel, ModelConfig

FORMAT = "geovario-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GALLERY_FILE = "gallery.csv"
DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"


@dataclass
class ModelDir:
    """A loaded model directory."""

    path: Path
    model: GeoLocModel
    backbone: str
    gallery_path: Path | None
    weights_sha256: str
    meta: dict


def write_gallery_csv(path: Path, latlon: np.ndarray) -> None:
    """GeoCLIP's gallery format: a LAT,LON header and one row per location."""
    frame = pd.DataFrame({"LAT": latlon[:, 0], "LON": latlon[:, 1]})
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def save_model_dir(
    path: str | Path,
    model: GeoLocModel,
    *,
    backbone: str = DEFAULT_BACKBONE,
    gallery: np.ndarray | None = None,
    meta: dict | None = None,
) -> Path:
    """Write a model directory; ``gallery`` is an (N, 2) array of (lat, lon) degrees."""
    path = Path(path)
    output_dir(path)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights_path = path / WEIGHTS_FILE
    with atomic_path(weights_path) as tmp:
        save_file(weights, str(tmp), metadata={"format": FORMAT})
    if gallery is not None:
        write_gallery_csv(path / GALLERY_FILE, np.asarray(gallery))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "backbone": backbone,
        "gallery": GALLERY_FILE if (path / GALLERY_FILE).exists() else None,
        "weights_sha256": sha256_file(weights_path),
        **(meta or {}),
    }
    write_json(path / CONFIG_FILE, config)
    return path


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> ModelDir:
    """Load and verify a model directory; every problem is a one-line :class:`GeovarioError`."""
    path = Path(path)
    if not path.is_dir():
        raise GeovarioError(f"{path}: model directory not found (create one with `geovario weights geoclip --out {path}`)")
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise GeovarioError(f"{config_path}: missing; {path} is not a geovario model directory")
    config = read_json(config_path, "model config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise GeovarioError(f"{config_path}: not a geovario model config (expected \"format\": \"{FORMAT}\")")
    if not weights_path.is_file():
        raise GeovarioError(f"{weights_path}: missing")
    expected = config.get("weights_sha256")
    if not isinstance(expected, str) or len(expected) != 64:
        raise GeovarioError(f"{config_path}: no weights_sha256, so {weights_path} cannot be verified; if you trust the file, "
                            f"record its checksum with `geovario weights rehash {path}`")
    digest = sha256_file(weights_path)
    if digest != expected:
        raise GeovarioError(
            f"{weights_path}: sha256 {digest[:12]}… does not match config.json ({expected[:12]}…); "
            "the file is truncated or was modified"
        )
    model = _model_with_weights(config, config_path, weights_path)
    gallery = config.get("gallery")
    return ModelDir(
        path=path,
        model=model.to(device).eval(),
        backbone=config.get("backbone", DEFAULT_BACKBONE),
        gallery_path=(path / gallery) if gallery else None,
        weights_sha256=digest,
        meta=config,
    )


def _model_with_weights(config: dict, config_path: Path, weights_path: Path) -> GeoLocModel:
    """The architecture ``config`` describes, with the weights file loaded into it: readable, finite, every tensor
    present and of its shape, or one line saying which is not."""
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise GeovarioError(f"{weights_path}: cannot read safetensors file, truncated or corrupt ({e})") from None
    require_finite(weights, weights_path)
    try:
        model = GeoLocModel(ModelConfig.from_dict(config.get("model", {}), f"{config_path}: \"model\""))
    except ValueError as e:
        raise GeovarioError(str(e)) from None
    expected_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected_shapes.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected_shapes.keys())
    misshapen = [
        f"{k} {tuple(weights[k].shape)} != {shape}"
        for k, shape in expected_shapes.items()
        if k in weights and tuple(weights[k].shape) != shape
    ]
    if missing or unexpected or misshapen:
        found = "; ".join(
            f"{label} {items[:3]}" for label, items in
            (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if items
        )
        raise GeovarioError(f"{weights_path}: weights do not fit the architecture in config.json ({found})")
    model.load_state_dict(weights)
    return model


def require_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity: every prediction and report made with them would be NaN."""
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise GeovarioError(f"{path}: {bad[0]} holds NaN or infinity{more}; these weights cannot be used "
                            "(from a run that diverged, or a damaged file)")


def read_gallery(path: str | Path) -> np.ndarray:
    """A GPS gallery CSV (GeoCLIP's LAT,LON) as (N, 2) float32, GeoCLIP's own dtype for it."""
    return read_latlon_csv(path, "gallery")


def rehash_model_dir(path: str | Path) -> str:
    """Record the sha256 of a model directory's weights in its config.json, after checking they load."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    config = read_json(config_path, "model config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise GeovarioError(f"{config_path}: not a geovario model config (expected \"format\": \"{FORMAT}\")")
    if not (path / WEIGHTS_FILE).is_file():
        raise GeovarioError(f"{path / WEIGHTS_FILE}: missing")
    _model_with_weights(config, config_path, path / WEIGHTS_FILE)  # the weights must load and fit the architecture
    config["weights_sha256"] = sha256_file(path / WEIGHTS_FILE)
    write_json(config_path, config)
    return config["weights_sha256"]
