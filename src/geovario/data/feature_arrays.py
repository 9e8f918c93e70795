"""(N, D) feature arrays from elsewhere (``--features F.npy``): read without unpickling, and checked.

``predict``, ``evaluate``, ``variogram`` and ``data import`` all take such arrays; each problem is one
line naming the file and, for NaN or inf, the first bad row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geovario.errors import GeovarioError

BLOCK = 65536  # rows checked at a time, so a memory-mapped array is never read whole


def load_features_file(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Read an .npy array of backbone features without ever unpickling (``mmap``: memory-mapped, read lazily)."""
    path = Path(path)
    if not path.is_file():
        raise GeovarioError(f"{path}: features file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise GeovarioError(f"{path}: not a readable .npy array ({e})") from None
    except (OSError, EOFError) as e:
        raise GeovarioError(f"{path}: empty, truncated or not an .npy file ({e})") from None


def check_feature_array(features: np.ndarray, source: str = "features", expected_dim: int | None = None) -> np.ndarray:
    """``features`` as an (N, D) floating-point array of finite values, else one line naming ``source``.

    With ``expected_dim`` (a model's input width), a 1-D array of that many values is one row. The
    array is returned as it was given (a memory map stays one); callers cast where they compute.
    """
    features = np.asarray(features) if not isinstance(features, np.ndarray) else features
    if features.ndim == 1 and expected_dim is not None:
        features = features[None, :]
    width = expected_dim if expected_dim is not None else "D"
    if features.ndim != 2:
        raise GeovarioError(f"{source}: expected an (N, {width}) array of features, got shape {features.shape}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise GeovarioError(f"{source}: no feature rows (shape {features.shape})")
    if expected_dim is not None and features.shape[1] != expected_dim:
        raise GeovarioError(f"{source}: features are {features.shape[1]}-d but the model expects {expected_dim}-d (shape {features.shape})")
    if not np.issubdtype(features.dtype, np.floating):
        raise GeovarioError(f"{source}: features of dtype {features.dtype}; expected float16, float32 or float64 "
                            "(integer, string or object arrays are not embeddings)")
    for start in range(0, len(features), BLOCK):
        finite = np.isfinite(features[start : start + BLOCK]).all(axis=1)
        if not finite.all():
            bad = start + int(np.argmin(finite))
            raise GeovarioError(f"{source}: row {bad} contains NaN or inf")
    return features
