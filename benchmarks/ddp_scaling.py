"""Data-parallel scaling: samples/s of `geovario train` under torchrun with 1 process [anchor] and with N.

GeoCLIP-sized model (768-d features, 4096-entry queue) on a synthetic cached store, the same global batch
for every process count, so the work per step is fixed and only its split changes. On CPU each process
gets --threads threads (default 1: on a 2-core machine, 2 processes x 1 thread against 1 x 1 shows what
DDP's all-gathers and gradient all-reduce cost); on a GPU machine each process takes one GPU.

    python benchmarks/ddp_scaling.py [--nproc 1 2] [--loss infonce semivariogram] [--steps 40] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from geovario.data.store import write_store

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "geoclip_baseline.yaml"


def samples_per_s(run: Path, after_step: int) -> float:
    metrics = pd.read_csv(run / "metrics.csv")
    return statistics.median(metrics.loc[metrics["step"] > after_step, "samples_per_s"].tolist())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts; the first is the anchor")
    parser.add_argument("--loss", nargs="+", default=["infonce", "semivariogram"])
    parser.add_argument("--steps", type=int, default=40, help="measured steps, after the queue has filled")
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (OMP_NUM_THREADS)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run, e.g. --set train.local_loss=true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    warmup = -(-4096 // args.batch)  # steps until the 4096-entry queue is full
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = args.batch * (warmup + args.steps + 1)
        latlon = np.stack([np.degrees(np.arcsin(rng.uniform(-0.9, 0.9, n))), rng.uniform(-180, 180, n)], 1)
        store = write_store(tmp / "store", rng.normal(size=(n, 768)).astype(np.float32), latlon)
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        print(f"global batch {args.batch}, GeoCLIP-sized model, {args.threads} thread(s) per process on CPU",
              " ".join(args.overrides))
        for loss in args.loss:
            rates = {}
            for nproc in args.nproc:
                run = tmp / f"{loss}-{nproc}"
                command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                           "-m", "geovario", "train", "--config", str(CONFIG), "--out", str(run), "--no-progress"]
                for key in (f"data.train={store.folder}", "data.val=null", f"loss.name={loss}", f"train.batch_size={args.batch}",
                            f"train.max_steps={warmup + args.steps}", "train.log_every=5", "train.checkpoint_every=100000", *args.overrides):
                    command += ["--set", key]
                subprocess.run(command, check=True, env=env, capture_output=True)
                rates[nproc] = samples_per_s(run, warmup)
            anchor = args.nproc[0]
            for nproc, rate in rates.items():
                label = f"{nproc} process{'es' if nproc > 1 else ''}" + (" [anchor]" if nproc == anchor else "")
                print(f"  {loss:14s} {label:22s} {rate:8.1f} samples/s   {rate / rates[anchor]:5.2f}x   "
                      f"efficiency {rate / rates[anchor] / (nproc / anchor):4.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
