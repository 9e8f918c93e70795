"""One pipeline from images to backbone features, shared by ``predict``, ``serve`` and ``extract``.

    images (files or archive members) -> decode + preprocess (in worker processes) -> batches of pixels
    -> the backbone, ``batch_size`` at a time -> features

A bad image never stops the pipeline: it comes back as its one-line message at its position, and the
caller decides (``predict`` reports it and exits 1, ``extract`` lists it in skipped.csv or, with
``--strict``, stops). ``serve`` decodes uploads itself (they have HTTP answers of their own) and
hands the decoded images to :func:`encode_decoded`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from geovario.augment import geoclip_train_view, view_rng
from geovario.data.archives import load_image
from geovario.errors import GeovarioError


class DecodedImages(torch.utils.data.Dataset):
    """Item i: image i decoded and preprocessed (plus ``views`` augmented views), or why it could not be.

    Runs in DataLoader workers. A bad image is returned as its message, never raised.
    """

    def __init__(self, images: Sequence, preprocess, views: int = 0, seed: int = 0):
        self.images, self.preprocess, self.views, self.seed = images, preprocess, views, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int):
        try:
            image, mode = load_image(self.images[position])
        except GeovarioError as e:
            return position, str(e), None, None
        views = [geoclip_train_view(image, view_rng(self.seed, position, v), self.preprocess) for v in range(self.views)]
        return position, self.preprocess(image), views, mode


def collate(items: list) -> dict:
    """A batch of decoded images: the pixels stacked (pinned by the loader on CUDA), the failures listed."""
    good = [item for item in items if not isinstance(item[1], str)]
    stack = lambda arrays: torch.from_numpy(np.stack(arrays)) if arrays else None  # noqa: E731
    return {
        "positions": [item[0] for item in items],
        "kept": [item[0] for item in good],
        "failed": [(item[0], item[1]) for item in items if isinstance(item[1], str)],
        "modes": [item[3] for item in good],
        "pixels": stack([item[1] for item in good]),
        "views": stack([view for item in good for view in item[2]]),
    }


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker decodes one image at a time; the cores are for the other workers


def decoded_batches(images: Sequence, preprocess, batches: list[list[int]], workers: int, pin: bool = False,
                    views: int = 0, seed: int = 0) -> Iterator[dict]:
    """The :func:`collate` batches of ``images`` at the given positions, in order, decoded in ``workers`` processes (0: here)."""
    if not batches:
        return iter(())
    loader = torch.utils.data.DataLoader(
        DecodedImages(images, preprocess, views, seed), batch_sampler=batches, num_workers=workers, collate_fn=collate,
        pin_memory=pin, worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    return iter(loader)


class BatchEncoder:
    """The backbone on stacked pixels, ``batch_size`` at a time, as a numpy array in ``dtype``: (B, D) features for
    (B, 3, H, W) pixels, (B, V, D) for (B, V, 3, H, W) views."""

    def __init__(self, backbone, batch_size: int, dtype=np.float32):
        self.backbone, self.batch_size, self.dtype = backbone, batch_size, np.dtype(dtype)

    def __call__(self, pixels: torch.Tensor | None) -> np.ndarray:
        if pixels is None:
            return np.zeros((0, self.backbone.feature_dim), self.dtype)
        views = pixels.shape[1:-3]  # () or (V,)
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        out = [self.backbone.encode_pixels(flat[s : s + self.batch_size]).cpu().numpy().astype(self.dtype)
               for s in range(0, len(flat), self.batch_size)]
        features = np.concatenate(out) if out else np.zeros((0, self.backbone.feature_dim), self.dtype)
        return features.reshape(len(pixels), *views, -1)


def tta_preprocess(backbone, tta: str = "none"):
    """The preprocessing of one image for ``tta`` (see :data:`geovario.backbones.TTA_VIEWS`): the backbone's own, or
    its ten crops."""
    from geovario.backbones import TTA_VIEWS

    if tta not in TTA_VIEWS:
        raise GeovarioError(f"test-time augmentation {tta!r}: expected one of {', '.join(TTA_VIEWS)}")
    return backbone.preprocess if tta == "none" else backbone.preprocess.ten_crop


def image_features(images: Sequence, backbone, batch_size: int = 32, workers: int = 0,
                   tta: str = "none") -> Iterator[tuple[dict, np.ndarray]]:
    """Each batch of ``images`` (paths or archive members) with the float32 features of its readable ones
    (``batch["kept"]``): (B, D), or (B, V, D) with test-time augmentation's V views."""
    preprocess = tta_preprocess(backbone, tta)
    batches = [list(range(s, min(s + batch_size, len(images)))) for s in range(0, len(images), batch_size)]
    encode = BatchEncoder(backbone, batch_size)
    for batch in decoded_batches(images, preprocess, batches, workers, pin=backbone.device.type == "cuda"):
        yield batch, encode(batch["pixels"])


def encode_decoded(images: list[Image.Image], backbone, tta: str = "none") -> np.ndarray:
    """Features of images already decoded to RGB (``serve``'s uploads), through the same preprocessing."""
    preprocess = tta_preprocess(backbone, tta)
    return BatchEncoder(backbone, max(1, len(images)))(torch.from_numpy(np.stack([preprocess(i) for i in images])))
