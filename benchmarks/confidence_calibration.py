"""How honest is the confidence, before and after `geovario calibrate`? Measured on the simulated world.

Simulates the README's first-model world (with 5,000 validation and 5,000 test photos), trains the first model
(configs/first_model.yaml), fits the temperature and the Platt coefficients (`geovario calibrate`) on the validation photos with the training
positions as the gallery, and reports on the test photos, before calibration, with the temperature alone and with
both: for each within-t probability of the best guess its mean, how often the photo is that close, and the expected
calibration error; and how often the 90 % radius holds the photo. Targets (issue 27): coverage between 87 and 93 %, ECE of the 25 km probability at most
0.03, on the test photos after calibration on the validation ones.

    python benchmarks/confidence_calibration.py [--work DIR] [--out benchmarks/results/confidence-calibration.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the world and the run (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "confidence-calibration.json")
    parser.add_argument("--photos", type=int, default=5000, help="validation and test photos each (default 5000)")
    args = parser.parse_args()

    from geovario.calibration import best_guesses, calibrate
    from geovario.cli.predict import calibration_table
    from geovario.config import load_config
    from geovario.data.store import FeatureStore
    from geovario.lab.study import current_commit
    from geovario.lab.world import WorldConfig, simulate
    from geovario.predict import Predictor
    from geovario.train import train

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        start = time.perf_counter()
        world = work / "world"
        if not (world / "test").is_dir():
            simulate(world, WorldConfig(n_train=20_000, n_val=args.photos, n_test=args.photos, dim=128), progress=False)
        run = work / "run"
        if not (run / "best").is_dir():
            config = load_config(REPO / "configs" / "first_model.yaml", [f"data.train={world / 'train'}", f"data.val={world / 'val'}"])
            train(config, run, progress=False)
        gallery = FeatureStore(world / "train").gps.astype(np.float32)
        predictor = Predictor(run / "best", gallery=gallery, device="cpu", progress=False)
        record = calibrate(predictor, FeatureStore(world / "val"))
        test = FeatureStore(world / "test")
        batches = [(test.features(), np.asarray(test.gps, np.float64))]
        predictor.temperature, predictor.platt = 1.0, None
        before = best_guesses(predictor, batches).report(1.0)
        predictor.temperature = record["temperature"]
        tempered = best_guesses(predictor, batches)
        stages = {"before": before, "temperature_only": tempered.report(record["temperature"]),
                  "after": tempered.report(record["temperature"], record["platt"])}
        seconds = time.perf_counter() - start

    result = {"commit": current_commit(REPO), "command": "python benchmarks/confidence_calibration.py", "photos": args.photos,
              "temperature": record["temperature"], "platt": record["platt"],
              "validation": {k: record[k] for k in ("before", "temperature_only", "after")}, "test": stages,
              "seconds": round(seconds, 1), "targets": {"coverage_90": [0.87, 0.93], "ece_25km": 0.03}}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"temperature {record['temperature']:.4g} and Platt scaling fitted on {args.photos} validation photos; test photos:")
    print(calibration_table([("before", stages["before"]), ("temperature", stages["temperature_only"]), ("after", stages["after"])]))
    print(f"wrote {args.out} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
