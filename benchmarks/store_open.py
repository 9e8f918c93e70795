"""What validating a store costs: opening a 1M-row feature store, and reading all its features.

geovario checks every index coordinate when a store opens (numbers, ranges, swapped columns), the
sha256 of every file against the manifest's, and every feature row for NaN/inf as it is read. Anchors, in the same run: ``pandas.read_csv`` of the
same ``index.csv`` (what opening costs without any check) and ``np.load`` of the same shards (reading
without the finite check).

    python benchmarks/store_open.py [--rows 1000000] [--dim 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from geovario.data.store import FeatureStore, write_store


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the store (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=64, help="feature width (default 64)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    latlon = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, args.rows))), rng.uniform(-180, 180, args.rows)], 1)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp) / "store", rng.normal(size=(args.rows, args.dim)).astype(np.float16), latlon).folder
        shards = sorted((store / "shards").glob("[0-9]*[0-9].npy"))
        anchor_open = best_of(lambda: pd.read_csv(store / "index.csv", dtype={"id": str}, keep_default_na=False))
        geovario_open = best_of(lambda: FeatureStore(store))
        opened = FeatureStore(store)
        assert opened.verified, "the benchmark's store should carry checksums"
        anchor_read = best_of(lambda: [np.load(s).astype(np.float32) for s in shards])
        geovario_read = best_of(lambda: opened.features())
    print(f"store of {args.rows:,} rows x {args.dim} float16 features ({len(shards)} shards), best of 3")
    print(f"open  : pandas.read_csv(index.csv) [anchor] {anchor_open:.2f} s | FeatureStore(...) with coordinate and checksum checks "
          f"{geovario_open:.2f} s = {geovario_open / anchor_open:.2f}x the anchor")
    print(f"read  : np.load(shards) as float32 [anchor] {anchor_read:.2f} s | store.features() with finite check "
          f"{geovario_read:.2f} s = {geovario_read / anchor_read:.2f}x the anchor")


if __name__ == "__main__":
    main()
