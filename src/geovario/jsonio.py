"""JSON files: read with a one-line error naming the file, write atomically, and never with NaN or infinity in them
(reports, manifests and fitted models are read by people and by other tools as numbers they can trust)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from geovario.atomic import atomic_write_bytes
from geovario.errors import GeovarioError


def read_json(path: str | Path, what: str = "file"):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GeovarioError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise GeovarioError(f"{path}: is a folder, expected a {what} (JSON)") from None
    except OSError as e:
        raise GeovarioError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GeovarioError(f"{path}: not valid JSON ({e})") from None


def write_json(path: str | Path, data) -> None:
    try:
        text = json.dumps(data, indent=1, allow_nan=False)
    except ValueError:
        raise GeovarioError(f"{path}: not written: {_first_non_finite(data)} is not a finite number") from None
    atomic_write_bytes(path, (text + "\n").encode())


def _first_non_finite(data, where: str = "") -> str:
    """The key path of the first NaN or infinity in ``data`` (e.g. ``accuracy.25``)."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "the value"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return ""
