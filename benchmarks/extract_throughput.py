"""Feature extraction throughput and memory: geovario extract vs a naive per-image loop.

Anchor: the loop most people write first, run in the same process setup: for each image,
transformers' CLIPImageProcessor, then the CLIP vision tower on a batch of one. geovario extract
decodes on worker threads, batches the backbone and writes shards as it goes.

Reports images/second for a tiny CLIP and a ViT-B/32-sized CLIP (random weights, same compute as
the real one), and the peak resident memory of extraction runs of 1K, 3K and 10K images, each in a
fresh process: flat memory means the store streams.

    python benchmarks/extract_throughput.py [--quick]
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


def run_child(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (memory sizes 500/1K/2K, fewer base images)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [500, 1000, 2000] if args.quick else [1000, 3000, 10000]
    base_n = 64 if args.quick else 256

    results: dict = {"throughput": {}, "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = {name: make_clip(tmp, name) for name in CONFIGS}
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
