import math
import warnings

import numpy as np
import pytest
import torch

from geovario.errors import GeovarioError
from geovario.geo import EARTH_RADIUS_KM, METRES_PER_DEGREE, coordinate_problems, detect_latlon_swap, haversine_km, validate_coordinates
from geovario.geo_tensors import add_gps_noise, equal_earth, haversine_km_torch


def test_haversine_hand_cases():
    half_circumference = math.pi * EARTH_RADIUS_KM
    assert haversine_km(0, 0, 0, 180) == pytest.approx(half_circumference, rel=1e-12)  # antipodes
    assert haversine_km(90, 0, -90, 0) == pytest.approx(half_circumference, rel=1e-12)  # pole to pole
    assert haversine_km(90, 0, 90, 123) == pytest.approx(0.0, abs=1e-9)  # longitude is moot at a pole
    one_degree = math.radians(1) * EARTH_RADIUS_KM
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(one_degree, rel=1e-9)  # across the date line
    assert haversine_km(10, 20, 10, 20) == 0.0
    # Paris -> London, about 343.5 km on this sphere.
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=0.5)


def test_haversine_numpy_and_torch_agree_and_broadcast():
    rng = np.random.default_rng(1)
    a = np.stack([rng.uniform(-90, 90, 50), rng.uniform(-180, 180, 50)], 1)
    b = np.stack([rng.uniform(-90, 90, 40), rng.uniform(-180, 180, 40)], 1)
    expected = haversine_km(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])
    got = haversine_km_torch(torch.from_numpy(a)[:, None], torch.from_numpy(b)[None])
    assert got.shape == (50, 40)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-7)
    assert float(haversine_km_torch(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 180.0]))) == pytest.approx(
        math.pi * EARTH_RADIUS_KM, rel=1e-6
    )


def test_coordinate_problems_name_each_bad_row():
    lat = [10, float("nan"), 95, 12, 0]
    lon = [20, 5, 40, 200, float("inf")]
    problems = dict(coordinate_problems(lat, lon))
    assert set(problems) == {1, 2, 3, 4}
    assert "not a finite number" in problems[1]
    assert "latitude 95.0 is outside" in problems[2] and "swapped" in problems[2]
    assert "longitude 200.0 is outside" in problems[3]
    with pytest.raises(GeovarioError, match=r"points.csv: row 3: latitude 95.0 .* \(and 3 more bad rows\)"):
        validate_coordinates([95, 1, 2, 3], [40, 200, float("nan"), 500], source="points.csv", first_row=3)
    validate_coordinates([0, -90, 90], [0, -180, 180])  # the edges are valid


# Real places whose longitudes are all within +-90, so a swapped table stays in range.
CITIES = [(48.86, 2.35), (51.51, -0.13), (52.52, 13.40), (41.90, 12.50), (40.42, -3.70), (59.33, 18.07),
          (50.08, 14.44), (47.50, 19.04), (30.04, 31.24), (-33.92, 18.42), (6.52, 3.38), (-1.29, 36.82),
          (55.76, 37.62), (41.01, 28.98), (33.89, 35.50), (24.71, 46.68), (25.20, 55.27), (19.08, 72.88),
          (28.61, 77.21), (14.69, -17.44), (9.03, 38.74), (36.81, 10.18), (38.72, -9.14), (60.17, 24.94),
          (53.35, -6.26), (45.46, 9.19), (37.98, 23.73), (50.45, 30.52), (-26.20, 28.05), (33.57, -7.59)]


def test_swap_detector_warns_on_swapped_columns_only():
    lat, lon = np.array(CITIES).T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detect_latlon_swap(lat, lon) is None
    with pytest.warns(UserWarning, match="swapped"):
        assert detect_latlon_swap(lon, lat, source="cities.csv").startswith("cities.csv")
    with pytest.warns(UserWarning, match="2 rows have \\|lat\\| > 90"):
        detect_latlon_swap([120, -150, 10], [30, 40, 10])


def _equal_earth_float64(lat_deg, lon_deg):
    """The published EqualEarth formulas (Šavrič et al. 2018), in float64, scaled as GeoCLIP does."""
    a1, a2, a3, a4 = 1.340264, -0.081106, 0.000893, 0.003796
    theta = np.arcsin(np.sqrt(3) / 2 * np.sin(np.radians(lat_deg)))
    x = 2 * np.sqrt(3) * np.radians(lon_deg) * np.cos(theta) / (3 * (9 * a4 * theta**8 + 7 * a3 * theta**6 + 3 * a2 * theta**2 + a1))
    y = a4 * theta**9 + a3 * theta**7 + a2 * theta**3 + a1 * theta
    return np.stack([x, y], 1) * 66.50336 / 180


def test_equal_earth_matches_published_formula():
    rng = np.random.default_rng(2)
    lat, lon = rng.uniform(-90, 90, 1000), rng.uniform(-180, 180, 1000)
    got = equal_earth(torch.tensor(np.stack([lat, lon], 1), dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, _equal_earth_float64(lat, lon), atol=2e-6)
    corners = equal_earth(torch.tensor([[0.0, 0.0], [0.0, 180.0], [90.0, 0.0]]))
    assert corners[0].tolist() == [0.0, 0.0]
    assert corners[1, 0] == pytest.approx(0.9998, abs=1e-3)  # x spans about [-1, 1]
    assert corners[2, 1] == pytest.approx(_equal_earth_float64(np.array([90.0]), np.array([0.0]))[0, 1], abs=1e-6)


def test_gps_noise_has_the_requested_scale_and_stays_valid():
    generator = torch.Generator().manual_seed(0)
    base = torch.tensor([[45.0, 10.0]]).repeat(20000, 1)
    noisy = add_gps_noise(base, 150.0, generator)
    std_m = (noisy - base).std(0) * METRES_PER_DEGREE
    assert std_m.tolist() == pytest.approx([150.0, 150.0], rel=0.05)
    edge = add_gps_noise(torch.tensor([[89.9999, 179.9999]]).repeat(1000, 1), 1000.0, generator)
    assert edge[:, 0].max() <= 90 and edge[:, 1].min() >= -180 and edge[:, 1].max() < 180
    assert torch.equal(add_gps_noise(base[:3], 0.0), base[:3])


# The IUGG mean Earth radius R1 in metres (Moritz 1980), written out here rather than imported: these tests
# pin the radius geovario uses against geodesics computed by geographiclib (Karney 2013).
R1_METRES = 6_371_008.8


def _pairs(n=400, seed=7):
    rng = np.random.default_rng(seed)
    a = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], 1)
    b = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], 1)
    near = a[: n // 4] + rng.normal(scale=0.01, size=(n // 4, 2))  # about a kilometre apart
    near[:, 0] = np.clip(near[:, 0], -90, 90)
    b[: n // 4] = near
    return a, b


def test_great_circle_distances_equal_geographiclibs_on_the_mean_sphere():
    geographiclib = pytest.importorskip("geographiclib.geodesic", reason="the test extra (geographiclib) is not installed")
    sphere = geographiclib.Geodesic(R1_METRES, 0.0)
    a, b = _pairs()
    expected = np.array([sphere.Inverse(*p, *q)["s12"] / 1000 for p, q in zip(a, b)])
    np.testing.assert_allclose(haversine_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1]), expected, rtol=1e-9, atol=1e-9)
    got = haversine_km_torch(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # Two published cases, as geographiclib gives them on this sphere: Paris - London and antipodes (pi R1).
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(sphere.Inverse(48.8566, 2.3522, 51.5074, -0.1278)["s12"] / 1000,
                                                                             rel=1e-12)
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * R1_METRES / 1000, rel=1e-12)


def test_the_sphere_is_within_half_a_percent_of_the_wgs84_ellipsoid():
    """What metrics.py documents: GeoCLIP's eval uses the WGS84 geodesic; the mean sphere differs by at most ~0.5 %."""
    geographiclib = pytest.importorskip("geographiclib.geodesic", reason="the test extra (geographiclib) is not installed")
    a, b = _pairs(seed=8)
    far = slice(100, None)  # the pairs thousands of kilometres apart
    ellipsoid = np.array([geographiclib.Geodesic.WGS84.Inverse(*p, *q)["s12"] / 1000 for p, q in zip(a[far], b[far])])
    sphere = haversine_km(a[far, 0], a[far, 1], b[far, 0], b[far, 1])
    relative = np.abs(sphere - ellipsoid) / ellipsoid
    assert relative.max() < 0.0056 and 0.001 < relative.mean() < 0.004


def test_lags_from_unit_vectors_equal_geographiclibs():
    """The variogram's lags come from the chord's cosine (variogram/empirical.py), not from haversine."""
    geographiclib = pytest.importorskip("geographiclib.geodesic", reason="the test extra (geographiclib) is not installed")
    from geovario.variogram.empirical import _lag_km, _unit_sphere

    sphere = geographiclib.Geodesic(R1_METRES, 0.0)
    a, b = _pairs(seed=9)
    lags = _lag_km((_unit_sphere(a) * _unit_sphere(b)).sum(1)).numpy()
    expected = np.array([sphere.Inverse(*p, *q)["s12"] / 1000 for p, q in zip(a, b)])
    np.testing.assert_allclose(lags, expected, rtol=1e-7, atol=1e-6)  # acos near 1: ~1e-9 km at 1 km


def test_gps_noise_magnitude_is_per_axis_metres_in_both_directions_at_any_latitude():
    """GeoCLIP's noise is metres / 111,320 degrees on each axis, so north-south it is exactly that many metres."""
    generator = torch.Generator().manual_seed(1)
    base = torch.tensor([[60.0, 10.0]], dtype=torch.float64).repeat(40000, 1)
    noisy = add_gps_noise(base, 1000.0, generator)
    north_km = haversine_km(base[:, 0].numpy(), base[:, 1].numpy(), noisy[:, 0].numpy(), base[:, 1].numpy())
    assert np.sqrt(np.mean(north_km**2)) == pytest.approx(1.0 * 111_320 / (2 * math.pi * R1_METRES / 360), rel=0.02)
    east_deg = (noisy[:, 1] - base[:, 1]).numpy()
    assert east_deg.std() * 111_320 == pytest.approx(1000.0, rel=0.02)  # degrees of longitude: narrower on the ground at 60 N


def test_antipodal_points_are_half_the_circumference_never_nan():
    """Antipodes are half the circumference, finite, in numpy and in torch. Rounding pushes the haversine term past 1
    for some of them (76 of these 2,000), by one ulp at most, whose square root rounds back to 1."""
    rng = np.random.default_rng(0)
    lat = rng.uniform(-90, 90, 2000)
    lon = rng.uniform(-180, 0, 2000)
    d = haversine_km(lat, lon, -lat, lon + 180)
    d_torch = haversine_km_torch(torch.tensor(np.stack([lat, lon], 1)), torch.tensor(np.stack([-lat, lon + 180], 1))).numpy()
    for distances in (d, d_torch):
        assert np.isfinite(distances).all()
        np.testing.assert_allclose(distances, math.pi * EARTH_RADIUS_KM, rtol=1e-7)


def test_coordinate_messages_at_their_boundaries():
    problems = dict(coordinate_problems([90.5, 90.0, 100.0, 100.0, 0.0], [0.0, 200.0, 90.0, 90.5, 180.5]))
    assert problems[0].startswith("latitude 90.5 is outside") and "swapped" in problems[0]
    assert problems[1].startswith("longitude 200.0 is outside")  # lat 90 is valid: the longitude is the problem
    assert "swapped" in problems[2] and "swapped" not in problems[3]  # lon 90 is a valid latitude; 90.5 is not
    assert problems[4].startswith("longitude 180.5 is outside")
    with pytest.raises(GeovarioError, match=r"^coordinates: row 1: latitude 100.0 is outside \[-90, 90\] \(lat and lon look swapped\)$"):
        validate_coordinates([0.0, 100.0], [0.0, 0.0])
    with pytest.raises(GeovarioError, match=r"row 0: .* \(and 1 more bad rows\)$"):
        validate_coordinates([100.0, 100.0], [0.0, 0.0])


def test_populated_cells_index_half_degree_cells_from_the_south_pole_and_the_date_line():
    from geovario.geo import _cell_index, populated_cells, populated_fraction

    mask = populated_cells()
    assert mask.shape == (360, 720) and 0.05 < mask.mean() < 0.15  # about 8 % of the cells
    lat = np.array([-90.0, -89.75, 48.7, 48.2, 89.9, 90.0, 0.0])
    lon = np.array([-180.0, 179.9, 2.3, -0.1, 0.0, 180.0, -179.5])
    rows, cols = _cell_index(lat, lon, mask.shape)
    assert rows.tolist() == [0, 0, 277, 276, 359, 359, 180]
    assert cols.tolist() == [0, 719, 364, 359, 360, 0, 1]
    assert populated_fraction([48.8566, 35.6762, -23.55, 40.7128], [2.3522, 139.6503, -46.63, -74.006]) == 1.0  # Paris .. New York
    assert populated_fraction([-48.876, -85.0, 0.0], [-123.393, 0.0, -140.0]) == 0.0  # Point Nemo, Antarctica, mid-Pacific


def test_gps_noise_of_zero_returns_the_input_and_of_one_metre_moves_it():
    latlon = torch.tensor([[10.0, 180.0], [90.0, -180.0]], dtype=torch.float64)
    assert torch.equal(add_gps_noise(latlon, 0.0, torch.Generator().manual_seed(0)), latlon)  # not even wrapped
    moved = add_gps_noise(latlon, 1.0, torch.Generator().manual_seed(0))
    assert not torch.equal(moved[:, 0], latlon[:, 0])


def test_populated_fraction_counts_only_valid_points():
    """Invalid points (not finite, |lat| > 90, |lon| > 180) are left out; coordinates on the limits count."""
    from geovario.geo import populated_fraction

    paris = (48.8566, 2.3522)
    assert populated_fraction([paris[0], np.nan, 90.5, paris[0], paris[0]], [paris[1], 0.0, 0.0, 180.5, np.inf]) == 1.0
    assert populated_fraction([paris[0], 90.0], [paris[1], 0.0]) == 0.5  # the north pole is valid, and empty
    assert populated_fraction([paris[0], 0.0], [paris[1], 180.0]) == 0.5  # so is the date line, mid-Pacific
    assert populated_fraction([np.nan, 95.0], [0.0, 0.0]) == 0.0  # nothing valid


# Places whose 0.5-degree cell is populated (P) or empty (U), as given and with lat and lon swapped.
PP, UP, UU = (55.7, 58.0), (8.8, 51.4), (22.8, -41.4)


def _points(*groups):
    latlon = np.array([point for point, count in groups for _ in range(count)], dtype=float)
    return latlon[:, 0], latlon[:, 1]


def test_the_swap_check_on_its_populated_place_bounds():
    """A swap is reported when >= 80 % of points land near places once swapped and at most half as many as given,
    from 20 valid points on (by default)."""
    from geovario.geo import latlon_swap_message, populated_fraction

    for point, given, swapped in ((PP, 1.0, 1.0), (UP, 0.0, 1.0), (UU, 0.0, 0.0)):
        assert (populated_fraction([point[0]], [point[1]]), populated_fraction([point[1]], [point[0]])) == (given, swapped)
    on_both_bounds = latlon_swap_message(*_points((PP, 8), (UP, 8), (UU, 4)), source="g.csv")  # 40 % as given, 80 % swapped
    assert on_both_bounds == ("g.csv: only 40% of points fall near populated places, but 80% do with lat and lon swapped; "
                              "are the lat/lon columns swapped?")
    assert latlon_swap_message(*_points((PP, 12), (UP, 4), (UU, 4))) is None  # 60 % as given: more than half of 80 %
    assert latlon_swap_message(*_points((PP, 7), (UP, 8), (UU, 5))) is None  # 75 % once swapped
    lat, lon = _points((UP, 20))
    assert latlon_swap_message(lat, lon) is not None and latlon_swap_message(lat[:19], lon[:19]) is None
    with pytest.warns(UserWarning, match="are the lat/lon columns swapped"):
        assert detect_latlon_swap(lat, lon) is not None
    assert detect_latlon_swap(lat[:19], lon[:19]) is None
    assert latlon_swap_message(np.append(lat[:19], np.nan), np.append(lon[:19], 0.0)) is None  # 19 valid points


@pytest.mark.parametrize(("lat", "lon", "rows"), [
    (90.5, 45.0, 1), (100.0, 90.0, 1), (-100.0, -90.0, 1), (90.0, 45.0, 0), (100.0, 90.5, 0), (10.0, 45.0, 0),
    (np.inf, 45.0, 0), (95.0, np.nan, 0),
])
def test_the_swap_check_on_rows_with_a_latitude_out_of_range(lat, lon, rows):
    from geovario.geo import latlon_swap_message

    message = latlon_swap_message([lat], [lon], source="g.csv")
    if rows:
        assert message == ("g.csv: 1 rows have |lat| > 90 but a valid latitude in the lon column; "
                           "are the lat/lon columns swapped?")
    else:
        assert message is None  # one point: too few for the populated-place check


def test_the_radians_check_on_its_bounds():
    """Radians: at least 10 finite points (by default), every |lat| <= pi/2 and |lon| <= pi, and not all one point."""
    from geovario.geo import radians_message

    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-0.4, 0.4, 10), rng.uniform(-0.5, 0.5, 10)
    assert radians_message(lat, lon, source="g.csv").startswith("g.csv: every one of the 10 points lies within pi of (0, 0)")
    assert radians_message(lat[:9], lon[:9]) is None
    assert radians_message(np.append(lat, np.nan), np.append(lon, 0.0)).startswith("coordinates: every one of the 10 points")
    assert radians_message(np.append(lat[:9], 0.1), np.append(lon[:9], np.nan)) is None  # 9 finite points
    on_the_limits = radians_message(np.append(lat[:9], np.pi / 2), np.append(lon[:9], -np.pi))
    assert on_the_limits is not None and "|lat| <= 1.57, |lon| <= 3.14" in on_the_limits
    for far_lat, far_lon in ((2.0, 0.0), (0.0, 3.5), (-1.6, 0.0)):  # one point past the limits: degrees
        assert radians_message(np.append(lat[:9], far_lat), np.append(lon[:9], far_lon)) is None, (far_lat, far_lon)
    assert radians_message(np.full(10, 0.5), np.full(10, 0.5)) is None  # one place, ten times: no spread at all
    assert radians_message(np.full(10, 0.5), np.append(np.full(9, 0.5), 0.6)) is not None  # a little spread
