"""``geovario predict`` (images, features or text to places) and ``geovario embed-gps`` (coordinates to embeddings)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geovario.cli.options import non_negative_float, positive_int, probability
from geovario.confidence_defaults import LEVEL, POOL_KM
from geovario.errors import GeovarioError


def register(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="geolocate images or backbone features",
        description=(
            "Predict the top-k distinct places for each input. The model's softmax over the whole gallery (divided "
            "by the temperature `geovario calibrate` fitted, if any) is pooled: the most probable gallery point and "
            "every point within --pool-km of it are one place, whose probability is the mass they gather. Each place "
            "carries the probability that the photo lies within 25, 200, 750 and 2,500 km of it and the smallest "
            "radius holding --level of the mass. The gallery's location embeddings are computed once and cached "
            "beside the model."
        ),
    )
    predict.add_argument("--model", required=True, type=Path, help="geovario model directory")
    inputs = predict.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--features", type=Path, metavar="FILE.npy",
                        help="an (N, D) .npy array of backbone features (D = 768 for CLIP ViT-L/14)")
    inputs.add_argument("--image", type=Path, nargs="+", metavar="PATH",
                        help="image files, or folders walked recursively for images (sorted by path)")
    inputs.add_argument("--text", nargs="+", metavar="TEXT",
                        help='one or more text queries, e.g. "a snowy street with red trams": CLIP\'s text embedding is fed '
                             "through the image head, as GeoCLIP's paper does (the head never saw text in training: see the README)")
    predict.add_argument("--backbone", metavar="NAME_OR_DIR",
                         help="CLIP checkpoint (hub id or local folder) for --image and --text; default: the one in the model's config")
    predict.add_argument("--gallery", type=Path, metavar="CSV", help="GPS gallery CSV (LAT,LON) instead of the model's own")
    predict.add_argument("--top-k", type=positive_int, default=5, help="predictions per input, best first (default 5)")
    predict.add_argument("--pool-km", type=_pool_km, default=POOL_KM, metavar="KM",
                         help=f"gallery points this close to a more probable one belong to its place (default {POOL_KM:g}; 0: "
                              "only points at the same coordinates; none: no pooling, the top-k gallery points as GeoCLIP "
                              "gives them)")
    predict.add_argument("--level", type=probability, default=LEVEL,
                         help=f"the share of the probability mass the radius holds (default {LEVEL:g})")
    predict.add_argument("--tta", choices=["none", "ten-crop"], default="none",
                         help="test-time augmentation for --image: ten-crop averages the logits of each image's four corner "
                              "and centre crops and their mirror images, as GeoCLIP's authors evaluate (ten times the "
                              "backbone's work; default none)")
    predict.add_argument("--batch-size", type=positive_int, default=32, help="images per backbone batch (default 32)")
    predict.add_argument("--workers", type=int, default=None, metavar="N",
                         help="processes that decode images while the backbone runs (default: none for one batch of "
                              "images, else one per core; 0 decodes in this process)")
    predict.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")
    predict.add_argument("--places", action="store_true",
                         help="name each prediction offline as a person would: the most populous GeoNames place of 15,000+ "
                              "people within 25 km, else the nearest of 1,000+ (city, sub-region, region, country, distance); "
                              "more than 50 km from any place and off the land outline, it says open water")
    predict.add_argument("--out", type=Path, metavar="FILE",
                         help="with --image DIR: write the predictions to FILE (.csv one row per image and rank, .jsonl, "
                              ".geojson or .kml), as they come; a kill loses at most the chunk being encoded")
    predict.add_argument("--resume", action="store_true", help="with --out: continue a folder prediction that was cut short")
    predict.add_argument("--regions", action="store_true",
                         help="with --out .geojson or .kml: add each photo's confidence circle (radius_km) as a polygon")
    predict.add_argument("--heatmap", type=Path, metavar="FILE.png",
                         help="draw each input's probability over the gallery on a world map (several inputs: FILE-1.png, "
                              "FILE-2.png, ...)")
    predict.add_argument("--json", action="store_true",
                         help='print JSON: [{"input": ..., "predictions": [{"lat", "lon", "prob", "within_km", "radius_km", '
                              '"level"[, "place"]}, ...][, "exif", "error_km" for photos]}, ...]')
    predict.add_argument("--no-progress", action="store_true", help="hide progress bars")
    predict.set_defaults(run=run_predict)

    calibrate = commands.add_parser(
        "calibrate",
        help="fit the temperature and Platt scaling that make a model's confidence honest, on a validation store",
        description=("Fit one temperature for the model's softmax over its gallery on a validation feature store (Guo et "
                     "al. 2017, temperature scaling), then Platt scaling of each within-t probability (Platt 1999): the "
                     "probability that the photo lies within 25, 200, 750 and 2,500 km of the best guess should be how "
                     "often it lies that close. Saves calibration.json in the model directory (for these weights and this "
                     "gallery); predict, serve, evaluate and the library use it. Prints the expected calibration error of "
                     "each within-t probability and the coverage of the 90 % radius, before, with the temperature alone and "
                     "after both. The ranking, and so the accuracy, does not change."),
    )
    calibrate.add_argument("--model", required=True, type=Path, help="geovario model directory")
    calibrate.add_argument("--store", required=True, type=Path, metavar="VAL",
                           help="a validation feature store (`geovario extract` or `geovario simulate`), never the test split")
    calibrate.add_argument("--gallery", metavar="CSV|STORE",
                           help="GPS gallery: a LAT,LON CSV or a feature store's positions (default: the model's); predict "
                                "and evaluate must use the same one for the calibration to apply")
    calibrate.add_argument("--max-photos", type=positive_int, metavar="N", help="fit on N photos drawn at random (default: all)")
    calibrate.add_argument("--device", help="torch device (default: cuda when available)")
    calibrate.add_argument("--json", action="store_true", help="print the saved record as JSON")
    calibrate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    calibrate.set_defaults(run=run_calibrate)

    embed = commands.add_parser(
        "embed-gps",
        help="embed GPS coordinates with a model's location encoder, for downstream tasks",
        description=("Run a model's location encoder (GeoCLIP's, or one geovario trained) over coordinates and write the "
                     "embeddings: an (N, D) float32 .npy in the CSV's row order, or a parquet file that keeps the CSV's "
                     "other columns (ids, labels) beside an 'embedding' column. Streams in batches; every coordinate is "
                     "checked first, and a bad row is one error naming its line."),
    )
    embed.add_argument("--model", required=True, type=Path, help="geovario model directory (e.g. from `geovario weights geoclip`)")
    where = embed.add_mutually_exclusive_group(required=True)
    where.add_argument("--csv", type=Path, metavar="G.csv", help="CSV with LAT and LON columns (lat/latitude, lon/lng/longitude)")
    where.add_argument("--lat", type=float, help="one latitude in degrees (with --lon)")
    embed.add_argument("--lon", type=float, help="one longitude in degrees (with --lat)")
    embed.add_argument("--out", type=Path, metavar="E.npy|E.parquet",
                       help="output file; required with --csv (with --lat/--lon, omitted: print the embedding as JSON)")
    embed.add_argument("--normalize", action="store_true",
                       help="unit-length embeddings, as retrieval compares them (default: the encoder's raw output, as GeoCLIP's LocationEncoder returns it)")
    embed.add_argument("--batch-size", type=positive_int, default=65536, help="coordinates per forward pass (default 65536)")
    embed.add_argument("--device", help="torch device (default: cuda when available)")
    embed.add_argument("--json", action="store_true", help="print a JSON summary")
    embed.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    embed.set_defaults(run=run_embed_gps)


def _pool_km(text: str) -> float | None:
    return None if text.strip().lower() == "none" else non_negative_float(text)


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from geovario.data.feature_arrays import load_features_file
    from geovario.predict import Predictor

    if args.workers is not None and args.workers < 0:
        raise GeovarioError(f"--workers must not be negative, got {args.workers}")
    if args.tta != "none" and args.image is None:
        raise GeovarioError("--tta crops images: it goes with --image (features and texts have no pixels to crop)")
    if args.out is not None or args.resume or args.regions:
        return _predict_folder_to_file(args)
    if args.features is not None:
        features = load_features_file(args.features)  # validate input before any heavy loading
    if args.text is not None:
        from geovario.backbones import check_texts

        check_texts(args.text)
    predictor = Predictor(args.model, gallery=args.gallery, device=args.device, progress=not args.no_progress)
    if args.top_k > len(predictor.gallery):
        raise GeovarioError(f"--top-k must be between 1 and the gallery size {len(predictor.gallery)}, got {args.top_k}")
    if args.text is not None:
        # Predictor.predict_texts's two steps, so that a heatmap reuses the text embeddings
        features = predictor.text_tower(args.backbone).encode_texts(args.text)
        inputs, results = args.text, predictor.predict_features(features, args.top_k, args.pool_km, args.level)
    elif args.features is not None:
        features = predictor.check_features(features, str(args.features))
        inputs = [f"{args.features}[{i}]" for i in range(len(features))]
        results = predictor.predict_features(features, args.top_k, args.pool_km, args.level)
    else:
        from geovario.machine import available_cores

        from geovario.predict_folder import list_images

        images = [found for path in args.image for found in (list_images(path) if path.is_dir() else [path])]
        workers = args.workers if args.workers is not None else (0 if len(images) <= args.batch_size else available_cores())
        inputs = [str(path) for path in images]
        if args.heatmap is None:
            results = predictor.predict_images(images, args.top_k, args.backbone, args.batch_size, workers, args.pool_km, args.level,
                                               args.tta)
        else:  # the features are kept for the maps
            encoded = predictor.encode_images(images, args.backbone, args.batch_size, workers, args.tta)
            rows = [row for row in encoded if not isinstance(row, str)]
            found = iter(predictor.predict_features(np.stack(rows), args.top_k, args.pool_km, args.level) if rows else [])
            results = [row if isinstance(row, str) else next(found) for row in encoded]
            features = [None if isinstance(row, str) else row for row in encoded]
    if args.image is not None:
        from geovario.predict_folder import image_record

        entries = [image_record(Path(name), result) for name, result in zip(inputs, results)]
    else:
        entries = [{"input": name, "predictions": [p.to_dict() for p in result]} for name, result in zip(inputs, results)]
    if args.heatmap is not None:
        _draw_heatmaps(predictor, features, results, entries, args.heatmap)
    if args.places:
        _add_places(entries)
    print(json.dumps(entries, indent=1) if args.json else _format_table(entries))
    failed = [e for e in entries if "error" in e]
    for entry in failed:
        print(f"geovario: error: {entry['error']}", file=sys.stderr)
    return 1 if failed else 0


def _predict_folder_to_file(args: argparse.Namespace) -> int:
    from geovario.machine import available_cores
    from geovario.predict import Predictor
    from geovario.predict_folder import predict_folder

    if args.out is None or args.image is None or len(args.image) != 1 or not args.image[0].is_dir():
        raise GeovarioError("--out, --resume and --regions go with --image DIR (one folder) and --out FILE")
    if args.regions and args.out.suffix.lower() not in (".geojson", ".kml"):
        raise GeovarioError(f"{args.out}: --regions needs a .geojson or .kml output")
    if args.places:
        raise GeovarioError("--places prints names for a table; with --out, name places afterwards from the coordinates")
    predictor = Predictor(args.model, gallery=args.gallery, device=args.device, progress=not args.no_progress)
    workers = args.workers if args.workers is not None else available_cores()
    done = predict_folder(predictor, args.image[0], args.out, args.top_k, args.pool_km, args.level, args.backbone, args.batch_size,
                          workers, args.resume, args.regions, progress=not args.no_progress, tta=args.tta)
    summary = {"out": str(done.out), "images": done.images, "predicted": done.predicted, "resumed": done.resumed,
               "failed": [{"input": name, "error": why} for name, why in done.failed]}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{done.out}: {done.predicted} of {done.images} images geolocated"
              + (f" ({done.resumed} from the run that was cut short)" if done.resumed else ""))
    for name, why in done.failed:
        print(f"geovario: error: {why}", file=sys.stderr)
    return 1 if done.failed else 0


def _draw_heatmaps(predictor, features, results, entries, out: Path) -> None:
    import numpy as np

    from geovario import maps

    drawn = [i for i, result in enumerate(results) if not isinstance(result, str)]
    for i in drawn:
        rows = np.asarray(features[i], np.float32).reshape(-1, predictor.feature_dim)  # one row, or one per view
        prob = predictor.probabilities(predictor.encode_queries(rows, i), views=len(rows))[0]
        path = out if len(results) == 1 else out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.png'}")
        exif = entries[i].get("exif")
        maps.probability_map(predictor.gallery, prob, results[i], path, (exif["lat"], exif["lon"]) if exif else None, entries[i]["input"])
        entries[i]["heatmap"] = str(path)


def _add_places(entries: list[dict]) -> None:
    from geovario.places import names_people_use

    predictions = [p for entry in entries for p in entry.get("predictions", [])]
    for prediction, place in zip(predictions, names_people_use([(p["lat"], p["lon"]) for p in predictions])):
        prediction["place"] = place.to_dict()


def _format_table(entries: list[dict]) -> str:
    lines = []
    for entry in entries:
        if "error" in entry:
            continue
        lines.append(entry["input"])
        level = f"{100 * entry['predictions'][0]['level']:g} % within"
        lines.append(f"  {'rank':>4}  {'lat':>10}  {'lon':>11}  {'prob':>8}  {'P(25 km)':>8}  {level:>14}")
        for rank, p in enumerate(entry["predictions"], 1):
            line = (f"  {rank:>4}  {p['lat']:>10.5f}  {p['lon']:>11.5f}  {p['prob']:>8.4f}  {p['within_km']['25']:>8.4f}  "
                    f"{p['radius_km']:>11,.0f} km")
            if "place" in p:
                place = p["place"]
                name = ", ".join(v for v in (place["city"], place["region"], place["country"]) if v)
                line += (f"  open water ({place['distance_km']:,.0f} km from {name})" if place["open_water"]
                         else f"  {name} ({place['distance_km']:,.1f} km away)")
            lines.append(line)
        if entry.get("heatmap"):
            lines.append(f"  map: {entry['heatmap']}")
        if entry.get("error_km") is not None:
            lines.append(f"  EXIF GPS {entry['exif']['lat']:.5f}, {entry['exif']['lon']:.5f}: the best place is {entry['error_km']:,.1f} km away")
    return "\n".join(lines)


def run_calibrate(args: argparse.Namespace) -> int:
    from geovario.calibration import calibrate, save_calibration
    from geovario.data.store import FeatureStore
    from geovario.predict import Predictor

    from geovario.evaluate import load_gallery

    store = FeatureStore(args.store)
    predictor = Predictor(args.model, gallery=load_gallery(args.gallery), device=args.device, progress=not args.no_progress)
    record = calibrate(predictor, store, args.max_photos)
    path = save_calibration(args.model, record)
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    print(f"temperature {record['temperature']:.4g} and Platt scaling on {record['fitted_on']['photos']} photos of {args.store}; "
          f"saved to {path}")
    print(calibration_table([("before", record["before"]), ("temperature", record["temperature_only"]), ("after", record["after"])]))
    return 0


def calibration_table(reports: list[tuple[str, dict]]) -> str:
    """Calibration reports side by side: each within-t forecast's mean against the rate observed and its ECE, and the
    radius's coverage."""
    lines = ["  " + " " * 20 + "".join(f"{name:>30}" for name, _ in reports)] if any(name for name, _ in reports) else []
    for t in reports[0][1]["within_km"]:
        cells = [r["within_km"][t] for _, r in reports]
        lines.append(f"  P(within {int(t):>5,} km)  " + "".join(f"{c['forecast']:>10.3f} vs {c['observed']:.3f}, ECE {c['ece']:.3f}"
                                                             for c in cells))
    radius = [r["radius"] for _, r in reports]
    lines.append(f"  {round(100 * radius[0]['level'])} % radius holds   "
                 + "".join("{:>30}".format(f"{100 * r['coverage']:.1f} % (median {r['median_km']:,.0f} km)") for r in radius))
    return "\n".join(lines)


def run_embed_gps(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from geovario.backbones import resolve_device
    from geovario.data.latlon_csv import read_latlon_table
    from geovario.geo import coordinate_problems
    from geovario.gps_embeddings import OUTPUT_SUFFIXES, embed_locations, write_embeddings
    from geovario.modeldir import load_model_dir

    if (args.lat is None) != (args.lon is None):
        raise GeovarioError("give both --lat and --lon (or --csv)")
    if args.csv is not None and args.out is None:
        raise GeovarioError("--csv needs --out E.npy or E.parquet")
    if args.out is not None and args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise GeovarioError(f"{args.out}: the output must end in .npy or .parquet")
    if args.csv is not None:  # every row checked before the model loads
        frame, latlon = read_latlon_table(args.csv, "GPS", dtype=np.float64)
    else:
        frame, latlon = pd.DataFrame(index=[0]), np.array([[args.lat, args.lon]])
        for _, problem in coordinate_problems(latlon[:, 0], latlon[:, 1]):
            raise GeovarioError(f"--lat/--lon: {problem}")
    device = resolve_device(args.device)
    model = load_model_dir(args.model, device).model
    if args.out is None:
        embedding = embed_locations(model, latlon, normalize=args.normalize, device=device)
        print(json.dumps({"lat": args.lat, "lon": args.lon, "embedding": embedding[0].tolist()}))
        return 0
    summary = write_embeddings(model, frame, latlon, args.out, args.batch_size, args.normalize, device,
                               progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['out']}: {summary['rows']} embeddings of {summary['dim']} values"
              f"{' (unit length)' if summary['normalized'] else ''}")
    return 0
