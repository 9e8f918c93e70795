"""Feature extraction throughput and memory.

Part 1, workers (``--sweep``, on by default): images/second of ``geovario extract`` against the
number of decoding worker processes (1, 2, ... the cores), on the real JPEGs of
``../shared/fixtures`` repeated, read from a folder and from each archive format (OSV5M zip,
webdataset tar, GeoEstimation msgpack, parquet). Beside each: the decode ceiling (decode and
preprocess only, no backbone), so a reader can see which side limits. Anchor: 1 worker, same
source, same run.

Part 2 (``--naive``): geovario extract vs the loop most people write first (for each image,
transformers' CLIPImageProcessor, then the vision tower on a batch of one), and the peak resident
memory of extraction runs of 1K, 3K and 10K images, each in a fresh process: flat memory means the
store streams.

Both use a tiny CLIP and a ViT-B/32-sized CLIP (random weights, the same compute as the real one).

    python benchmarks/extract_throughput.py [--quick] [--naive] [--no-sweep] [--fixtures DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CONFIGS = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=32),
    # CLIP ViT-B/32 (Radford et al. 2021): 12 layers, width 768, patch 32, projection 512.
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32),
}


def make_clip(folder: Path, name: str) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        projection_dim=32 if name == "tiny" else 512,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
                         max_position_embeddings=16, bos_token_id=0, eos_token_id=2),
        vision_config=dict(image_size=224, **CONFIGS[name]),
    )
    torch.manual_seed(0)
    path = folder / f"clip-{name}"
    CLIPModel(config).save_pretrained(path)
    return path


def make_images(folder: Path, n: int) -> Path:
    """n 320x240 JPEGs (smooth random colour fields, so they compress like photos) and an MP-16 CSV."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["IMG_FILE,LAT,LON"]
    for i in range(n):
        path = images / f"{i:05d}.jpg"
        if not path.exists():
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC).save(path, quality=90)
        rows.append(f"{path.name},{rng.uniform(-60, 70):.5f},{rng.uniform(-180, 180):.5f}")
    csv = folder / f"data-{n}.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def child_extract(csv: str, clip: str, out: str) -> None:
    from geovario.backbones import ClipBackbone
    from geovario.data import read_dataset
    from geovario.extract import ExtractSettings, extract_features

    dataset = read_dataset(csv)
    backbone = ClipBackbone.load(clip, "cpu")
    start = time.perf_counter()
    extract_features(dataset, backbone, out, ExtractSettings(batch_size=32, shard_size=1024, workers=2), progress=False)
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": len(dataset.records), "seconds": seconds, "img_per_s": len(dataset.records) / seconds, "max_rss_mb": rss_mb}))


def child_naive(csv: str, clip: str, n: int) -> None:
    import pandas as pd
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from geovario.backbones import ClipBackbone

    model = ClipBackbone.load(clip, "cpu").model  # same weights and projection as the extractor
    processor = CLIPImageProcessor()
    files = pd.read_csv(csv)["IMG_FILE"].tolist()[:n]
    start = time.perf_counter()
    with torch.inference_mode():
        for name in files:
            with Image.open(Path(csv).parent / "images" / name) as image:
                pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
            model(pixel_values=pixels)
    seconds = time.perf_counter() - start
    del CLIPVisionModelWithProjection
    print(json.dumps({"n": len(files), "seconds": seconds, "img_per_s": len(files) / seconds}))


def real_photos(fixtures: Path, n: int) -> list[tuple[str, bytes, float, float]]:
    """n (id, JPEG bytes, lat, lon): the fixture photos, repeated."""
    files = sorted((fixtures / "osv5m-images").glob("*.jpg")) + sorted((fixtures / "exif-gps").glob("DSCN*.jpg"))
    if not files:
        raise SystemExit(f"no fixture photos under {fixtures}; pass --fixtures ../shared/fixtures")
    rng = np.random.default_rng(0)
    return [(f"{i:06d}", files[i % len(files)].read_bytes(), float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180)))
            for i in range(n)]


def write_sources(folder: Path, photos) -> dict[str, tuple[Path, dict]]:
    """The same photos as a folder and as each archive format geovario reads in place."""
    import io
    import tarfile
    import zipfile

    import msgpack
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "folder" / "images").mkdir(parents=True)
    (folder / "zip" / "images").mkdir(parents=True)
    (folder / "msgpack" / "shards").mkdir(parents=True)
    (folder / "tar").mkdir()
    per = 100
    folder_rows, zip_rows, mp16_rows = ["IMG_FILE,LAT,LON"], ["id,latitude,longitude"], ["IMG_ID,AUTHOR,LAT,LON"]
    for start in range(0, len(photos), per):
        chunk, nn = photos[start : start + per], f"{start // per:02d}"
        with zipfile.ZipFile(folder / "zip" / "images" / f"{nn}.zip", "w") as zipped, \
                tarfile.open(folder / "tar" / f"shard-{nn}.tar", "w") as tarred, \
                open(folder / "msgpack" / "shards" / f"shard_{nn}.msg", "wb") as packed:
            for image_id, data, lat, lon in chunk:
                (folder / "folder" / "images" / f"{image_id}.jpg").write_bytes(data)
                folder_rows.append(f"{image_id}.jpg,{lat},{lon}")
                zipped.writestr(f"{nn}/{image_id}.jpg", data)
                zip_rows.append(f"{image_id},{lat},{lon}")
                for name, payload in ((f"{image_id}.jpg", data), (f"{image_id}.json", json.dumps({"lat": lat, "lon": lon}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tarred.addfile(info, io.BytesIO(payload))
                packed.write(msgpack.packb({"id": f"{image_id}.jpg", "image": data}, use_bin_type=True))
                mp16_rows.append(f"{image_id}.jpg,someone,{lat},{lon}")
    for path, rows in ((folder / "folder" / "data.csv", folder_rows), (folder / "zip" / "train.csv", zip_rows),
                       (folder / "msgpack" / "mp16_places365.csv", mp16_rows)):
        path.write_text("\n".join(rows) + "\n")
    pq.write_table(pa.table({"id": [p[0] for p in photos], "image": [{"bytes": p[1], "path": p[0]} for p in photos],
                             "lat": [p[2] for p in photos], "lon": [p[3] for p in photos]}), folder / "train.parquet", row_group_size=64)
    return {
        "folder": (folder / "folder" / "data.csv", {}),
        "zip (OSV5M)": (folder / "zip" / "train.csv", {}),
        "tar (webdataset)": (folder / "tar", {}),
        "msgpack (MP-16)": (folder / "msgpack" / "mp16_places365.csv", {"images": folder / "msgpack" / "shards"}),
        "parquet (HF)": (folder / "train.parquet", {}),
    }


def decode_rate(dataset, preprocess, workers: int, batch_size: int = 32) -> float:
    """Images/second of decoding and preprocessing alone, through extraction's own loader."""
    from geovario.image_batches import decoded_batches

    n = len(dataset.records)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    start = time.perf_counter()
    for _ in decoded_batches([r.image for r in dataset.records], preprocess, batches, workers):
        pass
    return n / (time.perf_counter() - start)


def extract_rate(dataset, backbone, workers: int, out: Path, batch_size: int = 32) -> float:
    import shutil

    from geovario.extract import ExtractSettings, extract_features

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    extract_features(dataset, backbone, out, ExtractSettings(batch_size=batch_size, shard_size=1024, workers=workers), progress=False)
    return len(dataset.records) / (time.perf_counter() - start)


def sweep(tmp: Path, clips: dict, fixtures: Path, quick: bool) -> list[dict]:
    from geovario.backbones import ClipBackbone
    from geovario.data import read_dataset
    from geovario.machine import available_cores

    counts = {"tiny": 96 if quick else 300, "base": 32 if quick else 96}
    photos = real_photos(fixtures, max(counts.values()))
    sources = write_sources(tmp / "sources", photos)
    worker_counts = list(range(1, available_cores() + 1))
    rows = []
    for model, n in counts.items():
        backbone = ClipBackbone.load(str(clips[model]), "cpu")
        for source, (path, options) in sources.items():
            dataset = read_dataset(path, **options)
            dataset.records = dataset.records[:n]
            assert not dataset.problems, dataset.summary()
            for workers in worker_counts:
                rows.append({"model": model, "source": source, "workers": workers, "n": n,
                             "decode_img_per_s": round(decode_rate(dataset, backbone.preprocess, workers), 1),
                             "extract_img_per_s": round(extract_rate(dataset, backbone, workers, tmp / "store"), 1)})
                print(f"  {model:<5} {source:<17} {workers} workers: {rows[-1]['extract_img_per_s']} img/s "
                      f"(decode ceiling {rows[-1]['decode_img_per_s']})", file=sys.stderr, flush=True)
    return rows


def print_sweep(rows: list[dict]) -> None:
    print("images/second by decoding workers (batch 32); anchor: 1 worker, same source and model, same run")
    print(f"  {'model':<5} {'source':<17} {'workers':>7} {'extract':>9} {'vs 1':>6} {'decode only':>12} {'vs 1':>6}  limit")
    first = {}
    for r in rows:
        key = (r["model"], r["source"])
        first.setdefault(key, r)
        anchor = first[key]
        limit = "decode" if r["extract_img_per_s"] > 0.8 * r["decode_img_per_s"] else "backbone"
        print(f"  {r['model']:<5} {r['source']:<17} {r['workers']:>7} {r['extract_img_per_s']:>9.1f} "
              f"{r['extract_img_per_s'] / anchor['extract_img_per_s']:>5.2f}x {r['decode_img_per_s']:>12.1f} "
              f"{r['decode_img_per_s'] / anchor['decode_img_per_s']:>5.2f}x  {limit}")


def run_child(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images in every part")
    parser.add_argument("--no-sweep", action="store_true", help="skip part 1, the workers sweep")
    parser.add_argument("--naive", action="store_true", help="also run part 2: vs a naive loop, and peak memory")
    parser.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures",
                        help="folder of the real test photos (default ../shared/fixtures)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [500, 1000, 2000] if args.quick else [1000, 3000, 10000]
    base_n = 64 if args.quick else 256

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = {name: make_clip(tmp, name) for name in CONFIGS}
        if not args.no_sweep:
            results["sweep"] = sweep(tmp, clips, args.fixtures, args.quick)
        if args.naive:
            results |= {"throughput": {}, "memory": []}
            csvs = {n: make_images(tmp, n) for n in sorted(set(sizes) | {base_n})}
            for name, n in (("tiny", sizes[0]), ("base", base_n)):
                ours = run_child("--child-extract", csvs[n], clips[name], tmp / f"store-{name}")
                naive = run_child("--child-naive", csvs[n], clips[name], min(n, 200))
                results["throughput"][name] = {"geovario_img_per_s": round(ours["img_per_s"], 1),
                                               "naive_img_per_s": round(naive["img_per_s"], 1),
                                               "ratio": round(ours["img_per_s"] / naive["img_per_s"], 2)}
            for n in sizes:
                run = run_child("--child-extract", csvs[n], clips["tiny"], tmp / f"mem-{n}")
                results["memory"].append({"n": n, "max_rss_mb": round(run["max_rss_mb"]), "img_per_s": round(run["img_per_s"], 1)})

    if args.json:
        print(json.dumps(results))
        return 0
    if "sweep" in results:
        print_sweep(results["sweep"])
    if "throughput" in results:
        print("images/second (2 workers, batch 32)      geovario    naive loop [anchor]   ratio")
        for name, r in results["throughput"].items():
            print(f"  {name:<38} {r['geovario_img_per_s']:>8.1f}    {r['naive_img_per_s']:>8.1f}            {r['ratio']:>5.2f}x")
        print("peak resident memory of `extract`, tiny CLIP, fresh process each:")
        for r in results["memory"]:
            print(f"  N = {r['n']:>6}: {r['max_rss_mb']:>6} MB   ({r['img_per_s']} img/s)")
        growth = results["memory"][-1]["max_rss_mb"] / results["memory"][0]["max_rss_mb"]
        print(f"memory ratio N={sizes[-1]} / N={sizes[0]}: {growth:.2f} (flat is ~1.0; features alone would grow {sizes[-1] // sizes[0]}x)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-extract":
        child_extract(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-naive":
        child_naive(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main())
