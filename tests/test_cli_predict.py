import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geovario.cli import main
from geovario.modeldir import read_gallery


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("geovario: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def features_file(tmp_path):
    path = tmp_path / "feats.npy"
    np.save(path, np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32))
    return path


def test_predict_features_json(capsys, tiny_model_dir, features_file):
    code, out, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", features_file, "--top-k", 3, "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    gallery = read_gallery(tiny_model_dir / "gallery.csv")
    assert [r["input"] for r in result] == [f"{features_file}[{i}]" for i in range(4)]
    for entry in result:
        probs = [p["prob"] for p in entry["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
        for p in entry["predictions"]:
            assert any(np.allclose([p["lat"], p["lon"]], row) for row in gallery)


def test_predict_places_keep_json_clean(capsys, tiny_model_dir, features_file):
    code, out, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", features_file, "--top-k", 2, "--json", "--places")
    assert code == 0, err
    result = json.loads(out)  # nothing but JSON on stdout
    place = result[0]["predictions"][0]["place"]
    assert set(place) == {"city", "subregion", "region", "country", "distance_km", "open_water"} and len(place["country"]) == 2
    assert place["distance_km"] >= 0 and isinstance(place["open_water"], bool)


def test_predict_table_output(capsys, tiny_model_dir, features_file):
    code, out, _ = run(capsys, "predict", "--model", tiny_model_dir, "--features", features_file, "--no-progress")
    assert code == 0
    assert out.count("rank") == 4 and len(out.strip().splitlines()) == 4 * 7


def test_predict_images_with_tiny_clip(capsys, tmp_path, tiny_model_dir, tiny_clip_dir, fixtures_dir):
    photos = sorted((fixtures_dir / "exif-gps").glob("DSCN00*.jpg"))[:3]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos[0].read_bytes()[:2000])
    argv = ["predict", "--model", tiny_model_dir, "--backbone", tiny_clip_dir, "--json", "--no-progress", "--image", *photos]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert [e["input"] for e in json.loads(out)] == [str(p) for p in photos]
    code, out, err = run(capsys, *argv, bad)  # one bad file: the rest still predicted, exit 1
    result = json.loads(out)
    assert code == 1 and all("predictions" in e for e in result[:3])
    assert "corrupt or truncated" in result[3]["error"]
    assert_one_line_error(code, err, "broken.jpg")
    # Decoding in worker processes, in batches that split the inputs, gives the same answers in the same order.
    code, out_workers, _ = run(capsys, *argv[:-4], "--workers", "2", "--batch-size", "2", "--image", bad, *photos)
    workers = json.loads(out_workers)
    assert code == 1 and "corrupt or truncated" in workers[0]["error"]
    for got, expected in zip(workers[1:], result[:3], strict=True):  # batches of 2, not 4: float rounding may differ
        assert got["input"] == expected["input"]
        assert [(p["lat"], p["lon"]) for p in got["predictions"]] == [(p["lat"], p["lon"]) for p in expected["predictions"]]
        assert [p["prob"] for p in got["predictions"]] == pytest.approx([p["prob"] for p in expected["predictions"]], rel=1e-4)


def test_bad_model_dirs(capsys, tmp_path, tiny_model_dir, features_file):
    code, _, err = run(capsys, "predict", "--model", tmp_path / "nowhere", "--features", features_file)
    assert_one_line_error(code, err, "model directory not found")
    weights = tiny_model_dir / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", features_file)
    assert_one_line_error(code, err, "model.safetensors", "truncated")
    tampered = bytearray(original)
    tampered[-5] ^= 0x55
    weights.write_bytes(bytes(tampered))
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", features_file)
    assert_one_line_error(code, err, "does not match config.json")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((3, 31), np.float32), "features are 31-d but the model expects 32-d"),
        (np.zeros((0, 32), np.float32), "no feature rows"),
        (np.array([[0.0] * 32, [np.nan] + [0.0] * 31], np.float32), "row 1 contains NaN"),
        (np.zeros((2, 3, 32), np.float32), "expected an (N, 32) array"),
        (np.array([["a"] * 32]), "features of dtype <U1; expected float16"),
        (np.ones((2, 32), np.int64), "features of dtype int64; expected float16"),
    ],
)
def test_bad_features(capsys, tmp_path, tiny_model_dir, array, message):
    path = tmp_path / "f.npy"
    np.save(path, array)
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", path)
    assert_one_line_error(code, err, "f.npy", message)


def test_unreadable_features_files(capsys, tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", empty)
    assert_one_line_error(code, err, "empty.npy", "not an .npy file")
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", pickled)
    assert_one_line_error(code, err, "obj.npy", "not a readable .npy")
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", tmp_path / "none.npy")
    assert_one_line_error(code, err, "features file not found")


@pytest.mark.parametrize("k, status, message", [(0, 2, "argument --top-k: must be at least 1, got 0"),
                                               (301, 1, "gallery size 300, got 301")])
def test_top_k_out_of_range(capsys, tiny_model_dir, features_file, k, status, message):
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", features_file, "--top-k", k)
    assert code == status and len(err.strip().splitlines()) == 1 and message in err, err


def test_non_image_and_corrupt_image(capsys, tmp_path, tiny_model_dir, tiny_clip_dir):
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--backbone", tiny_clip_dir, "--image", text)
    assert_one_line_error(code, err, "readme.txt: not an image")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--backbone", tiny_clip_dir, "--image", corrupt)
    assert_one_line_error(code, err, "corrupt.png")


def test_backbone_width_must_match_model(capsys, tmp_path, tiny_clip_dir, fixtures_dir):
    from conftest import random_gallery, tiny_config
    from geovario.model import GeoLocModel
    from geovario.modeldir import save_model_dir

    model_dir = save_model_dir(tmp_path / "m", GeoLocModel(tiny_config(feature_dim=768)), gallery=random_gallery(10))
    photo = fixtures_dir / "exif-gps" / "DSCN0010.jpg"
    code, _, err = run(capsys, "predict", "--model", model_dir, "--backbone", tiny_clip_dir, "--image", photo)
    assert_one_line_error(code, err, "gives 32-d features but the model expects 768-d")


def test_console_entry_points(tmp_path, tiny_model_dir):
    done = subprocess.run([sys.executable, "-m", "geovario", "predict", "--model", str(tiny_model_dir),
                           "--features", str(tmp_path / "missing.npy")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("geovario: error:") and "Traceback" not in done.stderr
    script = Path(sys.executable).with_name("geovario")  # the console script installed beside python
    help_text = subprocess.run([str(script), "predict", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--model", "--features", "--image", "--backbone", "--top-k", "--json", "--gallery", "--device"):
        assert option in help_text


def test_the_library_takes_one_image_path_and_raises_for_a_bad_one(tmp_path, tiny_model_dir, tiny_clip_dir, fixtures_dir):
    from geovario.errors import GeovarioError, ParameterError
    from geovario.predict import Prediction, Predictor

    predictor = Predictor(tiny_model_dir, progress=False)
    photo = fixtures_dir / "exif-gps" / "DSCN0010.jpg"
    listed = predictor.predict_images([photo], top_k=3, backbone=str(tiny_clip_dir))
    for one in (predictor.predict_images(str(photo), top_k=3), predictor.predict_images(photo, top_k=3)):
        assert len(one) == 3 and all(isinstance(p, Prediction) for p in one)  # one image: its places, not one per character
        assert [(p.lat, p.lon, p.prob) for p in one] == [(p.lat, p.lon, p.prob) for p in listed[0]]
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    with pytest.raises(GeovarioError, match="readme.txt: not an image"):
        predictor.predict_images(str(text))
    assert "not an image" in predictor.predict_images([text, photo])[0]  # in a list, reported in its place
    with pytest.raises(ParameterError, match=r"^top_k must be between 1 and the gallery size 300, got 0$"):
        predictor.predict_images(str(photo), top_k=0)  # the library names its parameter, not a command-line flag


def test_a_wrong_backbone_is_refused_before_a_cold_gallery_is_encoded(tmp_path, tiny_clip_dir, fixtures_dir, capsys):
    """Encoding GeoCLIP's 100K gallery takes minutes on a CPU; a backbone that cannot fit is refused first."""
    from conftest import random_gallery, tiny_config
    from geovario.errors import GeovarioError
    from geovario.model import GeoLocModel
    from geovario.modeldir import save_model_dir
    from geovario.serve import GeoService

    model_dir = save_model_dir(tmp_path / "m", GeoLocModel(tiny_config(feature_dim=768)), gallery=random_gallery(50))
    photo = fixtures_dir / "exif-gps" / "DSCN0010.jpg"
    code, _, err = run(capsys, "predict", "--model", model_dir, "--backbone", tiny_clip_dir, "--image", photo)
    assert_one_line_error(code, err, "gives 32-d features but the model expects 768-d")
    with pytest.raises(GeovarioError, match="gives 32-d features but the model expects 768-d"):
        GeoService(str(model_dir), str(tiny_clip_dir), "cpu")
    caches = list(tmp_path.rglob("gallery-*.npy")) + list((tmp_path.parent / "home").rglob("gallery-*.npy"))
    assert caches == []  # nothing was encoded


def test_a_spoiled_gallery_cache_warns_in_one_line_and_changes_no_answer(tmp_path, tiny_model_dir, features_file, capsys):
    code, clean, _ = run(capsys, "predict", "--model", tiny_model_dir, "--features", features_file, "--json")
    assert code == 0
    cache = next((tiny_model_dir / "cache").glob("gallery-*.npy"))
    array = np.load(cache)
    array[:] = 0.0  # a cache of zeros: every row would tie, and every photo would answer gallery row 0
    np.save(cache, array)
    code, spoiled, err = run(capsys, "predict", "--model", tiny_model_dir, "--features", features_file, "--json")
    assert code == 0 and json.loads(spoiled) == json.loads(clean)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geovario: warning: ") and "row 0 is not a unit vector (norm 0)" in lines[0]


def test_sigterm_while_encoding_a_gallery_leaves_no_half_written_cache(tmp_path, capsys):
    """A stopped job (kill, a scheduler's SIGTERM) unwinds like Ctrl+C: the cache being written is removed."""
    import os
    import signal
    import threading
    import time

    import torch

    from conftest import tiny_config
    from geovario.model import GeoLocModel
    from geovario.modeldir import save_model_dir

    rng = np.random.default_rng(0)
    gallery = np.stack([rng.uniform(-80, 80, 400_000), rng.uniform(-180, 180, 400_000)], 1)
    torch.manual_seed(0)
    model_dir = save_model_dir(tmp_path / "m", GeoLocModel(tiny_config()), gallery=gallery)
    np.save(tmp_path / "f.npy", rng.normal(size=(2, 32)).astype(np.float32))
    sent = []

    def stop_once_encoding():
        for _ in range(600):
            if list((model_dir / "cache").glob(".gallery-*.tmp")):
                os.kill(os.getpid(), signal.SIGTERM)
                sent.append(True)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=stop_once_encoding)
    watcher.start()
    code, _, err = run(capsys, "predict", "--model", model_dir, "--features", tmp_path / "f.npy")
    watcher.join()
    assert sent and code == 130 and "geovario: interrupted" in err
    assert list((model_dir / "cache").iterdir()) == []  # neither the half-written .tmp nor a cache
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI gave the handler back
