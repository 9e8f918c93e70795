"""``geovario train``: one YAML experiment config (or a run directory to resume) to a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from geovario.errors import GeovarioError


def register(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train from a YAML experiment config (losses, negatives, optimiser), resumable",
        description=(
            "Train a GeoCLIP-family model on a feature store from one YAML config (see configs/; every key is "
            "documented in geovario/config.py). Checkpoints are written atomically every train.checkpoint_every "
            "steps and at each epoch end; --resume RUN_DIR continues bit for bit. The run directory ends with "
            "model/, which predict and evaluate accept (and best/, with train.keep_best)."
        ),
    )
    train.add_argument("--config", type=Path, help="experiment YAML (not needed with --resume)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set loss.s1=2 --set train.batch_size=64 (repeatable)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.add_argument("--out", type=Path, metavar="RUN_DIR", help="run directory (default: train.out, else runs/<name>)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar (on a terminal) or the progress lines (in a log)")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from geovario.config import load_config, load_run_config
    from geovario.distributed import is_main_process, teardown
    from geovario.train import train

    if args.resume:
        config, run_dir = load_run_config(args.resume, args.overrides), args.resume
    elif args.config is None:
        raise GeovarioError("give --config CONFIG.yaml (or --resume RUN_DIR)")
    else:
        config = load_config(args.config, args.overrides)
        run_dir = args.out or Path(config.train.out or f"runs/{config.name}")
    final = train(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if is_main_process():  # under torchrun, rank 0 speaks for the job
        print(f"trained {config.name}: model in {final}, metrics in {run_dir / 'metrics.csv'}")
    teardown()
    return 0
