"""``geovario variogram``: the semivariogram of image features against distance, estimated and fitted."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geovario.cli.options import add_feature_source_args, figure_path, non_negative_int, positive_float, positive_int
from geovario.variogram.choices import ESTIMATORS, MODELS, WEIGHTS, EstimateSettings


def register(commands) -> None:
    vario = commands.add_parser(
        "variogram",
        help="estimate and fit the semivariogram of image features against distance",
        description=(
            "Empirical semivariogram of 1 - cos(f_i, f_j) against great-circle lag, and a fitted model "
            "(nugget, partial sill, range). Lags are binned on a log scale from 1 km by default, as the "
            "semivariogram loss fits them. Exact over all pairs up to --exact-max points; above, pairs are "
            "sampled in two strata (every short-lag pair or a uniform sample of them, plus random pairs), "
            "weighted so bin means stay unbiased."
        ),
    )
    add_feature_source_args(vario)
    d = EstimateSettings()  # the library's defaults are the command's
    vario.add_argument("--out", required=True, type=Path, help="JSON file for the fitted model and bins")
    vario.add_argument("--plot", type=figure_path, metavar="PNG",
                       help="also draw the bins and the fit (.png, .pdf, .svg, ...; .png added to a name without a suffix)")
    vario.add_argument("--bins", type=positive_int, default=d.bins, help=f"number of lag bins (default {d.bins}, as the loss's fit)")
    spacing = vario.add_mutually_exclusive_group()
    spacing.add_argument("--log-bins", action="store_true", default=d.log_bins,
                         help="log-spaced bins from --min-lag-km, as the semivariogram loss fits them (the default): the lags "
                              "under 25 km where false negatives live get bins of their own")
    spacing.add_argument("--linear-bins", dest="log_bins", action="store_false",
                         help="equal-width bins instead (with 40 bins each is 500 km wide, so every lag under 500 km shares one)")
    vario.add_argument("--min-lag-km", type=positive_float, default=d.min_lag_km,
                       help=f"first log-bin edge (default {d.min_lag_km:g} km; the first bin starts at 0)")
    vario.add_argument("--max-lag-km", type=positive_float, default=d.max_lag_km,
                       help=f"largest lag (default {d.max_lag_km:g}, half the Earth's circumference)")
    vario.add_argument("--model", choices=MODELS, default=d.model, help=f"variogram model (default {d.model})")
    vario.add_argument("--estimator", choices=ESTIMATORS, default=d.estimator,
                       help="matheron: the mean of 1 - cos per bin (default; the only one the loss accepts); cressie: "
                            "Cressie-Hawkins' robust estimator, with its constants derived for D-dimensional isotropic Gaussian increments")
    vario.add_argument("--weights", choices=WEIGHTS, default=d.weights,
                       help=f"fit weights: N_k/γ_k² (Cressie 1985), N_k, or none (default {d.weights})")
    vario.add_argument("--exact-max", type=positive_int, default=d.exact_max, help=f"use every pair up to this many points (default {d.exact_max})")
    vario.add_argument("--max-pairs", type=positive_int, default=d.max_pairs, help=f"pairs sampled above --exact-max (default {d.max_pairs:,})")
    vario.add_argument("--short-lag-km", type=positive_float, default=d.short_lag_km,
                       help=f"short-lag stratum radius when sampling (default {d.short_lag_km:g} km)")
    vario.add_argument("--seed", type=non_negative_int, default=d.seed, help=f"sampling seed (default {d.seed})")
    vario.add_argument("--compare", type=Path, nargs="+", metavar="STORE", help="more stores to estimate the same way and overlay in --plot")
    vario.add_argument("--json", action="store_true", help="print the result JSON to stdout too")
    vario.add_argument("--no-progress", action="store_true", help="hide progress bars")
    vario.set_defaults(run=run_variogram)


def run_variogram(args: argparse.Namespace) -> int:
    from geovario.data.store import open_feature_source
    from geovario.jsonio import write_json
    from geovario.variogram.estimate import EstimateSettings, estimate, estimates_report
    from geovario.variogram.plot import plot_variograms

    settings = EstimateSettings(bins=args.bins, max_lag_km=args.max_lag_km, log_bins=args.log_bins, min_lag_km=args.min_lag_km,
                                model=args.model, estimator=args.estimator, weights=args.weights, exact_max=args.exact_max,
                                max_pairs=args.max_pairs, short_lag_km=args.short_lag_km, seed=args.seed)
    from geovario.atomic import output_file

    for path in (args.out, args.plot):  # writable, checked before the estimate: a refused run writes nothing
        if path is not None:
            output_file(path)
    sources = [(str(args.store or args.features), open_feature_source(args.store, args.features, args.gps))]
    sources += [(str(path), open_feature_source(store=path)) for path in args.compare or []]
    results = [estimate(source, label, settings, progress=not args.no_progress) for label, source in sources]
    report = estimates_report(results, args.model)
    write_json(args.out, report)
    if args.plot:
        plot_variograms([(r.label, r.empirical, r.model) for r in results], args.plot, log_x=args.log_bins)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for r in results:
            print(f"{r.label}: {r.empirical.n_points} points, {int(r.empirical.n.sum()):,} pairs ({r.empirical.sampling}); "
                  f"{r.model if r.model else 'fit failed'}")
        print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    failed = [r for r in results if r.model is None]
    for r in failed:
        print(f"geovario: error: {r.label}: {r.error} (the empirical bins were still written to {args.out})", file=sys.stderr)
    return 1 if failed else 0
