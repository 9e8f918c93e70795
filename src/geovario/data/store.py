"""The frozen-feature store: backbone features extracted once, memory-mapped by everything after.

Layout of a store folder::

    manifest.json          backbone (name, revision), preprocessing, dtype, counts, dataset fingerprint
    index.csv              id, lat, lon, image, metadata: one row per feature row, in order
    skipped.csv            every row or image left out, with file, line and reason
    shards/00000.npy       (n, D) features, float16 by default
    shards/00000.views.npy (n, K, D) augmented views, when extracted with --views K
    shards/00000.csv       the shard's index rows; written last, so its presence marks the shard done

The manifest records the sha256 of index.csv and of every shard file, and opening a store checks
them (about 1 GB/s), so an edited coordinate or feature is refused rather than trained on; a store
written before the checksums existed opens unverified. ``geovario data rehash`` records the
checksums of a store's files as they are now.

Readers: :class:`FeatureStore` for a store folder and :class:`ArrayFeatures` for ``--features
F.npy --gps G.csv``; both give ``features(start, stop)``, ``gps``, ``ids`` and ``tensors()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geovario.data.feature_arrays import check_feature_array, load_features_file
from geovario.data.latlon_csv import read_latlon_csv
from geovario.errors import GeovarioError
from geovario.geo import latlon_swap_message
from geovario.jsonio import read_json

STORE_FORMAT = "geovario-feature-store"
STORE_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.csv"
SKIPPED = "skipped.csv"
SHARDS = "shards"
INDEX_COLUMNS = ["id", "lat", "lon", "image"]


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise GeovarioError(f"{folder}: no {MANIFEST}; not a geovario feature store")
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise GeovarioError(f"{path}: not a geovario feature store manifest")
    version = manifest.get("format_version", STORE_VERSION)
    if not isinstance(version, int) or version > STORE_VERSION:
        raise GeovarioError(f"{path}: store format version {version}; this geovario reads up to version {STORE_VERSION}. "
                            "Upgrade geovario, or re-extract the store with this one")
    return manifest


def read_index(path: Path) -> pd.DataFrame:
    """A store's index.csv, with every coordinate checked: one line names the first bad row."""
    try:
        index = pd.read_csv(path, dtype={"id": str, "image": str}, keep_default_na=False)
    except FileNotFoundError:
        raise GeovarioError(f"{path}: missing; the store is incomplete") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise GeovarioError(f"{path}: unreadable index ({str(e).splitlines()[0]})") from None
    missing = [c for c in ("id", "lat", "lon") if c not in index.columns]
    if missing:
        raise GeovarioError(f"{path}: missing column {missing[0]} (has {', '.join(index.columns)})")
    if index.empty:
        raise GeovarioError(f"{path}: no rows; the store is empty")
    for column in ("lat", "lon"):
        values = pd.to_numeric(index[column], errors="coerce")
        blank = np.flatnonzero(values.isna().to_numpy())
        if len(blank):
            row = int(blank[0])
            raise GeovarioError(f"{path}:{row + 2}: {column} {index[column].iloc[row]!r} is not a number")
        index[column] = values.astype(np.float64)
    from geovario.geo import coordinate_problems

    problems = coordinate_problems(index["lat"].to_numpy(), index["lon"].to_numpy())
    if problems:
        row, problem = problems[0]
        more = f" (and {len(problems) - 1} more rows)" if len(problems) > 1 else ""
        raise GeovarioError(f"{path}:{row + 2}: {problem}{more}")
    return index


def store_files(folder: Path, shards: list[dict]) -> list[str]:
    """The files a store's checksums cover, relative to the store: the index, every shard and its views."""
    names = [INDEX]
    for shard in shards:
        names.append(f"{SHARDS}/{shard['name']}.npy")
        if (folder / SHARDS / f"{shard['name']}.views.npy").is_file():
            names.append(f"{SHARDS}/{shard['name']}.views.npy")
    return names


def store_checksums(folder: Path, shards: list[dict]) -> dict[str, str]:
    """sha256 of each of :func:`store_files`, keyed by its path in the store, for the manifest."""
    from geovario.hashing import sha256_file

    return {name: sha256_file(folder / name) for name in store_files(folder, shards)}


def verify_store(folder: Path, manifest: dict) -> bool:
    """Check the files against the manifest's checksums; False for a store written before there were any."""
    from geovario.hashing import sha256_file

    recorded = manifest.get("checksums")
    if recorded is None:
        return False
    if not isinstance(recorded, dict):
        raise GeovarioError(f"{folder / MANIFEST}: checksums is not a mapping of file to sha256")
    for name in store_files(folder, manifest["shards"]):
        path = folder / name
        if name not in recorded:
            raise GeovarioError(f"{path}: not in the manifest's checksums; the store was changed after it was written")
        if not path.is_file():
            raise GeovarioError(f"{path}: missing; the store is incomplete")
        if sha256_file(path) != recorded[name]:
            raise GeovarioError(f"{path}: sha256 differs from the one recorded when the store was written; the store was "
                                f"modified. Re-extract it, or keep the change with `geovario data rehash {folder}`")
    return True


class FeatureSource:
    """What every feature source offers; subclasses provide ``features(start, stop)``, ``gps``, ``ids``."""

    gps: np.ndarray  # (N, 2) float64 degrees
    ids: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return len(self.gps)

    @property
    def dim(self) -> int:
        return int(self.features(0, 1).shape[1])

    def features(self, start: int = 0, stop: int | None = None, dtype=np.float32) -> np.ndarray:
        raise NotImplementedError

    def rows(self, index: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Features of arbitrary rows, in the order given."""
        raise NotImplementedError

    def lazy(self, dtype=np.float32) -> "LazyFeatures":
        """The features as an (N, D) array-like that reads only the rows asked for (see :class:`LazyFeatures`)."""
        return LazyFeatures(self, dtype)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.features(i, i + 1)[0], self.gps[i], str(self.ids[i])

    def iter_batches(self, batch_size: int = 4096):
        """Stream (features, gps, ids) in order, one block in memory at a time."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield self.features(start, stop), self.gps[start:stop], self.ids[start:stop]

    def tensors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """All features as one tensor (N, D), GPS (N, 2) and the ids; for stores that fit in memory."""
        return (
            torch.from_numpy(np.ascontiguousarray(self.features())).to(dtype),
            torch.from_numpy(np.ascontiguousarray(self.gps, dtype=np.float32)),
            [str(i) for i in self.ids],
        )


class FeatureStore(FeatureSource):
    """A finished store folder, memory-mapped shard by shard; its files are checked against the manifest's
    checksums first (``verify=False`` skips that, for ``data rehash``)."""

    def __init__(self, folder: str | Path, verify: bool = True):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GeovarioError(f"{self.folder}: feature store not found")
        self.manifest = read_manifest(self.folder)
        if not self.manifest.get("complete"):
            raise GeovarioError(f"{self.folder}: extraction has not finished; rerun the same `geovario extract` command to resume it")
        try:
            int(self.manifest["backbone"]["feature_dim"])
            [(str(shard["name"]), int(shard["rows"])) for shard in self.manifest["shards"]]
        except (KeyError, TypeError, ValueError):
            raise GeovarioError(f"{self.folder / MANIFEST}: lacks backbone.feature_dim or a shard's name and rows") from None
        self.verified = verify_store(self.folder, self.manifest) if verify else False
        self.index = read_index(self.folder / INDEX)
        self.ids = self.index["id"].to_numpy(dtype=str)
        self.gps = self.index[["lat", "lon"]].to_numpy(dtype=np.float64)
        dim = self.dim
        shards = self.manifest.get("shards")
        if not isinstance(shards, list) or not shards:
            raise GeovarioError(f"{self.folder / MANIFEST}: lists no feature shards")
        self._shards, self._views, sizes = [], [], []
        for shard in shards:
            path = self.folder / SHARDS / f"{shard['name']}.npy"
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise GeovarioError(f"{path}: unreadable shard ({e})") from None
            if array.ndim != 2 or array.shape[1] != dim:
                raise GeovarioError(f"{path}: shape {array.shape}, but the manifest says {dim}-d features")
            if len(array) != shard["rows"]:
                raise GeovarioError(f"{path}: {len(array)} rows, the manifest says {shard['rows']}")
            if not np.issubdtype(array.dtype, np.floating):
                raise GeovarioError(f"{path}: features of dtype {array.dtype}, expected floating point")
            self._shards.append(array)
            views_path = path.with_suffix(".views.npy")
            self._views.append(np.load(views_path, mmap_mode="r") if views_path.is_file() else None)
            sizes.append(len(array))
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if self._offsets[-1] != len(self.index):
            raise GeovarioError(f"{self.folder}: {self._offsets[-1]} feature rows but {len(self.index)} index rows")

    @property
    def dim(self) -> int:
        return int(self.manifest["backbone"]["feature_dim"])

    def fingerprint(self) -> str:
        """sha256 of the manifest and the index: another extraction, or other rows, give another one. The manifest
        holds every file's checksum, which the store was verified against when opened, so changed features do too."""
        from geovario.hashing import sha256_files

        return sha256_files([self.folder / MANIFEST, self.folder / INDEX])

    @property
    def n_views(self) -> int:
        return int(self.manifest.get("views", 0))

    @property
    def meta(self) -> pd.DataFrame:
        """Per-row metadata columns (e.g. OSV5M's country, region, sub-region, city)."""
        return self.index.drop(columns=[c for c in INDEX_COLUMNS if c in self.index.columns])

    def _gather(self, arrays: list, start: int, stop: int | None, dtype) -> np.ndarray:
        stop = len(self) if stop is None else min(stop, len(self))
        first = int(np.searchsorted(self._offsets, start, side="right") - 1)
        parts = []
        shard = first
        while shard < len(arrays) and self._offsets[shard] < stop:
            lo = max(start - self._offsets[shard], 0)
            hi = min(stop - self._offsets[shard], len(self._shards[shard]))
            parts.append(np.asarray(arrays[shard][lo:hi], dtype=dtype))
            shard += 1
        if not parts:
            shape = (0, *arrays[0].shape[1:]) if arrays else (0, self.dim)
            return np.zeros(shape, dtype=dtype)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def features(self, start: int = 0, stop: int | None = None, dtype=np.float32) -> np.ndarray:
        """Rows [start, stop) as an array of ``dtype`` (the stored fp16 is widened by default).

        A whole single-shard store in its stored dtype comes back as the memory map itself, unchecked;
        every other read is checked for NaN and infinity.
        """
        if len(self._shards) == 1 and start == 0 and stop is None and self._shards[0].dtype == np.dtype(dtype):
            return self._shards[0]
        return self._finite(self._gather(self._shards, start, stop, dtype), np.arange(start, start + 1))

    def _finite(self, array: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``array`` if every value is finite, else a one-line error naming the first bad row of the store.

        ``rows`` holds the store row of each array row, or just the first row when they are consecutive.
        """
        finite = np.isfinite(array).all(axis=tuple(range(1, array.ndim)))  # per row; an empty read has none
        if not finite.all():
            bad = int(np.argmin(finite))
            row = int(rows[bad]) if len(rows) == len(array) else int(rows[0]) + bad
            raise GeovarioError(f"{self.folder}: feature row {row} (id {self.ids[row]}) contains NaN or inf")
        return array

    def _rows(self, arrays: list, index: np.ndarray, dtype) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        shard = np.searchsorted(self._offsets, index, side="right") - 1
        out = np.empty((len(index), *arrays[0].shape[1:]), dtype=dtype)
        for k in np.unique(shard):
            chosen = shard == k
            out[chosen] = arrays[k][index[chosen] - self._offsets[k]]
        return out

    def rows(self, index: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Features of arbitrary rows, in the order given."""
        return self._finite(self._rows(self._shards, index, dtype), np.asarray(index))

    def view_rows(self, index: np.ndarray, dtype=np.float32) -> np.ndarray:
        """(n, K, D) augmented views of arbitrary rows."""
        return self._finite(self._rows(self._views, index, dtype), np.asarray(index))

    def views(self, start: int = 0, stop: int | None = None, dtype=np.float32) -> np.ndarray:
        """Augmented views of rows [start, stop), shape (n, K, D)."""
        if not self.n_views:
            raise GeovarioError(f"{self.folder}: extracted without --views")
        return self._finite(self._gather(self._views, start, stop, dtype), np.arange(start, start + 1))


class ArrayFeatures(FeatureSource):
    """``--features F.npy --gps G.csv``: arrays from elsewhere, row i of one matching row i of the other."""

    def __init__(self, features: str | Path, gps: str | Path):
        array = check_feature_array(load_features_file(features), str(features))
        self.gps = read_latlon_csv(gps, "GPS", dtype=np.float64)
        swapped = latlon_swap_message(self.gps[:, 0], self.gps[:, 1], f"{gps}: columns LAT, LON")
        if swapped:
            raise GeovarioError(f"{swapped} Swap them if they are.")
        if len(self.gps) != len(array):
            raise GeovarioError(f"{features} has {len(array)} rows but {gps} has {len(self.gps)}; they must match row for row")
        self._features = array
        self.ids = np.array([str(i) for i in range(len(array))])

    def features(self, start: int = 0, stop: int | None = None, dtype=np.float32) -> np.ndarray:
        return np.asarray(self._features[start:stop], dtype=dtype)

    def rows(self, index: np.ndarray, dtype=np.float32) -> np.ndarray:
        return np.asarray(self._features[np.asarray(index, dtype=np.int64)], dtype=dtype)


class LazyFeatures:
    """A feature source as an (N, D) array that is never read whole: ``x[a:b]`` reads rows a..b and ``x[index]``
    the rows listed, each through the source's own (checked) readers. For work that visits a sample of a store
    bigger than memory, such as the semivariogram's sampled pairs on millions of rows."""

    ndim = 2

    def __init__(self, source: FeatureSource, dtype=np.float32):
        self.source, self.dtype = source, np.dtype(dtype)
        self.shape = (len(source), source.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("LazyFeatures reads contiguous slices and index arrays only")
            return self.source.features(start, max(start, stop), dtype=self.dtype)
        return self.source.rows(np.asarray(key), dtype=self.dtype)


def open_feature_source(store: str | Path | None = None, features: str | Path | None = None, gps: str | Path | None = None) -> FeatureSource:
    """``--store STORE`` or ``--features F.npy --gps G.csv``, as every store-reading command accepts."""
    if store is not None:
        if features is not None or gps is not None:
            raise GeovarioError("give either --store or --features with --gps, not both")
        return FeatureStore(store)
    if features is None or gps is None:
        raise GeovarioError("need --store STORE, or both --features FILE.npy and --gps FILE.csv")
    return ArrayFeatures(features, gps)


def write_store(folder: str | Path, features: np.ndarray, latlon: np.ndarray, ids=None, meta: dict | None = None,
                dtype: str = "float16", shard_size: int = 65536, source: str = "arrays", views: np.ndarray | None = None) -> "FeatureStore":
    """Write arrays already in memory as a finished store (simulated worlds, features from elsewhere).

    ``views`` (N, K, D), when given, are K augmented views per row beside the plain features.
    """
    import csv
    import io

    from geovario import __version__
    from geovario.atomic import atomic_path, atomic_write_bytes, output_dir
    from geovario.jsonio import write_json

    folder = Path(folder)
    output_dir(folder / SHARDS)
    features, latlon = np.asarray(features), np.asarray(latlon, dtype=np.float64)
    if views is not None and (views.ndim != 3 or views.shape[0] != len(features) or views.shape[2] != features.shape[1]):
        raise GeovarioError(f"views must be (N, K, D) = ({len(features)}, K, {features.shape[1]}), got {views.shape}")
    ids = [str(i) for i in (ids if ids is not None else range(len(features)))]
    meta = meta or {}
    shards = []
    for k, start in enumerate(range(0, len(features), shard_size)):
        name = f"{k:05d}"
        with atomic_path(folder / SHARDS / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(features[start : start + shard_size], dtype=dtype))
        if views is not None:
            with atomic_path(folder / SHARDS / f"{name}.views.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(views[start : start + shard_size], dtype=dtype))
        shards.append({"name": name, "rows": min(shard_size, len(features) - start)})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS + list(meta))
    for i in range(len(features)):
        writer.writerow([ids[i], repr(float(latlon[i, 0])), repr(float(latlon[i, 1])), ""] + [meta[m][i] for m in meta])
    atomic_write_bytes(folder / INDEX, buffer.getvalue().encode())
    atomic_write_bytes(folder / SKIPPED, b"file,line,id,kind,reason\n")
    write_json(folder / MANIFEST, {
        "format": STORE_FORMAT, "format_version": STORE_VERSION, "geovario_version": __version__, "complete": True,
        "backbone": {"name": source, "revision": "", "feature_dim": int(features.shape[1])}, "preprocess": None,
        "dtype": dtype, "shard_size": shard_size, "views": 0 if views is None else int(views.shape[1]), "seed": 0,
        "dataset": {"source": source, "format": "arrays", "rows": len(features), "usable": len(features), "bad_rows": 0},
        "shards": shards, "counts": {"features": len(features), "skipped_images": 0, "bad_rows": 0, "converted_to_rgb": {}},
        "checksums": store_checksums(folder, shards),
    })
    return FeatureStore(folder)


def rehash_store(folder: str | Path) -> dict[str, str]:
    """Record the sha256 of a finished store's files as they are now (after an edit you mean to keep)."""
    from geovario.jsonio import write_json

    folder = Path(folder)
    store = FeatureStore(folder, verify=False)  # the files must still make a readable store
    checksums = store_checksums(folder, store.manifest["shards"])
    write_json(folder / MANIFEST, store.manifest | {"checksums": checksums})
    return checksums
