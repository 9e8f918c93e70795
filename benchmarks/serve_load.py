"""Load check for `geovario serve`: 200 concurrent uploads on loopback, zero errors, p50/p95 latency.

The anchor is the same server answering the same photo one request at a time (20 sequential
requests); the concurrent run reports its throughput against that. By default the server runs a
tiny random CLIP and model built here (the HTTP, upload, decoding and place-name path is the real
one; ViT-L/14 itself costs ~0.8 s per image on 2 CPU cores). Pass --model and --backbone to load a
real model instead.

    python benchmarks/serve_load.py [--requests 200] [--timeout 120] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def tiny_model(folder: Path) -> tuple[Path, Path]:
    """A random 32-d CLIP (through save_pretrained) and a matching random geovario model with a 10K gallery."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from geovario.model import GeoLocModel, ModelConfig
    from geovario.modeldir import save_model_dir

    torch.manual_seed(0)
    clip = CLIPConfig(projection_dim=32,
                      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=2),
                      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=224, patch_size=32))
    CLIPModel(clip).save_pretrained(folder / "clip")
    rng = np.random.default_rng(0)
    gallery = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, 10_000))), rng.uniform(-180, 180, 10_000)], 1).astype(np.float32)
    model = GeoLocModel(ModelConfig(feature_dim=32, head_hidden_dim=64, embed_dim=64, rff_dim=32, hidden_dim=64, hidden_layers=2))
    model.logit_scale.data.fill_(math.log(100))
    return save_model_dir(folder / "model", model, backbone=str(folder / "clip"), gallery=gallery), folder / "clip"


def geotagged_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.2), 3: "E", 4: (2.0, 17.0, 40.2)}
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one(client: httpx.AsyncClient, url: str, photo: bytes) -> tuple[float, str | None]:
    start = time.perf_counter()
    try:
        response = await client.post(url, files={"file": ("photo.jpg", photo, "image/jpeg")})
        problem = None if response.status_code == 200 and response.json()["predictions"] else f"HTTP {response.status_code}"
    except httpx.HTTPError as e:
        problem = f"{type(e).__name__}: {e}"
    return time.perf_counter() - start, problem


async def load(url: str, photo: bytes, sequential: int, concurrent: int, timeout: float) -> dict:
    limits = httpx.Limits(max_connections=concurrent, max_keepalive_connections=concurrent)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        anchor = [await one(client, url, photo) for _ in range(sequential)]
        anchor_wall = time.perf_counter() - start
        start = time.perf_counter()
        burst = await asyncio.wait_for(asyncio.gather(*(one(client, url, photo) for _ in range(concurrent))), timeout)
        burst_wall = time.perf_counter() - start

    def summary(results, wall):
        latencies = sorted(1000 * t for t, _ in results)
        return {"requests": len(results), "errors": sum(p is not None for _, p in results),
                "first_error": next((p for _, p in results if p), None), "wall_s": round(wall, 3),
                "per_s": round(len(results) / wall, 1), "p50_ms": round(statistics.median(latencies), 1),
                "p95_ms": round(latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)], 1)}

    return {"sequential": summary(anchor, anchor_wall), "concurrent": summary(burst, burst_wall)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="concurrent requests (default 200)")
    parser.add_argument("--sequential", type=int, default=20, help="sequential requests of the anchor (default 20)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the concurrent burst may take in all (default 120)")
    parser.add_argument("--model", type=Path, help="a real model directory (default: a tiny random one)")
    parser.add_argument("--backbone", help="its CLIP backbone (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, backbone = (args.model, args.backbone) if args.model else tiny_model(Path(tmp))
        port = free_port()
        command = [sys.executable, "-m", "geovario", "serve", "--model", str(model), "--port", str(port)]
        server = subprocess.Popen(command + (["--backbone", str(backbone)] if backbone else []), stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + 300
            while True:
                try:
                    httpx.get(f"{base}/api/health", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None or time.time() > deadline:
                        print(f"the server did not start: {server.stderr.read().decode()[-2000:]}", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            results = asyncio.run(load(f"{base}/api/predict", geotagged_jpeg(), args.sequential, args.requests, args.timeout))
        finally:
            server.terminate()
            server.wait(timeout=30)
    seq, con = results["sequential"], results["concurrent"]
    results["throughput_vs_sequential"] = round(con["per_s"] / seq["per_s"], 2)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"geovario serve, 640x480 JPEG uploads on loopback ({'tiny random model' if not args.model else args.model})")
        print(f"  {seq['requests']:4d} sequential [anchor]  p50 {seq['p50_ms']:7.1f} ms  p95 {seq['p95_ms']:7.1f} ms  "
              f"{seq['per_s']:6.1f} req/s  errors {seq['errors']}")
        print(f"  {con['requests']:4d} concurrent          p50 {con['p50_ms']:7.1f} ms  p95 {con['p95_ms']:7.1f} ms  "
              f"{con['per_s']:6.1f} req/s  errors {con['errors']}  wall {con['wall_s']:.1f} s  "
              f"throughput {results['throughput_vs_sequential']:.2f}x the anchor")
        if con["first_error"]:
            print(f"  first error: {con['first_error']}")
    return 0 if seq["errors"] == 0 and con["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
