"""Whole folders in, files out: every format read back by a standard reader, a kill resumed without losing or
repeating a photo, settings that changed refused, unreadable files listed, EXIF errors reported."""

import json
import shutil
import xml.etree.ElementTree as ET

import geojson
import numpy as np
import pandas as pd
import pytest

from geovario.cli import main
from geovario.geo import haversine_km
from geovario.predict import Predictor
from geovario.predict_folder import circle, journal_path, list_images, predict_folder


@pytest.fixture
def photo_folder(tmp_path, fixtures_dir):
    """The EXIF fixtures in two sub-folders, a text file among them and a file that only looks like a photo."""
    folder = tmp_path / "photos"
    for k, photo in enumerate(sorted((fixtures_dir / "exif-gps").glob("*.jpg"))):
        target = folder / ("a" if k % 2 else "b") / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    (folder / "a" / "notes.txt").write_text("not a photo")
    (folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_folder_is_walked_for_images_in_a_stable_order(photo_folder):
    found = list_images(photo_folder)
    relative = [str(p.relative_to(photo_folder)) for p in found]
    assert relative == sorted(relative) and "a/notes.txt" not in relative and "b/broken.jpg" in relative
    assert len(found) == 11  # ten photos and the broken one


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".geojson", ".kml"])
def test_each_format_reads_back_with_a_standard_reader(photo_folder, tmp_path, tiny_model_dir, tiny_clip_dir, capsys, suffix):
    out = tmp_path / f"predictions{suffix}"
    args = ["predict", "--model", tiny_model_dir, "--backbone", tiny_clip_dir, "--image", photo_folder, "--out", out, "--top-k", 3,
            "--workers", 0, "--no-progress", "--batch-size", 4]
    code, printed, err = run(capsys, *args, *(["--regions"] if suffix in (".geojson", ".kml") else []))
    assert code == 1 and "broken.jpg" in err and err.count("\n") == 1  # the unreadable file, listed; the others predicted
    assert "10 of 11 images geolocated" in printed and not journal_path(out).exists()
    expected = Predictor(tiny_model_dir, progress=False).predict_images([str(p) for p in list_images(photo_folder)], top_k=3,
                                                                        backbone=str(tiny_clip_dir))
    best = {str(p): r[0] for p, r in zip(list_images(photo_folder), expected) if not isinstance(r, str)}
    if suffix == ".csv":
        frame = pd.read_csv(out)
        assert set(frame["input"]) == set(best) | {str(photo_folder / "b" / "broken.jpg")}
        ranked = frame.dropna(subset=["rank"])
        assert len(ranked) == 30 and set(ranked["rank"]) == {1, 2, 3}
        first = ranked[ranked["rank"] == 1].set_index("input")
        assert np.allclose([first.loc[k, "prob"] for k in best], [p.prob for p in best.values()], rtol=1e-4)
        assert list(frame.columns) == ["input", "rank", "lat", "lon", "prob", "within_25km", "within_200km", "within_750km",
                                       "within_2500km", "radius_km", "level", "exif_lat", "exif_lon", "error_km", "error"]
        assert frame.loc[ranked.index, "exif_lat"].notna().sum() >= 24  # each rank row of a photo with EXIF carries it
        assert frame.loc[frame["input"].str.endswith("broken.jpg"), "error"].str.contains("broken.jpg").all()
    elif suffix == ".jsonl":
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["input"] for r in records] == [str(p) for p in list_images(photo_folder)]
        for r in records:
            if "error" not in r and r["exif"]:  # the error is the best place's distance from the EXIF position
                assert r["error_km"] == pytest.approx(haversine_km(r["exif"]["lat"], r["exif"]["lon"], r["predictions"][0]["lat"],
                                                                   r["predictions"][0]["lon"]))
        assert sum(r.get("error_km") is not None for r in records) >= 8  # the fixtures carry EXIF GPS
    elif suffix == ".geojson":
        collection = geojson.loads(out.read_text())
        assert collection.is_valid and collection["type"] == "FeatureCollection"
        points = [f for f in collection["features"] if f["geometry"]["type"] == "Point"]
        regions = [f for f in collection["features"] if f["geometry"]["type"] == "Polygon"]
        assert len(points) == len(regions) == 10
        for f in points:
            lon, lat = f["geometry"]["coordinates"]
            place = best[f["properties"]["input"]]  # the geojson package writes 6 decimals (0.1 m)
            assert (lat, lon) == pytest.approx((place.lat, place.lon), abs=1e-6)
            assert len(f["properties"]["places"]) == 3
        ring = regions[0]["geometry"]["coordinates"][0]
        centre = next(f for f in points if f["properties"]["input"] == regions[0]["properties"]["input"])["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and len(ring) == 65 and len({tuple(v) for v in ring}) == 64  # 64 distinct vertices
        assert {f["properties"]["rank"] for f in points} == {1} and {f["properties"]["region"] for f in regions} == {True}
    else:
        root = ET.parse(out).getroot()
        ns = {"k": "http://www.opengis.net/kml/2.2"}
        marks = root.findall(".//k:Placemark", ns)
        points = [m for m in marks if m.find("k:Point", ns) is not None]
        assert len(points) == 10 and len(marks) == 20
        lon, lat = map(float, points[0].find("k:Point/k:coordinates", ns).text.split(","))
        description = points[0].find("k:description", ns).text.splitlines()
        name = description[0]
        assert (lat, lon) == pytest.approx((best[name].lat, best[name].lon))
        assert [line.split(".")[0] for line in description[1:4]] == ["1", "2", "3"]  # the ranked places, numbered from 1
        assert sum("km off" in m.find("k:description", ns).text for m in points) >= 8  # the EXIF error, where known


def test_a_confidence_circle_lies_at_its_radius(tmp_path):
    ring = circle(48.85, 2.35, 120.0)
    distances = [haversine_km(48.85, 2.35, lat, lon) for lon, lat in ring]
    assert distances == pytest.approx([120.0] * len(ring), rel=0.004)  # geodesic on WGS84 against the sphere: within 0.4 %


def test_a_folder_cut_short_resumes_without_losing_or_repeating_a_photo(photo_folder, tmp_path, tiny_model_dir, tiny_clip_dir,
                                                                       monkeypatch):
    predictor = Predictor(tiny_model_dir, progress=False)
    out = tmp_path / "p.jsonl"
    whole = predict_folder(predictor, photo_folder, tmp_path / "whole.jsonl", top_k=2, backbone=str(tiny_clip_dir), batch_size=3,
                           progress=False)
    calls = []
    original = Predictor.predict_images

    def killed_after_two_chunks(self, images, *args, **kwargs):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill between chunks: the journal holds two chunks
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_images", killed_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(predictor, photo_folder, out, top_k=2, backbone=str(tiny_clip_dir), batch_size=3, progress=False)
    journal = journal_path(out)
    assert len(journal.read_text().splitlines()) == 1 + 6 and not out.exists()
    with journal.open("a") as f:
        f.write('{"input": "cut in the mid')  # a line a kill cut short
    from geovario.errors import GeovarioError

    with pytest.raises(GeovarioError, match="add --resume"):
        predict_folder(predictor, photo_folder, out, top_k=2, backbone=str(tiny_clip_dir), batch_size=3, progress=False)
    with pytest.raises(GeovarioError, match=r"other settings \(top_k differ\)"):
        predict_folder(predictor, photo_folder, out, top_k=3, backbone=str(tiny_clip_dir), batch_size=3, resume=True, progress=False)
    photo = next(p for p in list_images(photo_folder) if str(p) in journal.read_text())
    kept = photo.read_bytes()
    photo.write_bytes(kept + b"\0")  # a photo already done, changed since
    with pytest.raises(GeovarioError, match=f"{photo.name}: changed or gone"):
        predict_folder(predictor, photo_folder, out, top_k=2, backbone=str(tiny_clip_dir), batch_size=3, resume=True, progress=False)
    photo.write_bytes(kept)
    calls.clear()
    resumed = predict_folder(predictor, photo_folder, out, top_k=2, backbone=str(tiny_clip_dir), batch_size=3, resume=True,
                             progress=False)
    assert sum(calls) == 11 - 6 and resumed.resumed == 6 and resumed.predicted == whole.predicted == 10
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    theirs = [json.loads(line) for line in (tmp_path / "whole.jsonl").read_text().splitlines()]
    assert [r["input"] for r in ours] == [r["input"] for r in theirs]  # each photo once, in order
    for a, b in zip(ours, theirs):  # the same places for each, whether predicted before or after the kill
        assert [(p["lat"], p["lon"]) for p in a.get("predictions", [])] == [(p["lat"], p["lon"]) for p in b.get("predictions", [])]
    with pytest.raises(GeovarioError, match="nothing to resume"):
        predict_folder(predictor, photo_folder, tmp_path / "new.csv", resume=True, progress=False)


def test_folder_options_are_checked_before_any_work(tmp_path, tiny_model_dir, photo_folder, capsys):
    base = ["predict", "--model", tiny_model_dir, "--image", photo_folder]
    assert run(capsys, *base, "--out", tmp_path / "p.txt")[2].count("must end in .csv, .jsonl, .geojson, .kml") == 1
    assert "--regions needs a .geojson or .kml" in run(capsys, *base, "--out", tmp_path / "p.csv", "--regions")[2]
    code, _, err = run(capsys, "predict", "--model", tiny_model_dir, "--image", photo_folder / "a" / "notes.txt", "--out", tmp_path / "p.csv")
    assert code == 1 and "go with --image DIR" in err


def test_the_command_reports_the_error_against_a_photos_exif_gps(tiny_model_dir, tiny_clip_dir, fixtures_dir, capsys):
    from geovario.data.exif_folder import read_exif_gps

    photo = fixtures_dir / "exif-gps" / "DSCN0010.jpg"
    truth = read_exif_gps(photo)
    code, out, _ = run(capsys, "predict", "--model", tiny_model_dir, "--backbone", tiny_clip_dir, "--image", photo, "--json")
    entry = json.loads(out)[0]
    best = entry["predictions"][0]
    assert code == 0 and entry["exif"] == pytest.approx({"lat": truth[0], "lon": truth[1]})
    assert entry["error_km"] == pytest.approx(haversine_km(truth[0], truth[1], best["lat"], best["lon"]))
    code, out, _ = run(capsys, "predict", "--model", tiny_model_dir, "--backbone", tiny_clip_dir, "--image", photo)
    assert f"the best place is {entry['error_km']:,.1f} km away" in out


def test_a_heatmap_draws_each_inputs_probability_over_the_gallery(tiny_model_dir, tiny_clip_dir, fixtures_dir, tmp_path, capsys,
                                                               monkeypatch):
    from geovario import maps

    drawn = []
    original = maps.probability_map
    monkeypatch.setattr(maps, "probability_map", lambda *a, **k: drawn.append((a, original(*a, **k))) or drawn[-1][1])
    photos = [fixtures_dir / "exif-gps" / "DSCN0010.jpg", tmp_path / "notes.txt", fixtures_dir / "exif-gps" / "DSCN0012.jpg"]
    photos[1].write_text("not a photo")
    code, out, _ = run(capsys, "predict", "--model", tiny_model_dir, "--backbone", tiny_clip_dir, "--image", *photos, "--top-k", 2,
                       "--heatmap", tmp_path / "map.png", "--json")
    entries = json.loads(out)
    assert code == 1 and [e.get("heatmap") for e in entries] == [str(tmp_path / "map-1.png"), None, str(tmp_path / "map-3.png")]
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("map-1.png", "map-3.png"))
    predictor = Predictor(tiny_model_dir, progress=False)
    features = predictor.encode_images([str(photos[0])], str(tiny_clip_dir))[0]
    prob = predictor.probabilities(predictor.encode_queries(features[None]))[0]
    (gallery, drawn_prob, places, path, truth, title), result = drawn[0][0], drawn[0][1]
    assert np.allclose(drawn_prob, prob, rtol=1e-4) and path == tmp_path / "map-1.png" and title == str(photos[0])
    assert truth == pytest.approx(tuple(entries[0]["exif"].values()))
    assert result["marked"] == [(p["lon"], p["lat"]) for p in entries[0]["predictions"]]
    order = np.argsort(prob, kind="stable")  # the most probable on top, coloured by log10 probability
    assert np.allclose(result["points"], predictor.gallery[order][:, ::-1])
    assert np.allclose(result["values"], np.maximum(np.log10(prob[order]), np.log10(prob.max()) - maps.DECADES), rtol=1e-4)
    assert result["coastlines"] > 100  # Natural Earth's 1:110m land outline


def test_regions_only_where_asked_and_outputs_in_a_new_folder(photo_folder, tmp_path, tiny_model_dir, tiny_clip_dir):
    predictor = Predictor(tiny_model_dir, progress=False)
    out = tmp_path / "new" / "deeper" / "places.geojson"  # folders that do not exist yet are made
    predict_folder(predictor, photo_folder / "a", out, top_k=2, backbone=str(tiny_clip_dir), progress=False)
    kinds = {f["geometry"]["type"] for f in geojson.loads(out.read_text())["features"]}
    assert kinds == {"Point"}  # no --regions, no polygons


def test_a_journal_from_other_settings_names_every_key_that_differs(photo_folder, tmp_path, tiny_model_dir, tiny_clip_dir):
    """A journal written by an older geovario, without some keys, or with a damaged line, is refused by name."""
    from geovario.errors import GeovarioError

    predictor = Predictor(tiny_model_dir, progress=False)
    out = tmp_path / "places.jsonl"
    journal = journal_path(out)
    journal.write_text(json.dumps({"settings": {"top_k": 2}}) + "\n")
    # Every key the journal lacks or holds otherwise (platt is None both ways: the same)
    with pytest.raises(GeovarioError, match=r"\(backbone, folder, gallery_sha256, level, pool_km, temperature, tta, weights_sha256 differ\)"):
        predict_folder(predictor, photo_folder, out, top_k=2, backbone=str(tiny_clip_dir), resume=True, progress=False)
    settings = {"folder": str(photo_folder.resolve())}
    journal.write_text(json.dumps({"settings": settings}) + "\n" + json.dumps({"input": "x"}) + "\n{broken\n" + "\n")
    with pytest.raises(GeovarioError, match=r"partial.jsonl:3: damaged line"):
        predict_folder(predictor, photo_folder, out, top_k=2, backbone=str(tiny_clip_dir), resume=True, progress=False)


def test_a_kill_loses_at_most_the_chunk_being_encoded(tmp_path):
    """predict_folder in a process of its own, killed with SIGKILL while its second chunk is being encoded: the
    journal holds every record of the first chunk (each chunk is flushed before the next starts)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(6):
        (folder / f"{k}.jpg").write_bytes(b"x")
    script = tmp_path / "run.py"
    script.write_text(f"""
import time
from pathlib import Path
import numpy as np
from geovario.predict_folder import predict_folder

class Slow:
    weights_sha256, temperature, platt = "w", 1.0, None
    gallery = np.zeros((1, 2), np.float32)
    calls = 0
    def predict_images(self, paths, *args):
        Slow.calls += 1
        if Slow.calls == 2:
            Path({str(tmp_path / "second")!r}).write_text("started")
            time.sleep(600)
        return ["unreadable: " + p for p in paths]

predict_folder(Slow(), {str(folder)!r}, {str(tmp_path / "out.jsonl")!r}, batch_size=3, workers=0, progress=False)
""")
    process = subprocess.Popen([sys.executable, str(script)])
    try:
        for _ in range(600):
            if (tmp_path / "second").exists() or process.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "second").exists(), "the second chunk never started"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    lines = journal_path(tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 3 and [json.loads(line)["input"] for line in lines[1:]] == [str(folder / f"{k}.jpg") for k in range(3)]


@pytest.mark.parametrize("lat, lon", [(35.6812, 139.7671), (-33.8568, 151.2153), (64.1466, -21.9426), (91.0, 10.0)])
def test_a_photos_exif_position_is_its_truth_when_valid(tmp_path, lat, lon):
    """Latitude and longitude checked each against its own range: Tokyo's longitude (139.8) is no latitude; a
    latitude of 91 is not a position, so that photo has no truth (and no error)."""
    from PIL import Image

    from geovario.confidence import Prediction
    from geovario.predict_folder import image_record
    from test_data_readers import gps_exif

    path = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16)).save(path, exif=gps_exif(lat, lon))
    record = image_record(path, [Prediction(0.0, 0.0, 1.0, 0)])
    if lat > 90:
        assert record["exif"] is None and record["error_km"] is None
    else:
        assert (record["exif"]["lat"], record["exif"]["lon"]) == pytest.approx((lat, lon), abs=1e-4)
        assert record["error_km"] == pytest.approx(haversine_km(lat, lon, 0.0, 0.0), rel=1e-6)
