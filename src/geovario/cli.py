"""The ``geovario`` command: parses arguments and calls the library, nothing more.

Errors the user can fix (:class:`GeovarioError`) print as one ``geovario: error: ...`` line with
exit status 1; usage errors exit 2, as argparse does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geovario import __version__
from geovario.errors import GeovarioError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geovario",
        description="Worldwide image geolocalization in the GeoCLIP family.",
    )
    parser.add_argument("--version", action="version", version=f"geovario {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    weights = commands.add_parser("weights", help="fetch published weights as a geovario model directory")
    weights_of = weights.add_subparsers(dest="weights_source", metavar="MODEL", required=True)
    geoclip = weights_of.add_parser(
        "geoclip",
        help="GeoCLIP 1.3.0 (MIT) with its 100K MP-16 GPS gallery",
        description=(
            "Write GeoCLIP 1.3.0's image head, location encoder, logit scale and 100K gallery as a "
            "geovario model directory. Sources, in order: --from, --wheel, an installed geoclip "
            "package, else `pip download --no-deps geoclip==1.3.0`. Files are sha256-checked "
            "against the release and read without unpickling."
        ),
    )
    geoclip.add_argument("--out", required=True, type=Path, help="model directory to write (created if needed)")
    source = geoclip.add_mutually_exclusive_group()
    source.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                        help="folder with the release files (e.g. ../shared/reference/geoclip-1.3.0) or a geoclip package folder")
    source.add_argument("--wheel", type=Path, metavar="PATH", help="a downloaded geoclip-1.3.0 wheel")
    geoclip.add_argument("--json", action="store_true", help="print a JSON summary instead of text")

    predict = commands.add_parser(
        "predict",
        help="geolocate images or backbone features",
        description=(
            "Predict the top-k gallery locations for each input. The gallery's location embeddings are "
            "computed once and cached beside the model; probabilities are the softmax over the whole gallery."
        ),
    )
    predict.add_argument("--model", required=True, type=Path, help="geovario model directory")
    inputs = predict.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--features", type=Path, metavar="FILE.npy",
                        help="an (N, D) .npy array of backbone features (D = 768 for CLIP ViT-L/14)")
    inputs.add_argument("--image", type=Path, nargs="+", metavar="PATH", help="one or more image files")
    predict.add_argument("--backbone", metavar="NAME_OR_DIR",
                         help="CLIP checkpoint (hub id or local folder) for --image; default: the one in the model's config")
    predict.add_argument("--gallery", type=Path, metavar="CSV", help="GPS gallery CSV (LAT,LON) instead of the model's own")
    predict.add_argument("--top-k", type=int, default=5, help="predictions per input, best first (default 5)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per backbone batch (default 32)")
    predict.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")
    predict.add_argument("--places", action="store_true",
                         help="add the nearest GeoNames place (city, sub-region, region, country) to each prediction, offline")
    predict.add_argument("--json", action="store_true",
                         help='print JSON: [{"input": ..., "predictions": [{"lat", "lon", "prob"[, "place"]}, ...]}, ...]')
    predict.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def cmd_weights_geoclip(args: argparse.Namespace) -> int:
    from geovario.interop.geoclip import find_release, write_geoclip_model_dir

    release = find_release(folder=args.from_dir, wheel=args.wheel)
    out = write_geoclip_model_dir(args.out, release)
    summary = {"model_dir": str(out), "source": release.source, "gallery_size": 100_000}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote GeoCLIP 1.3.0 to {out} (from {release.source})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from geovario.images import load_rgb
    from geovario.predict import Predictor, load_features_file

    if args.top_k < 1:
        raise GeovarioError(f"--top-k must be at least 1, got {args.top_k}")
    if args.features is not None:
        features = load_features_file(args.features)  # validate input before any heavy loading
    predictor = Predictor(args.model, gallery=args.gallery, device=args.device, progress=not args.no_progress)
    if args.top_k > len(predictor.gallery):
        raise GeovarioError(f"--top-k must be between 1 and the gallery size {len(predictor.gallery)}, got {args.top_k}")

    entries: list[dict] = []
    if args.features is not None:
        features = predictor.check_features(features, str(args.features))
        for i, preds in enumerate(predictor.predict_features(features, args.top_k)):
            entries.append({"input": f"{args.features}[{i}]", "predictions": [p.to_dict() for p in preds]})
    else:
        # Stream the images a batch at a time; the backbone loads only once a readable image exists.
        for start in range(0, len(args.image), args.batch_size):
            pixels, slots = [], []
            for path in args.image[start : start + args.batch_size]:
                entries.append({"input": str(path)})
                try:
                    image = load_rgb(path)
                except GeovarioError as e:
                    entries[-1]["error"] = str(e)
                    continue
                pixels.append(predictor.backbone(args.backbone).preprocess(image))
                slots.append(len(entries) - 1)
            if pixels:
                feats = predictor.backbone(args.backbone).encode_pixels(torch.from_numpy(np.stack(pixels)))
                for slot, preds in zip(slots, predictor.predict_features(feats, args.top_k)):
                    entries[slot]["predictions"] = [p.to_dict() for p in preds]

    if args.places:
        _add_places(entries)
    if args.json:
        print(json.dumps(entries, indent=1))
    else:
        print(_format_table(entries))
    failed = [e for e in entries if "error" in e]
    for entry in failed:
        print(f"geovario: error: {entry['error']}", file=sys.stderr)
    return 1 if failed else 0


def _add_places(entries: list[dict]) -> None:
    from geovario.places import place_names

    predictions = [p for entry in entries for p in entry.get("predictions", [])]
    for prediction, place in zip(predictions, place_names([(p["lat"], p["lon"]) for p in predictions])):
        prediction["place"] = place.to_dict()


def _format_table(entries: list[dict]) -> str:
    lines = []
    for entry in entries:
        if "error" in entry:
            continue
        lines.append(entry["input"])
        lines.append(f"  {'rank':>4}  {'lat':>10}  {'lon':>11}  {'prob':>8}")
        for rank, p in enumerate(entry["predictions"], 1):
            line = f"  {rank:>4}  {p['lat']:>10.5f}  {p['lon']:>11.5f}  {p['prob']:>8.4f}"
            if "place" in p:
                line += "  " + ", ".join(v for v in (p["place"]["city"], p["place"]["region"], p["place"]["country"]) if v)
            lines.append(line)
    return "\n".join(lines)


COMMANDS = {("weights", "geoclip"): cmd_weights_geoclip, ("predict", None): cmd_predict}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[(args.command, getattr(args, "weights_source", None))]
    try:
        return handler(args)
    except GeovarioError as e:
        print(f"geovario: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("geovario: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
