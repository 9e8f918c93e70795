"""Images read in place from archives: each format gives the features the same images give unpacked.

Every archive is built inside the test from the real photos in ../shared/fixtures.
"""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest

from geovario.backbones import ClipBackbone
from geovario.cli import main
from geovario.data import read_dataset
from geovario.data.store import FeatureStore
from geovario.extract import ExtractSettings, extract_features

msgpack = pytest.importorskip("msgpack", reason="the archives extra (msgpack) is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="the archives extra (pyarrow) is not installed")
import pyarrow as pa  # noqa: E402


@pytest.fixture
def photos(fixtures_dir):
    """(id, jpeg bytes, lat, lon) for the real street photos, with made-up but valid coordinates."""
    rng = np.random.default_rng(0)
    files = sorted((fixtures_dir / "osv5m-images").glob("*.jpg"))
    return [(f.stem, f.read_bytes(), float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))) for f in files]


@pytest.fixture(scope="module")
def backbone(tiny_clip_dir):
    return ClipBackbone.load(str(tiny_clip_dir), device="cpu")


def unpacked(tmp_path, photos):
    """The same photos as loose files with an MP-16 CSV, in the same order: the reference."""
    folder = tmp_path / "unpacked"
    (folder / "images").mkdir(parents=True)
    rows = ["IMG_FILE,LAT,LON"]
    for image_id, data, lat, lon in photos:
        (folder / "images" / f"{image_id}.jpg").write_bytes(data)
        rows.append(f"{image_id}.jpg,{lat!r},{lon!r}")
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


def osv5m_zips(tmp_path, photos, per_zip=8):
    """OSV5M's layout: train.csv beside images/train/NN.zip holding NN/<id>.jpg."""
    root = tmp_path / "osv5m"
    (root / "images" / "train").mkdir(parents=True)
    rows = ["id,latitude,longitude,country,region,sub-region,city"]
    for start in range(0, len(photos), per_zip):
        nn = f"{start // per_zip:02d}"
        with zipfile.ZipFile(root / "images" / "train" / f"{nn}.zip", "w") as archive:
            for image_id, data, lat, lon in photos[start : start + per_zip]:
                archive.writestr(f"{nn}/{image_id}.jpg", data)
                rows.append(f"{image_id},{lat!r},{lon!r},FR,,,")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def webdataset_shards(tmp_path, photos, per_shard=10):
    folder = tmp_path / "wds"
    folder.mkdir()
    for start in range(0, len(photos), per_shard):
        with tarfile.open(folder / f"shard-{start // per_shard:06d}.tar", "w") as archive:
            for image_id, data, lat, lon in photos[start : start + per_shard]:
                add_bytes(archive, f"{image_id}.jpg", data)
                add_bytes(archive, f"{image_id}.json", json.dumps({"lat": lat, "lon": lon}).encode())
    return folder


def msgpack_shards(tmp_path, photos, per_shard=12):
    """GeoEstimation's MP-16: shards of {"id", "image"} records, coordinates in mp16_places365.csv."""
    root = tmp_path / "mp16"
    (root / "shards").mkdir(parents=True)
    rows = ["IMG_ID,AUTHOR,LAT,LON,S3_Label"]
    for start in range(0, len(photos), per_shard):
        with open(root / "shards" / f"shard_{start // per_shard}.msg", "wb") as f:
            for image_id, data, lat, lon in photos[start : start + per_shard]:
                f.write(msgpack.packb({"id": f"{image_id[:2]}/{image_id[2:4]}/{image_id}.jpg", "image": data}, use_bin_type=True))
                rows.append(f"{image_id[:2]}/{image_id[2:4]}/{image_id}.jpg,someone,{lat!r},{lon!r},0")
    (root / "mp16_places365.csv").write_text("\n".join(rows) + "\n")
    return root / "mp16_places365.csv", root / "shards"


def parquet_file(tmp_path, photos):
    """Hugging Face's Image feature: a struct of bytes and path, beside id and the coordinates."""
    table = pa.table({
        "id": [p[0] for p in photos],
        "image": [{"bytes": p[1], "path": f"{p[0]}.jpg"} for p in photos],
        "latitude": [p[2] for p in photos],
        "longitude": [p[3] for p in photos],
    })
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=7)
    return tmp_path / "train.parquet"


def archive_cases(tmp_path, photos):
    zipped = osv5m_zips(tmp_path, photos)
    shards = webdataset_shards(tmp_path, photos)
    mp16_csv, mp16_shards = msgpack_shards(tmp_path, photos)
    keyed = tmp_path / "keyed.csv"  # the same shards, labelled by a CSV keyed by each member's key
    keyed.write_text("IMG_FILE,LAT,LON\n" + "".join(f"{image_id},{lat!r},{lon!r}\n" for image_id, _, lat, lon in photos))
    return {
        "osv5m zip": (zipped, {}),
        "webdataset tar": (shards, {}),
        "tar + keyed csv": (keyed, {"images": shards}),
        "msgpack + csv": (mp16_csv, {"images": mp16_shards}),
        "parquet": (parquet_file(tmp_path, photos), {}),
    }


def test_each_archive_format_gives_the_features_of_the_unpacked_images(tmp_path, photos, backbone):
    settings = ExtractSettings(batch_size=4, shard_size=9, dtype="float32", workers=2)
    reference_data = read_dataset(unpacked(tmp_path, photos))
    extract_features(reference_data, backbone, tmp_path / "ref", settings, progress=False)
    reference = FeatureStore(tmp_path / "ref")
    expected_formats = {"osv5m zip": "osv5m", "webdataset tar": "webdataset", "tar + keyed csv": "mp16", "msgpack + csv": "im2gps",
                        "parquet": "parquet"}
    for case, (path, options) in archive_cases(tmp_path, photos).items():
        dataset = read_dataset(path, **options)
        assert dataset.problems == [], case
        assert dataset.format == expected_formats[case] and dataset.auto_detected, case
        assert [r.lat for r in dataset.records] == [p[2] for p in photos], case
        assert not list(tmp_path.rglob("*.jpg"))[len(photos):], "an archive was unpacked to disk"
        out = tmp_path / case.replace(" ", "_")
        extract_features(dataset, backbone, out, settings, progress=False)
        store = FeatureStore(out)
        np.testing.assert_array_equal(store.features(), reference.features(), err_msg=case)
        np.testing.assert_array_equal(store.gps, reference.gps, err_msg=case)
        assert store.index["image"][0].startswith(str(tmp_path)) and ":" in store.index["image"][0]  # archive:member


def test_archives_and_folders_read_alike_through_the_cli(tmp_path, photos, tiny_clip_dir, capsys):
    csv = osv5m_zips(tmp_path, photos)
    assert main(["data", "check", str(csv), "--decode", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "osv5m" and report["usable"] == len(photos) and report["problems"] == []
    code = main(["extract", "--data", str(csv), "--backbone", str(tiny_clip_dir), "--out", str(tmp_path / "s"), "--workers", "0",
                 "--no-progress"])
    assert code == 0 and FeatureStore(tmp_path / "s").manifest["counts"]["features"] == len(photos)


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("geovario: error: "), err
    return err[0]


def check_report(capsys, argv) -> list[dict]:
    """``data check --json``: exit 1, and the problems it lists."""
    assert main(argv + ["--json"]) == 1
    return json.loads(capsys.readouterr().out)["problems"]


def test_truncated_zip_is_one_problem_naming_the_archive(tmp_path, photos, capsys):
    csv = osv5m_zips(tmp_path, photos)
    broken = tmp_path / "osv5m" / "images" / "train" / "01.zip"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    problems = check_report(capsys, ["data", "check", str(csv)])
    archive = [p for p in problems if p["kind"] == "bad archive"]
    assert len(archive) == 1 and archive[0]["file"] == str(broken) and "truncated or not a zip" in archive[0]["message"]
    missing = [p for p in problems if p["kind"] == "missing image"]
    assert len(missing) == 8 and all("not found" in p["message"] for p in missing)  # the rows whose images were in 01.zip
    assert main(["data", "check", str(csv)]) == 1  # the text report too
    assert f"{broken}: truncated or not a zip archive" in capsys.readouterr().out


def test_missing_and_corrupt_members(tmp_path, photos, backbone, capsys):
    csv = osv5m_zips(tmp_path, photos)
    csv.write_text(csv.read_text() + "nosuchid,1.0,2.0,FR,,,\n")
    with zipfile.ZipFile(tmp_path / "osv5m" / "images" / "train" / "00.zip", "a") as archive:
        archive.writestr("00/garbled.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 4)
    csv.write_text(csv.read_text() + "garbled,3.0,4.0,FR,,,\n")
    problems = check_report(capsys, ["data", "check", str(csv)])
    assert [(p["line"], p["kind"]) for p in problems] == [(len(photos) + 2, "missing image")]
    assert "nosuchid" in problems[0]["message"]
    # Decoding finds the corrupt member, named by archive and member.
    problems = check_report(capsys, ["data", "check", str(csv), "--decode"])
    corrupt = [p for p in problems if p["kind"] == "bad image"]
    assert len(corrupt) == 1 and "00.zip:00/garbled.jpg: corrupt or truncated image" in corrupt[0]["message"]
    # Extraction skips it and lists it, as it does a corrupt file.
    dataset = read_dataset(csv)
    extract_features(dataset, backbone, tmp_path / "s", ExtractSettings(batch_size=4, workers=1), progress=False)
    skipped = (tmp_path / "s" / "skipped.csv").read_text()
    assert "00/garbled.jpg" in skipped and FeatureStore(tmp_path / "s").manifest["counts"]["features"] == len(photos)


def test_refused_members_unsafe_path_bomb_and_type(tmp_path, photos, capsys):
    csv = osv5m_zips(tmp_path, photos[:4], per_zip=4)
    with zipfile.ZipFile(tmp_path / "osv5m" / "images" / "train" / "00.zip", "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("00/bomb.jpg", b"\0" * (8 * 2**20))  # 8 MiB of zeros deflate ~1000-fold
        archive.writestr("00/setup.exe", b"MZ")
        archive.writestr("../escape.jpg", photos[0][1])
    problems = check_report(capsys, ["data", "check", str(csv)])
    by_kind = {p["kind"]: p for p in problems}
    assert set(by_kind) == {"zip bomb", "unexpected type", "unsafe path"}
    assert by_kind["zip bomb"]["file"].endswith("00.zip:00/bomb.jpg") and "fold" in by_kind["zip bomb"]["message"]
    assert "'.exe'" in by_kind["unexpected type"]["message"]
    assert "escapes the archive's folder" in by_kind["unsafe path"]["message"]
    # The four good photos are still usable.
    assert len(read_dataset(csv).records) == 4


def test_tar_member_with_dotdot_is_refused(tmp_path, photos, capsys):
    folder = webdataset_shards(tmp_path, photos[:3])
    with tarfile.open(folder / "evil.tar", "w") as archive:
        add_bytes(archive, "../../etc/evil.jpg", photos[0][1])
        add_bytes(archive, "../../etc/evil.json", b'{"lat": 1, "lon": 2}')
    problems = check_report(capsys, ["data", "check", str(folder)])
    assert [p["kind"] for p in problems] == ["unsafe path"] * 2  # the image and its label
    assert all("escapes the archive's folder" in p["message"] for p in problems)
    assert problems[0]["file"] == f"{folder / 'evil.tar'}:../../etc/evil.jpg"
    assert len(read_dataset(folder).records) == 3


def test_msgpack_shard_with_bad_and_truncated_records(tmp_path, photos, capsys):
    csv, shards = msgpack_shards(tmp_path, photos[:6], per_shard=6)
    shard = shards / "shard_0.msg"
    with open(shard, "ab") as f:
        f.write(msgpack.packb({"id": "zz/zz/nothing.jpg", "caption": "no image here"}))
        f.write(msgpack.packb({"id": "zz/zz/cut.jpg", "image": photos[0][1]})[:500])  # the download stopped here
    problems = check_report(capsys, ["data", "check", str(csv), "--images", str(shards)])
    assert [p["kind"] for p in problems] == ["bad record", "truncated"]
    assert problems[0]["file"] == f"{shard}:record 6" and "bytes 'image'" in problems[0]["message"]
    assert problems[1]["file"] == f"{shard}:record 7"
    assert len(read_dataset(csv, images=shards).records) == 6


def test_parquet_without_coordinates_is_one_line(tmp_path, photos, capsys):
    pq.write_table(pa.table({"id": ["a"], "image": [photos[0][1]]}), tmp_path / "x.parquet")
    line = one_line_error(capsys, ["data", "check", str(tmp_path / "x.parquet")])
    assert "x.parquet: missing lat and lon columns" in line
    pq.write_table(pa.table({"lat": [1.0], "lon": [2.0], "image": ["not bytes"]}), tmp_path / "y.parquet")
    assert "column image is string, not image bytes" in one_line_error(capsys, ["data", "check", str(tmp_path / "y.parquet")])


def test_booleans_are_not_coordinates(tmp_path, photos, capsys):
    """float(True) is 1.0 in Python: a boolean column or label would put a photo at (1, 0) without a word."""
    pq.write_table(pa.table({"lat": [True], "lon": [2.0], "image": [photos[0][1]]}), tmp_path / "b.parquet")
    assert "b.parquet: column lat holds booleans, not coordinates" in one_line_error(capsys, ["data", "check", str(tmp_path / "b.parquet")])
    folder = tmp_path / "wds"
    folder.mkdir()
    with tarfile.open(folder / "shard.tar", "w") as archive:
        for (image_id, data, lat, lon), label in zip(photos[:3], [{"lat": True, "lon": 2.0}, {"lat": 1.0, "lon": False}, None]):
            add_bytes(archive, f"{image_id}.jpg", data)
            add_bytes(archive, f"{image_id}.json", json.dumps(label or {"lat": lat, "lon": lon}).encode())
    problems = check_report(capsys, ["data", "check", str(folder)])
    assert [p["kind"] for p in problems] == ["non-numeric", "non-numeric"]
    assert "lat True" in problems[0]["message"] and "lon False" in problems[1]["message"]
    assert len(read_dataset(folder).records) == 1


def test_a_webdataset_label_without_its_image_is_reported(tmp_path, photos, capsys):
    folder = webdataset_shards(tmp_path, photos[:4], per_shard=4)
    with tarfile.open(folder / "shard-000001.tar", "w") as archive:  # a shard that lost an image
        add_bytes(archive, "lonely.json", json.dumps({"lat": 1.0, "lon": 2.0}).encode())
    problems = check_report(capsys, ["data", "check", str(folder)])
    assert [(p["kind"], p["file"]) for p in problems] == [("missing image", f"{folder / 'shard-000001.tar'}:lonely.json")]
    dataset = read_dataset(folder)
    assert len(dataset.records) == 4 and dataset.n_rows == 5  # the lost sample counts among the rows


def test_archive_without_coordinates_points_to_the_csv(tmp_path, photos, capsys):
    osv5m_zips(tmp_path, photos[:2])
    line = one_line_error(capsys, ["data", "check", str(tmp_path / "osv5m" / "images" / "train" / "00.zip")])
    assert "holds images but no coordinates; pass the dataset's CSV" in line


@pytest.mark.slow
def test_kill_minus_nine_on_a_zip_source_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_clip_dir):
    from test_data_readers import jpeg

    rng = np.random.default_rng(1)
    root = tmp_path / "osv5m"
    (root / "images" / "train").mkdir(parents=True)
    rows = ["id,latitude,longitude"]
    for nn in range(4):
        with zipfile.ZipFile(root / "images" / "train" / f"{nn:02d}.zip", "w") as archive:
            for i in range(100):
                image_id = f"{nn}{i:04d}"
                archive.write(jpeg(tmp_path / "tmp.jpg", size=(48, 40), seed=nn * 100 + i), f"{nn:02d}/{image_id}.jpg")
                rows.append(f"{image_id},{rng.uniform(-60, 70):.6f},{rng.uniform(-180, 180):.6f}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    command = [sys.executable, "-m", "geovario", "extract", "--data", str(root / "train.csv"), "--backbone", str(tiny_clip_dir),
               "--batch-size", "4", "--shard-size", "16", "--workers", "2", "--no-progress"]
    killed = tmp_path / "killed"
    process = subprocess.Popen(command + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "shards").glob("?????.csv"))) < 3:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not json.loads((killed / "manifest.json").read_text())["complete"], "the run finished before it could be killed"
    assert 0 < len(list((killed / "shards").glob("?????.csv"))) < 25
    assert subprocess.run(command + ["--out", str(killed)], capture_output=True).returncode == 0
    assert subprocess.run(command + ["--out", str(tmp_path / "clean")], capture_output=True).returncode == 0
    resumed, clean = FeatureStore(killed), FeatureStore(tmp_path / "clean")
    assert len(clean) == 400 and list(resumed.ids) == list(clean.ids)
    np.testing.assert_array_equal(resumed.features(dtype=np.float16), clean.features(dtype=np.float16))
    assert not list(killed.rglob("*.tmp"))
