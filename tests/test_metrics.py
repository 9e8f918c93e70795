import math

import numpy as np
import pandas as pd
import pytest

from geovario.geo import EARTH_RADIUS_KM, haversine_km
from geovario.metrics import (
    admin_accuracy,
    by_continent,
    continent_of,
    distance_summary,
    errors_km,
    geoscore,
    reverse_geocode_labels,
    threshold_accuracy,
)


def test_hand_computed_distances_and_accuracy():
    true = np.array([[0.0, 0.0], [90.0, 0.0], [0.0, 179.5], [10.0, 20.0]])
    pred = np.array([[0.0, 180.0], [-90.0, 0.0], [0.0, -179.5], [10.0, 20.0]])
    errors = errors_km(true, pred)
    half = math.pi * EARTH_RADIUS_KM
    np.testing.assert_allclose(errors, [half, half, math.radians(1) * EARTH_RADIUS_KM, 0.0], rtol=1e-12, atol=1e-9)
    accuracy = threshold_accuracy(errors)
    assert accuracy == {"1": 25.0, "25": 25.0, "200": 50.0, "750": 50.0, "2500": 50.0}  # date line: 111 km


def test_a_distance_exactly_at_a_threshold_under_both_conventions():
    d = float(haversine_km(0.0, 0.0, 0.2, 0.0))  # about 22.24 km along a meridian
    errors = errors_km(np.array([[0.0, 0.0]]), np.array([[0.2, 0.0]]))
    assert errors[0] == d
    assert threshold_accuracy(errors, thresholds=[d]) == {f"{d:g}": 100.0}  # d <= t (GeoCLIP)
    assert threshold_accuracy(errors, thresholds=[d], strict_less=True) == {f"{d:g}": 0.0}  # d < t (OSV5M)
    assert threshold_accuracy([25.0, 24.999], [25]) == {"25": 100.0}
    assert threshold_accuracy([25.0, 24.999], [25], strict_less=True) == {"25": 50.0}


def test_geoscore_and_summary():
    assert geoscore([0.0]) == 5000.0
    assert geoscore([1492.7]) == pytest.approx(5000 / math.e)
    summary = distance_summary(np.array([0.0, 10.0, 30.0, 20000.0]))
    assert summary["n"] == 4 and summary["median_km"] == 20.0 and summary["mean_km"] == pytest.approx(5010.0)
    assert summary["accuracy"]["25"] == 50.0 and summary["convention"] == "d <= t"


def test_admin_labels_reproduce_reverse_geocoder():
    import reverse_geocoder

    points = [(48.8566, 2.3522), (-44.0, 170.5)]  # Paris, and rural Canterbury in New Zealand
    ours = reverse_geocode_labels(np.array(points))
    theirs = reverse_geocoder.search(points, mode=1, verbose=False)
    assert ours["country"].tolist() == [r["cc"] for r in theirs] == ["FR", "NZ"]
    assert ours["region"].tolist() == [r["admin1"] for r in theirs] == ["Ile-de-France", "Canterbury"]
    assert ours["sub-region"].tolist() == [r["admin2"] for r in theirs]
    assert ours["city"].tolist() == [r["name"] for r in theirs] == ["Paris", "Pleasant Point"]


def test_admin_accuracy_prefers_labels_and_falls_back_to_geocoding():
    true = np.array([[48.8566, 2.3522], [-44.0, 170.5], [40.7128, -74.006]])
    pred = np.array([[48.85, 2.35], [-45.9, 169.3], [40.71, -74.0]])  # Paris; Gore (other region); New York
    result = admin_accuracy(pred, true_latlon=true)
    assert result["country"] == 100.0 and result["region"] == pytest.approx(200 / 3)
    labels = pd.DataFrame({"country": ["FR", "NZ", ""], "region": ["Somewhere else", "Southland", ""]})
    result = admin_accuracy(pred, labels, true)
    assert result["region"] == pytest.approx(200 / 3)  # row 1 now agrees, row 0 not; row 2 geocoded
    assert result["_sources"] == {"country": "labels + reverse-geocoded", "region": "labels + reverse-geocoded",
                                  "sub-region": "reverse-geocoded", "city": "reverse-geocoded"}


def test_continents():
    assert continent_of(pd.Series(["FR", "nz", "BR", "NA", "US", "XX"])).tolist() == [
        "Europe", "Oceania", "South America", "Africa", "North America", "unknown"]
    breakdown = by_continent(np.array([1.0, 3000.0, 10.0]), pd.Series(["FR", "FR", "JP"]))
    assert breakdown["Europe"]["n"] == 2 and breakdown["Europe"]["accuracy"]["25"] == 50.0
    assert breakdown["Asia"]["median_km"] == 10.0


def test_no_json_file_is_written_with_nan_in_it(tmp_path):
    from geovario.errors import GeovarioError
    from geovario.jsonio import write_json

    with pytest.raises(GeovarioError, match=r"r.json: not written: accuracy.25 is not a finite number"):
        write_json(tmp_path / "r.json", {"n": 3, "accuracy": {"1": 10.0, "25": float("nan")}})
    with pytest.raises(GeovarioError, match=r"bins.1.gamma is not a finite number"):
        write_json(tmp_path / "v.json", {"bins": [{"gamma": 0.1}, {"gamma": float("inf")}]})
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "v.json").exists()
    write_json(tmp_path / "ok.json", {"gamma": None, "n": [1, 2.5]})
    assert (tmp_path / "ok.json").read_text() == '{\n "gamma": null,\n "n": [\n  1,\n  2.5\n ]\n}\n'


def test_a_failed_sample_scores_zero_and_is_counted():
    """GeoScore of a failed sample is 0 exactly, not the score of its worst-case error (5000 e^{-13.4} > 0)."""
    assert geoscore([0.0, 0.0], np.array([False, True])) == 2500.0
    summary = distance_summary(np.array([0.0, 0.0]), failed=np.array([False, True]))
    assert summary["failed"] == 1 and summary["geoscore"] == 2500.0 and summary["accuracy"]["1"] == 50.0
    assert distance_summary(np.array([0.0, 0.0]))["failed"] == 0


def test_the_continent_table_keeps_namibia_and_maps_nothing_from_blanks():
    """country_converter's table has a blank ISO2 code (Kosovo's, say); neither a blank nor "NA" may be lost."""
    assert continent_of(pd.Series(["", "NA", "na "])).tolist() == ["unknown", "Africa", "Africa"]


def test_dataset_country_labels_decide_the_continent_breakdown():
    """Two photos taken in Paris. Labels with ISO codes (OSV5M) decide their continent; a label that is not a
    two-letter code falls back to geocoding; labels without a country column are geocoded."""
    from geovario.metrics import build_report

    true = np.array([[48.8566, 2.3522], [48.8566, 2.3522]])
    pred = np.array([[48.8566, 2.3522], [48.0, 2.0]])
    labels = pd.DataFrame({"country": ["JP", "France"]})
    report = build_report(true, pred, labels=labels)
    assert set(report["continents"]) == {"Asia", "Europe"} and report["continents"]["Asia"]["n"] == 1
    report = build_report(true, pred, labels=pd.DataFrame({"city": ["Paris", "Paris"]}))
    assert set(report["continents"]) == {"Europe"}
