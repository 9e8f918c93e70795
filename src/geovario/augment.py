"""GeoCLIP's training augmentations, written with PIL and numpy (no torchvision on these machines).

GeoCLIP 1.3.0 (geoclip/train/dataloader.py) trains with RandomResizedCrop(224), RandomHorizontalFlip,
RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8) and RandomGrayscale(p=0.2). The samplers below
follow torchvision's algorithms; normalisation uses CLIP's statistics (see backbones.py). Each view
draws from its own seeded generator, so extraction gives the same views after a resume.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from geovario.backbones import Preprocess


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (left, top, width, height)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height  # fallback: the central crop at the nearest allowed ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _adjust_hue(image: Image.Image, factor: float) -> Image.Image:
    """torchvision's PIL adjust_hue: rotate the H channel by factor * 255 (uint8 wrap-around)."""
    h, s, v = image.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.uint8).astype(np.int16) + int(factor * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


def color_jitter(image: Image.Image, rng: np.random.Generator, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1) -> Image.Image:
    """ColorJitter: the four adjustments in a random order, each with a uniformly drawn factor."""
    factors = {
        "brightness": rng.uniform(1 - brightness, 1 + brightness),
        "contrast": rng.uniform(1 - contrast, 1 + contrast),
        "saturation": rng.uniform(1 - saturation, 1 + saturation),
        "hue": rng.uniform(-hue, hue),
    }
    for name in rng.permutation(list(factors)):
        if name == "brightness":
            image = ImageEnhance.Brightness(image).enhance(factors[name])
        elif name == "contrast":
            image = ImageEnhance.Contrast(image).enhance(factors[name])
        elif name == "saturation":
            image = ImageEnhance.Color(image).enhance(factors[name])
        else:
            image = _adjust_hue(image, factors[name])
    return image


def geoclip_train_view(image: Image.Image, rng: np.random.Generator, preprocess: Preprocess) -> np.ndarray:
    """One augmented view as a normalised (3, crop, crop) float32 array."""
    left, top, w, h = random_resized_crop_box(*image.size, rng)
    view = image.crop((left, top, left + w, top + h)).resize((preprocess.crop, preprocess.crop), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.8:
        view = color_jitter(view, rng)
    if rng.random() < 0.2:
        view = view.convert("L").convert("RGB")
    return preprocess(view)  # already crop x crop: only scaling and normalisation happen here


def view_rng(seed: int, position: int, view: int) -> np.random.Generator:
    """The generator for one view of the image at ``position`` in the dataset."""
    return np.random.default_rng([seed, position, view])
