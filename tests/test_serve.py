"""`geovario serve`'s API: a prediction with places and EXIF truth, and one refusal per kind of bad upload."""

import io

import numpy as np
import pytest
from PIL import Image

from geovario.cli import main
from geovario.geo import haversine_km
from test_data_readers import gps_exif

pytest.importorskip("httpx", reason="the API tests drive the app through httpx (pip install -e '.[test]')")
from fastapi.testclient import TestClient  # noqa: E402

from geovario.serve import GeoService, ServeSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(served_model, tiny_clip_dir):
    service = GeoService(str(served_model), str(tiny_clip_dir), "cpu", ServeSettings(top_k=5))
    with TestClient(create_app(service)) as client:
        yield client


def photo(lat=None, lon=None, size=(320, 240), format="JPEG") -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    extra = {"exif": gps_exif(lat, lon)} if lat is not None else {}
    Image.fromarray(pixels).save(buffer, format, **extra)
    return buffer.getvalue()


def upload(client, data: bytes, name="photo.jpg", content_type="image/jpeg", **params):
    return client.post("/api/predict", files={"file": (name, data, content_type)}, params=params)


def test_health_and_page(client, served_model):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["gallery_size"] == 500 and health["top_k"] == 5
    assert health["model"] == str(served_model) and health["max_upload_bytes"] == 20 * 2**20
    page = client.get("/")
    assert page.status_code == 200 and "/static/vendor/leaflet/leaflet.js" in page.text  # vendored, no CDN
    assert "cdn" not in page.text.lower() and client.get("/static/vendor/leaflet/leaflet.js").status_code == 200
    assert client.get("/static/vendor/world-atlas/countries-110m.json").json()["type"] == "Topology"
    assert '"tiles": null' in client.get("/config.js").text  # by default the page asks no tile server for anything
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]
    assert '<link rel="icon" href="/static/favicon.svg"' in page.text
    for icon in ("/static/favicon.svg", "/favicon.ico"):
        answer = client.get(icon)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml") and b"<svg" in answer.content


def test_tiles_option():
    from geovario.cli.serve import OSM_TILES, tile_template
    from geovario.errors import GeovarioError

    assert tile_template("none") is None and tile_template("NONE") is None
    assert tile_template("osm") == OSM_TILES == "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    assert tile_template("https://tiles.example/{z}/{x}/{y}.png") == "https://tiles.example/{z}/{x}/{y}.png"
    for bad in ("openstreetmap", "https://tiles.example/map.png", "ftp://x/{z}/{x}/{y}"):
        with pytest.raises(GeovarioError, match="--tiles .*expected none, osm or a tile URL template"):
            tile_template(bad)


def test_predict_returns_places_and_the_exif_truth(client):
    answer = upload(client, photo(48.8584, 2.2945)).json()
    predictions = answer["predictions"]
    assert [p["rank"] for p in predictions] == [1, 2, 3, 4, 5]
    probs = [p["prob"] for p in predictions]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert all(set(p["place"]) == {"city", "subregion", "region", "country", "distance_km", "open_water"} for p in predictions)
    assert all(p["label"] == ", ".join(x for x in (p["place"]["city"], p["place"]["region"], p["place"]["country"]) if x)
               for p in predictions if not p["place"]["open_water"])
    exif = answer["exif"]
    assert exif["lat"] == pytest.approx(48.8584, abs=1e-4) and exif["lon"] == pytest.approx(2.2945, abs=1e-4)
    assert exif["error_km"] == pytest.approx(float(haversine_km(exif["lat"], exif["lon"], predictions[0]["lat"], predictions[0]["lon"])))
    assert answer["image"] == {"width": 320, "height": 240, "format": "JPEG"}
    assert len(upload(client, photo(), top_k=2).json()["predictions"]) == 2
    assert upload(client, photo()).json()["exif"] is None


def test_heat_gives_the_most_probable_gallery_points_for_the_pages_shading(client, served_model, tiny_clip_dir):
    """?heat=true: [lat, lon, log10 p] of the gallery points within 4 decades of the most probable, the most
    probable last, checked against the model's own softmax over the gallery; without it, no shading."""
    import torch
    import torch.nn.functional as F

    from geovario.backbones import ClipBackbone
    from geovario.image_batches import encode_decoded
    from geovario.images import open_image
    from geovario.predict import Predictor

    data = photo(48.8584, 2.2945)
    answer = upload(client, data, heat="true").json()
    predictor = Predictor(served_model, progress=False)
    image, _ = open_image(io.BytesIO(data), name="photo.jpg")
    features = encode_decoded([image], ClipBackbone.load(str(tiny_clip_dir), "cpu"))
    with torch.no_grad():
        query = F.normalize(predictor.model.encode_images(torch.from_numpy(features)), dim=-1).double()
        places = F.normalize(predictor.model.encode_locations(torch.from_numpy(predictor.gallery)), dim=-1).double()
        prob = torch.softmax(predictor.logit_scale * query @ places.T, dim=1)[0].numpy()
    shown = np.flatnonzero(prob >= prob.max() * 1e-4)
    points = answer["heat"]["points"]
    assert answer["heat"]["decades"] == 4 and len(points) == min(len(shown), 2000) and 1 < len(points) < 500
    assert points[-1][:2] == pytest.approx(predictor.gallery[np.argmax(prob)].tolist(), abs=1e-4)
    assert [v for _, _, v in points] == sorted(v for _, _, v in points)
    assert [v for _, _, v in points] == pytest.approx(sorted(np.log10(prob[shown])), abs=2e-3)
    assert "heat" not in upload(client, data).json()


def test_png_and_webp_are_accepted(client):
    for format, content_type in (("PNG", "image/png"), ("WEBP", "image/webp")):
        answer = upload(client, photo(format=format), name=f"x.{format.lower()}", content_type=content_type)
        assert answer.status_code == 200, answer.text
        assert answer.json()["image"]["format"] in ("PNG", "WebP")


def test_oversize_upload_gets_413(client):
    big = photo() + b"\0" * (20 * 2**20)  # a valid JPEG padded past the 20 MB default
    response = upload(client, big)
    assert response.status_code == 413 and "the limit is 20 MB" in response.json()["detail"]


def test_oversize_chunked_upload_gets_413_while_streaming(served_model, tiny_clip_dir):
    service = GeoService(str(served_model), str(tiny_clip_dir), "cpu", ServeSettings(max_upload_bytes=2**20))
    boundary = "geovario"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()

    def body():  # no Content-Length: only counting the stream can stop it
        yield head + photo()
        for _ in range(64):
            yield b"\0" * 65536

    with TestClient(create_app(service)) as client:
        response = client.post("/api/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and "the limit is 1 MB" in response.json()["detail"]


def test_not_an_image_gets_415(client):
    response = upload(client, b"hello, this is text\n", name="notes.txt", content_type="text/plain")
    assert response.status_code == 415 and "not an image (sent as text/plain)" in response.json()["detail"]
    response = upload(client, b"%PDF-1.7\n" + b"x" * 500, name="scan.jpg")  # named and declared as a JPEG: the bytes decide
    assert response.status_code == 415 and response.json()["detail"] == "scan.jpg: not an image file; upload a JPEG, PNG or WebP photo"


def test_truncated_jpeg_gets_422(client):
    data = photo()
    response = upload(client, data[: len(data) // 2], name="cut.jpg")
    assert response.status_code == 422 and response.json()["detail"].startswith("cut.jpg: corrupt or truncated image")


def test_zero_byte_upload_gets_400(client):
    response = upload(client, b"", name="empty.jpg")
    assert response.status_code == 400 and response.json()["detail"] == "empty.jpg: the upload is empty (0 bytes)"


@pytest.mark.parametrize("size", [(10_000, 8_000), (20_000, 20_000)], ids=["over-our-limit", "over-twice-PILs"])
def test_png_bomb_is_refused_before_decoding(client, size):
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, "PNG")  # 80 or 400 million pixels in a small file
    assert len(buffer.getvalue()) < 2**20
    response = upload(client, buffer.getvalue(), name="bomb.png", content_type="image/png")
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert detail.startswith("bomb.png: refused,") and "pixels" in detail
    if size == (10_000, 8_000):
        assert detail == "bomb.png: refused, 10000x8000 pixels is more than the limit of 50,000,000"


def test_bad_top_k_gets_422(client):
    assert upload(client, photo(), top_k=0).status_code == 422
    assert upload(client, photo(), top_k=1000).status_code == 422


def test_serve_cli_refuses_a_missing_model(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geovario: error:") and "nope" in err[0]


def test_serve_cli_refuses_a_busy_port_before_loading(served_model, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(served_model), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"geovario: error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use); choose another --port"]


@pytest.mark.slow
def test_load_check_200_concurrent_requests_without_errors():
    """benchmarks/serve_load.py against a real `geovario serve` process: bounded in time, zero errors."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--requests", "200", "--timeout", "240", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert results["concurrent"]["requests"] == 200 and results["concurrent"]["errors"] == 0
    assert 0 < results["concurrent"]["p50_ms"] <= results["concurrent"]["p95_ms"]


def test_text_query_through_the_api(served_model, tiny_clip_text_dir, client):
    service = GeoService(str(served_model), str(tiny_clip_text_dir), "cpu", ServeSettings(top_k=5))
    assert service.predictor._text_tower is None  # loaded on the first text query, not before
    with TestClient(create_app(service)) as text_client:
        answer = text_client.post("/api/predict-text", json={"text": "a snowy street with red trams", "top_k": 3}).json()
        assert answer["text"] == "a snowy street with red trams" and [p["rank"] for p in answer["predictions"]] == [1, 2, 3]
        expected = service.predictor.predict_texts(["a snowy street with red trams"], top_k=3)[0]
        assert [(p["lat"], p["lon"]) for p in answer["predictions"]] == [(p.lat, p.lon) for p in expected]
        empty = text_client.post("/api/predict-text", json={"text": "   "})
        assert empty.status_code == 422 and "empty text" in empty.json()["detail"]
        assert text_client.post("/api/predict-text", json={"text": "x", "top_k": 0}).status_code == 422
        lone = text_client.post("/api/predict-text", content=b'{"text": "a street \\ud800 in rain"}',
                                headers={"content-type": "application/json"})  # a lone surrogate: valid JSON, not Unicode
        assert lone.status_code == 422 and "not valid Unicode at character 10" in lone.json()["detail"]
        assert "/api/predict-text" in text_client.get("/openapi.json").json()["paths"]
    # A backbone whose checkpoint has no tokenizer answers one line, and the image side keeps working.
    refused = client.post("/api/predict-text", json={"text": "a street"})
    assert refused.status_code == 422 and "no usable CLIP tokenizer" in refused.json()["detail"]
    assert upload(client, photo()).status_code == 200
