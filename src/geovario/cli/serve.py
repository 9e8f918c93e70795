"""``geovario serve``: a local web page and JSON API that geolocate a dropped photo or a description."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geovario.cli.options import port, positive_float, positive_int
from geovario.errors import GeovarioError


def register(commands) -> None:
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
    serve.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    serve.add_argument("--top-k", type=positive_int, default=5, help="places per photo, at most 100 (default 5)")
    serve.add_argument("--max-upload-mb", type=positive_float, default=20.0, help="larger uploads get HTTP 413 (default 20)")
    serve.add_argument("--max-pixels", type=positive_int, default=50_000_000,
                       help="images with more pixels get HTTP 413, before decoding: the decompression-bomb guard (default 50,000,000)")
    serve.add_argument("--tiles", default="none", metavar="none|osm|URL",
                       help="map tiles under the markers: 'none' (default) shows the bundled world outline and sends nothing "
                            "anywhere; 'osm' fetches OpenStreetMap tiles, or give a tile URL template with {z}/{x}/{y}. "
                            "A tile server learns which part of the map you view, so it can guess where the photo is")
    serve.add_argument("--device", help="torch device (default: cuda when available)")
    serve.set_defaults(run=run_serve)


OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


def tile_template(value: str) -> str | None:
    """--tiles as the page's tile URL template: None for 'none', OpenStreetMap's for 'osm'."""
    if value.lower() == "none":
        return None
    if value.lower() == "osm":
        return OSM_TILES
    if not value.startswith(("http://", "https://")) or not all(f"{{{k}}}" in value for k in "zxy"):
        raise GeovarioError(f"--tiles {value!r}: expected none, osm or a tile URL template such as {OSM_TILES}")
    return value


def _check_can_listen(host: str, port: int) -> None:
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except OSError as e:
        raise GeovarioError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); choose another --port") from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from PIL import Image

    from geovario.serve import GeoService, ServeSettings, create_app

    settings = ServeSettings(top_k=args.top_k, max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                             tiles=tile_template(args.tiles))
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
