"""Temperature calibration: forecasts against brute force, a temperature recovered where the truth is known, and
calibration.json refused where it does not apply."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geovario.calibration import (CALIBRATION_FILE, BestGuesses, calibrate, calibration_report, expected_calibration_error,
                                  fit_platt, fit_temperature, gallery_sha256, platt_scaled, read_calibration, save_calibration,
                                  within_forecasts)
from geovario.confidence import WITHIN_KM
from geovario.data.store import write_store
from geovario.errors import GeovarioError
from geovario.geo import haversine_km
from geovario.predict import Predictor


def test_expected_calibration_error_on_a_hand_case():
    """Ten bins of width 0.1; deviations of both signs (so the sum of |.| is not |sum|), two forecasts that share a
    bin of ten but not of eleven (0.62, 0.68), and a forecast of 1.0, which falls in the last bin with 0.95:
    bin 1: 2 photos, 2 hits, mean 0.15 -> 0.85; bin 5: 2, 0, 0.55 -> 0.55; bin 6: 2, 1, 0.65 -> 0.15;
    bin 8: 1, 1, 0.85 -> 0.15; bin 9: 2, 1, 0.975 -> 0.475."""
    forecast = np.array([0.15, 0.15, 0.55, 0.55, 0.62, 0.68, 0.85, 0.95, 1.0])
    outcome = np.array([True, True, False, False, False, True, True, True, False])
    assert expected_calibration_error(forecast, outcome) == pytest.approx((2 * 0.85 + 2 * 0.55 + 2 * 0.15 + 0.15 + 2 * 0.475) / 9)
    assert expected_calibration_error(np.array([0.3, 0.7]), np.array([False, True]), bins=1) == pytest.approx(0.0)


def model_softmax(predictor, features, temperature):
    with torch.no_grad():
        images = F.normalize(predictor.model.encode_images(torch.from_numpy(features)), dim=-1).double()
        places = F.normalize(predictor.model.encode_locations(torch.from_numpy(predictor.gallery)), dim=-1).double()
        logits = float(predictor.model.logit_scale.detach().exp()) * images @ places.T
    return torch.softmax(logits / temperature, dim=1).numpy()


def drawn_photos(predictor, n: int, temperature: float, seed: int):
    """n random feature rows, each photo placed at a gallery point drawn from the model's own softmax at
    ``temperature``: forecasts at that temperature are calibrated by construction."""
    rng = np.random.default_rng(seed)
    features = (3 * rng.normal(size=(n, 32))).astype(np.float32)
    prob = model_softmax(predictor, features, temperature)
    return features, predictor.gallery[[rng.choice(len(row), p=row / row.sum()) for row in prob]].astype(np.float64)


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
    features, truth = drawn_photos(predictor, 300, 0.5, seed=2)
    store = write_store(tmp_path / "val", features, truth, dtype="float32")
    record = calibrate(predictor, store)
    assert record["before"]["temperature"] == 1.0 and record["after"]["temperature"] == record["temperature"]
    assert (record["before"]["platt"], record["temperature_only"]["platt"], record["after"]["platt"]) == (False, False, True)
    assert record["fitted_on"]["photos"] == 300 and record["fitted_on"]["fingerprint"] == store.fingerprint()
    worse = [record["before"]["within_km"][str(t)]["ece"] for t in WITHIN_KM]
    better = [record["after"]["within_km"][str(t)]["ece"] for t in WITHIN_KM]
    assert sum(better) < sum(worse)
    save_calibration(tiny_model_dir, record)
    again = Predictor(tiny_model_dir, progress=False)
    assert again.temperature == record["temperature"] and again.platt == record["platt"]
    # The saved calibration is what predictions use: a fresh predictor's report on the same photos is the record's.
    after = calibration_report(again, store.features(), np.asarray(store.gps, np.float64))
    for t in WITHIN_KM:
        assert after["within_km"][str(t)] == pytest.approx(record["after"]["within_km"][str(t)], rel=1e-9)
    assert after["radius"] == record["after"]["radius"] == record["temperature_only"]["radius"]
    # Platt scaling moves every place's within-t probabilities, by each threshold's coefficients, and nothing else.
    raw = Predictor(tiny_model_dir, progress=False)
    raw.platt = None
    for scaled, plain in zip(again.predict_features(features[:5], top_k=3), raw.predict_features(features[:5], top_k=3)):
        for a, b in zip(scaled, plain):
            assert (a.lat, a.lon, a.prob, a.radius_km) == (b.lat, b.lon, b.prob, b.radius_km)
            by_hand = []
            for t in WITHIN_KM:
                slope, intercept = record["platt"][str(t)]
                p = min(max(b.within_km[t], 1e-6), 1 - 1e-6)
                by_hand.append(max(by_hand + [1 / (1 + (p / (1 - p)) ** -slope * np.exp(-intercept))]))
            assert [a.within_km[t] for t in WITHIN_KM] == pytest.approx(by_hand, rel=1e-9)
    from geovario.evaluate import predict_source  # evaluation reports the calibrated top-1 probability

    frame = predict_source(again, store, top_k=1, progress=False)
    expected = model_softmax(predictor, np.array(store.features()), record["temperature"]).max(axis=1)
    np.testing.assert_allclose(frame["prob"].to_numpy(), expected, rtol=1e-4)
    # For another gallery the temperature does not apply: a warning, and temperature 1.
    with pytest.warns(UserWarning, match="fitted for another gallery"):
        other = Predictor(tiny_model_dir, gallery=predictor.gallery[:100], progress=False)
    assert other.temperature == 1.0
    # For other weights, or with a temperature that is no positive number, calibration.json is refused by name.
    assert read_calibration(tiny_model_dir, record["weights_sha256"], predictor.gallery) == (record["temperature"], record["platt"], None)
    with pytest.raises(GeovarioError, match=f"{CALIBRATION_FILE}: fitted for other weights"):
        read_calibration(tiny_model_dir, "0" * 64, predictor.gallery)
    for bad in (0.0, -1.0, "hot", None, True, float("nan")):
        (tiny_model_dir / CALIBRATION_FILE).write_text(json.dumps(record | {"temperature": bad}))
        with pytest.raises(GeovarioError, match="temperature must be a positive number"):
            Predictor(tiny_model_dir, progress=False)
    good = record["platt"]
    for bad in ({k: v for k, v in good.items() if k != "25"}, good | {"25": [1.0]}, good | {"25": [1.0, float("nan")]},
                good | {"25": [True, 0.0]}, good | {"25": "steep"}, [1.0, 0.0]):
        (tiny_model_dir / CALIBRATION_FILE).write_text(json.dumps(record | {"platt": bad}))
        with pytest.raises(GeovarioError, match="platt must map each of 25, 200, 750, 2500 km to two finite numbers"):
            Predictor(tiny_model_dir, progress=False)
    (tiny_model_dir / CALIBRATION_FILE).write_text(json.dumps(record | {"platt": None}))  # a temperature alone is valid
    assert Predictor(tiny_model_dir, progress=False).platt is None
    assert gallery_sha256(predictor.gallery) != gallery_sha256(predictor.gallery[:100])


def test_the_calibrate_command_saves_and_prints_its_record_and_refuses_a_store_of_another_width(tiny_model_dir, tmp_path, capsys):
    from geovario.cli import main

    predictor = Predictor(tiny_model_dir, progress=False)
    features, truth = drawn_photos(predictor, 120, 0.5, seed=3)
    write_store(tmp_path / "val", features, truth, dtype="float32")
    assert main(["calibrate", "--model", str(tiny_model_dir), "--store", str(tmp_path / "val"), "--json", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tiny_model_dir / CALIBRATION_FILE).read_text()) and printed["fitted_on"]["photos"] == 120
    assert main(["calibrate", "--model", str(tiny_model_dir), "--store", str(tmp_path / "val"), "--max-photos", "50"]) == 0
    out = capsys.readouterr().out
    assert "on 50 photos" in out and "P(within 2,500 km)" in out and "90 % radius holds" in out
    write_store(tmp_path / "wide", np.random.default_rng(3).normal(size=(20, 16)).astype(np.float32), truth[:20])
    assert main(["calibrate", "--model", str(tiny_model_dir), "--store", str(tmp_path / "wide")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wide: 16-d features, but the model expects 32-d" in err


def test_platt_coefficients_drawn_into_outcomes_are_recovered():
    """Outcomes drawn at sigmoid(a * logit(p) + b) with known a and b per threshold: the fit finds them."""
    rng = np.random.default_rng(4)
    truth = {25: (1.7, -0.4), 200: (0.6, 0.3), 750: (1.0, 0.0), 2500: (2.2, 0.8)}
    forecasts = rng.uniform(0.01, 0.99, size=(20_000, len(WITHIN_KM)))
    logit = np.log(forecasts / (1 - forecasts))
    outcomes = np.stack([rng.random(len(forecasts)) < 1 / (1 + np.exp(-(a * logit[:, k] + b))) for k, (a, b) in enumerate(truth.values())], 1)
    fitted = fit_platt(forecasts, outcomes)
    for t, (a, b) in truth.items():
        assert fitted[str(t)] == pytest.approx([a, b], abs=0.1)
    # A threshold every photo met (or none did) has nothing to fit: its forecasts pass through.
    outcomes[:, 3] = True
    assert fit_platt(forecasts, outcomes)["2500"] == [1.0, 0.0]
    outcomes[:, 3] = False
    assert fit_platt(forecasts, outcomes)["2500"] == [1.0, 0.0]


def test_platt_scaling_on_hand_values_stays_non_decreasing_in_the_distance():
    """a = 2, b = 0 maps 1/4 (odds 1/3) to odds 1/9, 0.1; b = ln 3 at a = 1 maps it to odds 1, 0.5; a forecast at
    200 km pulled below the 25 km one is raised to it; 0 and 1 are clipped to 1e-6 from the ends first."""
    platt = {"25": [2.0, 0.0], "200": [1.0, float(np.log(3))], "750": [1.0, -5.0], "2500": [1.0, 0.0]}
    scaled = platt_scaled(np.array([[0.25, 0.25, 0.25, 0.5], [0.5, 0.0, 0.9, 1.0]]), platt)
    odds = 9 * np.exp(-5)
    np.testing.assert_allclose(scaled[0], [0.1, 0.5, 0.5, 0.5])  # 750 km: 1/3 * e^-5 -> raised to 200 km's 0.5
    np.testing.assert_allclose(scaled[1], [0.5, 0.5, max(0.5, odds / (1 + odds)), 1 - 1e-6], rtol=1e-9)


def test_reliability_bins_against_a_per_photo_count():
    rng = np.random.default_rng(5)
    forecasts = np.sort(rng.uniform(0, 1, size=(200, len(WITHIN_KM))), axis=1)
    forecasts[:3] = [0.0, 0.1, 0.999, 1.0]  # a forecast of 1 falls in the last bin
    error = rng.uniform(0, 3000, 200)
    guesses = BestGuesses(forecasts, error, np.full(200, 1000.0))
    curves = guesses.reliability(bins=5)
    for k, t in enumerate(WITHIN_KM):
        for b in range(5):
            inside = [i for i in range(200) if b / 5 <= forecasts[i, k] < (b + 1) / 5 or (b == 4 and forecasts[i, k] == 1.0)]
            assert curves[str(t)]["photos"][b] == len(inside)
            if inside:
                assert curves[str(t)]["forecast"][b] == pytest.approx(np.mean(forecasts[inside, k]))
                assert curves[str(t)]["observed"][b] == pytest.approx(np.mean(error[inside] <= t))
            else:
                assert curves[str(t)]["forecast"][b] is None and curves[str(t)]["observed"][b] is None
    report = guesses.report(0.5)
    assert report["radius"]["coverage"] == pytest.approx(np.mean(error <= 1000)) and report["photos"] == 200
    assert report["within_km"]["200"]["ece"] == pytest.approx(expected_calibration_error(forecasts[:, 1], error <= 200))


def test_evaluate_reports_the_calibration_streamed_and_draws_the_reliability_diagram(tiny_model_dir, tmp_path, capsys):
    """evaluate --calibration, in batches smaller than the store, reports what a one-pass report on all the photos
    reports (the saved temperature and Platt coefficients applied), and draws reliability.png with --plots."""
    from geovario.cli import main
    from geovario.evaluate import calibration_of

    predictor = Predictor(tiny_model_dir, progress=False)
    features, truth = drawn_photos(predictor, 150, 0.5, seed=6)
    store = write_store(tmp_path / "val", features, truth, dtype="float32")
    save_calibration(tiny_model_dir, calibrate(predictor, store))
    calibrated = Predictor(tiny_model_dir, progress=False)
    one_pass = calibration_report(calibrated, features, truth)
    streamed = calibration_of(calibrated, store, batch_size=40, progress=False)
    for t in WITHIN_KM:
        assert streamed["within_km"][str(t)] == pytest.approx(one_pass["within_km"][str(t)], rel=1e-9)
    assert streamed["radius"] == one_pass["radius"]
    assert sum(streamed["reliability"]["25"]["photos"]) == 150 and streamed["platt"] is True
    out, plots = tmp_path / "report.json", tmp_path / "plots"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--store", str(store.folder), "--out", str(out), "--plots", str(plots),
                 "--calibration", "--no-admin", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["calibration"]["within_km"]["25"] == pytest.approx(one_pass["within_km"]["25"], rel=1e-9)
    assert "P(within    25 km)" in printed and "90 % radius holds" in printed
    from PIL import Image

    with Image.open(plots / "reliability.png") as image:
        assert image.size[0] > 2 * image.size[1]  # four panels side by side
    # Without --calibration, neither the report's section nor the diagram.
    assert main(["evaluate", "--model", str(tiny_model_dir), "--store", str(store.folder), "--out", str(out), "--plots",
                 str(tmp_path / "plain"), "--no-admin", "--no-progress"]) == 0
    assert "calibration" not in json.loads(out.read_text()) and not (tmp_path / "plain" / "reliability.png").exists()


def test_forecasts_stay_finite_at_the_sharpest_temperature_searched(tiny_model_dir):
    """At T = 1/30 with a logit scale of 100 the scaled logits span thousands: the softmax must subtract each row's
    largest before exponentiating, or it overflows."""
    predictor = Predictor(tiny_model_dir, progress=False)
    predictor.model.logit_scale.data.fill_(np.log(100.0))
    predictor.logit_scale = 100.0
    rng = np.random.default_rng(10)
    features = (3 * rng.normal(size=(5, 32))).astype(np.float32)
    truth = predictor.gallery[:5].astype(np.float64)
    forecasts, _ = within_forecasts(predictor, features, truth, np.array([1 / 30]))
    prob = model_softmax(predictor, features, 1 / 30)
    gallery = predictor.gallery.astype(np.float64)
    assert np.isfinite(forecasts).all()
    for i, row in enumerate(prob):
        best = gallery[np.argmax(row)]
        distance = haversine_km(best[0], best[1], gallery[:, 0], gallery[:, 1])
        assert forecasts[0, i] == pytest.approx([row[distance <= t].sum() for t in WITHIN_KM], rel=1e-6, abs=1e-12)


def test_the_refined_temperature_is_as_good_as_a_fine_brute_force_scan(tiny_model_dir):
    """The coarse grid, then 21 points between the best one's neighbours: the fitted temperature's cross-entropy is
    within 1e-4 (relative) of the best of 400 temperatures spaced evenly in log over the same range."""
    predictor = Predictor(tiny_model_dir, progress=False)
    features, truth = drawn_photos(predictor, 600, 0.7, seed=11)
    fitted = fit_temperature(predictor, features, truth)
    scan = np.exp(np.linspace(np.log(1 / 30), np.log(30), 400))

    def cross_entropy(temperatures):
        forecasts, outcomes = within_forecasts(predictor, features, truth, np.asarray(temperatures))
        p = np.clip(forecasts, 1e-12, 1 - 1e-12)
        return -(outcomes * np.log(p) + (~outcomes) * np.log1p(-p)).mean(axis=(1, 2))

    assert cross_entropy([fitted])[0] <= cross_entropy(scan).min() * (1 + 1e-4)


@pytest.mark.parametrize("true_temperature, bound", [(float("inf"), "30"), (0.0, "0.0333")])
def test_a_fit_at_the_searchs_bound_warns_and_one_inside_does_not(tiny_model_dir, tmp_path, true_temperature, bound):
    """Photos placed as no temperature searched (1/30 to 30) can explain, as if drawn at infinity or at zero: the fit
    ends at the bound and says so; a fit inside the range is silent."""
    import warnings

    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(12)
    features = (3 * rng.normal(size=(300, 32))).astype(np.float32)
    best = predictor.gallery[model_softmax(predictor, features, 1.0).argmax(axis=1)].astype(np.float64)
    if true_temperature > 1:  # every photo at the antipode of the best guess: no mass is ever near enough
        truth = np.stack([-best[:, 0], (best[:, 1] + 360) % 360 - 180], 1)
    else:  # every photo at the best guess: all the mass belongs there
        truth = best
    store = write_store(tmp_path / "bound", features, truth, dtype="float32")
    with pytest.warns(UserWarning, match=f"the fitted temperature is the search's bound \\({bound}"):
        calibrate(predictor, store)
    prob = model_softmax(predictor, features, 0.5)
    truth = predictor.gallery[[rng.choice(300, p=row / row.sum()) for row in prob]].astype(np.float64)
    store = write_store(tmp_path / "inside", features, truth, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate(predictor, store)


def test_calibrate_draws_distinct_photos_reports_before_at_temperature_one_and_needs_ten(tiny_model_dir, tmp_path):
    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(13)
    features = (3 * rng.normal(size=(40, 32))).astype(np.float32)
    truth = predictor.gallery[rng.integers(0, 300, 40)].astype(np.float64)
    store = write_store(tmp_path / "val", features, truth, dtype="float32")
    asked = []
    original = type(store).rows
    store.rows = lambda rows: asked.append(np.array(rows)) or original(store, rows)
    predictor.temperature = 3.0  # whatever it was, "before" is temperature 1
    record = calibrate(predictor, store, max_photos=39)
    assert len(asked[0]) == 39 and len(set(asked[0].tolist())) == 39 and list(asked[0]) == sorted(asked[0])
    fresh = Predictor(tiny_model_dir, progress=False)
    before = calibration_report(fresh, original(store, asked[0]), truth[asked[0]])
    for t in WITHIN_KM:
        assert record["before"]["within_km"][str(t)] == pytest.approx(before["within_km"][str(t)], rel=1e-9)
    small = write_store(tmp_path / "ten", features[:10], truth[:10], dtype="float32")
    assert calibrate(predictor, small)["fitted_on"]["photos"] == 10
    nine = write_store(tmp_path / "nine", features[:9], truth[:9], dtype="float32")
    with pytest.raises(GeovarioError, match="9 photos are too few to calibrate on"):
        calibrate(predictor, nine)


def test_a_photo_exactly_t_km_or_radius_away_counts_as_within():
    """As the accuracy metric counts d <= t: errors of exactly 25 and 2,500 km are hits at those distances, and an
    error equal to the radius is covered."""
    forecasts = np.full((4, len(WITHIN_KM)), 0.5)
    guesses = BestGuesses(forecasts, np.array([25.0, 2500.0, 700.0, 3000.0]), np.array([100.0, 2500.0, 700.0, 10.0]))
    report = guesses.report(1.0)
    assert report["within_km"]["25"]["observed"] == 0.25 and report["within_km"]["2500"]["observed"] == 0.75
    assert report["radius"]["coverage"] == 0.75  # 25 <= 100, 2,500 <= 2,500, 700 <= 700; not 3,000 <= 10
    curves = guesses.reliability()
    assert curves["25"]["observed"][5] == 0.25 and curves["2500"]["observed"][5] == 0.75


@pytest.mark.parametrize("fitted, warns", [(1 / 30, True), (0.035, False), (0.0384, False), (29.9, False), (30.0, True)])
def test_only_a_temperature_at_either_bound_of_the_search_warns(tiny_model_dir, tmp_path, monkeypatch, fitted, warns):
    import warnings

    from geovario import calibration

    monkeypatch.setattr(calibration, "fit_temperature", lambda *a: calibration.COARSE[0] if fitted == 1 / 30 else
                        calibration.COARSE[-1] if fitted == 30.0 else fitted)
    rng = np.random.default_rng(14)
    store = write_store(tmp_path / "val", (3 * rng.normal(size=(20, 32))).astype(np.float32), random_truth(rng, 20), dtype="float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrate(Predictor(tiny_model_dir, progress=False), store)
    assert any("search's bound" in str(w.message) for w in caught) is warns


def random_truth(rng, n):
    return np.stack([rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)], 1)
