"""Find an image by its id when a dataset's layout does not spell out the folder (OSV5M, Streetscapes)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


@functools.lru_cache(maxsize=4)
def images_by_stem(folder: Path) -> dict[str, Path]:
    """One walk of ``folder``: file stem -> path, for every image below it."""
    found: dict[str, Path] = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(stem, Path(root) / name)
    return found


def find_by_stem(image_id: str, folder: Path, guesses: tuple[str, ...] = ()) -> Path | None:
    """Try the documented locations first (cheap), then the walked index."""
    for guess in guesses:
        candidate = folder / guess
        if candidate.is_file():
            return candidate
    return images_by_stem(folder.resolve()).get(image_id)
