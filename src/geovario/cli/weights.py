"""``geovario weights``: published weights in, geovario models out (and back to GeoCLIP's files)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(commands) -> None:
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
    geoclip.set_defaults(run=run_geoclip)

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
    export.add_argument("--out", required=True, type=Path, help="folder to write the files into (created if needed)")
    export.add_argument("--layout", choices=("release", "hub"), default="release",
                        help="release: GeoCLIP 1.3.0's .pth files (default); hub: its newer config.json + model.safetensors "
                             "+ gallery CSV, loaded by GeoCLIP.from_pretrained(DIR)")
    export.set_defaults(run=run_export_geoclip)

    rehash = weights_of.add_parser(
        "rehash",
        help="record the sha256 of a model directory's weights in its config.json",
        description=("Every model directory names the sha256 of its weights, and loading refuses weights that do not "
                     "match or a config without it. After replacing model.safetensors on purpose, record the new "
                     "checksum with this command; it checks that the weights still fit the architecture."),
    )
    rehash.add_argument("model", type=Path, help="geovario model directory")
    rehash.set_defaults(run=run_rehash)


def run_geoclip(args: argparse.Namespace) -> int:
    from geovario.interop.geoclip import find_release, write_geoclip_model_dir

    release = find_release(folder=args.from_dir, wheel=args.wheel)
    out = write_geoclip_model_dir(args.out, release)
    if args.json:
        print(json.dumps({"model_dir": str(out), "source": release.source, "gallery_size": 100_000}))
    else:
        print(f"wrote GeoCLIP 1.3.0 to {out} (from {release.source})")
    return 0


def run_export_geoclip(args: argparse.Namespace) -> int:
    from geovario.interop.geoclip import export_geoclip, export_geoclip_hub

    if args.layout == "hub":
        out = export_geoclip_hub(args.model, args.out)
        print(f"wrote GeoCLIP's hub layout to {out}: config.json, model.safetensors, coordinates_100K.csv "
              f"(load it with GeoCLIP.from_pretrained({str(out)!r}))")
        return 0
    out = export_geoclip(args.model, args.out)
    print(f"wrote GeoCLIP 1.3.0 files to {out}: location_encoder_weights.pth, image_encoder_mlp_weights.pth, "
          "logit_scale_weights.pth, coordinates_100K.csv")
    return 0


def run_rehash(args: argparse.Namespace) -> int:
    from geovario.modeldir import rehash_model_dir

    print(f"{args.model}: weights_sha256 {rehash_model_dir(args.model)}")
    return 0
