"""geovario embed-gps: a model's location encoder as a general-purpose location embedding."""

import json

import numpy as np
import pytest
import torch

from geovario.cli import main
from geovario.gps_embeddings import embed_locations
from geovario.modeldir import load_model_dir


def write_csv(path, rows, header="id,name,LAT,LON"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_to_npy_and_parquet_in_small_batches(tmp_path, tiny_model_dir, capsys):
    pq = pytest.importorskip("pyarrow.parquet", reason="the archives extra (pyarrow) is not installed")
    rng = np.random.default_rng(0)
    latlon = np.stack([rng.uniform(-90, 90, 50), rng.uniform(-180, 180, 50)], 1)
    csv = write_csv(tmp_path / "g.csv", [f"id{i},n{i},{float(la)!r},{float(lo)!r}" for i, (la, lo) in enumerate(latlon)])
    assert main(["embed-gps", "--model", str(tiny_model_dir), "--csv", str(csv), "--out", str(tmp_path / "e.npy"),
                 "--batch-size", "7", "--no-progress"]) == 0
    assert main(["embed-gps", "--model", str(tiny_model_dir), "--csv", str(csv), "--out", str(tmp_path / "e.parquet"),
                 "--batch-size", "7", "--normalize", "--no-progress"]) == 0
    capsys.readouterr()
    model = load_model_dir(tiny_model_dir).model
    with torch.no_grad():  # one forward pass over all rows, against the 8 batches of 7 written above
        whole = model.location_encoder(torch.from_numpy(latlon).float()).numpy()
    saved = np.load(tmp_path / "e.npy")
    assert saved.shape == whole.shape and saved.dtype == np.float32
    np.testing.assert_allclose(saved, whole, rtol=1e-5, atol=1e-6)
    table = pq.read_table(tmp_path / "e.parquet").to_pydict()
    assert table["id"] == [f"id{i}" for i in range(50)] and table["name"][49] == "n49"
    np.testing.assert_array_equal(table["lat"], latlon[:, 0])
    unit = np.array(table["embedding"])
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(unit, whole / np.linalg.norm(whole, axis=1, keepdims=True), atol=1e-5)


def test_one_point_prints_json(tiny_model_dir, capsys):
    assert main(["embed-gps", "--model", str(tiny_model_dir), "--lat", "48.8584", "--lon", "2.2945"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = embed_locations(load_model_dir(tiny_model_dir).model, [[48.8584, 2.2945]])[0]
    assert out["lat"] == 48.8584 and np.allclose(out["embedding"], expected, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--lat", "95", "--lon", "3"], "--lat/--lon: latitude 95.0 is outside [-90, 90]"),
    (["--lat", "45"], "give both --lat and --lon"),
    (["--csv", "{bad}", "--out", "{tmp}/e.npy"], "bad.csv: line 4: lat/lon is not a finite number"),
    (["--csv", "{footer}", "--out", "{tmp}/e.npy"], "footer.csv: line 3: lat/lon is not a finite number"),
    (["--csv", "{nocols}", "--out", "{tmp}/e.npy"], "nocols.csv: GPS needs LAT and LON columns"),
    (["--csv", "{good}"], "--csv needs --out"),
    (["--csv", "{good}", "--out", "{tmp}/e.csv"], "e.csv: the output must end in .npy or .parquet"),
])
def test_bad_inputs_are_one_line_naming_file_and_line(tmp_path, tiny_model_dir, capsys, args, message):
    files = {
        "bad": write_csv(tmp_path / "bad.csv", ["a,x,1,2", "b,y,3,4", "c,z,nan,5"]),
        "footer": write_csv(tmp_path / "footer.csv", ["a,x,1,2", "mean,,,"]),
        "nocols": write_csv(tmp_path / "nocols.csv", ["a,1,2"], header="id,y,x"),
        "good": write_csv(tmp_path / "good.csv", ["a,x,1,2"]),
    }
    argv = [a.format(tmp=tmp_path, **files) for a in args]
    code = main(["embed-gps", "--model", str(tiny_model_dir), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "e.npy").exists()
