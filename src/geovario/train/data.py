"""Data adapters: what a training step reads, for this process's rows of each global batch.

``StoreData`` reads cached frozen features from a feature store (the default: the backbone is frozen,
so running it every step wastes ~99% of the compute). ``ImageData`` decodes, augments and runs the
backbone on every step. Both hand the step a ``Batch``: the features the image head is fed, the plain
centre-crop features the frozen dissimilarity compares, and the true GPS.
"""

from __future__ import annotations

import collections
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from geovario.config import Config
from geovario.data.store import FeatureStore
from geovario.errors import GeovarioError
from geovario.negatives import Batch


# Steps whose store rows a background thread reads ahead of the step being trained.
READ_AHEAD_STEPS = 2


class StoreData:
    """Training samples from a feature store; one stored view per sample per step when there are views.

    After :meth:`prefetch`, a background thread reads the coming steps' rows while the current step runs: the random
    rows of a store larger than the page cache are disk reads (memory-map page faults, which release the GIL), and
    can take as long as a whole training step on a GPU. The rows are the same either way.
    """

    def __init__(self, store: FeatureStore, use_views: bool, view_noise: float = 0.0):
        self.store = store
        self.gps = torch.from_numpy(store.gps.astype(np.float32))
        self.views = store.n_views if use_views else 0
        self.view_noise = view_noise  # synthetic views for a store without stored ones (data.view_noise)
        self.dim = store.dim
        self._ahead: collections.deque = collections.deque()  # (rows, future of their (plain, views)), in step order
        self._reader = None
        self.steps_read_ahead = 0

    def __len__(self) -> int:
        return len(self.gps)

    def prefetch(self, plan, seed: int, first_step: int, last_step: int) -> None:
        """Read steps ``first_step`` … ``last_step - 1`` ahead; ``plan(step)`` gives a step's (index, rows)."""
        self.stop_prefetch()
        if first_step >= last_step:
            return
        self._plan, self._next_step, self._last_step = plan, first_step, last_step
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="geovario-store-rows")
        self._read_ahead()

    def _read_ahead(self) -> None:
        while self._next_step < self._last_step and len(self._ahead) < READ_AHEAD_STEPS:
            index, rows = self._plan(self._next_step)
            own = index[rows]
            self._ahead.append((own, self._reader.submit(self._read, own)))
            self._next_step += 1

    def stop_prefetch(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
        self._reader = None
        self._ahead.clear()

    def _read(self, own: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.store.rows(own), self.store.view_rows(own) if self.views else None

    def _rows(self, own: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The plain features (and stored views) of ``own``: read ahead when the step is the planned one."""
        if self._ahead:
            planned, future = self._ahead.popleft()
            if np.array_equal(planned, own):
                self._read_ahead()
                self.steps_read_ahead += 1
                if not self._ahead:
                    self._reader.shutdown(wait=False)  # the plan is used up; this read was its last
                return future.result()  # a bad row raises here, at the step that reads it
            self.stop_prefetch()  # the caller left the planned order: read here from now on
        return self._read(own)

    def batch(self, index: np.ndarray, rows: slice, generator: torch.Generator, device, second_view: bool = False) -> Batch:
        """``index[rows]``, this process's rows of the global batch ``index``; with ``second_view``, also another
        stored view of each row (the ssl loss's second augmentation), never the same one."""
        own = index[rows]
        plain, stored_views = self._rows(own)
        plain = torch.from_numpy(plain)
        features, second = plain, None
        if self.views:
            # View 0 is the plain centre crop, 1..K the augmented ones (GeoCLIP samples one per step),
            # drawn for the whole global batch so that every process count picks the same views.
            choice = torch.randint(0, self.views + 1, (len(index),), generator=generator)
            views = torch.from_numpy(stored_views)
            features = self._view(plain, views, choice[rows])
            if second_view:
                other = (choice + torch.randint(1, self.views + 1, (len(index),), generator=generator)) % (self.views + 1)
                second = self._view(plain, views, other[rows]).to(device)
        elif self.view_noise:
            features = self._noisy(plain, index, rows, generator)
            if second_view:
                second = self._noisy(plain, index, rows, generator).to(device)
        elif second_view:
            raise GeovarioError(f"{self.store.folder}: the ssl loss needs two views of each image, and this store has only the plain "
                                "features; extract it with `geovario extract --views K` (K >= 1), or set data.view_noise")
        return Batch(features.to(device), plain.to(device), self.gps[own].to(device), index, rows, second)

    def _noisy(self, plain: torch.Tensor, index: np.ndarray, rows: slice, generator: torch.Generator) -> torch.Tensor:
        """A synthetic view: each row plus Gaussian noise whose expected norm is ``view_noise`` times the row's,
        drawn for the whole global batch (so every process count draws alike)."""
        noise = torch.randn((len(index), plain.shape[1]), generator=generator)[rows].to(plain.dtype)
        return plain + noise * (self.view_noise * plain.norm(dim=1, keepdim=True) / math.sqrt(plain.shape[1]))

    @staticmethod
    def _view(plain: torch.Tensor, views: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Each row's chosen view: 0 the plain features, k the k-th stored augmented view."""
        picked = views[torch.arange(len(plain)), torch.clamp(choice - 1, min=0)]
        return torch.where((choice == 0)[:, None], plain, picked)

    def fingerprint(self) -> str:
        return self.store.fingerprint()

    def gallery_features(self, rows: np.ndarray):
        """Plain features of the given store rows, for gallery negatives drawn from this store."""
        return lambda index: self.store.rows(rows[index])


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step: every random draw inside the step comes from it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (step + 1))


def _view_seed(generator: torch.Generator) -> int:
    """The step's first draw: the seed of its image augmentations."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def decode_step(records, own: np.ndarray, seed: int, preprocess, reference: bool) -> np.ndarray:
    """Pixels of one step's rows: an augmented view each, then (``reference``) each plain centre crop."""
    from geovario.augment import geoclip_train_view, view_rng
    from geovario.data.archives import load_image

    images = [load_image(records[i].image)[0] for i in own]
    pixels = [geoclip_train_view(image, view_rng(seed, int(i), 0), preprocess) for image, i in zip(images, own)]
    if reference:
        pixels += [preprocess(image) for image in images]
    return np.stack(pixels)


class _StepImages(torch.utils.data.Dataset):
    """Item k: step k's decoded pixels, in a DataLoader worker. A bad image comes back as its message."""

    def __init__(self, records, preprocess, reference: bool, plan, seed: int):
        self.records, self.preprocess, self.reference, self.plan, self.seed = records, preprocess, reference, plan, seed

    def __getitem__(self, step: int) -> dict:
        index, rows = self.plan(step)
        own, seed = index[rows], _view_seed(step_generator(self.seed, step))
        try:
            pixels = torch.from_numpy(decode_step(self.records, own, seed, self.preprocess, self.reference))
        except GeovarioError as e:
            return {"own": own, "seed": seed, "error": str(e)}
        return {"own": own, "seed": seed, "pixels": pixels}


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


class ImageData:
    """Image-level training: decode, augment and run the frozen backbone on every step.

    With ``reference=True`` (losses that need image dissimilarity) each image also goes through
    the backbone as its plain centre crop, which is what the fitted variogram describes.

    After :meth:`prefetch`, ``workers`` DataLoader processes decode the coming steps while the
    backbone and the head run. A step's pixels depend only on (seed, step), drawn from the step's
    own generator exactly as without workers, so the run and its resume are the same either way.
    """

    def __init__(self, dataset, backbone, *, reference: bool, workers: int):
        self.records, self.backbone, self.reference, self.workers = dataset.records, backbone, reference, workers
        self.source = dataset.source
        self.gps = torch.tensor([[r.lat, r.lon] for r in self.records], dtype=torch.float32)
        self.dim = backbone.feature_dim
        self._ahead = None
        self.steps_from_workers = 0  # steps whose pixels the workers decoded ahead

    def __len__(self) -> int:
        return len(self.records)

    def prefetch(self, plan, seed: int, first_step: int, last_step: int) -> None:
        """Decode steps ``first_step`` … ``last_step - 1`` ahead; ``plan(step)`` gives a step's (index, rows)."""
        if not self.workers or first_step >= last_step:
            return
        loader = torch.utils.data.DataLoader(
            _StepImages(self.records, self.backbone.preprocess, self.reference, plan, seed), sampler=range(first_step, last_step),
            batch_size=None, num_workers=self.workers, worker_init_fn=_one_thread, prefetch_factor=2,
            pin_memory=self.backbone.device.type == "cuda")
        self._ahead = iter(loader)

    def _pixels(self, own: np.ndarray, seed: int) -> torch.Tensor:
        if self._ahead is not None:
            item = next(self._ahead, None)
            if item is not None and item["seed"] == seed and np.array_equal(item["own"], own):
                if "error" in item:
                    raise GeovarioError(item["error"])
                self.steps_from_workers += 1
                return item["pixels"]
            self._ahead = None  # the caller left the planned order: decode here from now on
        return torch.from_numpy(decode_step(self.records, own, seed, self.backbone.preprocess, self.reference))

    def batch(self, index: np.ndarray, rows: slice, generator: torch.Generator, device, second_view: bool = False) -> Batch:
        if second_view:  # the config refuses ssl with data.images; this is the last guard
            raise GeovarioError("the ssl loss trains on two stored views; image-level training has one view per step")
        own = index[rows]
        pixels = self._pixels(own, _view_seed(generator))
        encoded = self.backbone.encode_pixels(pixels).clone()  # out of inference mode
        features = encoded[: len(own)]
        reference = encoded[len(own) :] if self.reference else features
        return Batch(features.float().to(device), reference.float().to(device), self.gps[own].to(device), index, rows)

    def fingerprint(self) -> str:
        """sha256 of the dataset file (of the names of a photo folder's usable photos)."""
        from geovario.hashing import sha256_bytes, sha256_file

        if Path(self.source).is_file():
            return sha256_file(self.source)
        return sha256_bytes("\n".join(f"{r.id},{r.lat!r},{r.lon!r}" for r in self.records).encode())

    def gallery_features(self, rows: np.ndarray):
        return None  # no stored features to draw gallery negatives' images from


def open_training_data(config: Config, device: torch.device, *, reference: bool):
    """The store (``data.train``) or the images (``data.images``) the config names."""
    if config.data.images:
        from geovario.backbones import ClipBackbone
        from geovario.data import read_dataset

        from geovario.machine import cores_per_process

        dataset = read_dataset(config.data.images, images=config.data.images_dir)
        workers = cores_per_process() if config.data.workers is None else config.data.workers
        return ImageData(dataset, ClipBackbone.load(config.data.backbone, device), reference=reference, workers=workers)
    path = Path(config.data.train)
    if not path.is_dir():
        raise GeovarioError(f"config key data.train: feature store {path} not found")
    store = FeatureStore(path)
    if config.data.view_noise and store.n_views and config.data.use_views:
        raise GeovarioError(f"config key data.view_noise: {path} has {store.n_views} stored views per image; train on them "
                            "(or set data.use_views: false for synthetic ones)")
    return StoreData(store, config.data.use_views, config.data.view_noise)


def training_positions(data, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(latlon, rows): up to ``data.gallery_max`` training positions and the sample rows they come from."""
    rows = np.arange(len(data))
    if len(rows) > config.data.gallery_max:
        rows = np.sort(np.random.default_rng(config.train.seed).choice(len(rows), config.data.gallery_max, replace=False))
    return data.gps.numpy().astype(np.float64)[rows], rows


def gallery_positions(spec: str | None, data, config: Config, key: str) -> np.ndarray:
    """A LAT,LON CSV, a store's positions, or (default) up to gallery_max training positions."""
    if not spec:
        return training_positions(data, config)[0]
    from geovario.evaluate import load_gallery

    try:
        return load_gallery(spec).astype(np.float64)
    except GeovarioError as e:
        raise GeovarioError(f"config key {key}: {e}") from None
