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
        "nan,2.35,48.86,2.34",
        "10,200,10,20",
        "-33.9,151.2,-33.8,151.1",
        "Accuracy,,,",
        "mean error: 12 km",
    ]) + "\n")
    table = read_predictions(path)
    assert len(table.frame) == 2
    assert [(p.line, p.kind) for p in table.dropped] == [(4, "bad coordinates"), (5, "bad coordinates"),
                                                         (7, "not a data row"), (8, "not a data row")]
    assert main(["score", str(path), "--json", "--no-admin"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["n"] == 2 and len(report["dropped_rows"]) == 4 and "p.csv:7" in report["dropped_rows"][2]
    assert "using columns true_lat=gt_lat" in err and "dropped" in err


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("a,b,c\n1,2,3\n", "cannot find the true lat column"),
    ("gt_lat,gt_long,predicted_lat,predicted_long\nmean,,,\ntotal,,,\n", "no data rows"),
    ("gt_lat,gt_long,predicted_lat,predicted_long\nnan,1,2,3\n", "no data rows .*NaN"),
    ("gt_lat,gt_long,predicted_lat,predicted_long\n95,1,2,3\n", "no data rows .*out of range"),
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
