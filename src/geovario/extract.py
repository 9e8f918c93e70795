"""Extract frozen backbone features for a dataset into a feature store, resumably.

The dataset's usable records are cut into shards of ``shard_size`` consecutive records. Each shard
is computed whole and written with atomic renames, its index CSV last, so a shard either exists
completely or not at all. After a crash or ``kill -9``, rerunning the same command skips the
finished shards and recomputes the rest: batches inside a shard are always formed the same way,
so the resumed store is identical to an uninterrupted one.

Images are decoded and preprocessed in ``workers`` DataLoader processes while the backbone runs in
this one (on pinned memory and under fp16 autocast on CUDA), through the pipeline ``predict`` uses
(:mod:`geovario.image_batches`). They may be files or archive members
read in place (:mod:`geovario.data.archives`); either way the features are the same.

Under torchrun each rank encodes every W-th shard on its own device, and rank 0 merges the shard
indexes once all have finished: the store is the same as one process would write.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geovario import __version__
from geovario.atomic import atomic_path, atomic_write_bytes, output_dir
from geovario.backbones import ClipBackbone
from geovario.data.archives import image_location
from geovario.data.records import Dataset, Record
from geovario.distributed import Dist
from geovario.data.store import (INDEX, INDEX_COLUMNS, MANIFEST, SHARDS, SKIPPED, STORE_FORMAT, STORE_VERSION, read_manifest,
                                 store_checksums)
from geovario.errors import GeovarioError
from geovario.image_batches import BatchEncoder, decoded_batches
from geovario.jsonio import write_json
from geovario.machine import cores_per_process
from geovario.progress import progress as progress_bar


@dataclass
class ExtractSettings:
    batch_size: int = 32
    shard_size: int = 4096
    dtype: str = "float16"
    views: int = 0  # augmented views per image, besides the plain centre crop
    seed: int = 0  # for the augmented views
    workers: int = field(default_factory=lambda: cores_per_process())  # decoding processes (0: in the main one)
    strict: bool = False  # a bad image stops the run instead of being skipped


def dataset_fingerprint(records: list[Record]) -> str:
    """Identifies the exact record sequence, so a resume never mixes two datasets."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.id}\t{r.lat!r}\t{r.lon!r}\t{r.image}\n".encode())
    return digest.hexdigest()


def _settings_key(manifest: dict) -> dict:
    """The parts of a manifest that must match for a resume to be exact."""
    return {k: manifest.get(k) for k in ("backbone", "preprocess", "dtype", "shard_size", "views", "seed")} | {
        "fingerprint": manifest.get("dataset", {}).get("fingerprint")
    }


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def extract_features(
    dataset: Dataset,
    backbone: ClipBackbone,
    out: str | Path,
    settings: ExtractSettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
    world: Dist | None = None,
) -> dict:
    """Build (or resume) the store at ``out``; returns its manifest (on every rank of a torchrun job)."""
    settings = settings or ExtractSettings()
    world = world or Dist()
    if settings.dtype not in ("float16", "float32"):
        raise GeovarioError(f"--dtype must be float16 or float32, got {settings.dtype!r}")
    out = Path(out)
    dataset.require_usable()
    records = dataset.records
    meta_keys = list(dict.fromkeys(k for r in records for k in r.meta))
    manifest = {
        "format": STORE_FORMAT,
        "format_version": STORE_VERSION,
        "geovario_version": __version__,
        "complete": False,
        "backbone": {"name": backbone.name, "revision": backbone.revision, "feature_dim": backbone.feature_dim},
        "preprocess": backbone.preprocess.to_dict(),
        "dtype": settings.dtype,
        "shard_size": settings.shard_size,
        "views": settings.views,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "dataset": {"source": str(dataset.source), "format": dataset.format, "rows": dataset.n_rows,
                    "usable": len(records), "bad_rows": len(dataset.problems), "fingerprint": dataset_fingerprint(records)},
    }
    problem = finished = None
    if world.is_main:
        try:
            finished = _prepare_folder(out, manifest, overwrite)
        except GeovarioError as e:
            problem = str(e)
    problem, finished = world.broadcast((problem, finished))  # also keeps the other ranks from starting before the folder is ready
    if problem:
        raise GeovarioError(problem)
    if finished is not None:  # the same extraction, already complete: nothing to do, and nothing rewritten
        return finished
    shard_dir = out / SHARDS
    n_shards = (len(records) + settings.shard_size - 1) // settings.shard_size
    names = [f"{k:05d}" for k in range(n_shards)]
    mine = [k for k in range(n_shards) if k % world.world_size == world.rank]
    size = lambda k: min(settings.shard_size, len(records) - k * settings.shard_size)  # noqa: E731
    done = sum(size(k) for k in mine if (shard_dir / f"{names[k]}.csv").is_file())
    header = INDEX_COLUMNS + meta_keys
    pending = [k for k in mine if not (shard_dir / f"{names[k]}.csv").is_file()]
    # Batches never cross a shard boundary and are cut the same way on every run, so a resumed store
    # is identical to an uninterrupted one.
    batches = [list(range(first, min(first + settings.batch_size, stop)))
               for k in pending for first, stop in [(k * settings.shard_size, k * settings.shard_size + size(k))]
               for first in range(first, stop, settings.batch_size)]
    encode = BatchEncoder(backbone, settings.batch_size, settings.dtype)
    with progress_bar(sum(size(k) for k in mine), "extracting" + (f" (rank {world.rank})" if world.enabled else ""), "img",
                      initial=done, enabled=progress and world.is_main, smoothing=0.1) as bar:
        images = [r.image for r in records]
        loaded = decoded_batches(images, backbone.preprocess, batches, settings.workers, pin=backbone.device.type == "cuda",
                                 views=settings.views, seed=settings.seed)
        for k in pending:
            first, stop = k * settings.shard_size, k * settings.shard_size + size(k)
            kept, features, views, skipped, modes, received = [], [], [], [], Counter(), 0
            while received < stop - first:
                batch = next(loaded)
                received += len(batch["positions"])
                for position, why in batch["failed"]:
                    if settings.strict:
                        raise GeovarioError(why)
                    skipped.append((records[position], why))
                kept += [records[p] for p in batch["kept"]]
                modes.update(m for m in batch["modes"] if m != "RGB")
                if batch["pixels"] is not None:
                    features.append(encode(batch["pixels"]))
                    if settings.views:
                        views.append(encode(batch["views"]).reshape(len(batch["kept"]), settings.views, -1))
                bar.update(len(batch["positions"]))
            name = names[k]
            dim = backbone.feature_dim
            _save_npy(shard_dir / f"{name}.npy", np.concatenate(features) if features else np.zeros((0, dim), encode.dtype))
            if settings.views:
                _save_npy(shard_dir / f"{name}.views.npy",
                          np.concatenate(views) if views else np.zeros((0, settings.views, dim), encode.dtype))
            write_json(shard_dir / f"{name}.modes.json", dict(modes))
            _write_csv(shard_dir / f"{name}.skipped.csv", ["file", "line", "id", "kind", "reason"],
                       [[str(r.image), r.line, r.id, "bad image", why] for r, why in skipped])
            _write_csv(shard_dir / f"{name}.csv", header,  # last: marks the shard complete
                       [[r.id, repr(r.lat), repr(r.lon), image_location(r.image)] + [r.meta.get(m, "") for m in meta_keys] for r in kept])
    world.barrier()  # every rank's shards are written
    return world.broadcast(_finalize(out, manifest, names, dataset) if world.is_main else None)


def _prepare_folder(out: Path, manifest: dict, overwrite: bool) -> dict | None:
    """Make ``out`` ready for the extraction; returns the manifest of a finished store of the same extraction
    (which is then left untouched: runs trained on it keep resuming), else None."""
    if out.exists() and not out.is_dir():
        raise GeovarioError(f"{out}: is a file; --out must be a folder for the store")
    if out.exists() and any(out.iterdir()):
        if (out / MANIFEST).is_file():
            existing = read_manifest(out)
            if existing.get("complete") and _settings_key(existing) == _settings_key(manifest):
                return existing
            if _settings_key(existing) != _settings_key(manifest):
                if not overwrite:
                    changed = [k for k, v in _settings_key(manifest).items() if _settings_key(existing).get(k) != v]
                    raise GeovarioError(
                        f"{out}: holds a store made with different {', '.join(changed)}; "
                        "choose another --out, or pass --overwrite to replace it"
                    )
                shutil.rmtree(out)
        elif overwrite:
            shutil.rmtree(out)
        else:
            raise GeovarioError(f"{out}: exists and is not a feature store; choose another --out")
    output_dir(out / SHARDS)
    for leftover in (out / SHARDS).glob(".*.tmp"):  # a write cut short by a kill
        leftover.unlink()
    if not (out / MANIFEST).is_file():
        write_json(out / MANIFEST, manifest)
    return None


def _finalize(out: Path, manifest: dict, names: list[str], dataset: Dataset) -> dict:
    """Merge the shard indexes into index.csv and skipped.csv, then mark the manifest complete."""
    shard_dir = out / SHARDS
    shards, skipped_images, modes = [], 0, Counter()
    with atomic_path(out / INDEX) as tmp, open(tmp, "w", newline="") as index:
        for k, name in enumerate(names):
            with open(shard_dir / f"{name}.csv", newline="") as f:
                lines = f.readlines()
            index.writelines(lines if k == 0 else lines[1:])
            try:
                rows = np.load(shard_dir / f"{name}.npy", mmap_mode="r").shape[0]
            except (OSError, ValueError) as e:
                raise GeovarioError(f"{shard_dir / name}.npy: unreadable ({e}); delete shard {name}'s files and rerun") from None
            if rows != len(lines) - 1:
                raise GeovarioError(f"{shard_dir / name}: {rows} feature rows but {len(lines) - 1} index rows; delete the shard and rerun")
            shards.append({"name": name, "rows": rows})
            modes.update(json.loads((shard_dir / f"{name}.modes.json").read_text()))
    with atomic_path(out / SKIPPED) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "line", "id", "kind", "reason"])
        for p in dataset.problems:
            writer.writerow([p.file, p.line, "", p.kind, p.message])
        for name in names:
            with open(shard_dir / f"{name}.skipped.csv", newline="") as s:
                rows = list(csv.reader(s))[1:]
            skipped_images += len(rows)
            writer.writerows(rows)
    manifest = manifest | {
        "complete": True,
        "shards": shards,
        "checksums": store_checksums(out, shards),
        "counts": {"features": sum(s["rows"] for s in shards), "skipped_images": skipped_images,
                   "bad_rows": len(dataset.problems), "converted_to_rgb": dict(modes)},
    }
    write_json(out / MANIFEST, manifest)
    return manifest
