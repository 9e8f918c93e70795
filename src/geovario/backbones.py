"""Frozen backbones: a Hugging Face CLIP vision tower and CLIP preprocessing without torchvision,
and, for text queries only, CLIP's text tower.

The feature a GeoCLIP head expects is CLIP's projected image embedding (``get_image_features``,
768-d for ViT-L/14), taken before any normalisation. ``CLIPVisionModelWithProjection`` computes
exactly that without loading the text tower; ``ClipTextTower`` loads the text side only when a text
query asks for it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from geovario.errors import GeovarioError
from geovario.hashing import sha256_file
from geovario.images import load_rgb

# OpenAI CLIP's normalisation statistics (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD). GeoCLIP
# trains with ImageNet statistics but predicts with these; geovario uses CLIP's everywhere.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Test-time augmentation: the options, and the views each gives per image.
TTA_VIEWS = {"none": 1, "ten-crop": 10}
HALF_PRECISION_DEVICES = ("cuda",)  # where the frozen backbone runs under float16 autocast (tests add "cpu" to run it here)
TEN_CROP_SCALE = 256 / 224  # ten crops of 224 from an image resized to 256 (ImageNet practice)


@dataclass(frozen=True)
class Preprocess:
    """CLIP preprocessing: shortest side to ``resize`` (bicubic), centre crop, scale, normalise."""

    resize: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3, crop, crop) float32 array, as transformers' CLIPImageProcessor does."""
        array = self._resized(image, self.resize)
        height, width = array.shape[:2]
        if height < self.crop or width < self.crop:  # only when resize < crop: pad like transformers
            padded = np.zeros((max(height, self.crop), max(width, self.crop), 3), dtype=np.float32)
            top, left = (padded.shape[0] - height) // 2, (padded.shape[1] - width) // 2
            padded[top : top + height, left : left + width] = array
            array, height, width = padded, *padded.shape[:2]
        top, left = int((height - self.crop) / 2.0), int((width - self.crop) / 2.0)
        return self._normalised(array[top : top + self.crop, left : left + self.crop])

    def ten_crop(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (10, 3, crop, crop): the shortest side to ``crop`` x 256/224 (bicubic), its four corners and
        centre at ``crop``, then the same five of the mirrored image (torchvision's ``TenCrop`` after ``Resize(256)``,
        the ImageNet test-time practice since Krizhevsky et al. 2012). GeoCLIP's authors average the logits of these
        ten crops (VicenteVivan/geo-clip issue #9)."""
        array = self._resized(image, round(self.crop * TEN_CROP_SCALE))
        height, width, c = array.shape[0], array.shape[1], self.crop
        corners = [(0, 0), (0, width - c), (height - c, 0), (height - c, width - c), (int((height - c) / 2.0), int((width - c) / 2.0))]
        crops = [array[top : top + c, left : left + c] for top, left in corners]
        return np.stack([self._normalised(crop) for crop in crops + [crop[:, ::-1] for crop in crops]])

    @staticmethod
    def _resized(image: Image.Image, shortest: int) -> np.ndarray:
        """The image with its shortest side at ``shortest`` pixels (bicubic; the long side truncated, as transformers
        and torchvision do), as an (H, W, 3) float32 array."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(shortest * long / short)
        size = (shortest, new_long) if width <= height else (new_long, shortest)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.float32)

    def _normalised(self, array: np.ndarray) -> np.ndarray:
        array = (array * np.float32(1 / 255) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def to_dict(self) -> dict:
        return {"resize_shortest_edge": self.resize, "interpolation": "bicubic", "center_crop": self.crop,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def for_model_dir(cls, folder: Path, image_size: int) -> "Preprocess":
        """Read ``preprocessor_config.json`` when the checkpoint ships one; else CLIP's defaults."""
        config_path = folder / "preprocessor_config.json"
        if not config_path.is_file():
            return cls(resize=image_size, crop=image_size)
        config = json.loads(config_path.read_text())
        size = config.get("size", image_size)
        crop = config.get("crop_size", image_size)
        return cls(
            resize=size.get("shortest_edge", image_size) if isinstance(size, dict) else int(size),
            crop=crop.get("height", image_size) if isinstance(crop, dict) else int(crop),
            mean=tuple(config.get("image_mean", CLIP_MEAN)),
            std=tuple(config.get("image_std", CLIP_STD)),
        )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a usable torch device (None or "auto": CUDA when there is one), or a one-line error."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GeovarioError(f"device {name!r}: not a torch device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GeovarioError(f"device {name!r}: CUDA is not available on this machine (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GeovarioError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise GeovarioError(f"device {name!r}: MPS is not available on this machine (use cpu)")
    elif device.type != "cpu":
        raise GeovarioError(f"device {name!r}: geovario runs on cpu, cuda or mps")
    return device


def _check_checkpoint_name(name_or_dir: str) -> Path:
    local = Path(name_or_dir)
    if local.exists() and not (local / "config.json").is_file():
        raise GeovarioError(f"{local}: no config.json; not a transformers CLIP checkpoint")
    # A hub id is "org/name"; anything shaped like a path that isn't there is a missing folder.
    if not local.exists() and (local.is_absolute() or name_or_dir.startswith((".", "~")) or name_or_dir.count("/") > 1):
        raise GeovarioError(f"{name_or_dir}: backbone folder not found (and not a hub id such as openai/clip-vit-large-patch14)")
    return local


def hub_problem(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used right now (switched off, or unreachable), or None.

    One TCP connection with a short timeout, instead of transformers' retries (about 25 s offline).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or \
            os.environ.get("TRANSFORMERS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "switched off (HF_HUB_OFFLINE)"
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"unreachable at {constants.ENDPOINT} ({e.strerror or type(e).__name__})"
    return None


def _from_pretrained(name_or_dir: str, build):
    """``build(config, **options)`` -> (config, model) under quiet transformers logging; load errors become one line.

    For a hub id without a usable hub, only the local cache is read, and a miss is one line naming --backbone.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    options, offline = {}, None
    if not Path(name_or_dir).exists():
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(name_or_dir)
        except HFValidationError as e:  # refused before any network call
            raise GeovarioError(f"cannot load backbone {name_or_dir!r}: not a local folder, and not a valid hub id ({e})") from None
        offline = hub_problem()
        if offline:
            options = {"local_files_only": True}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a full CLIPModel checkpoint has the other tower's weights, skipped on purpose
    hf_logging.disable_progress_bar()
    try:
        return build(AutoConfig.from_pretrained(name_or_dir, **options), **options)
    except (OSError, ValueError, RuntimeError) as e:
        if offline:
            raise GeovarioError(f"backbone {name_or_dir!r} is not in the local cache and the Hugging Face hub is {offline}; "
                                "pass --backbone DIR with a local CLIP checkpoint") from None
        where = "local directory" if Path(name_or_dir).exists() else "Hugging Face hub id"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GeovarioError(f"cannot load backbone {name_or_dir!r} as a {where}: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def check_texts(texts: list[str]) -> None:
    """At least one text, none of them empty; else a one-line error naming the query."""
    if not texts:
        raise GeovarioError("no text query given")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise GeovarioError(f"text query {i + 1}: empty text; describe the place, e.g. \"a snowy street with red trams\"")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # bytes that were not UTF-8 (a shell in another encoding), or a lone surrogate
            raise GeovarioError(f"text query {i + 1}: not valid Unicode at character {e.start + 1} "
                                f"({text[e.start:e.end].encode('utf-8', 'backslashreplace').decode()}); give the text as UTF-8") from None


class ClipTextTower:
    """CLIP's text tower and tokenizer: text -> projected text embedding, in the space of the image features.

    GeoCLIP's paper geolocates text by feeding this embedding through the image head. The head was
    trained on image features only, and CLIP's text and image embeddings occupy different regions of
    the shared space (the modality gap), so text queries are out of the head's training distribution.
    """

    def __init__(self, model, tokenizer, name: str, device: torch.device):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer, self.name, self.device = tokenizer, name, device
        self.feature_dim = int(model.config.projection_dim)

    @classmethod
    def load(cls, name_or_dir: str, device: str | torch.device | None = None) -> "ClipTextTower":
        from transformers import CLIPConfig, CLIPTextModelWithProjection, CLIPTokenizer

        device = resolve_device(device)
        _check_checkpoint_name(name_or_dir)

        def text(config, **options):
            if not isinstance(config, CLIPConfig):
                raise GeovarioError(f"backbone {name_or_dir!r} has no text tower (a {type(config).__name__} checkpoint); "
                                    "text queries need a full CLIP checkpoint such as openai/clip-vit-large-patch14")
            text_config = config.text_config
            text_config.projection_dim = config.projection_dim
            model = CLIPTextModelWithProjection.from_pretrained(name_or_dir, config=text_config, **options)
            try:  # with the same options: the hub is probed once for both
                tokenizer = CLIPTokenizer.from_pretrained(name_or_dir, **options)
            except (OSError, ValueError, TypeError) as e:
                raise GeovarioError(f"backbone {name_or_dir!r} has no usable CLIP tokenizer (vocab.json, merges.txt): "
                                    f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
            return text_config, (model, tokenizer)

        _, (model, tokenizer) = _from_pretrained(name_or_dir, text)
        # Without vocab.json and merges.txt, recent transformers builds an empty tokenizer that maps every
        # word to <|endoftext|> instead of failing: every query would then get the same answer.
        probe = tokenizer("a photo", add_special_tokens=False)["input_ids"]
        if not probe or all(i == tokenizer.unk_token_id for i in probe):
            raise GeovarioError(f"backbone {name_or_dir!r} has no usable CLIP tokenizer (vocab.json, merges.txt): "
                                "its vocabulary does not know even \"a photo\"")
        return cls(model, tokenizer, str(name_or_dir), device)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(N, feature_dim) float32 text embeddings; an empty text is a one-line error."""
        check_texts(texts)
        limit = int(self.model.config.max_position_embeddings)
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt").to(self.device)
        return self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).text_embeds.float()


class ClipBackbone:
    """A frozen CLIP vision tower returning projected image embeddings (N, feature_dim)."""

    def __init__(self, model, preprocess: Preprocess, name: str, device: torch.device, hub_revision: str = ""):
        self.model = model.eval().requires_grad_(False).to(device)
        self.preprocess = preprocess
        self.name = name
        self.device = device
        self.feature_dim = int(model.config.projection_dim)
        self._hub_revision = hub_revision

    @functools.cached_property
    def revision(self) -> str:
        """The hub commit, or the sha256 of a local checkpoint's weights (hashed on first use)."""
        local = Path(self.name)
        for weights in (local / "model.safetensors", local / "pytorch_model.bin"):
            if weights.is_file():
                return f"sha256:{sha256_file(weights)}"
        return self._hub_revision

    @classmethod
    def load(cls, name_or_dir: str, device: str | torch.device | None = None) -> "ClipBackbone":
        """Load from a local directory or a Hugging Face hub id (e.g. ``openai/clip-vit-large-patch14``).

        A full ``CLIPModel`` checkpoint works too: only its vision tower and projection are read.
        """
        from transformers import CLIPConfig, CLIPVisionModelWithProjection

        device = resolve_device(device)
        local = _check_checkpoint_name(name_or_dir)

        def vision(config, **options):
            if isinstance(config, CLIPConfig):
                # CLIPModel sizes its visual projection by the top-level projection_dim; the nested
                # vision config may carry a stale default, so take the one the weights were made with.
                projection_dim = config.projection_dim
                config = config.vision_config
                config.projection_dim = projection_dim
            return config, CLIPVisionModelWithProjection.from_pretrained(name_or_dir, config=config, **options)

        config, model = _from_pretrained(name_or_dir, vision)
        image_size = int(model.config.image_size)
        if local.is_dir():
            preprocess = Preprocess.for_model_dir(local, image_size)
        else:
            preprocess = Preprocess(resize=image_size, crop=image_size)
        return cls(model, preprocess, str(name_or_dir), device, getattr(config, "_commit_hash", None) or "")

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised pixels -> (N, feature_dim) float32 features."""
        pixels = pixels.to(self.device, non_blocking=pixels.is_pinned())  # pinned by the loader on CUDA: an async copy
        autocast = torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type in HALF_PRECISION_DEVICES)
        with autocast:
            out = self.model(pixel_values=pixels).image_embeds
        return out.float()

    def encode_images(self, images: Iterable[Image.Image], batch_size: int = 32) -> Iterator[torch.Tensor]:
        """Yield feature batches for RGB PIL images, ``batch_size`` at a time."""
        batch: list[np.ndarray] = []
        for image in images:
            batch.append(self.preprocess(image))
            if len(batch) == batch_size:
                yield self.encode_pixels(torch.from_numpy(np.stack(batch)))
                batch = []
        if batch:
            yield self.encode_pixels(torch.from_numpy(np.stack(batch)))

    def encode_paths(self, paths: Iterable[str | os.PathLike], batch_size: int = 32) -> torch.Tensor:
        """Features for image files, in order; a bad file raises :class:`GeovarioError` naming it."""
        chunks = list(self.encode_images((load_rgb(p) for p in paths), batch_size))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.feature_dim)
