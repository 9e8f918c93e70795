"""JSON files: read with a one-line error naming the file, write atomically."""

from __future__ import annotations

import json
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
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())
