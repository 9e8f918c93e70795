"""``geovario evaluate`` (a model on a feature store), ``score`` (any predictions CSV) and ``compare`` (reports side by side)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geovario.cli.options import add_feature_source_args, add_metric_args, non_negative_float, positive_int


def register(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a model on a feature store: accuracy at 1/25/200/750/2500 km, GeoScore, admin levels",
        description=(
            "Retrieve the top-k gallery locations for every query (exact, from the cached gallery embeddings), "
            "then report accuracy within each threshold, mean and median error, GeoScore, admin-level accuracy "
            "(against OSV5M-style labels, else reverse-geocoded truth) and a per-continent breakdown."
        ),
    )
    evaluate.add_argument("--model", required=True, type=Path, help="geovario model directory")
    add_feature_source_args(evaluate)
    evaluate.add_argument("--gallery", metavar="CSV|STORE", help="GPS gallery: a LAT,LON CSV or a feature store's positions (default: the model's)")
    evaluate.add_argument("--top-k", type=positive_int, help="candidates kept per query (default 5, or the gallery size if smaller; metrics use the first)")
    evaluate.add_argument("--out", required=True, type=Path, help="report JSON")
    evaluate.add_argument("--predictions", type=Path, metavar="CSV",
                          help="per-image predictions CSV (default: <out without .json>.predictions.csv)")
    evaluate.add_argument("--faiss", nargs="?", const="Flat", metavar="FACTORY",
                          help="retrieve through FAISS (optional extra); FACTORY as in faiss.index_factory, default Flat (exact)")
    evaluate.add_argument("--pool-km", type=non_negative_float, metavar="KM",
                          help="score the distinct places `predict` answers, pooled within KM (as its --pool-km; 25 there) "
                               "instead of the most probable gallery point, GeoCLIP's protocol and the default")
    evaluate.add_argument("--calibration", action="store_true",
                          help="also report how honest the confidence is: the expected calibration error of each within-t "
                               "probability of the best place and the coverage of its 90 %% radius (and, with --plots, "
                               "a reliability diagram); one more pass over the photos")
    evaluate.add_argument("--device", help="torch device (default: cuda when available)")
    evaluate.add_argument("--json", action="store_true", help="print the report JSON")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_metric_args(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    score = commands.add_parser(
        "score",
        help="score any predictions CSV from any system",
        description=(
            "Score a predictions file: the true and predicted coordinate columns are detected (gt_lat/gt_long/"
            "predicted_lat/predicted_long, LAT/LON/pred_lat/pred_lon, latitude/longitude, ...) or named. Rows that are "
            "not data, such as blank lines and summary footers, are dropped and reported. A row whose prediction is "
            "blank, NaN or out of range is a failure: it stays in n with the worst possible error (GeoScore 0) and "
            "is counted under 'failed'."
        ),
    )
    score.add_argument("predictions", type=Path, help="CSV with true and predicted coordinates")
    for role in ("true-lat", "true-lon", "pred-lat", "pred-lon"):
        score.add_argument(f"--{role}", metavar="COL", help=f"column holding the {role.replace('-', ' ')}")
    score.add_argument("--out", type=Path, help="also write the report JSON here")
    score.add_argument("--json", action="store_true", help="print the report JSON")
    add_metric_args(score)
    score.set_defaults(run=run_score)

    compare = commands.add_parser("compare", help="print evaluation reports side by side, with deltas against the first")
    compare.add_argument("reports", type=Path, nargs="+", help="report JSON files (from evaluate or score)")
    compare.add_argument("--markdown", action="store_true", help="print a Markdown table instead")
    compare.set_defaults(run=run_compare)


def run_evaluate(args: argparse.Namespace) -> int:
    from geovario.data.store import open_feature_source
    from geovario.evaluate import evaluate_model, prediction_coordinates

    source = open_feature_source(args.store, args.features, args.gps)
    predictions = args.predictions or args.out.with_name(args.out.stem + ".predictions.csv")
    _check_outputs(args.out, predictions, args.plots)
    report, frame = evaluate_model(args.model, source, predictions, args.gallery, args.top_k, args.thresholds, args.strict_less,
                                   admin=not args.no_admin, faiss_factory=args.faiss, device=args.device, progress=not args.no_progress,
                                   calibration=args.calibration, pool_km=args.pool_km)
    report["data"] = str(args.store or args.features)
    return _finish(args, report, *prediction_coordinates(frame), str(args.model))


def _check_outputs(out, predictions, plots) -> None:
    """Every output can be written, checked before the work: a refused run writes nothing."""
    from geovario.atomic import output_dir, output_file

    for path in (out, predictions):
        if path is not None:
            output_file(path)
    if plots is not None:
        output_dir(plots)


def run_score(args: argparse.Namespace) -> int:
    from geovario.metrics import build_report
    from geovario.predictions_file import read_predictions, true_and_predicted

    table = read_predictions(args.predictions, args.true_lat, args.true_lon, args.pred_lat, args.pred_lon)
    _check_outputs(args.out, None, args.plots)
    print(f"geovario: note: {args.predictions}: using columns {', '.join(f'{role}={col}' for role, col in table.columns.items())}",
          file=sys.stderr)
    true_latlon, pred_latlon, failed = true_and_predicted(table)
    report = build_report(true_latlon, pred_latlon, args.thresholds, args.strict_less, admin=not args.no_admin, failed=failed)
    report |= {"data": str(args.predictions), "columns": table.columns, "dropped_rows": [str(p) for p in table.dropped],
               "failed_rows": [str(p) for p in table.failed]}
    for label, problems in (("dropped (not a sample)", table.dropped), ("counted as a failure", table.failed)):
        for problem in problems[:10]:
            print(f"{label}: {problem}", file=sys.stderr)
        if len(problems) > 10:
            print(f"{label}: {len(problems) - 10} more rows (listed in the JSON report)", file=sys.stderr)
    return _finish(args, report, true_latlon, pred_latlon, str(args.predictions))


def _finish(args, report: dict, true_latlon, pred_latlon, label: str) -> int:
    """Write the report files, list them on stderr (so --json and --markdown keep stdout), print the report."""
    from geovario.report import markdown_table, write_report_files

    for path in write_report_files(report, args.out, args.plots, true_latlon, pred_latlon, args.thresholds, label):
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
    elif args.markdown:
        print(markdown_table([(label, report)]))
    else:
        accuracy = "  ".join(f"{t} km {v:.2f}%" for t, v in report["accuracy"].items())
        failed = f", {report['failed']} without a valid prediction, counted as failures" if report.get("failed") else ""
        print(f"{label}: n = {report['n']}{failed} ({report['convention']})\n  {accuracy}\n"
              f"  median {report['median_km']:.1f} km, mean {report['mean_km']:.1f} km, GeoScore {report['geoscore']:.0f}")
        if report.get("admin"):
            print("  admin: " + "  ".join(f"{k} {v:.2f}%" for k, v in report["admin"].items() if not k.startswith("_")))
        if report.get("calibration"):
            from geovario.cli.predict import calibration_table

            print("  calibration of the best place's confidence:\n" + calibration_table([("", report["calibration"])]))
        if report.get("dropped_rows"):
            print(f"  dropped {len(report['dropped_rows'])} rows, first: {report['dropped_rows'][0]}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from geovario.report import comparison_text, comparison_warnings, load_report, markdown_table

    reports = [(str(path), load_report(path)) for path in args.reports]
    for warning in comparison_warnings(reports):
        print(f"geovario: warning: {warning}", file=sys.stderr)
    print(markdown_table(reports) if args.markdown else comparison_text(reports))
    return 0
