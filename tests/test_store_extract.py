import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from geovario.backbones import ClipBackbone
from geovario.cli import main
from geovario.data import read_dataset
from geovario.data.store import ArrayFeatures, FeatureStore, open_feature_source
from geovario.errors import GeovarioError
from geovario.extract import ExtractSettings, extract_features
from test_data_readers import jpeg


def make_dataset(folder, n, bad=()):
    """n small real JPEGs and an MP-16 CSV; ``bad`` maps index -> kind of broken file."""
    rows = ["IMG_FILE,LAT,LON"]
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / "images" / f"{i:04d}.jpg"
        kind = dict(bad).get(i)
        if kind == "corrupt":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(folder / "tmp.jpg", seed=i).read_bytes()[:300])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "alpha":
            path = path.with_suffix(".png")
            Image.new("RGBA", (40, 30), (10, 200, 30, 128)).save(path)
        elif kind == "cmyk":
            jpeg(path, seed=i, mode="CMYK")
        else:
            jpeg(path, size=(int(rng.integers(40, 90)), int(rng.integers(40, 90))), seed=i)
        rows.append(f"{path.name},{rng.uniform(-60, 70):.6f},{rng.uniform(-180, 180):.6f}")
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


@pytest.fixture
def backbone(tiny_clip_dir):
    return ClipBackbone.load(str(tiny_clip_dir), device="cpu")


def test_extract_then_read_back_equals_a_direct_forward_pass(tmp_path, backbone):
    csv = make_dataset(tmp_path, 11)
    dataset = read_dataset(csv)
    settings = ExtractSettings(batch_size=4, shard_size=5, dtype="float32", workers=2)
    manifest = extract_features(dataset, backbone, tmp_path / "store", settings, progress=False)
    assert manifest["complete"] and manifest["counts"]["features"] == 11 and len(manifest["shards"]) == 3
    assert manifest["backbone"]["revision"].startswith("sha256:")
    assert manifest["preprocess"]["center_crop"] == 224

    store = FeatureStore(tmp_path / "store")
    features, gps, ids = store.tensors()
    assert ids == [f"{i:04d}.jpg" for i in range(11)]
    np.testing.assert_allclose(gps.numpy(), [[r.lat, r.lon] for r in dataset.records], atol=1e-5)
    # The same images through the backbone directly, in the same batches (shard 5 = 4 + 1).
    direct = torch.cat([backbone.encode_paths([r.image for r in dataset.records[s : s + 5]], batch_size=4) for s in (0, 5, 10)])
    torch.testing.assert_close(features, direct, rtol=0, atol=0)
    # Lazy access across shard boundaries, and streaming in blocks.
    feature, point, image_id = store[7]
    np.testing.assert_array_equal(feature, features[7].numpy())
    assert image_id == "0007.jpg" and point.tolist() == pytest.approx(gps[7].tolist())
    np.testing.assert_array_equal(store.features(3, 9), features[3:9].numpy())
    assert sum(len(b[0]) for b in store.iter_batches(4)) == 11


def test_float16_store_is_close_to_float32_features(tmp_path, backbone):
    dataset = read_dataset(make_dataset(tmp_path, 4))
    extract_features(dataset, backbone, tmp_path / "store", ExtractSettings(batch_size=4, dtype="float16"), progress=False)
    store = FeatureStore(tmp_path / "store")
    assert store._shards[0].dtype == np.float16  # half the disk
    direct = backbone.encode_paths([r.image for r in dataset.records], batch_size=4)
    torch.testing.assert_close(store.tensors()[0], direct, rtol=1e-3, atol=1e-3)


def test_bad_images_are_skipped_and_listed_odd_modes_converted(tmp_path, backbone, capsys):
    csv = make_dataset(tmp_path, 8, bad={1: "corrupt", 3: "empty", 5: "alpha", 6: "cmyk"})
    code = main(["extract", "--data", str(csv), "--backbone", str(backbone.name), "--out", str(tmp_path / "store"),
                 "--batch-size", "3", "--shard-size", "4", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "6 features" in out and "skipped 2 images" in out
    store = FeatureStore(tmp_path / "store")
    assert list(store.ids) == ["0000.jpg", "0002.jpg", "0004.jpg", "0005.png", "0006.jpg", "0007.jpg"]
    assert store.manifest["counts"]["converted_to_rgb"] == {"RGBA": 1, "CMYK": 1}
    skipped = (tmp_path / "store" / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 3 and "0001.jpg" in skipped[1] and "corrupt or truncated" in skipped[1]
    assert "0003.jpg" in skipped[2] and "not an image" in skipped[2]
    # --strict stops at the first bad image with one line.
    code = main(["extract", "--data", str(csv), "--backbone", str(backbone.name), "--out", str(tmp_path / "strict"),
                 "--strict", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines()[-1].startswith("geovario: error: ") and "0001.jpg" in err


def test_bad_rows_skip_with_report_or_fail_with_strict(tmp_path, backbone, capsys):
    csv = make_dataset(tmp_path, 3)
    csv.write_text(csv.read_text() + "0000.jpg,91,0\n../../etc/passwd,1,1\nmean,,\n")
    args = ["extract", "--data", str(csv), "--backbone", str(backbone.name), "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "s1")]) == 0
    out, err = capsys.readouterr()
    assert "3 rows" not in err and "3 bad" in err and "escapes the images folder" in err
    assert FeatureStore(tmp_path / "s1").manifest["counts"]["bad_rows"] == 3
    assert main(args + ["--out", str(tmp_path / "s2"), "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.csv:5: latitude 91.0 outside" in err[0]


def test_no_usable_rows_fails_before_loading_the_backbone(tmp_path, capsys):
    csv = tmp_path / "data.csv"
    csv.write_text("IMG_FILE,LAT,LON\na.jpg,91,0\nb.jpg,nan,2\n")
    # A backbone that can't load: the answer must be about the rows, found without trying.
    assert main(["extract", "--data", str(csv), "--backbone", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "data.csv:2: latitude 91.0 outside" in err  # the report says why
    assert err.strip().splitlines()[-1] == f"geovario: error: {csv}: no usable rows"
    assert not (tmp_path / "s").exists()


def test_resume_recomputes_only_missing_shards_and_refuses_other_settings(tmp_path, backbone):
    dataset = read_dataset(make_dataset(tmp_path, 10))
    settings = ExtractSettings(batch_size=3, shard_size=4, views=2, seed=7)
    extract_features(dataset, backbone, tmp_path / "full", settings, progress=False)
    extract_features(dataset, backbone, tmp_path / "part", settings, progress=False)
    shards = tmp_path / "part" / "shards"
    (shards / "00001.csv").unlink()  # as if killed after writing features but before the commit marker
    (shards / "00002.csv").unlink()
    (shards / ".00002.views.npy.x1y2.tmp").write_bytes(b"half")  # killed in the middle of a write
    manifest = json.loads((tmp_path / "part" / "manifest.json").read_text())
    (tmp_path / "part" / "manifest.json").write_text(json.dumps(manifest | {"complete": False}))
    with pytest.raises(GeovarioError, match="extraction has not finished"):
        FeatureStore(tmp_path / "part")
    extract_features(dataset, backbone, tmp_path / "part", settings, progress=False)
    full, part = FeatureStore(tmp_path / "full"), FeatureStore(tmp_path / "part")
    np.testing.assert_array_equal(full.features(), part.features())
    np.testing.assert_array_equal(full.views(), part.views())
    assert full.views().shape == (10, 2, 32)
    assert not np.array_equal(full.views()[:, 0], full.views()[:, 1])  # two different augmentations
    assert (tmp_path / "full" / "index.csv").read_text() == (tmp_path / "part" / "index.csv").read_text()
    assert not list(shards.glob("*.tmp"))
    with pytest.raises(GeovarioError, match="different views"):
        extract_features(dataset, backbone, tmp_path / "part", ExtractSettings(batch_size=3, shard_size=4, views=1, seed=7), progress=False)
    extract_features(dataset, backbone, tmp_path / "part", ExtractSettings(shard_size=4), overwrite=True, progress=False)
    assert FeatureStore(tmp_path / "part").n_views == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(GeovarioError, match="not a feature store"):
        extract_features(dataset, backbone, tmp_path / "other", settings, progress=False)


def test_rerunning_a_finished_extraction_changes_nothing(tmp_path, backbone):
    """Another --batch-size on a finished store: nothing to do, and the manifest (the store's fingerprint) stays."""
    csv = make_dataset(tmp_path, 5)
    argv = ["extract", "--data", str(csv), "--backbone", str(backbone.name), "--out", str(tmp_path / "store"), "--no-progress"]
    assert main([*argv, "--batch-size", "2"]) == 0
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "store").rglob("*") if p.is_file()}
    fingerprint = FeatureStore(tmp_path / "store").fingerprint()
    assert main([*argv, "--batch-size", "3"]) == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "store").rglob("*") if p.is_file()} == files
    assert FeatureStore(tmp_path / "store").fingerprint() == fingerprint


def _flip_byte(path, offset=-3):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("edit, where", [
    (lambda s: (s / "index.csv").write_text((s / "index.csv").read_text().replace("12.5", "12.6", 1)), "index.csv"),
    (lambda s: _flip_byte(s / "shards" / "00001.npy"), "shards/00001.npy"),
    (lambda s: _flip_byte(s / "shards" / "00000.views.npy"), "shards/00000.views.npy"),
])
def test_an_edited_store_is_refused_until_rehashed(tmp_path, capsys, edit, where):
    from geovario.data.store import write_store

    rng = np.random.default_rng(0)
    latlon = np.stack([rng.uniform(-60, 60, 6), rng.uniform(-170, 170, 6)], 1)
    latlon[0] = [12.5, 40.0]
    features = rng.normal(size=(6, 8)).astype(np.float32)
    store = write_store(tmp_path / "s", features, latlon, shard_size=4, views=rng.normal(size=(6, 2, 8)))
    assert store.verified and set(store.manifest["checksums"]) == {
        "index.csv", "shards/00000.npy", "shards/00001.npy", "shards/00000.views.npy", "shards/00001.views.npy"}
    before = store.fingerprint()
    edit(tmp_path / "s")
    with pytest.raises(GeovarioError, match=f"{where}: sha256 differs from the one recorded when the store was written"):
        FeatureStore(tmp_path / "s")
    assert main(["data", "info", "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "geovario data rehash" in err[0]
    assert main(["data", "rehash", str(tmp_path / "s")]) == 0
    rehashed = FeatureStore(tmp_path / "s")
    assert rehashed.verified and rehashed.fingerprint() != before  # a run trained before the edit cannot resume on it
    if where == "index.csv":
        assert rehashed.gps[0, 0] == 12.6


def test_a_store_without_checksums_opens_unverified(tmp_path, capsys):
    from geovario.data.store import write_store

    write_store(tmp_path / "s", np.ones((3, 4), np.float32), [[0, 0], [1, 1], [2, 2]])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del manifest["checksums"]  # as written before stores had checksums
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    assert not FeatureStore(tmp_path / "s").verified
    assert main(["data", "info", "--store", str(tmp_path / "s")]) == 0
    assert "checksums none recorded" in capsys.readouterr().out


@pytest.mark.slow
def test_kill_minus_nine_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_clip_dir):
    csv = make_dataset(tmp_path, 400)
    command = [sys.executable, "-m", "geovario", "extract", "--data", str(csv), "--backbone", str(tiny_clip_dir),
               "--batch-size", "4", "--shard-size", "16", "--workers", "1", "--no-progress"]
    killed = tmp_path / "killed"
    process = subprocess.Popen(command + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "shards").glob("*.csv"))) < 6:  # 3 shards: index + skipped csv each
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["complete"], "the run finished before it could be killed; make the dataset larger"
    done_before = len(list((killed / "shards").glob("?????.csv")))
    assert 0 < done_before < 25

    assert subprocess.run(command + ["--out", str(killed)], capture_output=True).returncode == 0
    assert subprocess.run(command + ["--out", str(tmp_path / "clean")], capture_output=True).returncode == 0
    resumed, clean = FeatureStore(killed), FeatureStore(tmp_path / "clean")
    assert len(clean) == 400
    assert list(resumed.ids) == list(clean.ids)
    np.testing.assert_array_equal(resumed.features(dtype=np.float16), clean.features(dtype=np.float16))
    assert not list(killed.rglob("*.tmp"))


def test_array_features_source(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32))
    (tmp_path / "g.csv").write_text("LAT,LON\n" + "\n".join(f"{i},{i}" for i in range(5)) + "\n")
    source = open_feature_source(features=tmp_path / "f.npy", gps=tmp_path / "g.csv")
    assert isinstance(source, ArrayFeatures) and len(source) == 5 and source.dim == 8
    features, gps, ids = source.tensors()
    assert features.shape == (5, 8) and gps[3].tolist() == [3.0, 3.0] and ids[4] == "4"
    assert main(["data", "info", "--features", str(tmp_path / "f.npy"), "--gps", str(tmp_path / "g.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"rows": 5, "dim": 8}
    (tmp_path / "g4.csv").write_text("LAT,LON\n" + "\n".join(f"{i},{i}" for i in range(4)) + "\n")
    with pytest.raises(GeovarioError, match="has 5 rows but .*g4.csv has 4"):
        open_feature_source(features=tmp_path / "f.npy", gps=tmp_path / "g4.csv")
    with pytest.raises(GeovarioError, match="need --store STORE, or both"):
        open_feature_source(features=tmp_path / "f.npy")
    with pytest.raises(GeovarioError, match="not a geovario feature store"):
        open_feature_source(store=tmp_path)


def test_data_import_writes_a_store_equal_to_the_arrays(tmp_path, capsys):
    features = np.random.default_rng(0).normal(size=(70_000, 4)).astype(np.float32)  # more rows than one import block
    np.save(tmp_path / "f.npy", features)
    rows = [f"img{i},{(i % 170) - 85},{(i % 350) - 175}" for i in range(len(features))]
    (tmp_path / "g.csv").write_text("name,lat,lon\n" + "\n".join(rows) + "\n")
    args = ["data", "import", "--features", str(tmp_path / "f.npy"), "--gps", str(tmp_path / "g.csv"), "--ids", "name",
            "--dtype", "float32"]
    assert main(args + ["--out", str(tmp_path / "store")]) == 0, capsys.readouterr().err
    store = FeatureStore(tmp_path / "store")
    np.testing.assert_array_equal(store.features(), features)
    assert store.ids[69_999] == "img69999" and store.gps[69_999].tolist() == [69_999 % 170 - 85, 69_999 % 350 - 175]
    # Writing onto it again is refused; nothing is replaced.
    assert main(args + ["--out", str(tmp_path / "store")]) == 1
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("rows", "f.npy has 5 rows but .*g.csv has 4; they must match row for row"),
    ("nan", "f.npy: row 3 contains NaN or inf"),
    ("int", "f.npy: features of dtype int64; expected float16, float32 or float64"),
    ("1d", r"f.npy: expected an \(N, D\) array of features, got shape \(5,\)"),
    ("ids", "g.csv: line 4: duplicate name 'a' \\(first on line 2\\)"),
    ("bad gps", r"g.csv: line 3: latitude 95.0 is outside \[-90, 90\]"),
    ("tiny", r"f.npy: row 2 would change by 100% in float16 \(its values go down to 1e-09, where float16 underflows\); use --dtype float32"),
    ("huge", r"f.npy: values beyond float16's range \(65504\); use --dtype float32"),
    ("two lat columns", r"g.csv: 2 latitude columns \(lat, LAT\); keep one"),
])
def test_data_import_bad_inputs_are_one_line(tmp_path, capsys, case, message):
    import re

    features = np.random.default_rng(0).normal(size=(5, 3))
    gps = [("a", 1, 1), ("b", 2, 2), ("c", 3, 3), ("d", 4, 4), ("e", 5, 5)]
    if case == "rows":
        gps = gps[:4]
    elif case == "nan":
        features[3, 1] = np.nan
    elif case == "int":
        features = features.astype(np.int64)
    elif case == "1d":
        features = features[:, 0]
    elif case == "ids":
        gps[2] = ("a", 3, 3)
    elif case == "bad gps":
        gps[1] = ("b", 95, 2)
    elif case == "tiny":
        features[2] = 1e-9 * np.arange(1, 4)  # a valid direction, but every value below float16's smallest
    elif case == "huge":
        features[4, 0] = 1e5
    header, extra = ("name,lat,lon", "") if case != "two lat columns" else ("name,lat,lon,LAT", ",0")
    np.save(tmp_path / "f.npy", features)
    (tmp_path / "g.csv").write_text(header + "\n" + "\n".join(f"{n},{y},{x}{extra}" for n, y, x in gps) + "\n")
    code = main(["data", "import", "--features", str(tmp_path / "f.npy"), "--gps", str(tmp_path / "g.csv"), "--ids", "name",
                 "--out", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_data_info_reads_like_a_summary(tmp_path, backbone, capsys):
    csv = make_dataset(tmp_path, 6, bad={1: "corrupt", 4: "cmyk"})
    assert main(["extract", "--data", str(csv), "--backbone", str(backbone.name), "--out", str(tmp_path / "store"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["data", "info", "--store", str(tmp_path / "store")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{tmp_path / 'store'}: 5 rows of 32-d float16 features"
    assert lines[1].startswith(f"  backbone  {backbone.name} (sha256:")
    assert lines[2] == f"  dataset   {csv} (format mp16): 6 rows, 6 usable, 0 bad"
    assert lines[3] == f"  left out  1 unreadable images and 0 bad rows, listed in {tmp_path / 'store' / 'skipped.csv'}"
    assert lines[4] == "  checksums verified"
    assert lines[5] == "  converted to RGB  CMYK 1"
    assert not any("{" in line for line in lines)  # no dict reprs
    assert main(["data", "info", "--store", str(tmp_path / "store"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["skipped_images"] == 1
