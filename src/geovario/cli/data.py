"""``geovario data``: check datasets, import features computed elsewhere, summarise feature stores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geovario.cli.options import add_dataset_args, add_feature_source_args, non_negative_int


def register(commands) -> None:
    data = commands.add_parser("data", help="check datasets and inspect feature stores")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="report every unusable row of a dataset",
        description=(
            "Read a dataset (GeoCLIP/MP-16, im2gps3k, YFCC, OSV5M or Streetscapes CSV, or a folder of photos "
            "with EXIF GPS) and report, with file and line, every row with missing columns, NaN or out-of-range "
            "coordinates, non-numeric values (summary footers), a duplicate id, an unsafe path or a missing "
            "image. Exit status 1 when anything is wrong."
        ),
    )
    check.add_argument("path", type=Path, help="dataset CSV, folder of photos, webdataset .tar shard(s) or parquet file(s)")
    add_dataset_args(check)
    check.add_argument("--no-image-check", action="store_true", help="do not check that image files exist")
    check.add_argument("--decode", action="store_true",
                       help="also read and decode every image, reporting corrupt or truncated files and archive members "
                            "(reads the whole dataset)")
    check.add_argument("--max-report", type=non_negative_int, default=50, help="problems listed in the text report (0: all; default 50)")
    check.add_argument("--json", action="store_true", help="print the full report as JSON")
    check.set_defaults(run=run_check)

    imports = sub.add_parser(
        "import", help="make a feature store from a features .npy and a GPS CSV computed elsewhere",
        description="Write the (N, D) features of F.npy and the LAT,LON rows of G.csv (row i describes row i) as a "
                    "finished feature store that train, evaluate and variogram read like an extracted one.")
    imports.add_argument("--features", type=Path, required=True, metavar="F.npy", help="(N, D) floating-point features")
    imports.add_argument("--gps", type=Path, required=True, metavar="G.csv", help="CSV with LAT and LON columns, one row per feature row")
    imports.add_argument("--ids", metavar="COL", help="column of G.csv to keep as each row's id (default: the row number)")
    imports.add_argument("--out", type=Path, required=True, help="store folder to write (must not exist, or be empty)")
    imports.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored precision (default float16)")
    imports.add_argument("--backbone-name", default="imported", metavar="NAME",
                         help="what computed the features, recorded in the manifest (default 'imported')")
    imports.add_argument("--json", action="store_true", help="print the manifest as JSON")
    imports.set_defaults(run=run_import)

    rehash = sub.add_parser(
        "rehash", help="record the checksums of a feature store's files as they are now",
        description="Opening a store checks index.csv and every shard against the sha256 its manifest recorded when it "
                    "was written, so an edit is refused. After an edit you mean to keep (or on a store written before "
                    "stores had checksums), record the files' checksums as they are now. Runs trained on the store "
                    "before cannot --resume on it afterwards: its fingerprint changes.")
    rehash.add_argument("store", type=Path, help="feature store folder")
    rehash.set_defaults(run=run_rehash)

    info = sub.add_parser("info", help="summarise a feature store (or --features/--gps arrays)")
    add_feature_source_args(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=run_info)


def run_check(args: argparse.Namespace) -> int:
    from geovario.data import read_dataset

    dataset = read_dataset(args.path, args.format, args.images, check_images=not args.no_image_check)
    if args.decode:
        from geovario.data.verify import decode_problems
        from geovario.machine import available_cores

        dataset.problems += decode_problems(dataset, workers=available_cores(), progress=not args.json)
    print(json.dumps(dataset.to_dict(), indent=1) if args.json else dataset.summary(args.max_report))
    return 1 if dataset.problems else 0


def run_import(args: argparse.Namespace) -> int:
    from geovario.data.importing import import_features

    store = import_features(args.features, args.gps, args.out, ids=args.ids, dtype=args.dtype, backbone_name=args.backbone_name)
    if args.json:
        print(json.dumps(store.manifest, indent=1))
    else:
        print(f"{args.out}: {len(store)} rows of {store.dim}-d {store.manifest['dtype']} features from {args.features}")
    return 0


def run_rehash(args: argparse.Namespace) -> int:
    from geovario.data.store import rehash_store

    checksums = rehash_store(args.store)
    print(f"{args.store}: recorded the sha256 of {len(checksums)} files in its manifest")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from geovario.data.store import FeatureStore, open_feature_source

    source = open_feature_source(args.store, args.features, args.gps)
    info = {"rows": len(source), "dim": source.dim}
    if isinstance(source, FeatureStore):
        m = source.manifest
        info |= {"backbone": m["backbone"], "dtype": m["dtype"], "views": m["views"], "dataset": m["dataset"], "counts": m["counts"],
                 "verified": source.verified}
    print(json.dumps(info, indent=1) if args.json else _store_summary(args, info))
    return 0


def _store_summary(args, info: dict) -> str:
    """``data info`` for a person: what the store holds, where it came from, what was left out."""
    if "backbone" not in info:
        return f"{args.features} + {args.gps}: {info['rows']:,} rows of {info['dim']}-d features"
    dataset, counts, backbone = info["dataset"], info["counts"], info["backbone"]
    views = f", {info['views']} augmented views per row" if info["views"] else ""
    lines = [f"{args.store}: {info['rows']:,} rows of {info['dim']}-d {info['dtype']} features{views}",
             f"  backbone  {backbone.get('name')}" + (f" ({backbone['revision'][:19]}…)" if backbone.get("revision") else ""),
             f"  dataset   {dataset.get('source')} (format {dataset.get('format')}): {dataset.get('rows', 0):,} rows, "
             f"{dataset.get('usable', 0):,} usable, {dataset.get('bad_rows', 0):,} bad"]
    left_out = counts.get("skipped_images", 0) + counts.get("bad_rows", 0)
    lines.append(f"  left out  {counts.get('skipped_images', 0):,} unreadable images and {counts.get('bad_rows', 0):,} bad rows"
                 + (f", listed in {args.store / 'skipped.csv'}" if left_out else ""))
    lines.append("  checksums " + ("verified" if info["verified"] else
                                   f"none recorded (written before stores had them; `geovario data rehash {args.store}` adds them)"))
    if counts.get("converted_to_rgb"):
        lines.append("  converted to RGB  " + ", ".join(f"{mode} {n:,}" for mode, n in sorted(counts["converted_to_rgb"].items())))
    return "\n".join(lines)
