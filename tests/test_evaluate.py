from pathlib import Path
import json

import numpy as np
import pandas as pd
import pytest

from conftest import random_gallery
from geovario.cli import main
from geovario.predict import Predictor


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "f.npy", rng.normal(size=(40, 32)).astype(np.float32))
    gps = random_gallery(40, seed=3)
    pd.DataFrame({"LAT": gps[:, 0], "LON": gps[:, 1]}).to_csv(tmp_path / "g.csv", index=False)
    return ["--features", str(tmp_path / "f.npy"), "--gps", str(tmp_path / "g.csv")]


def test_evaluate_writes_report_predictions_and_plots(tmp_path, tiny_model_dir, arrays, capsys):
    out = tmp_path / "report.json"
    code = main(["evaluate", "--model", str(tiny_model_dir), *arrays, "--out", str(out), "--plots", str(tmp_path / "plots"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    listed = [line.removeprefix("wrote ") for line in err.splitlines() if line.startswith("wrote ")]
    assert listed == [str(out), str(tmp_path / "report.predictions.csv"), str(tmp_path / "plots" / "cumulative_error.png"),
                      str(tmp_path / "plots" / "error_map.png")]
    assert all(Path(path).is_file() for path in listed)
    report = json.loads(out.read_text())
    assert report["n"] == 40 and list(report["accuracy"]) == ["1", "25", "200", "750", "2500"]
    assert {"mean_km", "median_km", "geoscore", "admin", "continents", "dropped_rows"} <= set(report)
    assert set(report["admin"]) >= {"country", "region", "sub-region", "city"}
    predictions = pd.read_csv(tmp_path / "report.predictions.csv")
    assert list(predictions.columns[:7]) == ["id", "true_lat", "true_lon", "pred_lat", "pred_lon", "error_km", "prob"]
    # Top-1 equals what `predict` gives for the same features.
    direct = Predictor(tiny_model_dir, progress=False).predict_features(np.load(tmp_path / "f.npy"), top_k=1)
    np.testing.assert_allclose(predictions[["pred_lat", "pred_lon"]].to_numpy(), [[p[0].lat, p[0].lon] for p in direct], atol=1e-5)
    accuracy_200 = 100 * np.mean(predictions["error_km"] <= 200)
    assert report["accuracy"]["200"] == pytest.approx(accuracy_200)
    assert report["gallery"] == "model" and report["retrieval"] == "exact"
    # Without --top-k, the top 5 gallery rows, the first of them the prediction, the rest in descending order.
    top = np.array([row.split() for row in predictions["topk_gallery_index"]], dtype=int)
    gallery = Predictor(tiny_model_dir, progress=False)
    assert top.shape == (40, 5)
    np.testing.assert_allclose(gallery.gallery[top[:, 0]], predictions[["pred_lat", "pred_lon"]].to_numpy(), atol=1e-5)
    assert [[p.gallery_index for p in row] for row in gallery.predict_features(np.load(tmp_path / "f.npy"), top_k=5)] == top.tolist()
    for name in ("cumulative_error.png", "error_map.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_with_another_gallery_thresholds_and_convention(tmp_path, tiny_model_dir, arrays, capsys):
    (tmp_path / "g2.csv").write_text((tmp_path / "g.csv").read_text())
    code = main(["evaluate", "--model", str(tiny_model_dir), *arrays, "--gallery", str(tmp_path / "g2.csv"), "--out",
                 str(tmp_path / "r.json"), "--no-admin", "--strict-less", "--thresholds", "1,10", "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["convention"] == "d < t" and list(report["accuracy"]) == ["1", "10"] and "admin" not in report
    predictions = pd.read_csv(tmp_path / "r.predictions.csv")
    gallery = pd.read_csv(tmp_path / "g2.csv").to_numpy()
    assert all(any(np.allclose(row, g, atol=1e-4) for g in gallery) for row in predictions[["pred_lat", "pred_lon"]].to_numpy())


def test_evaluate_on_a_store_uses_its_osv5m_labels(tmp_path, tiny_model_dir, tiny_clip_dir, capsys):
    from test_data_readers import jpeg

    images = tmp_path / "images" / "test" / "00"
    rows = ["id,latitude,longitude,country,region,sub-region,city"]
    for i, (lat, lon, cc, region) in enumerate([(48.85, 2.35, "FR", "Ile-de-France"), (-33.87, 151.21, "AU", "New South Wales")]):
        jpeg(images / f"{i}.jpg", seed=i)
        rows.append(f"{i},{lat},{lon},{cc},{region},,")
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    assert main(["extract", "--data", str(tmp_path / "test.csv"), "--backbone", str(tiny_clip_dir), "--out", str(tmp_path / "store"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tiny_model_dir), "--store", str(tmp_path / "store"), "--gallery", str(tmp_path / "store"),
                 "--out", str(tmp_path / "r.json"), "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["admin"]["_sources"] == {"country": "labels", "region": "labels", "sub-region": "reverse-geocoded", "city": "reverse-geocoded"}
    assert set(report["continents"]) <= {"Europe", "Oceania"}
    from geovario.data.store import FeatureStore
    from geovario.evaluate import store_labels

    labels = store_labels(FeatureStore(tmp_path / "store"))
    assert list(labels.columns) == ["country", "region", "sub-region", "city"] and labels["country"].tolist() == ["FR", "AU"]


def test_evaluate_bad_input(tmp_path, tiny_model_dir, arrays, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((40, 31), np.float32))
    code = main(["evaluate", "--model", str(tiny_model_dir), "--features", str(tmp_path / "wide.npy"), "--gps", str(tmp_path / "g.csv"), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "31-d but the model expects 32-d" in err[0]
    code = main(["evaluate", "--model", str(tiny_model_dir), "--features", str(tmp_path / "f.npy"), "--out", str(tmp_path / "r.json")])
    assert code == 1 and "need --store STORE, or both" in capsys.readouterr().err


def test_faiss_flat_gives_the_same_top1(tmp_path, tiny_model_dir, arrays, capsys):
    pytest.importorskip("faiss", reason="faiss-cpu is optional (pip install 'geovario[faiss]')")
    for extra, name in (([], "exact"), (["--faiss"], "faiss")):
        assert main(["evaluate", "--model", str(tiny_model_dir), *arrays, "--out", str(tmp_path / f"{name}.json"), "--no-admin", "--no-progress", *extra]) == 0
    exact, faiss = (pd.read_csv(tmp_path / f"{n}.predictions.csv") for n in ("exact", "faiss"))
    np.testing.assert_allclose(exact[["pred_lat", "pred_lon"]], faiss[["pred_lat", "pred_lon"]])
    assert json.loads((tmp_path / "faiss.json").read_text())["retrieval"] == "faiss:Flat"
    assert main(["evaluate", "--model", str(tiny_model_dir), *arrays, "--out", str(tmp_path / "x.json"), "--faiss", "Nonsense42"]) == 1
    assert "bad FAISS index factory" in capsys.readouterr().err


def test_the_predictions_file_holds_kilometres_and_the_whole_gallery_softmax(tmp_path, capsys):
    """Around Paris, so errors fall on both sides of 25 km: error_km against geographiclib on the mean sphere, prob
    against a brute-force softmax over every gallery location, and the report's accuracy from those errors."""
    import torch

    geodesic = pytest.importorskip("geographiclib.geodesic", reason="the test extra (geographiclib) is not installed")
    from conftest import tiny_config
    from geovario.model import GeoLocModel
    from geovario.modeldir import save_model_dir

    rng = np.random.default_rng(11)
    paris = np.array([48.8566, 2.3522])
    gallery = paris + rng.uniform(-0.3, 0.3, size=(300, 2)) * [1.0, 1.5]
    torch.manual_seed(2)
    model = GeoLocModel(tiny_config())
    model.logit_scale.data.fill_(np.log(50.0))
    model_dir = save_model_dir(tmp_path / "m", model, backbone="unused", gallery=gallery)
    truth = paris + rng.uniform(-0.25, 0.25, size=(60, 2))
    features = rng.normal(size=(60, 32)).astype(np.float32)
    np.save(tmp_path / "f.npy", features)
    pd.DataFrame({"LAT": truth[:, 0], "LON": truth[:, 1]}).to_csv(tmp_path / "g.csv", index=False)
    assert main(["evaluate", "--model", str(model_dir), "--features", str(tmp_path / "f.npy"), "--gps", str(tmp_path / "g.csv"),
                 "--out", str(tmp_path / "r.json"), "--no-admin", "--no-progress", "--thresholds", "10,25,50"]) == 0
    rows = pd.read_csv(tmp_path / "r.predictions.csv")
    sphere = geodesic.Geodesic(6_371_008.8, 0.0)  # the IUGG mean radius, in metres
    expected_km = [sphere.Inverse(t_lat, t_lon, p_lat, p_lon)["s12"] / 1000
                   for t_lat, t_lon, p_lat, p_lon in rows[["true_lat", "true_lon", "pred_lat", "pred_lon"]].to_numpy()]
    np.testing.assert_allclose(rows["error_km"], expected_km, rtol=1e-6)
    assert 0 < (rows["error_km"] <= 25).mean() < 1  # the thresholds are not trivially all or nothing
    with torch.no_grad():  # the softmax over every gallery location, by brute force
        loaded = GeoLocModel(tiny_config())
        loaded.load_state_dict(model.state_dict())
        logits = loaded(torch.from_numpy(features), torch.from_numpy(gallery.astype(np.float32)))
        probabilities = logits.softmax(dim=1)
    best = probabilities.argmax(dim=1).numpy()
    np.testing.assert_allclose(rows[["pred_lat", "pred_lon"]].to_numpy(), gallery[best], atol=1e-5)
    np.testing.assert_allclose(rows["prob"], probabilities.max(dim=1).values.numpy(), rtol=1e-4)
    report = json.loads((tmp_path / "r.json").read_text())
    for threshold in (10, 25, 50):
        assert report["accuracy"][str(threshold)] == pytest.approx(100 * np.mean(np.array(expected_km) <= threshold))


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_top_k_column_is_written_from_two_candidates_on(tmp_path, tiny_model_dir, top_k):
    from geovario.data.store import ArrayFeatures
    from geovario.evaluate import predict_source

    rng = np.random.default_rng(5)
    predictor = Predictor(tiny_model_dir, progress=False)
    np.save(tmp_path / "f.npy", rng.normal(size=(6, predictor.feature_dim)).astype(np.float32))
    gps = random_gallery(6, seed=5)
    pd.DataFrame({"LAT": gps[:, 0], "LON": gps[:, 1]}).to_csv(tmp_path / "g.csv", index=False)
    source = ArrayFeatures(tmp_path / "f.npy", tmp_path / "g.csv")
    frame = predict_source(predictor, source, top_k=top_k, progress=False)
    if top_k == 1:
        assert "topk_gallery_index" not in frame.columns
    else:
        assert [len(row.split()) for row in frame["topk_gallery_index"]] == [2] * 6


def test_library_calls_without_options_report_like_the_command(tmp_path, tiny_model_dir):
    """`geovario evaluate`'s defaults (d <= t, admin levels on, a top-5 column) are the library's: each report
    function called without options counts an error exactly at a threshold as the command does."""
    from geovario.cli import build_parser
    from geovario.data.store import ArrayFeatures
    from geovario.evaluate import evaluate_model, frame_report, predict_source, prediction_coordinates
    from geovario.metrics import build_report, by_continent, distance_summary

    command = build_parser().parse_args(["evaluate", "--model", "m", "--store", "s", "--out", "r.json"])
    within = (lambda e, t: e < t) if command.strict_less else (lambda e, t: e <= t)
    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(8)
    np.save(tmp_path / "f.npy", rng.normal(size=(12, predictor.feature_dim)).astype(np.float32))
    gps = random_gallery(12, seed=8)
    pd.DataFrame({"LAT": gps[:, 0], "LON": gps[:, 1]}).to_csv(tmp_path / "g.csv", index=False)
    source = ArrayFeatures(tmp_path / "f.npy", tmp_path / "g.csv")

    frame = predict_source(predictor, source, progress=False)
    top_k = build_parser().parse_args(["predict", "--model", "m", "--features", "f.npy"]).top_k
    assert [len(row.split()) for row in frame["topk_gallery_index"]] == [top_k] * 12
    errors = frame["error_km"].to_numpy()
    threshold = float(np.sort(errors)[5])  # one error sits exactly on it
    expected = 100 * np.mean(within(errors, threshold))
    reports = {
        "build_report": build_report(*prediction_coordinates(frame), thresholds=(threshold,)),
        "frame_report": frame_report(frame, thresholds=(threshold,)),
        "evaluate_model": evaluate_model(tiny_model_dir, source, tmp_path / "p.csv", thresholds=(threshold,), progress=False)[0],
    }
    for name, report in reports.items():
        assert list(report["accuracy"].values()) == [pytest.approx(expected)], name
        assert ("admin" in report) is (not command.no_admin), name
    two = np.array([threshold, 2 * threshold])
    assert distance_summary(two, (threshold,))["accuracy"] == {f"{threshold:g}": 100 * np.mean(within(two, threshold))}
    per_continent = by_continent(two, pd.Series(["FR", "FR"]), (threshold,))
    assert per_continent["Europe"]["accuracy"] == {f"{threshold:g}": 100 * np.mean(within(two, threshold))}


def test_evaluate_with_pool_km_scores_the_places_predict_answers(tmp_path, tiny_model_dir, capsys):
    """--pool-km: the top-1 is predict's best place (the most mass within the radius), not the most probable point;
    a gallery of clusters, where a cluster's many points outweigh a lone more probable one, makes the two differ."""
    from geovario.data.store import write_store
    from geovario.errors import ParameterError
    from geovario.evaluate import predict_source
    from geovario.geo import haversine_km

    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(9)
    features = (3 * rng.normal(size=(40, predictor.feature_dim))).astype(np.float32)
    truth = random_gallery(40, seed=9)
    store = write_store(tmp_path / "test", features, truth, dtype="float32")
    pooled = predict_source(predictor, store, top_k=2, progress=False, pool_km=500.0)
    plain = predict_source(predictor, store, top_k=2, progress=False)
    best = [places[0] for places in predictor.predict_features(features, top_k=2, pool_km=500.0)]
    assert list(pooled["pred_lat"]) == pytest.approx([p.lat for p in best]) and list(pooled["prob"]) == pytest.approx([p.prob for p in best])
    assert list(pooled["error_km"]) == pytest.approx(list(haversine_km(np.array([p.lat for p in best]), np.array([p.lon for p in best]),
                                                                        truth[:, 0], truth[:, 1])), rel=1e-6)
    assert (pooled["pred_lat"].to_numpy() != plain["pred_lat"].to_numpy()).any() and (pooled["prob"] >= plain["prob"] - 1e-6).all()
    with pytest.raises(ParameterError, match="does not go with FAISS"):
        predict_source(predictor, store, top_k=1, progress=False, pool_km=25.0, faiss_factory="Flat")
    with pytest.raises(ParameterError, match="distinct places at pool_km 20000 do not exist"):
        predict_source(predictor, store, top_k=2, progress=False, pool_km=20000.0)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--store", str(store.folder), "--out", str(out), "--pool-km", "500",
                 "--no-admin", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["pool_km"] == 500.0 and report["n"] == 40
    assert report["median_km"] == pytest.approx(float(np.median(pooled["error_km"])), rel=1e-6)
