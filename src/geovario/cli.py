"""The ``geovario`` command: parses arguments and calls the library, nothing more.

Errors the user can fix (:class:`GeovarioError`) print as one ``geovario: error: ...`` line with
exit status 1; usage errors exit 2, as argparse does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from geovario import __version__
from geovario.errors import GeovarioError


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (and exit status 2): ``geovario <command>: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    export = weights_of.add_parser(
        "export-geoclip",
        help="write a geovario model as GeoCLIP 1.3.0's .pth files and gallery CSV",
        description=("Write location_encoder_weights.pth, image_encoder_mlp_weights.pth, logit_scale_weights.pth and "
                     "coordinates_100K.csv (the model's gallery, LAT,LON) for GeoCLIP's own code: copy them over "
                     "geoclip/model/weights/ and geoclip/model/gps_gallery/, or point GeoCLIP's weights_folder at --out. "
                     "Only a model with GeoCLIP's architecture (768-d features, 512-d embeddings, sigmas 1, 16, 256, "
                     "3 x 1024 hidden layers) can be exported."),
    )
    export.add_argument("--model", required=True, type=Path, help="geovario model directory")
    export.add_argument("--out", required=True, type=Path, help="folder to write the four files into (created if needed)")
    rehash = weights_of.add_parser(
        "rehash",
        help="record the sha256 of a model directory's weights in its config.json",
        description=("Every model directory names the sha256 of its weights, and loading refuses weights that do not "
                     "match or a config without it. After replacing model.safetensors on purpose, record the new "
                     "checksum with this command; it checks that the weights still fit the architecture."),
    )
    rehash.add_argument("model", type=Path, help="geovario model directory")

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
    inputs.add_argument("--text", nargs="+", metavar="TEXT",
                        help='one or more text queries, e.g. "a snowy street with red trams": CLIP\'s text embedding is fed '
                             "through the image head, as GeoCLIP's paper does (the head never saw text in training: see the README)")
    predict.add_argument("--backbone", metavar="NAME_OR_DIR",
                         help="CLIP checkpoint (hub id or local folder) for --image and --text; default: the one in the model's config")
    predict.add_argument("--gallery", type=Path, metavar="CSV", help="GPS gallery CSV (LAT,LON) instead of the model's own")
    predict.add_argument("--top-k", type=_positive_int, default=5, help="predictions per input, best first (default 5)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per backbone batch (default 32)")
    predict.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")
    predict.add_argument("--places", action="store_true",
                         help="add the nearest GeoNames place of 1,000+ people (city, sub-region, region, country) and its "
                              "distance to each prediction, offline; more than 50 km from any place and off the land "
                              "outline, it says open water")
    predict.add_argument("--json", action="store_true",
                         help='print JSON: [{"input": ..., "predictions": [{"lat", "lon", "prob"[, "place"]}, ...]}, ...]')
    predict.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_embed_gps_command(commands)
    add_data_commands(commands)
    add_extract_command(commands)
    add_variogram_command(commands)
    add_evaluation_commands(commands)
    add_train_command(commands)
    add_world_commands(commands)
    add_serve_command(commands)
    return parser


def add_embed_gps_command(commands) -> None:
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
    embed.add_argument("--batch-size", type=_positive_int, default=65536, help="coordinates per forward pass (default 65536)")
    embed.add_argument("--device", help="torch device (default: cuda when available)")
    embed.add_argument("--json", action="store_true", help="print a JSON summary")
    embed.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_serve_command(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="a local web page: drop a photo, see where it was taken",
        description=("Serve a page at http://HOST:PORT/ that geolocates a dropped photo: the top-k places on a map, "
                     "sized by probability, with place names, and the photo's EXIF GPS as the true location when it "
                     "has one; a text box geolocates a description. JSON API: POST /api/predict (multipart field 'file'), "
                     "POST /api/predict-text ({\"text\": ...}), GET /api/health, schema at "
                     "/openapi.json. The model, its cached gallery and the backbone load once at start-up."),
    )
    serve.add_argument("--model", required=True, type=Path, help="geovario model directory")
    serve.add_argument("--backbone", metavar="NAME_OR_DIR", help="CLIP checkpoint (default: the one the model directory names)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    serve.add_argument("--top-k", type=_positive_int, default=5, help="places per photo, at most 100 (default 5)")
    serve.add_argument("--max-upload-mb", type=_positive_float, default=20.0, help="larger uploads get HTTP 413 (default 20)")
    serve.add_argument("--max-pixels", type=_positive_int, default=50_000_000,
                       help="images with more pixels get HTTP 413, before decoding: the decompression-bomb guard (default 50,000,000)")
    serve.add_argument("--tiles", default="https://tile.openstreetmap.org/{z}/{x}/{y}.png", metavar="URL|none",
                       help="map tile URL template (default OpenStreetMap); 'none' shows only the bundled world outline")
    serve.add_argument("--device", help="torch device (default: cuda when available)")


def add_world_commands(commands) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="write a simulated world: train and test feature stores with a known spatial structure",
        description=("Photos at MP-16 photo positions (or around GeoNames places, uniform, or from a CSV) with features "
                     "summed from multi-scale spatial fields (10, 100, 1,000 km), country and admin-1 region terms with "
                     "sharp borders, a climate look-alike term and a per-photo nugget; a share of photos carry little "
                     "location signal (indoor scenes, portraits). Calibrated so that GeoCLIP's recipe lands on GeoCLIP's "
                     "published im2gps3k curve. Writes OUT/train, OUT/test and OUT/truth.json. See geovario/sim.py."),
    )
    simulate.add_argument("--out", required=True, type=Path, help="folder for train/, test/ and truth.json")
    simulate.add_argument("--n-train", type=_positive_int, default=50_000, help="training photos (default 50,000)")
    simulate.add_argument("--n-test", type=_positive_int, default=3_000, help="test photos (default 3,000)")
    simulate.add_argument("--dim", type=_positive_int, default=256, help="feature dimension (default 256)")
    simulate.add_argument("--seed", type=_non_negative_int, default=0, help="world seed (default 0)")
    simulate.add_argument("--positions", default="mp16", metavar="mp16|cities|uniform|CSV",
                          help="where photos are: at MP-16 photo positions (default), around GeoNames places, uniform on "
                               "the sphere, or a LAT,LON CSV")
    simulate.add_argument("--overwrite", action="store_true", help="replace a world already in --out")
    demo = commands.add_parser(
        "demo",
        help="the method end to end on a simulated world: variogram, two trainings, evaluation, comparison",
        description=("Simulate a world, estimate its semivariogram, train GeoCLIP's InfoNCE and the semivariogram-"
                     "weighted loss on it, evaluate both, and print the comparison. No download; about 1-3 minutes "
                     "on 2 CPU cores (--quick: under a minute)."),
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    demo.add_argument("--quick", action="store_true", help="a smaller world and shorter training")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="world and training seed (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars (the step lines stay)")

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
    losses.add_argument("--seeds", type=_positive_int, default=3, help="seeds per configuration (default 3)")
    losses.add_argument("--epochs", type=_positive_int, help="training epochs per run (default: the lab budget of geovario/experiments.py)")
    losses.add_argument("--world", type=Path, help="an existing world from `geovario simulate` (default: simulate the default world)")
    losses.add_argument("--quick", action="store_true", help="a small world (8,000 train photos, 64-d) for a fast look")
    losses.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every run's checkpoints (default: deleted once its model is written)")
    study = bench_of.add_parser(
        "study",
        help="the full study of the method: every loss x seed, the ablation, the range rule, refits and a sensitivity sweep",
        description=("Train and evaluate every loss of the paper and the thesis, the ablation of the semivariogram loss, the "
                     "thesis's range rule, variogram refits and a theta/s sweep on one simulated world, and report paired "
                     "differences against InfoNCE (same seeds) with 95%% bootstrap intervals: study.md, study.json, "
                     "sweep_theta.png, sweep_s.png. Finished runs are cached by their settings: a killed study resumes, "
                     "and a rerun with more seeds trains only what is missing. With the defaults: 81 runs, about 4.4 core-hours of training "
                     "(measured on a 2-core CPU machine)."),
    )
    study.add_argument("--out", type=Path, default=Path("study"), help="output folder, also the run cache (default study)")
    study.add_argument("--world", type=Path, help="an existing world from `geovario simulate` (default: simulate the default world)")
    study.add_argument("--seeds", type=_positive_int, default=5, help="seeds for the losses, the ablation, the range rule and refits (default 5)")
    study.add_argument("--gallery-seeds", type=_positive_int, default=2,
                       help="seeds for the thesis's other gallery-negative variants, ~6x slower per step (default 2)")
    study.add_argument("--jobs", type=_positive_int, default=1,
                       help="train this many runs at once, each in its own process on its share of the cores (default 1)")
    study.add_argument("--sweep-seeds", type=_positive_int, default=1, help="seeds per point of the theta/s sweep (default 1)")
    study.add_argument("--epochs", type=_positive_int, help="training epochs per run (default: the lab budget of geovario/experiments.py)")
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
    probe.add_argument("--train-size", type=_positive_int, default=10_000, help="training rows per split (default 10,000)")
    probe.add_argument("--test-size", type=_positive_int, default=2_500, help="test rows per split (default 2,500)")
    probe.add_argument("--probes", default="logistic,mlp", help="comma-separated: logistic, mlp (default both)")


def cmd_simulate(args: argparse.Namespace) -> int:
    from geovario.sim import WorldConfig, simulate

    config = WorldConfig(n_train=args.n_train, n_test=args.n_test, dim=args.dim, seed=args.seed, positions=args.positions)
    simulate(args.out, config, overwrite=args.overwrite)
    print(f"wrote {args.out / 'train'} ({args.n_train:,} photos), {args.out / 'test'} ({args.n_test:,}) and {args.out / 'truth.json'}")
    return 0


def cmd_bench_losses(args: argparse.Namespace) -> int:
    from geovario.bench import DEFAULT_RUNS, bench_losses, config_runs, sweep_runs
    from geovario.experiments import LAB_EPOCHS
    from geovario.sim import WorldConfig

    runs = {}
    if args.configs:
        runs |= config_runs(args.configs)
    if args.sweep:
        runs |= sweep_runs(args.sweep)
    world_config = WorldConfig(n_train=8000, n_test=1000, dim=64) if args.quick else WorldConfig()
    result = bench_losses(args.out, runs or DEFAULT_RUNS, args.seeds, args.world, world_config, args.epochs or LAB_EPOCHS,
                          keep_checkpoints=args.keep_checkpoints)
    print(result["table"])
    print(f"wrote {args.out / 'losses.md'} and {args.out / 'losses.json'}")
    return 0


def cmd_bench_study(args: argparse.Namespace) -> int:
    from geovario.experiments import LAB_EPOCHS
    from geovario.study import run_study

    if args.gallery_seeds > args.seeds or args.sweep_seeds > args.seeds:
        raise GeovarioError("--gallery-seeds and --sweep-seeds must not exceed --seeds (every run is paired with InfoNCE's)")
    result = run_study(args.out, args.world, args.seeds, args.gallery_seeds, args.sweep_seeds, args.epochs or LAB_EPOCHS, jobs=args.jobs)
    print(result["markdown"])
    print(f"wrote {args.out / 'study.md'}, study.json, sweep_theta.png and sweep_s.png")
    return 0


def cmd_bench_gps_embeddings(args: argparse.Namespace) -> int:
    import numpy as np

    from geovario.atomic import atomic_write_bytes, output_dir
    from geovario.jsonio import write_json
    from geovario.gps_embeddings import embed_locations
    from geovario.probe import plain_rff, position_labels, probe_markdown, raw_latlon, run_probe, splits, unit_vectors
    from geovario.sim import mp16_positions

    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    if not probes or set(probes) - {"logistic", "mlp"}:
        raise GeovarioError(f"--probes: choose from logistic, mlp (got {args.probes!r})")
    output_dir(args.out)
    latlon = mp16_positions()
    split_rows = splits(latlon, args.train_size, args.test_size)
    used = np.unique(np.concatenate([rows for pair in split_rows.values() for rows in pair]))
    print(f"labelling {len(used):,} positions", flush=True)
    labels = position_labels(latlon[used])
    position = np.full(len(latlon), -1)
    position[used] = np.arange(len(used))
    split_rows = {name: (position[train], position[test]) for name, (train, test) in split_rows.items()}
    points = latlon[used]
    models = {"GeoCLIP 1.3.0 encoder": _geoclip_for_probe(args.geoclip_from), "geovario (sim world)": _sim_model_for_probe(args)}
    embeddings = {"raw lat/lon": raw_latlon(points), "3-D unit vector": unit_vectors(points), "RFF, GeoCLIP's sigmas": plain_rff(points)}
    embeddings |= {name: embed_locations(model, points) for name, model in models.items()}
    rows = run_probe(embeddings, labels, split_rows, probes)
    command = (f"geovario bench gps-embeddings --train-size {args.train_size} --test-size {args.test_size} --probes {','.join(probes)}"
               + (f" --geoclip-from {args.geoclip_from}" if args.geoclip_from else ""))
    text = probe_markdown(rows, command, args.train_size, args.test_size)
    atomic_write_bytes(args.out / "gps_embeddings.md", (text + "\n").encode())
    write_json(args.out / "gps_embeddings.json", {"rows": rows, "train_size": args.train_size, "test_size": args.test_size})
    print(text)
    print(f"wrote {args.out / 'gps_embeddings.md'} and gps_embeddings.json")
    return 0


def _geoclip_for_probe(folder):
    from geovario.interop.geoclip import find_release, geoclip_model

    return geoclip_model(find_release(folder=folder))


def _sim_model_for_probe(args):
    from geovario.modeldir import load_model_dir

    if args.sim_model is None:
        from geovario.experiments import train_and_evaluate
        from geovario.sim import WorldConfig, simulate

        world, run = args.out / "sim-world", args.out / "sim-run"
        if not (world / "train").is_dir():
            print(f"simulating the default world into {world}", flush=True)
            simulate(world, WorldConfig(), overwrite=True)
        if not (run / "model").is_dir():
            print(f"training GeoCLIP's recipe on it into {run}", flush=True)
            train_and_evaluate(world, run, [], progress=False)  # no overrides: the defaults are GeoCLIP's recipe
        args.sim_model = run / "model"
    return load_model_dir(args.sim_model).model


def cmd_demo(args: argparse.Namespace) -> int:
    from geovario.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


def add_train_command(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train from a YAML experiment config (losses, negatives, optimiser), resumable",
        description=(
            "Train a GeoCLIP-family model on a feature store from one YAML config (see configs/). Checkpoints "
            "are written atomically every train.checkpoint_every steps and at each epoch end; --resume RUN_DIR "
            "continues bit for bit. The run directory ends with model/, which predict and evaluate accept."
        ),
    )
    train.add_argument("--config", type=Path, help="experiment YAML (not needed with --resume)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set loss.s1=2 --set train.batch_size=64 (repeatable)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.add_argument("--out", type=Path, metavar="RUN_DIR", help="run directory (default: train.out, else runs/<name>)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def cmd_train(args: argparse.Namespace) -> int:
    from geovario.config import Config, _build, apply_overrides, load_config, validate
    from geovario.jsonio import read_json
    from geovario.distributed import is_main_process, teardown
    from geovario.train import train

    if args.resume:
        saved = args.resume / "config.json"
        if not saved.is_file():
            raise GeovarioError(f"{args.resume}: no config.json; not a geovario run directory")
        config = _build(Config, apply_overrides(read_json(saved, "run config"), args.overrides), "")
        validate(config)
        run_dir = args.resume
    else:
        if args.config is None:
            raise GeovarioError("give --config CONFIG.yaml (or --resume RUN_DIR)")
        config = load_config(args.config, args.overrides)
        run_dir = args.out or Path(config.train.out or f"runs/{config.name}")
    final = train(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if is_main_process():  # under torchrun, rank 0 speaks for the job
        print(f"trained {config.name}: model in {final}, metrics in {run_dir / 'metrics.csv'}")
    teardown()
    return 0


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    from geovario.data import FORMAT_NAMES

    parser.add_argument("--format", default="auto", choices=FORMAT_NAMES,
                        help="dataset layout (default auto: detected from the CSV columns; .tar shards are webdataset, "
                             ".parquet is parquet, another folder is read by EXIF GPS)")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="folder the image paths are relative to (default: images/<csv name>, images, or the CSV's folder); "
                             "images not there as files are looked up by name or id in the zip, tar and msgpack archives "
                             "below it (OSV5M's NN.zip, GeoEstimation's MP-16 shards), read in place")


def add_feature_source_args(parser: argparse.ArgumentParser) -> None:
    """``--store STORE`` or ``--features F.npy --gps G.csv``: every store-reading command takes both."""
    parser.add_argument("--store", type=Path, help="feature store folder written by `geovario extract`")
    parser.add_argument("--features", type=Path, metavar="F.npy", help="(N, D) features from elsewhere (with --gps)")
    parser.add_argument("--gps", type=Path, metavar="G.csv", help="LAT,LON rows matching --features row for row")


def add_data_commands(commands) -> None:
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
    _add_dataset_args(check)
    check.add_argument("--no-image-check", action="store_true", help="do not check that image files exist")
    check.add_argument("--decode", action="store_true",
                       help="also read and decode every image, reporting corrupt or truncated files and archive members "
                            "(reads the whole dataset)")
    check.add_argument("--max-report", type=_non_negative_int, default=50, help="problems listed in the text report (0: all; default 50)")
    check.add_argument("--json", action="store_true", help="print the full report as JSON")
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
    info = sub.add_parser("info", help="summarise a feature store (or --features/--gps arrays)")
    add_feature_source_args(info)
    info.add_argument("--json", action="store_true", help="print JSON")


def add_extract_command(commands) -> None:
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
    _add_dataset_args(extract)
    extract.add_argument("--backbone", default="openai/clip-vit-large-patch14", metavar="NAME_OR_DIR",
                         help="CLIP checkpoint: hub id or local folder (default openai/clip-vit-large-patch14)")
    extract.add_argument("--out", required=True, type=Path, help="feature store folder to write or resume")
    extract.add_argument("--batch-size", type=_positive_int, default=32,
                         help="images per backbone forward pass (default 32; raise it to fill a GPU, e.g. 256 for ViT-L/14 on 80 GB)")
    extract.add_argument("--shard-size", type=_positive_int, default=4096, help="images per shard file (default 4096)")
    extract.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored feature precision (default float16)")
    extract.add_argument("--views", type=_non_negative_int, default=0,
                         help="also store K augmented views per image with GeoCLIP's train augmentations (default 0)")
    extract.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the augmented views (default 0)")
    extract.add_argument("--workers", type=_non_negative_int, default=None,
                         help="processes that decode and preprocess images while the backbone runs (default: one per "
                              "core this process may use, shared among torchrun's local ranks; 0 decodes in the main process)")
    extract.add_argument("--device", help="torch device (default: cuda when available; under torchrun cuda:LOCAL_RANK)")
    extract.add_argument("--strict", action="store_true", help="fail on the first bad row or image instead of skipping it")
    extract.add_argument("--overwrite", action="store_true", help="replace a store made with different settings or data")
    extract.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    extract.add_argument("--json", action="store_true", help="print the final manifest as JSON")


def add_variogram_command(commands) -> None:
    from geovario.variogram import ESTIMATORS, MAX_LAG_KM, MODELS, WEIGHTS

    vario = commands.add_parser(
        "variogram",
        help="estimate and fit the semivariogram of image features against distance",
        description=(
            "Empirical semivariogram of 1 - cos(f_i, f_j) against great-circle lag, and a fitted model "
            "(nugget, partial sill, range). Exact over all pairs up to --exact-max points; above, pairs are "
            "sampled in two strata (every short-lag pair or a uniform sample of them, plus random pairs), "
            "weighted so bin means stay unbiased."
        ),
    )
    add_feature_source_args(vario)
    vario.add_argument("--out", required=True, type=Path, help="JSON file for the fitted model and bins")
    vario.add_argument("--plot", type=Path, metavar="PNG", help="also draw the bins and the fit (.png added to a name without a suffix)")
    vario.add_argument("--bins", type=_positive_int, default=40, help="number of lag bins (default 40, as the loss's fit)")
    spacing = vario.add_mutually_exclusive_group()
    spacing.add_argument("--log-bins", action="store_true", default=True,
                         help="log-spaced bins from --min-lag-km, as the semivariogram loss fits them (the default): the lags "
                              "under 25 km where false negatives live get bins of their own")
    spacing.add_argument("--linear-bins", dest="log_bins", action="store_false",
                         help="equal-width bins instead (with 40 bins each is 500 km wide, so every lag under 500 km shares one)")
    vario.add_argument("--min-lag-km", type=_positive_float, default=1.0, help="first log-bin edge (default 1 km; the first bin starts at 0)")
    vario.add_argument("--max-lag-km", type=_positive_float, default=MAX_LAG_KM, help=f"largest lag (default {MAX_LAG_KM:g}, half the Earth's circumference)")
    vario.add_argument("--model", choices=MODELS, default="spherical", help="variogram model (default spherical)")
    vario.add_argument("--estimator", choices=ESTIMATORS, default="matheron", help="matheron: the mean of 1 - cos per bin (default; the only one the loss accepts); "
                       "cressie: Cressie-Hawkins' robust estimator, with its constants derived for D-dimensional isotropic Gaussian increments")
    vario.add_argument("--weights", choices=WEIGHTS, default="cressie", help="fit weights: N_k/γ_k² (Cressie 1985), N_k, or none (default cressie)")
    vario.add_argument("--exact-max", type=_positive_int, default=20_000, help="use every pair up to this many points (default 20000)")
    vario.add_argument("--max-pairs", type=_positive_int, default=4_000_000, help="pairs sampled above --exact-max (default 4,000,000)")
    vario.add_argument("--short-lag-km", type=_positive_float, default=25.0, help="short-lag stratum radius when sampling (default 25 km)")
    vario.add_argument("--seed", type=_non_negative_int, default=0, help="sampling seed (default 0)")
    vario.add_argument("--compare", type=Path, nargs="+", metavar="STORE", help="more stores to estimate the same way and overlay in --plot")
    vario.add_argument("--json", action="store_true", help="print the result JSON to stdout too")
    vario.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_variogram(args: argparse.Namespace) -> int:
    import numpy as np

    from geovario.data.store import open_feature_source
    from geovario.jsonio import write_json
    from geovario.variogram import VariogramFitError, empirical_variogram, fit_variogram
    from geovario.variogram.plot import plot_variograms

    def estimate(source, label):
        large = len(source) > args.exact_max
        empirical = empirical_variogram(
            source.features(dtype=np.float16 if large else np.float32), source.gps,
            bins=args.bins, max_lag_km=args.max_lag_km, log_bins=args.log_bins, min_lag_km=args.min_lag_km,
            estimator=args.estimator, exact_max=args.exact_max, max_pairs=args.max_pairs,
            short_lag_km=args.short_lag_km, seed=args.seed, progress=not args.no_progress,
        )
        try:
            return empirical, fit_variogram(empirical, args.model, args.weights), None
        except VariogramFitError as e:
            return empirical, None, str(e)

    sources = [(str(args.store or args.features), open_feature_source(args.store, args.features, args.gps))]
    sources += [(str(path), open_feature_source(store=path)) for path in args.compare or []]
    results = [(label, *estimate(source, label)) for label, source in sources]

    def as_dict(label, empirical, model, error):
        if model is not None:
            return {"label": label, **model.to_dict()}
        return {"label": label, "model": args.model, "nugget": None, "psill": None, "range_km": None,
                "fit_error": error, **empirical.to_dict()}

    label, empirical, model, error = results[0]
    report = as_dict(label, empirical, model, error)
    if len(results) > 1:
        report["compare"] = [as_dict(*r) for r in results[1:]]
    write_json(args.out, report)
    if args.plot:
        args.plot = args.plot if args.plot.suffix else args.plot.with_name(args.plot.name + ".png")  # out/x -> out/x.png
        plot_variograms([(lab, emp, mod) for lab, emp, mod, _ in results], args.plot, log_x=args.log_bins)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for lab, emp, mod, _ in results:
            print(f"{lab}: {emp.n_points} points, {int(emp.n.sum()):,} pairs ({emp.sampling}); {mod if mod else 'fit failed'}")
        print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    failed = [(lab, err) for lab, _, mod, err in results if mod is None]
    for lab, err in failed:
        print(f"geovario: error: {lab}: {err} (the empirical bins were still written to {args.out})", file=sys.stderr)
    return 1 if failed else 0


def _threshold_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated kilometres, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be positive finite kilometres, got {text!r}")
    return values


def _add_metric_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thresholds", type=_threshold_list, default=[1, 25, 200, 750, 2500], metavar="KM,KM,...",
                        help="accuracy thresholds in km (default 1,25,200,750,2500)")
    parser.add_argument("--strict-less", action="store_true",
                        help="count d < t as correct, as OSV5M does (default d <= t, as GeoCLIP and most papers)")
    parser.add_argument("--no-admin", action="store_true", help="skip admin-level accuracy and the continent breakdown")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write cumulative-error and world-error PNGs here")
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table instead of text")


def add_evaluation_commands(commands) -> None:
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
    evaluate.add_argument("--top-k", type=_positive_int, help="candidates kept per query (default 5, or the gallery size if smaller; metrics use the first)")
    evaluate.add_argument("--out", required=True, type=Path, help="report JSON")
    evaluate.add_argument("--predictions", type=Path, metavar="CSV",
                          help="per-image predictions CSV (default: <out without .json>.predictions.csv)")
    evaluate.add_argument("--faiss", nargs="?", const="Flat", metavar="FACTORY",
                          help="retrieve through FAISS (optional extra); FACTORY as in faiss.index_factory, default Flat (exact)")
    evaluate.add_argument("--device", help="torch device (default: cuda when available)")
    evaluate.add_argument("--json", action="store_true", help="print the report JSON")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_metric_args(evaluate)

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
    _add_metric_args(score)

    compare = commands.add_parser("compare", help="print evaluation reports side by side, with deltas against the first")
    compare.add_argument("reports", type=Path, nargs="+", help="report JSON files (from evaluate or score)")
    compare.add_argument("--markdown", action="store_true", help="print a Markdown table instead")


def _finish_report(args, report: dict, true_latlon, pred_latlon, label: str) -> int:
    from geovario.metrics import errors_km
    from geovario.jsonio import write_json
    from geovario.report import markdown_table, plot_cumulative_error, plot_error_map
    from geovario.atomic import output_dir

    written = [report["predictions"]] if report.get("predictions") else []
    if getattr(args, "out", None):
        write_json(args.out, report)
        written.insert(0, str(args.out))
    if args.plots:
        output_dir(args.plots)
        errors = errors_km(true_latlon, pred_latlon)
        plot_cumulative_error({label: errors}, [f"{t:g}" for t in args.thresholds], args.plots / "cumulative_error.png")
        plot_error_map(true_latlon, errors, args.plots / "error_map.png")
        written += [str(args.plots / "cumulative_error.png"), str(args.plots / "error_map.png")]
    for path in written:  # on stderr, so that --json and --markdown keep stdout to themselves
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
        if report.get("dropped_rows"):
            print(f"  dropped {len(report['dropped_rows'])} rows, first: {report['dropped_rows'][0]}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from geovario.data.store import open_feature_source
    from geovario.evaluate import build_report, load_gallery, predict_source, store_labels
    from geovario.predict import Predictor

    source = open_feature_source(args.store, args.features, args.gps)
    predictor = Predictor(args.model, gallery=load_gallery(args.gallery), device=args.device, progress=not args.no_progress)
    top_k = args.top_k or min(5, len(predictor.gallery))
    frame = predict_source(predictor, source, top_k, progress=not args.no_progress, faiss_factory=args.faiss)
    true_latlon = frame[["true_lat", "true_lon"]].to_numpy()
    pred_latlon = frame[["pred_lat", "pred_lon"]].to_numpy()
    report = build_report(true_latlon, pred_latlon, args.thresholds, args.strict_less, store_labels(source), admin=not args.no_admin)
    predictions = args.predictions or args.out.with_name(args.out.stem + ".predictions.csv")
    from geovario.atomic import atomic_write_bytes

    atomic_write_bytes(predictions, frame.to_csv(index=False).encode())
    report |= {"model": str(args.model), "data": str(args.store or args.features), "gallery": str(args.gallery or "model"),
               "retrieval": f"faiss:{args.faiss}" if args.faiss else "exact",
               "predictions": str(predictions), "dropped_rows": []}
    return _finish_report(args, report, true_latlon, pred_latlon, str(args.model))


def cmd_score(args: argparse.Namespace) -> int:
    from geovario.evaluate import build_report
    from geovario.predictions_file import read_predictions, true_and_predicted

    table = read_predictions(args.predictions, args.true_lat, args.true_lon, args.pred_lat, args.pred_lon)
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
    return _finish_report(args, report, true_latlon, pred_latlon, str(args.predictions))


def cmd_compare(args: argparse.Namespace) -> int:
    from geovario.report import comparison_text, comparison_warnings, load_report, markdown_table

    reports = [(str(path), load_report(path)) for path in args.reports]
    for warning in comparison_warnings(reports):
        print(f"geovario: warning: {warning}", file=sys.stderr)
    print(markdown_table(reports) if args.markdown else comparison_text(reports))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from geovario.data import read_dataset

    dataset = read_dataset(args.path, args.format, args.images, check_images=not args.no_image_check)
    if args.decode:
        from geovario.data.verify import decode_problems
        from geovario.machine import available_cores

        dataset.problems += decode_problems(dataset, workers=available_cores(), progress=not args.json)
    if args.json:
        print(json.dumps(dataset.to_dict(), indent=1))
    else:
        print(dataset.summary(args.max_report))
    return 1 if dataset.problems else 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from geovario.data.importing import import_features

    store = import_features(args.features, args.gps, args.out, ids=args.ids, dtype=args.dtype, backbone_name=args.backbone_name)
    if args.json:
        print(json.dumps(store.manifest, indent=1))
    else:
        print(f"{args.out}: {len(store)} rows of {store.dim}-d {store.manifest['dtype']} features from {args.features}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from geovario.data.store import FeatureStore, open_feature_source

    source = open_feature_source(args.store, args.features, args.gps)
    info = {"rows": len(source), "dim": source.dim}
    if isinstance(source, FeatureStore):
        m = source.manifest
        info |= {"backbone": m["backbone"], "dtype": m["dtype"], "views": m["views"], "dataset": m["dataset"], "counts": m["counts"]}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(_store_summary(args, info))
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
    if counts.get("converted_to_rgb"):
        lines.append("  converted to RGB  " + ", ".join(f"{mode} {n:,}" for mode, n in sorted(counts["converted_to_rgb"].items())))
    return "\n".join(lines)


def cmd_extract(args: argparse.Namespace) -> int:
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


def cmd_weights_export_geoclip(args: argparse.Namespace) -> int:
    from geovario.interop.geoclip import export_geoclip

    out = export_geoclip(args.model, args.out)
    print(f"wrote GeoCLIP 1.3.0 files to {out}: location_encoder_weights.pth, image_encoder_mlp_weights.pth, "
          "logit_scale_weights.pth, coordinates_100K.csv")
    return 0


def cmd_weights_rehash(args: argparse.Namespace) -> int:
    from geovario.modeldir import rehash_model_dir

    print(f"{args.model}: weights_sha256 {rehash_model_dir(args.model)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from geovario.images import load_rgb
    from geovario.data.importing import load_features_file
    from geovario.predict import Predictor

    if args.features is not None:
        features = load_features_file(args.features)  # validate input before any heavy loading
    if args.text is not None:
        from geovario.backbones import check_texts

        check_texts(args.text)
    predictor = Predictor(args.model, gallery=args.gallery, device=args.device, progress=not args.no_progress)
    if args.top_k > len(predictor.gallery):
        raise GeovarioError(f"--top-k must be between 1 and the gallery size {len(predictor.gallery)}, got {args.top_k}")

    entries: list[dict] = []
    if args.text is not None:
        for text, preds in zip(args.text, predictor.predict_texts(args.text, args.top_k, args.backbone)):
            entries.append({"input": text, "predictions": [p.to_dict() for p in preds]})
    elif args.features is not None:
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


def cmd_embed_gps(args: argparse.Namespace) -> int:
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
                place = p["place"]
                name = ", ".join(v for v in (place["city"], place["region"], place["country"]) if v)
                line += (f"  open water ({place['distance_km']:,.0f} km from {name})" if place["open_water"]
                         else f"  {name} ({place['distance_km']:,.1f} km away)")
            lines.append(line)
    return "\n".join(lines)


def _check_can_listen(host: str, port: int) -> None:
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except OSError as e:
        raise GeovarioError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); choose another --port") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from PIL import Image

    from geovario.serve import GeoService, ServeSettings, create_app

    settings = ServeSettings(top_k=args.top_k, max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                             tiles=None if args.tiles.lower() == "none" else args.tiles)
    _check_can_listen(args.host, args.port)  # before the slow model load, not after
    try:
        service = GeoService(str(args.model), args.backbone, args.device, settings)
    except ValueError as e:
        raise GeovarioError(f"--top-k: {e}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"geovario: warning: listening on {args.host}: anyone who can reach this machine can use the page", file=sys.stderr)
    print(f"geovario: serving {args.model} at http://{args.host}:{args.port}/ (Ctrl+C stops)", file=sys.stderr)
    Image.MAX_IMAGE_PIXELS = args.max_pixels  # PIL's own decompression-bomb limit, for every decoder; set once
    # the options are known good, so a refused command leaves the process as it was
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    return 0


COMMANDS = {
    ("weights", "geoclip"): cmd_weights_geoclip,
    ("weights", "rehash"): cmd_weights_rehash,
    ("weights", "export-geoclip"): cmd_weights_export_geoclip,
    ("predict", None): cmd_predict,
    ("data", "check"): cmd_data_check,
    ("data", "info"): cmd_data_info,
    ("data", "import"): cmd_data_import,
    ("extract", None): cmd_extract,
    ("embed-gps", None): cmd_embed_gps,
    ("variogram", None): cmd_variogram,
    ("evaluate", None): cmd_evaluate,
    ("score", None): cmd_score,
    ("compare", None): cmd_compare,
    ("train", None): cmd_train,
    ("simulate", None): cmd_simulate,
    ("demo", None): cmd_demo,
    ("bench", "losses"): cmd_bench_losses,
    ("bench", "study"): cmd_bench_study,
    ("bench", "gps-embeddings"): cmd_bench_gps_embeddings,
    ("serve", None): cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status: 0, 1 for a problem the user can fix, 2 for a usage error."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else 0
    action = getattr(args, "weights_source", None) or getattr(args, "data_command", None) or getattr(args, "bench_command", None)
    handler = COMMANDS[(args.command, action)]
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
