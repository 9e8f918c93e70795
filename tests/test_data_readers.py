import json

import numpy as np
import pytest
from PIL import Image

from geovario.cli import main
from geovario.data import read_dataset
from geovario.data.exif_folder import read_exif_gps
from geovario.errors import GeovarioError


def jpeg(path, size=(64, 48), seed=0, mode="RGB", exif=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    image.save(path, **({"exif": exif} if exif is not None else {}))
    return path


def gps_exif(lat, lon):
    """An EXIF block with a GPS IFD, as a camera writes it (degrees, minutes, seconds + N/S/E/W)."""
    def dms(value):
        value = abs(value)
        d, m = int(value), int((value - int(value)) * 60)
        return (float(d), float(m), round((value - d - m / 60) * 3600, 4))

    exif = Image.Exif()
    exif[0x8825] = {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}
    return exif


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    for i in range(3):
        jpeg(folder / f"img{i}.jpg", seed=i)
    return folder


FORMAT_CASES = {
    "mp16": "IMG_FILE,LAT,LON\nimg0.jpg,10.5,20.25\nimg1.jpg,-33.9,151.2\nimg2.jpg,0,0\n",
    "im2gps": "IMG_ID,AUTHOR,LAT,LON,S3_Label\nimg0.jpg,a,10.5,20.25,1\nimg1.jpg,b,-33.9,151.2,0\nimg2.jpg,c,0,0,2\n",
    "yfcc": "IMG_ID,LAT,LON,S16_Label\nimg0,10.5,20.25,3\nimg1.jpg,-33.9,151.2,4\nimg2,0,0,5\n",
    "osv5m": "id,latitude,longitude,thumb_original_url,country,sub-region,region,city\n"
             "img0,10.5,20.25,u,FR,Hauts-de-Seine,Ile-de-France,Vanves\nimg1,-33.9,151.2,u,AU,,New South Wales,Sydney\nimg2,0,0,u,,,,\n",
    "streetscapes": "uuid,source,lat,lon,city,country\nimg0,m,10.5,20.25,Paris,France\nimg1,m,-33.9,151.2,Sydney,Australia\nimg2,m,0,0,,\n",
}


@pytest.mark.parametrize("name", FORMAT_CASES)
def test_each_format_is_detected_and_read(tmp_path, images, name):
    csv = write(tmp_path / f"{name}.csv", FORMAT_CASES[name])
    if name in ("osv5m", "streetscapes"):  # images in nested archive folders, found by id
        nested = tmp_path / "osv" / "images" / name / "07"
        nested.mkdir(parents=True)
        for i in range(3):
            (images / f"img{i}.jpg").replace(nested / f"img{i}.jpg")
        images = tmp_path / "osv" / "images"
    dataset = read_dataset(csv, images=images)
    assert dataset.format == name and dataset.auto_detected and not dataset.problems
    assert [r.id for r in dataset.records][1] in ("img1.jpg", "img1")
    assert [(r.lat, r.lon) for r in dataset.records] == [(10.5, 20.25), (-33.9, 151.2), (0.0, 0.0)]
    assert all(r.image.is_file() for r in dataset.records)
    assert [r.line for r in dataset.records] == [2, 3, 4]
    if name == "osv5m":
        assert dataset.records[0].meta == {"country": "FR", "region": "Ile-de-France", "sub-region": "Hauts-de-Seine", "city": "Vanves"}
    if name == "im2gps":
        assert dataset.records[2].meta == {"AUTHOR": "c"}


def test_exif_folder_reads_gps_and_reports_photos_without(tmp_path):
    folder = tmp_path / "photos"
    jpeg(folder / "paris.jpg", exif=gps_exif(48.8584, 2.2945))
    jpeg(folder / "sub" / "rio.jpg", exif=gps_exif(-22.9519, -43.2105))
    jpeg(folder / "nogps.jpg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert read_exif_gps(folder / "paris.jpg") == pytest.approx((48.8584, 2.2945), abs=1e-5)
    dataset = read_dataset(folder)
    assert dataset.format == "folder"
    by_id = {r.id: (r.lat, r.lon) for r in dataset.records}
    assert by_id["sub/rio.jpg"] == pytest.approx((-22.9519, -43.2105), abs=1e-5)
    problems = {p.file.split("/")[-1]: p.kind for p in dataset.problems}
    assert problems == {"nogps.jpg": "no GPS", "broken.jpg": "unreadable image"}


def test_real_camera_photos(fixtures_dir):
    dataset = read_dataset(fixtures_dir / "exif-gps")
    by_id = {r.id: (r.lat, r.lon) for r in dataset.records}
    assert by_id["DSCN0010.jpg"] == pytest.approx((43.46745, 11.88513), abs=1e-5)  # the fixture README's values
    assert by_id["DSCN0042.jpg"] == pytest.approx((43.46446, 11.88148), abs=1e-5)
    assert [p.message for p in dataset.problems] == ["no GPS in EXIF"]  # 45-gps_ifd.jpg: reported, no crash


def test_bad_rows_are_each_reported_with_their_line(tmp_path, images):
    csv = write(tmp_path / "bad.csv", "\n".join([
        "IMG_FILE,LAT,LON",
        "img0.jpg,91,20",                 # 2: lat out of range
        "img1.jpg,10,abc",                # 3: lon not a number
        "img2.jpg,nan,5",                 # 4: NaN
        "img0.jpg,1,2",                   # 5: fine (line 2 was unusable, so this is the first img0)
        "img0.jpg,3,4",                   # 6: duplicate id
        "../../etc/passwd,1,2",           # 7: escapes the images folder
        "missing.jpg,1,2",                # 8: no such image
        "img1.jpg,10,20",                 # 9: fine
        "",
        "Mean accuracy,,",                # 11: footer row
        "total: 8",                       # 12: footer row with too few fields
    ]) + "\n")
    dataset = read_dataset(csv, images=images)
    assert [r.line for r in dataset.records] == [5, 9]
    found = {p.line: (p.kind, p.message) for p in dataset.problems}
    assert sorted(found) == [2, 3, 4, 6, 7, 8, 11, 12]
    assert found[2] == ("bad coordinates", "latitude 91.0 outside [-90, 90]")
    assert found[3][0] == "non-numeric" and "lon 'abc'" in found[3][1]
    assert found[4][0] == "bad coordinates"
    assert found[6] == ("duplicate id", "duplicate id 'img0.jpg' (first on line 5)")
    assert found[7][0] == "unsafe path" and "escapes the images folder" in found[7][1]
    assert found[8][0] == "missing image"
    assert found[11][0] == "non-numeric" and found[12][0] == "not a data row"
    assert all(p.file == str(csv) for p in dataset.problems)
    with pytest.raises(GeovarioError, match=r"bad.csv:2: latitude 91.0 .*and 7 more"):
        dataset.require_clean()


@pytest.mark.parametrize("text, message", [
    ("", "empty CSV"),
    ("\n\n", "empty CSV"),
    ("IMG_FILE,LON\nimg0.jpg,3\n", "missing column LAT"),
    ("name,x,y\na,1,2\n", "cannot tell the format"),
])
def test_unusable_files_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(GeovarioError, match=message):
        read_dataset(write(tmp_path / "d.csv", text))


def test_a_named_format_still_needs_its_columns(tmp_path):
    with pytest.raises(GeovarioError, match="missing column LAT"):
        read_dataset(write(tmp_path / "e.csv", "IMG_FILE,LON\nimg0.jpg,3\n"), format="mp16")


def test_data_check_cli(tmp_path, images, capsys):
    csv = write(tmp_path / "d.csv", "IMG_FILE,LAT,LON\nimg0.jpg,1,2\nimg1.jpg,95,2\nmean,,\n")
    assert main(["data", "check", str(csv), "--images", str(images)]) == 1
    out = capsys.readouterr().out
    assert "format mp16 (auto-detected), 3 rows, 1 usable, 2 bad" in out
    assert f"{csv}:3: latitude 95.0" in out and f"{csv}:4: non-numeric" in out
    assert main(["data", "check", str(csv), "--images", str(images), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] == 1 and [p["line"] for p in report["problems"]] == [3, 4]
    clean = write(tmp_path / "ok.csv", "IMG_FILE,LAT,LON\nimg0.jpg,1,2\n")
    assert main(["data", "check", str(clean), "--images", str(images)]) == 0
    assert main(["data", "check", str(tmp_path / "none.csv")]) == 1
    assert capsys.readouterr().err.startswith("geovario: error: ") 


@pytest.mark.parametrize("text, message", [
    ("", "empty CSV"),
    ("IMG_FILE,LON\nimg0.jpg,3\n", "missing column LAT"),
])
def test_unusable_files_through_the_cli(tmp_path, capsys, text, message):
    csv = write(tmp_path / "d.csv", text)
    for argv in (["data", "check", str(csv)], ["extract", "--data", str(csv), "--backbone", "unused", "--out", str(tmp_path / "s")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"geovario: error: {csv}: ") and message in err[0]
