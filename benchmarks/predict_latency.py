"""Per-image prediction latency beyond the backbone: geovario's cached gallery vs GeoCLIP's re-encoding.

Anchor: GeoCLIP 1.3.0's own ``predict()`` path, which runs the location encoder over the whole 100K
gallery on every call (its ``forward(features, gps_gallery)`` + softmax + top-k), measured in the
same run. geovario answers from the gallery embeddings cached beside the model.

    python benchmarks/predict_latency.py [--from ../shared/reference/geoclip-1.3.0] [--wheel W] [--calls 50]

Prints per-image milliseconds for both and the ratio; targets: <= 50 ms/image and >= 500x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geovario.interop.geoclip import (
    download_wheel,
    read_release_folder,
    read_release_wheel,
    reference_geoclip,
    unpack_wheel,
    write_geoclip_model_dir,
)
from geovario.predict import Predictor

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "geoclip-1.3.0"


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="from_dir", type=Path, default=DEFAULT_REFERENCE if DEFAULT_REFERENCE.is_dir() else None,
                        help="GeoCLIP release folder for geovario's model (default: ../shared/reference/geoclip-1.3.0)")
    parser.add_argument("--wheel", type=Path, help="geoclip-1.3.0 wheel for the anchor (default: pip download)")
    parser.add_argument("--calls", type=int, default=50, help="single-image geovario calls to time")
    parser.add_argument("--anchor-calls", type=int, default=2, help="GeoCLIP calls to time (each re-encodes 100K)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = args.wheel or download_wheel(tmp)
        release = read_release_folder(args.from_dir) if args.from_dir else read_release_wheel(wheel)
        model_dir = write_geoclip_model_dir(tmp / "geoclip", release)
        Predictor(model_dir, device="cpu", progress=False).gallery_embeddings  # fills the gallery cache

        start = time.perf_counter()
        predictor = Predictor(model_dir, device="cpu", progress=False)  # what a new process pays:
        predictor.gallery_embeddings  # the model, then the cached gallery (loaded on first use) and its check
        startup_s = time.perf_counter() - start

        features = np.random.default_rng(0).normal(size=(max(args.calls, 64), 768)).astype(np.float32)
        predictor.predict_features(features[:1])  # warm-up
        rows = iter(range(len(features)))

        def one_image():
            row = next(rows)
            predictor.predict_features(features[row : row + 1])

        single = timed(one_image, min(args.calls, len(features)))
        batch = timed(lambda: predictor.predict_features(features[:64]), 3)

        reference = reference_geoclip(unpack_wheel(wheel, tmp / "site"))
        query = torch.from_numpy(features[:1])

        def geoclip_predict():
            with torch.no_grad():
                probs = reference(query, reference.gps_gallery).softmax(dim=-1)
                torch.topk(probs, 5, dim=1)

        anchor = timed(geoclip_predict, args.anchor_calls)

    ours_ms = 1000 * statistics.median(single)
    anchor_ms = 1000 * statistics.median(anchor)
    result = {
        "gallery": 100_000,
        "threads": torch.get_num_threads(),
        "geoclip_reencode_ms_per_image": round(anchor_ms, 1),
        "geovario_ms_per_image": round(ours_ms, 2),
        "geovario_ms_per_image_batch64": round(1000 * min(batch) / 64, 3),
        "geovario_startup_s_warm_cache": round(startup_s, 2),
        "speedup": round(anchor_ms / ours_ms, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"GeoCLIP 1.3.0 predict path (re-encodes 100K gallery): {anchor_ms:10.1f} ms/image  [anchor]")
        print(f"geovario predict, warm gallery cache, one at a time:  {ours_ms:10.2f} ms/image")
        print(f"geovario predict, warm gallery cache, batches of 64:  {result['geovario_ms_per_image_batch64']:10.3f} ms/image")
        print(f"geovario start-up from a warm cache (load + verify):  {startup_s:10.2f} s")
        print(f"speed-up vs anchor: {result['speedup']:.0f}x  (targets: <= 50 ms/image, >= 500x)")
    return 0 if ours_ms <= 50 and anchor_ms / ours_ms >= 500 else 1


if __name__ == "__main__":
    sys.exit(main())
