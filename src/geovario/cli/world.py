"""The simulated world: ``geovario simulate``, ``demo`` and the ``bench`` studies built on it."""

from __future__ import annotations

import argparse
from pathlib import Path

from geovario.cli.options import non_negative_int, positive_int
from geovario.errors import GeovarioError
from geovario.lab.study_design import GALLERY_SEEDS, OTHER_SEEDS, POWER_SEEDS, SWEEP_SEEDS


def register(commands) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="write a simulated world: train, validation and test feature stores with a known spatial structure",
        description=("Photos at MP-16 photo positions (or around GeoNames places, uniform, or from a CSV) with features "
                     "summed from multi-scale spatial fields (10, 100, 1,000 km), country and admin-1 region terms with "
                     "sharp borders, a climate look-alike term and a per-photo nugget; a share of photos carry little "
                     "location signal (indoor scenes, portraits). Two dataset presets share one Earth: mp16 (the default, Flickr-like "
                     "photos, calibrated so that GeoCLIP's recipe lands on its published im2gps3k curve) and osv5m "
                     "(street view, calibrated on GeoCLIP's OSV5M figures). Writes OUT/train, OUT/val, OUT/test and "
                     "OUT/truth.json. See geovario/lab/world.py."),
    )
    simulate.add_argument("--out", required=True, type=Path, help="folder for train/, val/, test/ and truth.json")
    simulate.add_argument("--preset", default="mp16", choices=["mp16", "osv5m"],
                          help="the dataset drawn on the Earth: mp16 (Flickr-like photos at MP-16 positions, default) or "
                               "osv5m (street view along populated places)")
    simulate.add_argument("--n-train", type=positive_int, default=50_000, help="training photos (default 50,000)")
    simulate.add_argument("--n-val", type=positive_int, default=5_000, help="validation photos (default 5,000)")
    simulate.add_argument("--n-test", type=positive_int, default=10_000, help="test photos (default 10,000)")
    simulate.add_argument("--dim", type=positive_int, default=256, help="feature dimension (default 256)")
    simulate.add_argument("--seed", type=non_negative_int, default=0, help="the Earth's seed (default 0)")
    simulate.add_argument("--positions", metavar="mp16|cities|uniform|CSV",
                          help="where photos are, instead of the preset's: at MP-16 photo positions, around GeoNames "
                               "places, uniform on the sphere, or a LAT,LON CSV")
    simulate.add_argument("--overwrite", action="store_true", help="replace a world already in --out")
    simulate.set_defaults(run=run_simulate)

    demo = commands.add_parser(
        "demo",
        help="the method end to end on a simulated world: variogram, two trainings, evaluation, comparison",
        description=("Simulate a world, estimate its semivariogram, train GeoCLIP's InfoNCE and the semivariogram-"
                     "weighted loss on it, evaluate both, and print the comparison. No download; about 1-3 minutes "
                     "on 2 CPU cores (--quick: under a minute)."),
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    demo.add_argument("--quick", action="store_true", help="a smaller world and shorter training")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="world and training seed (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars (the step lines stay)")
    demo.set_defaults(run=run_demo)

    bench = commands.add_parser("bench", help="benchmarks on a simulated world")
    bench_of = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    losses = bench_of.add_parser(
        "losses",
        help="every loss configuration x seed on one world, mean +- std, with the paper's ablation",
        description=("Train and evaluate each loss configuration for each seed on the same simulated world and report "
                     "mean +- std of accuracy at 1/25/200/750/2500 km, median error and GeoScore (Markdown and JSON). "
                     "Default runs: InfoNCE, the semivariogram loss and its ablation (hard only, false only, both, "
                     "neither), the thesis's penalty, Weighted, Weighted2, neighbour negatives and triplet."),
    )
    losses.add_argument("--out", type=Path, default=Path("bench-losses"), help="output folder (default bench-losses)")
    losses.add_argument("--configs", type=Path, nargs="+", metavar="YAML", help="config files to compare instead of the default runs")
    losses.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2", help="semivariogram grid over theta1, theta2, s1, s2, mask (km for thetas)")
    losses.add_argument("--seeds", type=positive_int, default=3, help="seeds per configuration (default 3)")
    losses.add_argument("--epochs", type=positive_int, help="training epochs per run (default: the lab budget of geovario/lab/experiments.py)")
    losses.add_argument("--world", type=Path, help="an existing world from `geovario simulate` (default: simulate the default world)")
    losses.add_argument("--quick", action="store_true", help="a small world (8,000 train photos, 64-d) for a fast look")
    losses.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every run's checkpoints (default: deleted once its model is written)")
    losses.set_defaults(run=run_bench_losses)

    study = bench_of.add_parser(
        "study",
        help="the full study of the method on two datasets of one simulated Earth: every loss x seed, the ablation, "
             "the range rule, refits, a sensitivity sweep, and cross-dataset tests",
        description=("Train every loss of the paper and the thesis and the ones beyond them (issue 26), the ablation of the semivariogram loss, the thesis's "
                     "range rule, variogram refits and a theta/s sweep on each of the lab's datasets (mp16 and osv5m, one "
                     "Earth), test each run on its dataset's test photos and on the other's, and report paired differences "
                     "against InfoNCE (same seeds) with 95 % bootstrap intervals: study.md, study.json and plots. Finished "
                     "runs are cached by their settings (--runs): a killed study resumes, and a rerun with more seeds trains "
                     "only what is missing. benchmarks/results/study.md gives the cost measured with the defaults."),
    )
    study.add_argument("--out", type=Path, default=Path("study"), help="output folder (default study)")
    study.add_argument("--runs", type=Path, help="the run cache, shareable between machines (default OUT/runs)")
    study.add_argument("--world", action="append", metavar="PRESET=DIR",
                       help="an existing world from `geovario simulate --preset PRESET` (repeatable; default: simulate each)")
    study.add_argument("--presets", default="mp16,osv5m", help="the datasets to train on, comma-separated (default mp16,osv5m)")
    study.add_argument("--seeds", type=positive_int, default=POWER_SEEDS,
                       help=f"seeds for InfoNCE, the paper's loss and the losses beyond it (default {POWER_SEEDS}: "
                            "benchmarks/results/study-power.md)")
    study.add_argument("--other-seeds", type=positive_int, default=OTHER_SEEDS,
                       help=f"seeds for the other losses, the ablation, the range rule and refits (default {OTHER_SEEDS})")
    study.add_argument("--gallery-seeds", type=positive_int, default=GALLERY_SEEDS,
                       help=f"seeds for the thesis's other gallery-negative variants, ~6x slower per step (default {GALLERY_SEEDS})")
    study.add_argument("--sweep-seeds", type=positive_int, default=SWEEP_SEEDS,
                       help=f"seeds per point of the theta/s sweep (default {SWEEP_SEEDS})")
    study.add_argument("--jobs", type=positive_int, default=1,
                       help="train this many runs at once, each in its own process on its share of the cores (default 1)")
    study.add_argument("--epochs", type=positive_int, help="training epochs per run (default: the lab budget of geovario/lab/experiments.py)")
    study.add_argument("--cached-only", action="store_true",
                       help="train nothing: summarise the runs that have finished (a study still under way)")
    study.set_defaults(run=run_bench_study)

    probe = bench_of.add_parser(
        "gps-embeddings",
        help="location embeddings on real labels: country, admin-1 and continent probes on the 100K MP-16 positions",
        description=("Compare location embeddings as location-encoder papers do: raw lat/lon, 3-D unit vectors, plain random "
                     "Fourier features at GeoCLIP's sigmas, GeoCLIP 1.3.0's location encoder and one geovario trained on the "
                     "simulated world. Labels (offline): continent, country and admin-1 region of the nearest GeoNames place. "
                     "Probes: logistic regression and an MLP, on a random split and on held-out 10-degree blocks. Writes "
                     "gps_embeddings.md and gps_embeddings.json."),
    )
    probe.add_argument("--out", type=Path, default=Path("bench-gps-embeddings"), help="output folder (default bench-gps-embeddings)")
    probe.add_argument("--geoclip-from", type=Path, metavar="DIR",
                       help="GeoCLIP release files (default: an installed geoclip package, else pip download geoclip==1.3.0)")
    probe.add_argument("--sim-model", type=Path, metavar="DIR",
                       help="a geovario model trained on the simulated world (default: train GeoCLIP's recipe on the default world)")
    probe.add_argument("--train-size", type=positive_int, default=10_000, help="training rows per split (default 10,000)")
    probe.add_argument("--test-size", type=positive_int, default=2_500, help="test rows per split (default 2,500)")
    probe.add_argument("--probes", default="logistic,mlp", help="comma-separated: logistic, mlp (default both)")
    probe.set_defaults(run=run_bench_gps_embeddings)


def run_simulate(args: argparse.Namespace) -> int:
    from geovario.lab.world import preset, simulate

    changes = {"positions": args.positions} if args.positions else {}
    config = preset(args.preset, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, dim=args.dim, seed=args.seed, **changes)
    simulate(args.out, config, overwrite=args.overwrite)
    print(f"wrote {args.out / 'train'} ({args.n_train:,} photos), {args.out / 'val'} ({args.n_val:,}), "
          f"{args.out / 'test'} ({args.n_test:,}) and {args.out / 'truth.json'}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from geovario.lab.demo import run_demo as demo

    demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


def run_bench_losses(args: argparse.Namespace) -> int:
    from geovario.lab.bench import DEFAULT_RUNS, bench_losses, config_runs, sweep_runs
    from geovario.lab.experiments import LAB_EPOCHS
    from geovario.lab.world import WorldConfig

    runs = {}
    if args.configs:
        runs |= config_runs(args.configs)
    if args.sweep:
        runs |= sweep_runs(args.sweep)
    world_config = WorldConfig(n_train=8000, n_val=1000, n_test=1000, dim=64) if args.quick else WorldConfig()
    result = bench_losses(args.out, runs or DEFAULT_RUNS, args.seeds, args.world, world_config, args.epochs or LAB_EPOCHS,
                          keep_checkpoints=args.keep_checkpoints)
    print(result["table"])
    print(f"wrote {args.out / 'losses.md'} and {args.out / 'losses.json'}")
    return 0


def run_bench_study(args: argparse.Namespace) -> int:
    from geovario.lab.experiments import LAB_EPOCHS
    from geovario.lab.study import run_study
    from geovario.lab.world import PRESETS

    if max(args.other_seeds, args.gallery_seeds, args.sweep_seeds) > args.seeds:
        raise GeovarioError("--other-seeds, --gallery-seeds and --sweep-seeds must not exceed --seeds "
                            "(every run is paired with InfoNCE's and the paper's on the same seed)")
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    worlds = {}
    for spec in args.world or []:
        name, _, folder = spec.partition("=")
        if name not in PRESETS or not folder:
            raise GeovarioError(f"--world {spec!r}: expected PRESET=DIR with PRESET one of {', '.join(PRESETS)}")
        worlds[name] = Path(folder)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise GeovarioError(f"--presets {args.presets!r}: choose from {', '.join(PRESETS)}")
    if worlds and set(worlds) != set(presets):
        raise GeovarioError(f"--world names {', '.join(sorted(worlds))} but --presets is {', '.join(presets)}: give one world per preset")
    result = run_study(args.out, worlds or None, args.seeds, args.other_seeds, args.gallery_seeds, args.sweep_seeds,
                       args.epochs or LAB_EPOCHS, jobs=args.jobs, runs_dir=args.runs, presets=presets,
                       cached_only=args.cached_only)
    print(result["markdown"])
    print(f"wrote {args.out / 'study.md'}, study.json and the plots")
    return 0


def run_bench_gps_embeddings(args: argparse.Namespace) -> int:
    from geovario.lab.probe import gps_embedding_bench

    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    print(gps_embedding_bench(args.out, args.geoclip_from, args.sim_model, args.train_size, args.test_size, probes))
    print(f"wrote {args.out / 'gps_embeddings.md'} and gps_embeddings.json")
    return 0
