"""Temperature calibration: forecasts against brute force, a temperature recovered where the truth is known, and
calibration.json refused where it does not apply."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geovario.calibration import (CALIBRATION_FILE, calibrate, expected_calibration_error, fit_temperature, gallery_sha256,
                                  read_temperature, save_calibration, within_forecasts)
from geovario.confidence import WITHIN_KM
from geovario.data.store import write_store
from geovario.errors import GeovarioError
from geovario.geo import haversine_km
from geovario.predict import Predictor


def test_expected_calibration_error_on_a_hand_case():
    """Two bins used: forecasts 0.15 (outcomes 1 of 2: |0.5 - 0.15|) and 0.95 / 1.0 (outcomes 2 of 2: |1 - 0.975|),
    each holding half the photos."""
    forecast = np.array([0.15, 0.15, 0.95, 1.0])
    outcome = np.array([True, False, True, True])
    assert expected_calibration_error(forecast, outcome) == pytest.approx(0.5 * 0.35 + 0.5 * 0.025)
    assert expected_calibration_error(np.array([0.3, 0.7]), np.array([False, True]), bins=1) == pytest.approx(0.0)


def model_softmax(predictor, features, temperature):
    with torch.no_grad():
        images = F.normalize(predictor.model.encode_images(torch.from_numpy(features)), dim=-1).double()
        places = F.normalize(predictor.model.encode_locations(torch.from_numpy(predictor.gallery)), dim=-1).double()
        logits = float(predictor.model.logit_scale.detach().exp()) * images @ places.T
    return torch.softmax(logits / temperature, dim=1).numpy()


def test_within_forecasts_are_the_mass_near_the_most_probable_point(tiny_model_dir):
    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 32)).astype(np.float32)
    truth = predictor.gallery[rng.integers(0, 300, 6)].astype(np.float64) + 1.0
    forecasts, outcomes = within_forecasts(predictor, features, truth, np.array([1.0, 0.3]))
    gallery = predictor.gallery.astype(np.float64)
    for k, temperature in enumerate((1.0, 0.3)):
        prob = model_softmax(predictor, features, temperature)
        for i, row in enumerate(prob):
            best = gallery[np.argmax(row)]
            distance = haversine_km(best[0], best[1], gallery[:, 0], gallery[:, 1])
            assert forecasts[k, i] == pytest.approx([row[distance <= t].sum() for t in WITHIN_KM], rel=1e-5, abs=1e-9)
            assert list(outcomes[i]) == [haversine_km(best[0], best[1], *truth[i]) <= t for t in WITHIN_KM]


@pytest.mark.parametrize("true_temperature", [0.4, 2.5])
def test_the_fitted_temperature_is_the_one_the_photos_were_drawn_at(tiny_model_dir, true_temperature):
    """Each photo's location drawn from the model's own distribution at a known temperature: forecasts at that
    temperature are calibrated by construction, so the fit must find it."""
    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(1)
    features = (3 * rng.normal(size=(1500, 32))).astype(np.float32)
    prob = model_softmax(predictor, features, true_temperature)
    drawn = np.array([rng.choice(len(row), p=row / row.sum()) for row in prob])
    truth = predictor.gallery[drawn].astype(np.float64)
    assert fit_temperature(predictor, features, truth) == pytest.approx(true_temperature, rel=0.2)


def test_calibrate_saves_a_temperature_that_the_next_predictor_uses_and_refuses_what_does_not_fit(tiny_model_dir, tmp_path):
    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(2)
    features = (3 * rng.normal(size=(300, 32))).astype(np.float32)
    prob = model_softmax(predictor, features, 0.5)
    truth = predictor.gallery[[rng.choice(300, p=row / row.sum()) for row in prob]].astype(np.float64)
    store = write_store(tmp_path / "val", features, truth, dtype="float32")
    record = calibrate(predictor, store)
    assert record["before"]["temperature"] == 1.0 and record["after"]["temperature"] == record["temperature"]
    assert record["fitted_on"]["photos"] == 300 and record["fitted_on"]["fingerprint"] == store.fingerprint()
    worse = [record["before"]["within_km"][str(t)]["ece"] for t in WITHIN_KM]
    better = [record["after"]["within_km"][str(t)]["ece"] for t in WITHIN_KM]
    assert sum(better) < sum(worse)
    save_calibration(tiny_model_dir, record)
    again = Predictor(tiny_model_dir, progress=False)
    assert again.temperature == record["temperature"]
    from geovario.evaluate import predict_source  # evaluation reports the calibrated top-1 probability

    frame = predict_source(again, store, top_k=1, progress=False)
    expected = model_softmax(predictor, np.array(store.features()), record["temperature"]).max(axis=1)
    np.testing.assert_allclose(frame["prob"].to_numpy(), expected, rtol=1e-4)
    # For another gallery the temperature does not apply: a warning, and temperature 1.
    with pytest.warns(UserWarning, match="fitted for another gallery"):
        other = Predictor(tiny_model_dir, gallery=predictor.gallery[:100], progress=False)
    assert other.temperature == 1.0
    # For other weights, or with a temperature that is no positive number, calibration.json is refused by name.
    assert read_temperature(tiny_model_dir, record["weights_sha256"], predictor.gallery) == (record["temperature"], None)
    with pytest.raises(GeovarioError, match=f"{CALIBRATION_FILE}: fitted for other weights"):
        read_temperature(tiny_model_dir, "0" * 64, predictor.gallery)
    for bad in (0.0, -1.0, "hot", None):
        (tiny_model_dir / CALIBRATION_FILE).write_text(json.dumps(record | {"temperature": bad}))
        with pytest.raises(GeovarioError, match="temperature must be a positive number"):
            Predictor(tiny_model_dir, progress=False)
    assert gallery_sha256(predictor.gallery) != gallery_sha256(predictor.gallery[:100])


def test_the_calibrate_command_saves_and_prints_its_record_and_refuses_a_store_of_another_width(tiny_model_dir, tmp_path, capsys):
    from geovario.cli import main

    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(3)
    features = (3 * rng.normal(size=(120, 32))).astype(np.float32)
    prob = model_softmax(predictor, features, 0.5)
    truth = predictor.gallery[[rng.choice(300, p=row / row.sum()) for row in prob]].astype(np.float64)
    write_store(tmp_path / "val", features, truth, dtype="float32")
    assert main(["calibrate", "--model", str(tiny_model_dir), "--store", str(tmp_path / "val"), "--json", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tiny_model_dir / CALIBRATION_FILE).read_text()) and printed["fitted_on"]["photos"] == 120
    assert main(["calibrate", "--model", str(tiny_model_dir), "--store", str(tmp_path / "val"), "--max-photos", "50"]) == 0
    out = capsys.readouterr().out
    assert "on 50 photos" in out and "P(within 2,500 km)" in out and "90 % radius holds" in out
    write_store(tmp_path / "wide", rng.normal(size=(20, 16)).astype(np.float32), truth[:20])
    assert main(["calibrate", "--model", str(tiny_model_dir), "--store", str(tmp_path / "wide")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wide: 16-d features, but the model expects 32-d" in err
