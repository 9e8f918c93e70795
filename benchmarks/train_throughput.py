"""Training throughput: samples per second on cached features, infonce vs semivariogram, and vs image-level.

1. GeoCLIP-sized model (768-d features, queue 4096, batch 128) trained on a cached feature store:
   `infonce` [anchor] vs `semivariogram` (paper mode; it also computes lags and feature dissimilarities
   for batch x (batch + queue) pairs). Target: overhead <= 10%.
2. The same loop when every step runs a frozen backbone on decoded, augmented images (a ViT-B/32-sized
   random CLIP, 512-d) [anchor], vs cached features of the same width. Target: cached >= 20x faster.

Steady-state rates are medians over logged windows after the first. On a CUDA machine it trains there.

    python benchmarks/train_throughput.py [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from geovario.config import load_config
from geovario.data.store import write_store
from geovario.train import train


def rate(run_dir: Path, after_step: int = 0) -> float:
    """Median samples/s over the logged windows after ``after_step`` (and after the first window)."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    values = metrics.loc[metrics["step"] > after_step, "samples_per_s"].tolist()
    return statistics.median(values[1:] if len(values) > 1 else values)


def positions(n, rng):
    return np.stack([np.degrees(np.arcsin(rng.uniform(-0.9, 0.9, n))), rng.uniform(-180, 180, n)], 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = 8192
        latlon = positions(n, rng)
        store = write_store(tmp / "store768", rng.normal(size=(n, 768)).astype(np.float32), latlon)
        rates = {}
        for loss in ("infonce", "semivariogram"):
            # 32 steps of 128 fill the 4096-entry queue; measure the steady state after that.
            config = load_config(None, [f"data.train={store.folder}", f"loss.name={loss}", f"train.max_steps={32 + args.steps}",
                                        "train.log_every=5", "train.checkpoint_every=100000", "train.batch_size=128"])
            train(config, tmp / loss, progress=False)
            rates[loss] = rate(tmp / loss, after_step=32)
        overhead = rates["infonce"] / rates["semivariogram"] - 1
        print("cached features, GeoCLIP-sized model, batch 128, full 4096-entry queue:")
        print(f"  infonce [anchor]   {rates['infonce']:8.1f} samples/s")
        print(f"  semivariogram      {rates['semivariogram']:8.1f} samples/s   overhead {100 * overhead:+.1f}%  (target <= 10%)")

        # Image-level vs cached at 512-d (ViT-B/32 projection width), batch 16.
        import torch
        from PIL import Image
        from transformers import CLIPConfig, CLIPModel

        clip = tmp / "clip-base"
        torch.manual_seed(0)
        CLIPModel(CLIPConfig(projection_dim=512,
                             text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                              vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=2),
                             vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, image_size=224, patch_size=32))).save_pretrained(clip)
        images = tmp / "images"
        images.mkdir()
        small = positions(512, rng)
        rows = ["IMG_FILE,LAT,LON"]
        for i in range(512):
            Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((320, 240)).save(images / f"{i}.jpg")
            rows.append(f"{i}.jpg,{small[i, 0]},{small[i, 1]}")
        (tmp / "data.csv").write_text("\n".join(rows) + "\n")
        store512 = write_store(tmp / "store512", rng.normal(size=(512, 512)).astype(np.float32), small)
        common = ["loss.name=infonce", "train.batch_size=32", "model.queue_size=128", "train.log_every=2", "train.checkpoint_every=100000"]
        cached = load_config(None, common + [f"data.train={store512.folder}", "train.max_steps=40"])
        train(cached, tmp / "cached512", progress=False)
        online = load_config(None, common + [f"data.images={tmp / 'data.csv'}", f"data.images_dir={images}", f"data.backbone={clip}",
                                             "data.train=", "train.max_steps=8"])
        train(online, tmp / "images512", progress=False)
        cached_rate, image_rate = rate(tmp / "cached512"), rate(tmp / "images512")
        print("batch 32, 512-d, ViT-B/32-sized random CLIP (ViT-L/14, GeoCLIP's backbone, costs ~10x more per image):")
        print(f"  image-level (decode + augment + backbone each step) [anchor] {image_rate:8.1f} samples/s")
        print(f"  cached features                                             {cached_rate:8.1f} samples/s   {cached_rate / image_rate:6.0f}x  (target >= 20x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
