"""Evaluation speed: 3,000 queries against GeoCLIP's 100K gallery, from cached features.

geovario: model + gallery-cache load, exact retrieval with whole-gallery softmax, all metrics
(thresholds, GeoScore, admin levels, continents), in this process; and the same as a `geovario
evaluate` command, whose wall time also includes starting Python and importing torch.

Anchor: GeoCLIP 1.3.0's ``eval_images`` path (geoclip/train/eval.py): per batch of 32 it runs
``forward(images, gps_gallery)``, which re-encodes the whole gallery, then a geopy geodesic loop over
all queries for each of the 5 thresholds. It is timed on a subset (one batch, 200 queries of the
geopy loop) and EXTRAPOLATED to 3,000 queries; the output says so.

    python benchmarks/evaluate_speed.py [--from ../shared/reference/geoclip-1.3.0] [--wheel W]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geovario.interop.geoclip import download_wheel, read_release_folder, read_release_wheel, reference_geoclip, unpack_wheel, write_geoclip_model_dir

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "geoclip-1.3.0"
N_QUERIES, GEOCLIP_BATCH = 3000, 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="from_dir", type=Path, default=DEFAULT_REFERENCE if DEFAULT_REFERENCE.is_dir() else None)
    parser.add_argument("--wheel", type=Path, help="geoclip-1.3.0 wheel for the anchor (default: pip download)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = args.wheel or download_wheel(tmp)
        model_dir = write_geoclip_model_dir(tmp / "geoclip", read_release_folder(args.from_dir) if args.from_dir else read_release_wheel(wheel))
        gallery = pd.read_csv(model_dir / "gallery.csv")
        rng = np.random.default_rng(0)
        np.save(tmp / "q.npy", rng.normal(size=(N_QUERIES, 768)).astype(np.float32))
        gallery.sample(N_QUERIES, random_state=0).to_csv(tmp / "q.csv", index=False)

        from geovario.data.store import open_feature_source
        from geovario.evaluate import frame_report, predict_source
        from geovario.predict import Predictor

        Predictor(model_dir, progress=False).gallery_embeddings  # fill the gallery cache once, as any earlier run would have
        start = time.perf_counter()
        source = open_feature_source(features=tmp / "q.npy", gps=tmp / "q.csv")
        predictor = Predictor(model_dir, progress=False)
        frame = predict_source(predictor, source, 5, progress=False)
        frame_report(frame)
        in_process = time.perf_counter() - start

        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "geovario", "evaluate", "--model", str(model_dir), "--features", str(tmp / "q.npy"),
                        "--gps", str(tmp / "q.csv"), "--out", str(tmp / "r.json"), "--no-progress"], check=True, capture_output=True)
        command = time.perf_counter() - start

        try:
            from geopy.distance import geodesic
        except ImportError:
            print("the anchor needs geopy (GeoCLIP's own dependency): pip install geopy")
            return 1
        reference = reference_geoclip(unpack_wheel(wheel, tmp / "site"))
        batch = torch.from_numpy(np.load(tmp / "q.npy")[:GEOCLIP_BATCH])
        start = time.perf_counter()
        with torch.no_grad():
            logits = reference(batch, reference.gps_gallery)
            logits.softmax(dim=-1).argmax(dim=-1)
        per_batch = time.perf_counter() - start
        targets = pd.read_csv(tmp / "q.csv").to_numpy()[:200]
        preds = reference.gps_gallery.numpy()[:200]
        start = time.perf_counter()
        for _ in range(5):  # eval_images computes every distance once per threshold
            for i in range(len(targets)):
                _ = geodesic(preds[i], targets[i]).km
        per_query_geopy = (time.perf_counter() - start) / len(targets)
        anchor = math.ceil(N_QUERIES / GEOCLIP_BATCH) * per_batch + N_QUERIES * per_query_geopy

    print(f"{N_QUERIES:,} queries x 100K gallery, from cached features")
    print(f"  GeoCLIP 1.3.0 eval_images path [anchor, EXTRAPOLATED from 1 batch + 200 geopy queries]: {anchor:9.1f} s")
    print(f"  geovario evaluate, in process (load, retrieve, all metrics):                          {in_process:9.2f} s   {anchor / in_process:7.0f}x")
    print(f"  geovario evaluate, as a command (+ Python start and imports):                        {command:9.2f} s   {anchor / command:7.0f}x")
    print("  target: <= 5 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
