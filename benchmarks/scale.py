"""GeoCLIP scale on one machine: simulated feature stores of 1M and 5M rows (issue 28).

Stores of float16 768-d features (CLIP ViT-L/14's width, GeoCLIP's input) at random, with positions clustered
around GeoNames places like real photos. Every command runs as ``geovario ...`` in a fresh process, so its peak
resident memory (VmHWM: the largest resident set, heap and touched memory-mapped pages alike) is its own:

1. ``train``, GeoCLIP's shape (768-d, batch 512, GPS queue 4,096, InfoNCE), a fixed number of steps, on a small
   store [reference] and on each big one: samples/s in the steady state (after the queue is full), peak memory,
   and the peak of a process that only opens the same store (the index: ids, positions, the shard maps). Training
   should add the same memory on top of the index whatever the store's rows.
2. ``variogram`` on the biggest store (the stratified path), against the exact path timed on 20,000 of its points
   in the same run and extrapolated by the square of N (it visits every pair).
3. ``evaluate``: queries from the big store against a gallery of the 1M store's positions (1M rows), exact
   retrieval with and without FAISS (Flat). The gallery's location embeddings are encoded once and cached, as
   any first run would (timed apart). Retrieval costs queries x gallery x 512 multiply-adds, so on 2 cores
   --queries defaults to 10,000 of the 100,000 the issue names: the time is linear in the queries, the memory
   must not be (the report also gives the 100K extrapolation, said so).
4. ``extract`` from webdataset tar shards (small JPEGs, 2 decoding workers) with the tiny CLIP, against the
   decode-only ceiling of the same workers (extraction's own loader without the backbone).

    python benchmarks/scale.py [--rows 1000000,5000000] [--queries 10000] [--images 100000] [--steps 20]
                               [--only train,variogram,evaluate,extract] [--work DIR] [--out FILE.json] [--quick]

--quick runs everything at 20K and 60K rows, 500 queries and 2,000 images (the suite's check of this script).
Needs about 1.1x the stores' size on disk (5M x 768 float16 = 7.7 GB) under --work (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from variogram_speed import clustered_positions  # noqa: E402

DIM, BATCH, QUEUE = 768, 512, 4096  # GeoCLIP: CLIP ViT-L/14 features, its batch and GPS queue (geoclip 1.3.0)
REFERENCE_ROWS = 65_536
EXACT_POINTS = 20_000


def run_geovario(args: list[str], env: dict | None = None) -> dict:
    """``geovario ARGS`` in a fresh process: wall seconds and its peak resident memory (MiB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args], capture_output=True, text=True,
                          env=os.environ | (env or {}))
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"geovario {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(done.stdout.strip().splitlines()[-1])}


class AnonymousPeak:
    """The largest anonymous resident memory (heap, not pages of memory-mapped files, which the kernel can drop)
    of this process, sampled every 20 ms from /proc/self/status while the block runs (Linux only)."""

    def __enter__(self):
        import threading

        self.peak_kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            if self._stop.wait(0.02):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self) -> str:
        """The last line a child prints: its peak resident memory (VmHWM, mapped file pages included; not ru_maxrss,
        which Linux carries over from the parent across exec) and the anonymous peak, in MiB."""
        status = Path("/proc/self/status").read_text().splitlines()
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        return json.dumps({"peak_mib": hwm / 1024, "anon_mib": self.peak_kib / 1024})


def child(args: list[str]) -> int:
    """Run one geovario command in this process, then print its memory peaks as the last line."""
    from geovario.cli import main

    with AnonymousPeak() as watch:
        code = main(args)
    print(watch.report(), flush=True)
    return code


def open_only(store: Path) -> None:
    from geovario.data.store import FeatureStore

    start = time.perf_counter()
    with AnonymousPeak() as watch:
        FeatureStore(store)
    print(json.dumps(json.loads(watch.report()) | {"seconds": time.perf_counter() - start}), flush=True)


def build_store(folder: Path, n: int, seed: int) -> Path:
    """A finished store of n random float16 768-d rows, written through ``write_store`` from a memory map (never
    all in memory), positions clustered around GeoNames places."""
    from geovario.data.store import write_store

    if (folder / "manifest.json").is_file():
        return folder
    rng = np.random.default_rng(seed)
    raw = folder.with_name(folder.name + ".raw.npy")
    features = np.lib.format.open_memmap(raw, mode="w+", dtype=np.float16, shape=(n, DIM))
    for s in range(0, n, 65_536):
        features[s : s + 65_536] = rng.standard_normal((min(65_536, n - s), DIM), dtype=np.float32)
    features.flush()
    write_store(folder, features, clustered_positions(n, rng), source="simulated")
    del features
    raw.unlink()
    return folder


def steady_rate(run: Path, after_step: int) -> float:
    import pandas as pd

    metrics = pd.read_csv(run / "metrics.csv")
    return float(np.median(metrics.loc[metrics["step"] > after_step, "samples_per_s"]))


def measure_train(stores: dict[int, Path], work: Path, steps: int, batch: int, queue: int) -> list[dict]:
    full = queue // batch  # steps until the queue is full; the steady state is after them
    rows = []
    for n, store in stores.items():
        opened = run_geovario_open(store)
        run = work / f"train-{n}"
        shutil.rmtree(run, ignore_errors=True)
        result = run_geovario(["train", "--config", str(REPO / "configs" / "geoclip_baseline.yaml"), "--out", str(run), "--no-progress",
                               "--set", f"data.train={store}", "--set", "data.val=null",
                               "--set", f"train.batch_size={batch}", "--set", f"model.queue_size={queue}",
                               "--set", f"train.max_steps={full + steps}", "--set", "train.log_every=2",
                               "--set", "train.checkpoint_every=1000000", "--set", "data.gallery_max=1000"])
        rows.append({"rows": n, "samples_per_s": steady_rate(run, full), "peak_mib": result["peak_mib"], "anon_mib": result["anon_mib"],
                     "open_only_anon_mib": opened["anon_mib"], "training_anon_mib": result["anon_mib"] - opened["anon_mib"],
                     "open_seconds": opened["seconds"],
                     "seconds": result["seconds"]})
        shutil.rmtree(run, ignore_errors=True)
    return rows


def run_geovario_open(store: Path) -> dict:
    """Open the store in a fresh process (checksums verified, index read): its memory and seconds."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--open-only", str(store)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def subset_arrays(store: Path, n: int, folder: Path, seed: int) -> tuple[Path, Path]:
    """n random rows of a store as --features F.npy --gps G.csv."""
    from geovario.data.store import FeatureStore

    source = FeatureStore(store)
    rows = np.sort(np.random.default_rng(seed).choice(len(source), n, replace=False))
    features, gps = folder / f"subset-{n}.npy", folder / f"subset-{n}.csv"
    np.save(features, source.rows(rows, dtype=np.float16))
    np.savetxt(gps, source.gps[rows], delimiter=",", header="LAT,LON", comments="", fmt="%.6f")
    return features, gps


def measure_variogram(store: Path, n: int, work: Path) -> dict:
    features, gps = subset_arrays(store, EXACT_POINTS, work, seed=1)
    exact = run_geovario(["variogram", "--features", str(features), "--gps", str(gps), "--out", str(work / "v-exact.json"),
                          "--exact-max", str(EXACT_POINTS), "--no-progress"])
    sampled = run_geovario(["variogram", "--store", str(store), "--out", str(work / "v-sampled.json"), "--no-progress"])
    pairs = json.loads((work / "v-sampled.json").read_text())
    extrapolated = exact["seconds"] * (n * (n - 1)) / (EXACT_POINTS * (EXACT_POINTS - 1))
    return {"rows": n, "seconds": sampled["seconds"], "peak_mib": sampled["peak_mib"], "anon_mib": sampled["anon_mib"],
            "pairs": int(sum(b["n"] for b in pairs["bins"])) if "bins" in pairs else None,
            "exact_points": EXACT_POINTS, "exact_seconds": exact["seconds"], "exact_anon_mib": exact["anon_mib"],
            "exact_extrapolated_seconds": extrapolated}


def random_model(folder: Path) -> Path:
    """A GeoCLIP-shaped model directory with random weights (the speed and memory of retrieval do not depend on them)."""
    import torch

    from geovario.model import GeoLocModel, ModelConfig
    from geovario.modeldir import CONFIG_FILE, save_model_dir

    if not (folder / CONFIG_FILE).is_file():
        torch.manual_seed(0)
        save_model_dir(folder, GeoLocModel(ModelConfig()), backbone="simulated", gallery=np.zeros((1, 2), np.float32))
    return folder


def measure_evaluate(gallery_store: Path, query_store: Path, queries: int, work: Path) -> list[dict]:
    model = random_model(work / "model")
    features, gps = subset_arrays(query_store, queries, work, seed=2)
    common = ["--model", str(model), "--features", str(features), "--gps", str(gps), "--gallery", str(gallery_store), "--no-progress"]
    rows = []
    # the first run encodes every gallery row through the location encoder and caches them; later runs read the cache
    for name, extra in (("first run (+ cache)", []), ("exact (torch)", []), ("FAISS Flat", ["--faiss"])):
        out = work / f"eval-{len(rows)}.json"
        result = run_geovario(["evaluate", *common, "--out", str(out), "--no-admin", *extra])
        rows.append({"name": name, "queries": queries, "seconds": result["seconds"], "peak_mib": result["peak_mib"], "anon_mib": result["anon_mib"]})
    return rows


def write_shards(folder: Path, n: int, per_shard: int = 10_000) -> Path:
    """n small JPEGs (256x192 smooth colour fields, compressed like photos) in webdataset tar shards with JSON labels."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    bank = []
    for _ in range(64):  # 64 distinct images, repeated: encoding JPEGs is not what is measured
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((256, 192), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        bank.append(buffer.getvalue())
    for shard, start in enumerate(range(0, n, per_shard)):
        path = folder / f"shard-{shard:05d}.tar"
        if path.exists():
            continue
        with tarfile.open(path.with_suffix(".part"), "w") as tar:
            for i in range(start, min(start + per_shard, n)):
                label = json.dumps({"lat": float(rng.uniform(-60, 70)), "lon": float(rng.uniform(-180, 180))}).encode()
                for name, payload in ((f"{i:07d}.jpg", bank[i % len(bank)]), (f"{i:07d}.json", label)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        path.with_suffix(".part").rename(path)
    return folder


def decode_child(shards: str, clip: str, workers: int, batch: int) -> None:
    from extract_throughput import decode_rate

    from geovario.backbones import ClipBackbone
    from geovario.data import read_dataset

    dataset = read_dataset(shards)
    rate = decode_rate(dataset, ClipBackbone.load(clip, "cpu").preprocess, workers, batch_size=batch)
    print(json.dumps({"img_per_s": rate}), flush=True)


def measure_extract(n: int, work: Path, workers: int = 2, batch: int = 256) -> dict:
    from extract_throughput import make_clip

    shards = write_shards(work / "shards", n)
    clip = work / "clip-tiny"
    if not clip.is_dir():
        make_clip(work, "tiny")
    out = work / "extracted"
    shutil.rmtree(out, ignore_errors=True)
    result = run_geovario(["extract", "--data", str(shards), "--backbone", str(clip), "--out", str(out), "--batch-size", str(batch),
                           "--workers", str(workers), "--device", "cpu", "--no-progress"])
    manifest = json.loads((out / "manifest.json").read_text())
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--decode-child", str(shards), str(clip), str(workers), str(batch)],
                          capture_output=True, text=True, check=True)
    decode = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return {"images": n, "features": manifest["counts"]["features"], "workers": workers, "batch": batch,
            "img_per_s": n / result["seconds"], "peak_mib": result["peak_mib"], "anon_mib": result["anon_mib"],
            "decode_img_per_s": decode["img_per_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,5000000", help="store sizes (comma-separated)")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=20, help="training steps measured after the queue is full")
    parser.add_argument("--only", default="train,variogram,evaluate,extract")
    parser.add_argument("--work", type=Path, help="keep the stores here (reused by a rerun)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [20_000, 60_000] if args.quick else [int(r) for r in args.rows.split(",")]
    queries, images, steps = (500, 2000, 4) if args.quick else (args.queries, args.images, args.steps)
    batch, queue = (64, 256) if args.quick else (BATCH, QUEUE)
    reference_rows = 4096 if args.quick else REFERENCE_ROWS
    only = set(args.only.split(","))
    tmp = None if args.work else tempfile.TemporaryDirectory()
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(["python", "benchmarks/scale.py", *sys.argv[1:]]), "commit": commit(), "cores": os.cpu_count()}
    try:
        start = time.perf_counter()
        stores = {n: build_store(work / f"store-{n}", n, seed=n) for n in [reference_rows, *sizes]}
        results["build_seconds"] = time.perf_counter() - start
        if "train" in only:
            results["train"] = measure_train(stores, work, steps, batch, queue)
            print_train(results["train"], batch, queue)
        if "variogram" in only:
            results["variogram"] = measure_variogram(stores[sizes[-1]], sizes[-1], work)
            print_variogram(results["variogram"])
        if "evaluate" in only:
            results["evaluate"] = measure_evaluate(stores[sizes[0]], stores[sizes[-1]], queries, work)
            print_evaluate(results["evaluate"], sizes[0])
        if "extract" in only:
            results["extract"] = measure_extract(images, work)
            print_extract(results["extract"])
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.1f} s"


def print_train(rows: list[dict], batch: int, queue: int) -> None:
    anchor = rows[0]
    print(f"train, GeoCLIP's shape (768-d, batch {batch}, queue {queue}, InfoNCE); reference: the {anchor['rows']:,}-row store")
    print("  rows          samples/s   vs ref   peak RSS MiB   anon MiB   open-only anon   training adds   open (verify) s")
    for r in rows:
        print(f"  {r['rows']:>10,}   {r['samples_per_s']:9.1f}   {r['samples_per_s'] / anchor['samples_per_s']:5.2f}x   {r['peak_mib']:12.0f}"
              f"   {r['anon_mib']:8.0f}   {r['open_only_anon_mib']:14.0f}   {r['training_anon_mib']:13.0f}   {r['open_seconds']:15.1f}")


def print_variogram(r: dict) -> None:
    print(f"variogram, {r['rows']:,} points, stratified (geovario variogram --store, whole process):")
    print(f"  {duration(r['seconds'])}, peak RSS {r['peak_mib']:.0f} MiB (anonymous {r['anon_mib']:.0f} MiB), {r['pairs']:,} pairs")
    print(f"  reference: the exact path on {r['exact_points']:,} points took {duration(r['exact_seconds'])} (anonymous {r['exact_anon_mib']:.0f} MiB);"
          f" extrapolated to {r['rows']:,} points (x N^2): {duration(r['exact_extrapolated_seconds'])}, "
          f"{r['exact_extrapolated_seconds'] / r['seconds']:,.0f}x the stratified path")


def print_evaluate(rows: list[dict], gallery: int) -> None:
    print(f"evaluate, {rows[0]['queries']:,} queries x {gallery:,}-row gallery (whole process, GeoCLIP-shaped random model); "
          "reference: exact (torch)")
    anchor = rows[1]
    for r in rows:
        per_100k = r["seconds"] / r["queries"] * 100_000
        print(f"  {r['name']:<20} {duration(r['seconds']):>10}   {r['seconds'] / anchor['seconds']:5.2f}x   peak RSS {r['peak_mib']:6.0f} MiB"
              f" (anonymous {r['anon_mib']:.0f})   100K queries, extrapolated: {duration(per_100k)}")


def print_extract(r: dict) -> None:
    print(f"extract, {r['images']:,} JPEGs in webdataset tar shards, tiny CLIP, {r['workers']} workers, batch {r['batch']} (whole process):")
    print(f"  {r['img_per_s']:.0f} images/s = {r['img_per_s'] / r['decode_img_per_s']:.2f}x the decode-only ceiling of "
          f"{r['decode_img_per_s']:.0f} images/s (same workers, in process); peak RSS {r['peak_mib']:.0f} MiB (anonymous {r['anon_mib']:.0f})")

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "--open-only":
        sys.exit(open_only(Path(sys.argv[2])))
    if len(sys.argv) > 1 and sys.argv[1] == "--decode-child":
        sys.exit(decode_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
    sys.exit(main())
