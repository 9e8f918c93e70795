"""Opening user images safely: one clear error per bad file, never a crash deep inside PIL."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from geovario.errors import GeovarioError


def load_rgb(path: str | Path, exif_transpose: bool = True) -> Image.Image:
    """Decode an image fully and return it as RGB (see :func:`open_image`)."""
    return open_image(path, exif_transpose)[0]


class ImageError(GeovarioError):
    """An image that can't be used; ``kind`` is missing, not_image, too_large or corrupt."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def open_image(path: str | Path | BinaryIO, exif_transpose: bool = True, name: str | None = None,
               max_pixels: int | None = None) -> tuple[Image.Image, str]:
    """Decode an image fully; return it as RGB together with its original PIL mode.

    CMYK, greyscale, palette and alpha images are converted the way CLIP's processor converts them
    (``convert("RGB")``), so they are used, not dropped.

    ``exif_transpose`` turns camera photos upright by their EXIF orientation, as any photo viewer
    shows them (GeoCLIP feeds them unrotated; the two differ only for rotated photos). ``path`` may
    also be an open binary file (an upload), named ``name`` in messages. An image of more than
    ``max_pixels`` (default: PIL's ``Image.MAX_IMAGE_PIXELS``) is refused from its header, before any
    decoding. Raises a one-line :class:`ImageError` for a missing, non-image, truncated or oversized file.
    """
    if isinstance(path, (str, Path)):
        path = name = Path(path)
        if not path.exists():
            raise ImageError(f"{path}: file not found", "missing")
        if path.is_dir():
            raise ImageError(f"{path}: is a directory, not an image", "missing")
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # PIL warns before it raises for oversized images; the error below says it once.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if limit and image.width * image.height > limit:
                    raise ImageError(f"{name}: refused, {image.width}x{image.height} pixels is more than the limit of {limit:,}",
                                     "too_large")
                image.load()  # decode now, so truncation surfaces here
                mode = image.mode
                if exif_transpose:
                    image = ImageOps.exif_transpose(image)
                return image.convert("RGB"), mode
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image PIL can read", "not_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused, too many pixels ({e})", "too_large") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: corrupt or truncated image ({e})", "corrupt") from None
