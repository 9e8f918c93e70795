"""What every command module shares: the parser class, option types and option groups.

Nothing here imports numpy or torch: ``--help`` of every command must stay fast.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (and exit status 2): ``geovario <command>: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def probability(text: str) -> float:
    """A share in (0, 1]."""
    value = _finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text!r}")
    return value


# Formats matplotlib's default canvas writes (Figure.canvas.get_supported_filetypes(); a test checks each), listed
# here so that --plot is checked when parsing, before a long computation, without importing matplotlib. Newer
# matplotlib also writes .avif and .gif; left out, as 3.7 (the oldest this package admits) does not.
FIGURE_FORMATS = ("eps", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw", "rgba", "svg", "svgz", "tif", "tiff", "webp")


def figure_path(text: str) -> Path:
    """A figure's file name; .png is added to a name without a suffix, and the suffix must be a format matplotlib writes."""
    path = Path(text)
    if not path.suffix:
        return path.with_name(path.name + ".png")
    if path.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
        raise argparse.ArgumentTypeError(f"cannot draw a {path.suffix} file; use one of {', '.join('.' + f for f in FIGURE_FORMATS)}")
    return path


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, got {value}")
    return value


def threshold_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated kilometres, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be positive finite kilometres, got {text!r}")
    return values


def add_feature_source_args(parser: argparse.ArgumentParser) -> None:
    """``--store STORE`` or ``--features F.npy --gps G.csv``: every store-reading command takes both."""
    parser.add_argument("--store", type=Path, help="feature store folder written by `geovario extract`")
    parser.add_argument("--features", type=Path, metavar="F.npy", help="(N, D) features from elsewhere (with --gps)")
    parser.add_argument("--gps", type=Path, metavar="G.csv", help="LAT,LON rows matching --features row for row")


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    from geovario.data import FORMAT_NAMES  # the readers' registry: standard library only

    parser.add_argument("--format", default="auto", choices=FORMAT_NAMES,
                        help="dataset layout (default auto: detected from the CSV columns; .tar shards are webdataset, "
                             ".parquet is parquet, another folder is read by EXIF GPS)")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="folder the image paths are relative to (default: images/<csv name>, images, or the CSV's folder); "
                             "images not there as files are looked up by name or id in the zip, tar and msgpack archives "
                             "below it (OSV5M's NN.zip, GeoEstimation's MP-16 shards), read in place")


def add_metric_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thresholds", type=threshold_list, default=[1, 25, 200, 750, 2500], metavar="KM,KM,...",
                        help="accuracy thresholds in km (default 1,25,200,750,2500)")
    parser.add_argument("--strict-less", action="store_true",
                        help="count d < t as correct, as OSV5M does (default d <= t, as GeoCLIP and most papers)")
    parser.add_argument("--no-admin", action="store_true", help="skip admin-level accuracy and the continent breakdown")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write cumulative-error and world-error PNGs here")
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table instead of text")
