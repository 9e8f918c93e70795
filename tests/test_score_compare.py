import json

import pytest

from geovario.cli import main
from geovario.errors import GeovarioError
from geovario.predictions_file import read_predictions


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("header", [
    "img,gt_lat,gt_long,predicted_lat,predicted_long",
    "IMG_ID,LAT,LON,pred_lat,pred_lon",
    "id,latitude,longitude,pred_latitude,pred_longitude",
    "id,true_lat,true_lon,lat_pred,lon_pred",
])
def test_columns_are_detected(tmp_path, header):
    path = write(tmp_path / "p.csv", f"{header}\na,48.85,2.35,48.86,2.34\nb,-33.9,151.2,40.7,-74.0\n")
    table = read_predictions(path)
    assert len(table.frame) == 2 and not table.dropped
    assert table.frame.iloc[1][["true_lat", "pred_lon"]].tolist() == [-33.9, -74.0]


def test_non_data_rows_are_dropped_and_reported(tmp_path, capsys):
    path = write(tmp_path / "p.csv", "\n".join([
        "gt_lat,gt_long,predicted_lat,predicted_long",
        "48.85,2.35,48.86,2.34",
        "",
        "-33.9,151.2,-33.8,151.1",
        "Accuracy,,,",
        "mean error: 12 km",
    ]) + "\n")
    table = read_predictions(path)
    assert len(table.frame) == 2 and not table.failed
    assert [(p.line, p.kind) for p in table.dropped] == [(5, "not a data row"), (6, "not a data row")]
    assert main(["score", str(path), "--json", "--no-admin"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["n"] == 2 and report["failed"] == 0 and len(report["dropped_rows"]) == 2 and "p.csv:5" in report["dropped_rows"][0]
    assert "using columns true_lat=gt_lat" in err and "dropped (not a sample)" in err


def test_samples_without_a_valid_prediction_count_as_failures(tmp_path, capsys):
    """100 blank predictions out of 300: n stays 300, and those 100 are wrong everywhere (issue 15)."""
    import numpy as np

    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 60, 300), rng.uniform(-180, 180, 300)
    lines = ["gt_lat,gt_long,predicted_lat,predicted_long"]
    invalid = [",", "nan,nan", "95,10", "10,abc"]  # blank, NaN, out of range, not a number
    for i in range(300):
        prediction = invalid[i % 4] if i < 100 else f"{lat[i] + 0.001:.6f},{lon[i]:.6f}"  # about 110 m off
        lines.append(f"{lat[i]:.6f},{lon[i]:.6f},{prediction}")
    path = write(tmp_path / "p.csv", "\n".join(lines) + "\nmean,,,\n")
    assert main(["score", str(path), "--json", "--no-admin"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["n"] == 300 and report["failed"] == 100 and len(report["failed_rows"]) == 100
    assert len(report["dropped_rows"]) == 1  # the footer is not a sample
    for threshold, accuracy in report["accuracy"].items():
        assert accuracy == pytest.approx(200 / 3), threshold  # the failures are wrong at every threshold
    assert report["geoscore"] == pytest.approx(5000 * np.exp(-0.111 / 1492.7) * 2 / 3, rel=1e-4)  # failures score 0
    assert report["median_km"] < 1 and report["mean_km"] > 6000
    assert "counted as a failure" in err


def test_invalid_true_coordinates_and_swapped_columns_are_refused(tmp_path, capsys):
    bad_truth = write(tmp_path / "t.csv", "gt_lat,gt_long,predicted_lat,predicted_long\n48.85,2.35,48.86,2.34\n95,10,1,2\n")
    assert main(["score", str(bad_truth), "--no-admin"]) == 1
    assert "t.csv:3: true coordinates gt_lat='95'" in capsys.readouterr().err
    # Photos in New York and Chicago given as (lon, lat): every value fits both ranges, but lands in Antarctica.
    rows = [f"{lon:.4f},{lat:.4f},{lon:.4f},{lat:.4f}" for lat, lon in
            [(40.7 + 0.01 * i, -74.0 + 0.01 * i) for i in range(12)] + [(41.85 + 0.01 * i, -87.65 + 0.01 * i) for i in range(12)]]
    swapped = write(tmp_path / "s.csv", "gt_lat,gt_long,predicted_lat,predicted_long\n" + "\n".join(rows) + "\n")
    assert main(["score", str(swapped), "--no-admin"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "swapped" in err[0] and "--true-lat and --true-lon" in err[0]


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("a,b,c\n1,2,3\n", "cannot find the true lat column"),
    ("gt_lat,gt_long,predicted_lat,predicted_long\nmean,,,\ntotal,,,\n", "no data rows"),
    ("gt_lat,gt_long,predicted_lat,predicted_long\nnan,1,2,3\n", "p.csv:2: true coordinates"),
    ("gt_lat,gt_long,predicted_lat,predicted_long\n95,1,2,3\n", "p.csv:2: true coordinates"),
])
def test_unusable_prediction_files(tmp_path, capsys, text, message):
    path = write(tmp_path / "p.csv", text)
    with pytest.raises(GeovarioError, match=message):
        read_predictions(path)
    assert main(["score", str(path), "--no-admin"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geovario: error: ")


def test_named_columns(tmp_path):
    path = write(tmp_path / "p.csv", "y,x,py,px\n1,2,3,4\n")
    table = read_predictions(path, true_lat="y", true_lon="x", pred_lat="py", pred_lon="px")
    assert table.frame.iloc[0][["true_lat", "true_lon", "pred_lat", "pred_lon"]].tolist() == [1, 2, 3, 4]
    with pytest.raises(GeovarioError, match="no column 'nope'"):
        read_predictions(path, true_lat="nope")


def test_compare_prints_deltas(tmp_path, capsys):
    write(tmp_path / "a.csv", "gt_lat,gt_long,predicted_lat,predicted_long\n0,0,0,0.1\n0,0,0,5\n")
    write(tmp_path / "b.csv", "gt_lat,gt_long,predicted_lat,predicted_long\n0,0,0,0.1\n0,0,0,0.1\n")
    for name in ("a", "b"):
        assert main(["score", str(tmp_path / f"{name}.csv"), "--no-admin", "--out", str(tmp_path / f"{name}.json")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "acc@200 km (%)" in out and "100.00 (+50.00)" in out
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--markdown"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| Method | 1 km | 25 km | 200 km") and len(table) == 4
    assert main(["compare", str(tmp_path / "a.csv")]) == 1
    capsys.readouterr()
    # One report with admin levels, one without: the missing cells are dashes, not "nan".
    assert main(["score", str(tmp_path / "b.csv"), "--out", str(tmp_path / "c.json")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "c.json"), str(tmp_path / "a.json"), "--markdown"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "Country" in table[0] and "nan" not in "\n".join(table) and table[3].endswith("| – | – | – |")


def test_compare_warns_when_reports_are_not_comparable(tmp_path, capsys):
    write(tmp_path / "a.csv", "gt_lat,gt_long,predicted_lat,predicted_long\n0,0,0,0.1\n0,0,0,5\n")
    write(tmp_path / "b.csv", "gt_lat,gt_long,predicted_lat,predicted_long\n0,0,0,0.1\n0,0,0,0.1\n0,0,0,0.2\n")
    assert main(["score", str(tmp_path / "a.csv"), "--no-admin", "--out", str(tmp_path / "a.json")]) == 0
    assert main(["score", str(tmp_path / "b.csv"), "--no-admin", "--strict-less", "--thresholds", "1,25",
                 "--out", str(tmp_path / "b.json")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert "has n = 3" in err and "counts d < t" in err and "thresholds 1, 25 km" in err
    report = json.loads((tmp_path / "a.json").read_text())
    report["accuracy"]["25"] = "high"
    write(tmp_path / "c.json", json.dumps(report))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 1
    assert "accuracy at 25 km is 'high'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), str(tmp_path / "a.json")]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_coordinates_in_radians_are_scored_with_a_warning(tmp_path, capsys):
    """Paris, Tokyo, New York, ... written in radians: read as degrees they would all sit off the coast of Gabon."""
    import math

    cities = [(48.86, 2.35), (35.68, 139.69), (40.71, -74.01), (-33.87, 151.21), (55.76, 37.62), (-22.91, -43.17),
              (30.04, 31.24), (19.43, -99.13), (1.35, 103.82), (64.15, -21.94), (-1.29, 36.82), (59.91, 10.75)]
    rows = [f"{math.radians(a):.6f},{math.radians(b):.6f},{math.radians(a) + 0.01:.6f},{math.radians(b):.6f}" for a, b in cities]
    (tmp_path / "p.csv").write_text("gt_lat,gt_lon,pred_lat,pred_lon\n" + "\n".join(rows) + "\n")
    assert main(["score", str(tmp_path / "p.csv"), "--no-admin", "--json"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("geovario: warning:")]
    assert len(err) == 2 and "are they radians? geovario reads degrees" in err[0] and "true coordinates" in err[0]
    assert "predicted coordinates" in err[1]
    degrees = [f"{a},{b},{a + 0.01},{b}" for a, b in cities]  # the same places in degrees: no warning
    (tmp_path / "d.csv").write_text("gt_lat,gt_lon,pred_lat,pred_lon\n" + "\n".join(degrees) + "\n")
    assert main(["score", str(tmp_path / "d.csv"), "--no-admin", "--json"]) == 0
    assert "warning" not in capsys.readouterr().err
