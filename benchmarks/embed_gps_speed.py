"""Rows per second of ``geovario embed-gps`` on GeoCLIP's 100K gallery, against GeoCLIP's own LocationEncoder.

Anchor: GeoCLIP 1.3.0's ``LocationEncoder`` from the PyPI wheel, called on the whole 100K gallery as one
tensor (what its ``forward`` does with ``gps_gallery``), in the same run. geovario: the same weights through
``geovario.gps_embeddings.embed_locations`` in batches of 65,536, and the whole command (CSV in, .npy out,
Python start-up included). The two outputs are compared too (max abs difference).

    python benchmarks/embed_gps_speed.py [--from ../shared/reference/geoclip-1.3.0] [--wheel W] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geovario.gps_embeddings import embed_locations
from geovario.interop.geoclip import download_wheel, read_release_folder, reference_geoclip, unpack_wheel, write_geoclip_model_dir
from geovario.modeldir import load_model_dir, read_gallery

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "geoclip-1.3.0"


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="from_dir", type=Path, default=DEFAULT_REFERENCE, help="GeoCLIP release folder")
    parser.add_argument("--wheel", type=Path, help="geoclip-1.3.0 wheel for the anchor (default: pip download)")
    parser.add_argument("--repeat", type=int, default=3, help="timings per side; the best is kept (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        theirs = reference_geoclip(unpack_wheel(args.wheel or download_wheel(tmp), tmp / "site"))
        model_dir = write_geoclip_model_dir(tmp / "geoclip", read_release_folder(args.from_dir))
        model = load_model_dir(model_dir).model
        gallery = read_gallery(model_dir / "gallery.csv")
        n = len(gallery)
        with torch.no_grad():
            anchor_s, expected = best(lambda: theirs.location_encoder(theirs.gps_gallery).numpy(), args.repeat)
        ours_s, got = best(lambda: embed_locations(model, gallery), args.repeat)
        command = [sys.executable, "-m", "geovario", "embed-gps", "--model", str(model_dir), "--csv", str(model_dir / "gallery.csv"),
                   "--out", str(tmp / "e.npy"), "--no-progress", "--device", "cpu"]
        command_s, _ = best(lambda: subprocess.run(command, check=True, capture_output=True), args.repeat)
    print(f"{n:,} coordinates, {torch.get_num_threads()} threads, best of {args.repeat}")
    print(f"  GeoCLIP LocationEncoder [anchor]   {anchor_s:7.2f} s  {n / anchor_s:9,.0f} rows/s")
    print(f"  geovario embed_locations (API)     {ours_s:7.2f} s  {n / ours_s:9,.0f} rows/s   {anchor_s / ours_s:.2f}x the anchor")
    print(f"  geovario embed-gps (command)       {command_s:7.2f} s  {n / command_s:9,.0f} rows/s   {anchor_s / command_s:.2f}x the anchor")
    print(f"  max |geovario - GeoCLIP| = {np.abs(got - expected).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
