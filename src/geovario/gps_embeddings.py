"""GPS embeddings: a model's location encoder as a general-purpose location embedding.

GeoCLIP's location encoder is used on its own, like SatCLIP's or GAIR's, as features of a place
for downstream tasks. ``embed_locations`` runs it in batches; ``embed_gps_csv`` streams a CSV of
coordinates into an ``.npy`` (memory-mapped as it is written) or a parquet file that keeps the
CSV's other columns (ids, labels) beside each embedding.

The embedding is the encoder's output before normalisation, as GeoCLIP's ``LocationEncoder``
returns it; ``normalize=True`` gives the unit vectors that retrieval compares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from geovario.atomic import atomic_path, output_dir, reserve
from geovario.data.latlon_csv import LAT_NAMES, LON_NAMES, read_latlon_table
from geovario.errors import GeovarioError
from geovario.geo import validate_coordinates
from geovario.model import GeoLocModel

OUTPUT_SUFFIXES = (".npy", ".parquet")


@torch.no_grad()
def embed_batches(model: GeoLocModel, latlon: np.ndarray, batch_size: int = 65536, normalize: bool = False,
                  device: str | torch.device = "cpu", progress: bool = False, desc: str = "embedding", leave: bool = True):
    """Yield (start, embeddings) for consecutive batches of ``latlon`` (N, 2) degrees, float32."""
    model = model.eval().to(device)
    with tqdm(total=len(latlon), unit="loc", desc=desc, disable=None if progress else True, leave=leave) as bar:
        for start in range(0, len(latlon), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(latlon[start : start + batch_size], dtype=np.float32)).to(device)
            out = model.encode_locations(batch) if normalize else model.location_encoder(batch)  # unit length, as retrieval compares
            yield start, out.float().cpu().numpy()
            bar.update(len(batch))


def embed_locations(model: GeoLocModel, latlon, batch_size: int = 65536, normalize: bool = False,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """(N, embed_dim) float32 embeddings of (N, 2) lat/lon degrees; bad coordinates are one-line errors."""
    latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
    validate_coordinates(latlon[:, 0], latlon[:, 1], "coordinates")
    parts = [out for _, out in embed_batches(model, latlon, batch_size, normalize, device)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.embed_dim), np.float32)


def embed_gps_csv(model: GeoLocModel, csv: str | Path, out: str | Path, batch_size: int = 65536, normalize: bool = False,
                  device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Embed every row of a LAT,LON CSV into ``out`` (.npy or .parquet), written atomically.

    Every coordinate is checked before anything is written; a bad row is one error naming its line.
    """
    if Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise GeovarioError(f"{out}: the output must end in .npy or .parquet")
    frame, latlon = read_latlon_table(csv, "GPS", dtype=np.float64)
    return write_embeddings(model, frame, latlon, out, batch_size, normalize, device, progress)


def write_embeddings(model: GeoLocModel, frame, latlon: np.ndarray, out: str | Path, batch_size: int = 65536,
                     normalize: bool = False, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Embed checked coordinates ``latlon`` into ``out``; ``frame`` holds the columns parquet keeps."""
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise GeovarioError(f"{out}: the output must end in .npy or .parquet")
    validate_coordinates(latlon[:, 0], latlon[:, 1], "coordinates")
    output_dir(out.parent)
    dim = model.config.embed_dim
    batches = embed_batches(model, latlon, batch_size, normalize, device, progress)
    if out.suffix.lower() == ".npy":
        with atomic_path(out) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(latlon), dim))
            reserve(tmp)
            for start, embedded in batches:
                array[start : start + len(embedded)] = embedded
            array.flush()
            del array
    else:
        _write_parquet(out, frame, latlon, batches, dim)
    return {"rows": len(latlon), "dim": dim, "out": str(out), "normalized": normalize}


def _write_parquet(out: Path, frame, latlon: np.ndarray, batches, dim: int) -> None:
    from geovario.data.archives.parquet_images import _pyarrow

    pa = _pyarrow()
    coordinates = LAT_NAMES + LON_NAMES  # replaced by float lat, lon columns
    kept = [c for c in frame.columns if c.strip().lower() not in coordinates]  # ids, labels: kept as text
    with atomic_path(out) as tmp:
        writer = None
        try:
            for start, embedded in batches:
                rows = frame.iloc[start : start + len(embedded)]
                columns = {c: pa.array(rows[c].tolist(), pa.string()) for c in kept}
                columns["lat"], columns["lon"] = pa.array(latlon[start : start + len(embedded), 0]), pa.array(latlon[start : start + len(embedded), 1])
                columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(embedded.reshape(-1)), dim)
                table = pa.table(columns)
                if writer is None:
                    writer = pa.parquet.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
