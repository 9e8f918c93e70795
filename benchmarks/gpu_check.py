"""The first GPU hour: one table of what geovario does on a device, in under 8 minutes on one GPU (issue 28).

Rows, each against the anchor named in the same run:
1. Training throughput at GeoCLIP's shape (768-d cached features, its image head and location encoder, GPS queue
   4,096): InfoNCE at batch 512 in bf16 autocast [anchor], at batch 4,096, and in fp16 with the gradient scaler;
   samples/s in the steady state (after the queue is full), and the share of the device's dense bf16 peak the
   step's FLOPs reach (FLOPs counted by ``torch.utils.flop_counter`` on one step: the image head on the batch, the
   location encoder on batch + queue, the logits, forward and backward).
2. The semivariogram loss (the paper's mode) at batch 512 in bf16, against InfoNCE: target within 10 %.
3. DDP under ``torchrun --nproc_per_node 1``, batch 512 in bf16, against the plain process.
4. Extraction (``geovario extract``'s pipeline) with a randomly initialised CLIP shaped like ViT-L/14 (config only,
   no download) at batch 256 with decoding workers, against the decode-only ceiling of the same workers: the
   backbone, not decoding, should be the limit.
Each row also gives the peak GPU memory (``torch.cuda.max_memory_allocated``).

Without CUDA it runs the same checks at a size that finishes in about a minute (batch 64 and 256, queue 256, a
tiny CLIP; autocast is off on CPU, as in training), so that the script itself is tested; the numbers then say
nothing about a GPU. Targets on a GPU: >= 100,000 samples/s at batch 512 + queue 4,096 in bf16; the
semivariogram loss within 10 % of InfoNCE; extraction limited by the backbone.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu-check.json] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

SIZES = {
    "gpu": dict(rows=262_144, batches=(512, 4096), queue=4096, steps=60, images=4096, extract_batch=256, clip="large"),
    "cpu": dict(rows=4096, batches=(64, 256), queue=256, steps=4, images=96, extract_batch=16, clip="tiny"),
}
# Dense bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets (without sparsity); the first name found in the
# device's name applies (so "H100 PCIe" before "H100").
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
CLIP_SHAPES = {
    # CLIP ViT-L/14 (Radford et al. 2021): 24 layers, width 1024, 16 heads, patch 14, projection 768.
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=32),
}


def peak_tflops(device_name: str) -> float | None:
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device_name:
            return tflops
    return None


def step_flops(batch: int, queue: int) -> int:
    """Forward + backward FLOPs of one InfoNCE step at GeoCLIP's shape, counted on the meta device (nothing runs)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from geovario.model import GeoLocModel, ModelConfig

    with torch.device("meta"):
        model = GeoLocModel(ModelConfig())
        features, gps = torch.randn(batch, 768), torch.randn(batch + queue, 2)
    with FlopCounterMode(display=False) as counter:
        images = F.normalize(model.encode_images(features), dim=-1)
        places = F.normalize(model.encode_locations(gps), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * images @ places.T, torch.arange(batch, device="meta"))
        loss.backward()
    return int(counter.get_total_flops())


def steady_rate(run: Path, after_step: int) -> float:
    """Median samples/s of the logged windows after ``after_step`` (and after the first of those)."""
    import pandas as pd

    metrics = pd.read_csv(run / "metrics.csv")
    values = metrics.loc[metrics["step"] > after_step, "samples_per_s"].tolist()
    return statistics.median(values[1:] if len(values) > 1 else values)


def overrides(store: Path, loss: str, batch: int, queue: int, steps: int, amp_dtype: str, device: str) -> list[str]:
    fill = -(-queue // batch)  # steps until the queue is full
    return [f"data.train={store}", f"loss.name={loss}", f"train.batch_size={batch}", f"model.queue_size={queue}",
            f"train.max_steps={fill + steps}", "train.log_every=2", "train.checkpoint_every=1000000", f"train.amp_dtype={amp_dtype}",
            f"train.device={device}", "train.epochs=1000"]


def train_row(store: Path, work: Path, label: str, loss: str, batch: int, queue: int, steps: int, amp_dtype: str, device: str) -> dict:
    import torch

    from geovario.config import load_config
    from geovario.train import train

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = work / label.replace(" ", "-").replace(",", "")
    train(load_config(None, overrides(store, loss, batch, queue, steps, amp_dtype, device)), run, progress=False)
    row = {"check": label, "samples_per_s": steady_rate(run, -(-queue // batch))}
    if device == "cuda":
        row["gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def ddp_row(store: Path, work: Path, batch: int, queue: int, steps: int, device: str) -> dict:
    run, config = work / "ddp", work / "ddp.yaml"
    config.write_text("name: gpu-check-ddp\n")  # everything else from the --set overrides, as in the other rows
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "geovario", "train",
               "--config", str(config), "--out", str(run), "--no-progress"]
    for item in overrides(store, "infonce", batch, queue, steps, "bfloat16", device):
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    if done.returncode != 0:
        raise SystemExit(f"torchrun failed:\n{done.stderr[-3000:]}")
    return {"check": f"DDP, torchrun --nproc_per_node 1, InfoNCE batch {batch}, bf16", "samples_per_s": steady_rate(run, -(-queue // batch))}


def extraction_rows(work: Path, size: dict, device: str) -> list[dict]:
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPModel

    from geovario.backbones import ClipBackbone
    from geovario.data import read_dataset
    from geovario.extract import ExtractSettings, extract_features
    from geovario.image_batches import decoded_batches
    from geovario.machine import available_cores

    clip = work / f"clip-{size['clip']}"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(projection_dim=768 if size["clip"] == "large" else 32,
                         text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                          vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=2),
                         vision_config=dict(image_size=224, **CLIP_SHAPES[size["clip"]]))).save_pretrained(clip)
    images, rng = work / "images", np.random.default_rng(0)
    images.mkdir()
    rows = ["IMG_FILE,LAT,LON"]
    for i in range(size["images"]):  # 640 x 480 JPEGs of smooth colour fields: they decode like photos
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((640, 480), Image.Resampling.BICUBIC).save(
            images / f"{i:05d}.jpg", quality=90)
        rows.append(f"{i:05d}.jpg,{rng.uniform(-60, 70):.5f},{rng.uniform(-180, 180):.5f}")
    (work / "images.csv").write_text("\n".join(rows) + "\n")
    dataset = read_dataset(work / "images.csv", images=images)
    backbone = ClipBackbone.load(str(clip), device)
    workers, batch = available_cores(), size["extract_batch"]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    extract_features(dataset, backbone, work / "extracted", ExtractSettings(batch_size=batch, shard_size=4096, workers=workers), progress=False)
    extract_rate = len(dataset.records) / (time.perf_counter() - start)
    row = {"check": f"extract, random ViT-L/14-shaped CLIP, batch {batch}, {workers} workers" if size["clip"] == "large"
           else f"extract, tiny CLIP, batch {batch}, {workers} workers", "images_per_s": extract_rate}
    if device == "cuda":
        row["gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    paths = [str(images / f"{i:05d}.jpg") for i in range(size["images"])]
    batches = [list(range(s, min(s + batch, len(paths)))) for s in range(0, len(paths), batch)]
    start = time.perf_counter()
    for _ in decoded_batches(paths, backbone.preprocess, batches, workers):
        pass
    ceiling = len(paths) / (time.perf_counter() - start)
    return [{"check": f"decode only [anchor], {workers} workers", "images_per_s": ceiling}, row]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the table as JSON here (with the commit and the device)")
    parser.add_argument("--small", action="store_true", help="the CPU-sized checks even on a GPU (a test of the script)")
    args = parser.parse_args()

    import torch

    from geovario.data.store import write_store
    from geovario.lab.study import current_commit

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = SIZES["gpu" if device == "cuda" and not args.small else "cpu"]
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        latlon = np.stack([np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, size["rows"]))), rng.uniform(-180, 180, size["rows"])], 1)
        store = write_store(work / "store", rng.normal(size=(size["rows"], 768)).astype(np.float16), latlon, dtype="float16").folder
        small, large = size["batches"]
        queue, steps = size["queue"], size["steps"]
        anchor = train_row(store, work, f"InfoNCE, batch {small}, bf16 [anchor]", "infonce", small, queue, steps, "bfloat16", device)
        rows.append(anchor)
        rows.append(train_row(store, work, f"InfoNCE, batch {large}, bf16", "infonce", large, queue, steps, "bfloat16", device))
        rows.append(train_row(store, work, f"InfoNCE, batch {small}, fp16 + scaler", "infonce", small, queue, steps, "float16", device))
        rows.append(train_row(store, work, f"semivariogram, batch {small}, bf16", "semivariogram", small, queue, steps, "bfloat16", device))
        rows.append(ddp_row(store, work, small, queue, steps, device))
        peak = peak_tflops(name)
        for row in rows:
            row["vs_anchor"] = row["samples_per_s"] / anchor["samples_per_s"]
            batch = int(row["check"].split("batch ")[1].split(",")[0])
            row["tflops"] = step_flops(batch, queue) * row["samples_per_s"] / batch / 1e12
            if peak:
                row["share_of_bf16_peak"] = row["tflops"] / peak
        extraction = extraction_rows(work, size, device)
        for row in extraction:
            row["vs_anchor"] = row["images_per_s"] / extraction[0]["images_per_s"]
        rows += extraction
    seconds = time.perf_counter() - started

    print(f"geovario GPU check on {name} ({'GPU' if size is SIZES['gpu'] else 'CPU-sized'} checks, {seconds:.0f} s)")
    print(f"  {'check':<62} {'rate':>14} {'vs anchor':>9} {'TFLOP/s':>8} {'of peak':>8} {'GPU GB':>7}")
    for row in rows:
        rate = f"{row['samples_per_s']:,.0f} samples/s" if "samples_per_s" in row else f"{row['images_per_s']:,.1f} img/s"
        share = f"{100 * row['share_of_bf16_peak']:.1f} %" if "share_of_bf16_peak" in row else "-"
        tflops = f"{row['tflops']:.2f}" if "tflops" in row else "-"
        memory = f"{row['gpu_memory_gb']:.1f}" if "gpu_memory_gb" in row else "-"
        print(f"  {row['check']:<62} {rate:>14} {row['vs_anchor']:>8.2f}x {tflops:>8} {share:>8} {memory:>7}")
    if args.out:
        args.out.write_text(json.dumps({"commit": current_commit(REPO), "command": "python benchmarks/gpu_check.py", "device": name,
                                        "sizes": size, "seconds": round(seconds, 1), "rows": rows,
                                        "targets": {"samples_per_s_batch_512_bf16": 100_000, "semivariogram_vs_infonce": 0.9}},
                                       indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
