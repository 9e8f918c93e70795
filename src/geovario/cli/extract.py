"""``geovario extract``: the frozen backbone over a dataset, once, into a resumable feature store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geovario.cli.options import add_dataset_args, non_negative_int, positive_int


def register(commands) -> None:
    extract = commands.add_parser(
        "extract",
        help="extract frozen backbone features into a feature store (resumable)",
        description=(
            "Run the frozen CLIP backbone once over a dataset and write memory-mapped feature shards plus an "
            "index. Bad rows and unreadable images are skipped and listed in STORE/skipped.csv. Interrupted? "
            "Run the same command again: finished shards are kept, the rest is recomputed, and the result is "
            "identical to an uninterrupted run. Under torchrun (torchrun --nproc_per_node N -m geovario "
            "extract ...) each process encodes every N-th shard on its own GPU and rank 0 merges them."
        ),
    )
    extract.add_argument("--data", required=True, type=Path,
                         help="dataset CSV (images in a folder or in zip/tar/msgpack archives there, see --images), a folder "
                              "of photos, webdataset .tar shards with KEY.json labels, or parquet with an image-bytes column")
    add_dataset_args(extract)
    extract.add_argument("--backbone", default="openai/clip-vit-large-patch14", metavar="NAME_OR_DIR",
                         help="CLIP checkpoint: hub id or local folder (default openai/clip-vit-large-patch14)")
    extract.add_argument("--out", required=True, type=Path, help="feature store folder to write or resume")
    extract.add_argument("--batch-size", type=positive_int, default=32,
                         help="images per backbone forward pass (default 32; raise it to fill a GPU, e.g. 256 for ViT-L/14 on 80 GB)")
    extract.add_argument("--shard-size", type=positive_int, default=4096, help="images per shard file (default 4096)")
    extract.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored feature precision (default float16)")
    extract.add_argument("--views", type=non_negative_int, default=0,
                         help="also store K augmented views per image with GeoCLIP's train augmentations (default 0)")
    extract.add_argument("--seed", type=non_negative_int, default=0, help="seed of the augmented views (default 0)")
    extract.add_argument("--workers", type=non_negative_int, default=None,
                         help="processes that decode and preprocess images while the backbone runs (default: one per "
                              "core this process may use, shared among torchrun's local ranks; 0 decodes in the main process)")
    extract.add_argument("--device", help="torch device (default: cuda when available; under torchrun cuda:LOCAL_RANK)")
    extract.add_argument("--strict", action="store_true", help="fail on the first bad row or image instead of skipping it")
    extract.add_argument("--overwrite", action="store_true", help="replace a store made with different settings or data")
    extract.add_argument("--no-progress", action="store_true", help="hide the progress bar (on a terminal) or the progress lines (in a log)")
    extract.add_argument("--json", action="store_true", help="print the final manifest as JSON")
    extract.set_defaults(run=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    from geovario import distributed
    from geovario.backbones import ClipBackbone
    from geovario.data import read_dataset
    from geovario.extract import ExtractSettings, extract_features

    dataset = read_dataset(args.data, args.format, args.images)
    if args.strict:
        dataset.require_clean()
    if distributed.is_main_process():
        print(dataset.summary(20), file=sys.stderr)
    dataset.require_usable()  # before the slow backbone load
    world, device = distributed.setup(args.device or "auto")  # one rank per device under torchrun
    backbone = ClipBackbone.load(args.backbone, device)
    settings = ExtractSettings(batch_size=args.batch_size, shard_size=args.shard_size, dtype=args.dtype,
                               views=args.views, seed=args.seed, strict=args.strict,
                               **({} if args.workers is None else {"workers": args.workers}))
    manifest = extract_features(dataset, backbone, args.out, settings, overwrite=args.overwrite, progress=not args.no_progress,
                                world=world)
    distributed.teardown()
    if not world.is_main:
        return 0
    counts = manifest["counts"]
    if args.json:
        print(json.dumps(manifest, indent=1))
    else:
        print(f"{args.out}: {counts['features']} features ({manifest['backbone']['feature_dim']}-d {manifest['dtype']}); "
              f"skipped {counts['skipped_images']} images and {counts['bad_rows']} bad rows (listed in {args.out / 'skipped.csv'})")
    return 0
