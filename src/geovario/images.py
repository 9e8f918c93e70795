"""Opening user images safely: one clear error per bad file, never a crash deep inside PIL."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from geovario.errors import GeovarioError


def load_rgb(path: str | Path, exif_transpose: bool = True) -> Image.Image:
    """Decode an image fully and return it as RGB (see :func:`open_image`)."""
    return open_image(path, exif_transpose)[0]


def open_image(path: str | Path, exif_transpose: bool = True) -> tuple[Image.Image, str]:
    """Decode an image fully; return it as RGB together with its original PIL mode.

    CMYK, greyscale, palette and alpha images are converted the way CLIP's processor converts them
    (``convert("RGB")``), so they are used, not dropped.

    ``exif_transpose`` turns camera photos upright by their EXIF orientation, as any photo viewer
    shows them (GeoCLIP feeds them unrotated; the two differ only for rotated photos). Raises a
    one-line :class:`GeovarioError` for a missing, non-image, truncated or oversized file.
    """
    path = Path(path)
    if not path.exists():
        raise GeovarioError(f"{path}: file not found")
    if path.is_dir():
        raise GeovarioError(f"{path}: is a directory, not an image")
    try:
        with warnings.catch_warnings():
            # PIL warns before it raises for oversized images; the error below says it once.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode now, so truncation surfaces here
                mode = image.mode
                if exif_transpose:
                    image = ImageOps.exif_transpose(image)
                return image.convert("RGB"), mode
    except UnidentifiedImageError:
        raise GeovarioError(f"{path}: not an image PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise GeovarioError(f"{path}: refused, too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise GeovarioError(f"{path}: corrupt or truncated image ({e})") from None
