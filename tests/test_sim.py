import json
from dataclasses import replace

import numpy as np
import pytest

from geovario.cli import main
from geovario.data.store import FeatureStore
from geovario.errors import GeovarioError
from geovario.geo import haversine_km
from geovario.lab.world import WorldConfig, regions, sample_positions, simulate, theoretical_variogram, world_features
from geovario.variogram import empirical_variogram


# The mechanism tests below isolate one part of the world at moderate weights; the calibrated defaults are
# dominated by the 10 km field and the nugget, which would hide the part under test.
MECHANISM = dict(scale_weights=[0.5, 0.6, 0.7], nugget_weight=0.6, lookalike_weight=0.5, coarse_exponent=1.0)


def test_the_variogram_engine_recovers_the_configured_scales():
    # Without the look-alike, region and no-signal terms the world's variogram is known exactly (up to the norm).
    config = WorldConfig(dim=128, lookalike_weight=0.0, region_weights=[0.0, 0.0], locatability_b=0.0, seed=3,
                         positions="cities", jitter_km=3.0)  # spread out: every lag bin well populated
    latlon = sample_positions(config, 4000, np.random.default_rng(3))
    empirical = empirical_variogram(world_features(latlon, config), latlon, bins=30, log_bins=True, min_lag_km=2.0)
    lower, upper = theoretical_variogram(config, empirical.mean_h_km)
    assert np.allclose(lower, upper)
    populated = empirical.n >= 300
    assert populated.sum() >= 20
    np.testing.assert_allclose(empirical.gamma[populated], lower[populated], atol=0.03)  # stated tolerance: 0.03
    # Each scale shows where it should: a rise around 10, 100 and 1,000 km, flat beyond ~3,000 km.
    at = lambda km: float(np.interp(km, empirical.mean_h_km[populated], empirical.gamma[populated]))  # noqa: E731
    assert at(3) < at(30) < at(300) < at(3000)
    assert abs(at(6000) - at(15000)) < 0.03


def test_far_places_with_the_same_climate_look_alike():
    config = WorldConfig(dim=128, seed=4, locatability_b=0.0)
    latlon = sample_positions(config, 3000, np.random.default_rng(4))
    features, _, descriptor, _ = world_features(latlon, config, components=True)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 3000, (2, 200_000))
    far = haversine_km(latlon[i, 0], latlon[i, 1], latlon[j, 0], latlon[j, 1]) > 5000
    d = 1 - (features[i] * features[j]).sum(1)
    gap = np.abs(descriptor[i] - descriptor[j])
    same = far & (gap[:, 0] < 0.1) & (gap[:, 1] < 0.1)
    different = far & (gap[:, 0] > 1.0)
    assert same.sum() > 200 and different.sum() > 200
    # Uncorrelated look-alike terms add 2 w^2 / total variance to d; same-climate pairs keep most of theirs.
    expected = 2 * config.lookalike_weight**2 / config.total_variance()
    assert d[different].mean() - d[same].mean() > 0.5 * expected


def _pairs(latlon, n, seed=0):
    i, j = np.random.default_rng(seed).integers(0, len(latlon), (2, n))
    keep = i != j
    i, j = i[keep], j[keep]
    return i, j, haversine_km(latlon[i, 0], latlon[i, 1], latlon[j, 0], latlon[j, 1])


def test_photo_positions_are_as_clustered_as_mp16():
    # MP-16's 100K positions: 0.34% of random pairs within 25 km (DESIGN.md); GeoNames places: 0.03%.
    fractions = {}
    for positions in ("mp16", "cities"):
        config = WorldConfig(positions=positions)
        latlon = sample_positions(config, 20_000, np.random.default_rng(0))
        fractions[positions] = float((_pairs(latlon, 2_000_000)[2] <= 25).mean())
    assert 0.0025 < fractions["mp16"] < 0.0045 and fractions["cities"] < 0.0006


def test_borders_are_sharp():
    """Photos 2-40 km apart across an admin-1 border differ more than photos as close inside one region."""
    config = WorldConfig(dim=128, seed=5, locatability_b=0.0, **MECHANISM)
    latlon = sample_positions(config, 20_000, np.random.default_rng(5))
    features = world_features(latlon, config)
    _, admin1 = regions(latlon)
    i, j, h = _pairs(latlon, 3_000_000, seed=1)
    close = (h > 2) & (h < 40)
    d = 1 - (features[i] * features[j]).sum(1)
    across, inside = close & (admin1[i] != admin1[j]), close & (admin1[i] == admin1[j])
    assert across.sum() > 300 and inside.sum() > 300
    # The admin-1 term alone adds 2 w^2 / total variance to d across a border.
    jump = 2 * config.region_weights[1] ** 2 / config.total_variance()
    assert d[across].mean() - d[inside].mean() > 0.5 * jump
    without = world_features(latlon, WorldConfig(dim=128, seed=5, locatability_b=0.0, region_weights=[0.0, 0.0], **MECHANISM))
    d0 = 1 - (without[i] * without[j]).sum(1)
    assert d0[across].mean() - d0[inside].mean() < 0.25 * jump  # without region terms the border is not there


def test_photos_with_little_location_signal():
    config = WorldConfig(dim=128, seed=6, locatability_a=1.0, locatability_b=1.0, **MECHANISM)
    latlon = sample_positions(config, 20_000, np.random.default_rng(6))
    features, _, _, locatability = world_features(latlon, config, components=True)
    assert abs(locatability.mean() - 0.5) < 0.02 and abs(np.median(locatability) - 0.5) < 0.03  # Beta(1, 1)
    i, j, h = _pairs(latlon, 3_000_000, seed=2)
    d = 1 - (features[i] * features[j]).sum(1)

    def rise(mask):  # how much less alike far pairs are than near ones
        return d[mask & (h > 5000)].mean() - d[mask & (h < 50)].mean()

    clear = (locatability[i] > 0.8) & (locatability[j] > 0.8)
    faint = (locatability[i] < 0.15) & (locatability[j] < 0.15)
    assert rise(clear) > 0.3 and rise(faint) < 0.2 * rise(clear)  # distance says little about them
    # Photos of little signal with one kind of content look alike across the world: hard negatives.
    assert d[faint & (h > 5000)].min() < 0.5 * d[clear & (h > 5000)].mean()


def test_coarse_cues_outlast_fine_ones():
    """coarse_exponent < 1: a photo of little signal still shows its continent, a clear one is as before."""
    base = WorldConfig(dim=128, seed=7, locatability_a=1.0, locatability_b=1.0, **MECHANISM)
    latlon = sample_positions(base, 10_000, np.random.default_rng(7))
    i, j, h = _pairs(latlon, 2_000_000, seed=3)
    rises = {}
    for exponent in (1.0, 0.3):
        features, _, _, locatability = world_features(latlon, replace(base, coarse_exponent=exponent), components=True)
        d = 1 - (features[i] * features[j]).sum(1)
        faint = (locatability[i] < 0.15) & (locatability[j] < 0.15)
        clear = (locatability[i] > 0.9) & (locatability[j] > 0.9)
        rises[exponent] = {name: d[mask & (h > 5000)].mean() - d[mask & (h < 300)].mean() for name, mask in (("faint", faint), ("clear", clear))}
    assert rises[1.0]["faint"] > 0 and rises[0.3]["faint"] > 2 * rises[1.0]["faint"]  # the continent shows
    assert abs(rises[0.3]["clear"] - rises[1.0]["clear"]) < 0.1 * rises[1.0]["clear"]
    with pytest.raises(GeovarioError, match="coarse_exponent"):
        simulate("unused", replace(base, coarse_exponent=1.5))


def test_simulate_command_writes_stores_and_truth(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "w"), "--n-train", "300", "--n-val", "30", "--n-test", "50", "--dim", "16"]) == 0
    train, val, test = (FeatureStore(tmp_path / "w" / split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test), train.dim) == (300, 30, 50, 16)
    assert "val-29" in val.ids and not set(val.ids) & set(test.ids)
    np.testing.assert_allclose(np.linalg.norm(train.features(), axis=1), 1.0, atol=1e-3)
    truth = json.loads((tmp_path / "w" / "truth.json").read_text())
    assert truth["config"]["scales_km"] == [10.0, 100.0, 1000.0] and len(truth["variogram_bounds"]["lower"]) == 11
    (tmp_path / "pos.csv").write_text("LAT,LON\n10,20\n-30,150\n")
    assert main(["simulate", "--out", str(tmp_path / "w2"), "--n-train", "40", "--n-val", "5", "--n-test", "5", "--dim", "8", "--positions", str(tmp_path / "pos.csv")]) == 0
    assert np.abs(FeatureStore(tmp_path / "w2" / "train").gps - [10, 20]).min(axis=0).max() < 1.0
    assert main(["simulate", "--out", str(tmp_path / "w3"), "--positions", str(tmp_path / "missing.csv"), "--n-train", "5"]) == 1
    assert "positions file not found" in capsys.readouterr().err


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| infonce |" in out and "| semivariogram |" in out and "5/5 results" in out
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert set(report["runs"]) == {"infonce", "semivariogram"} and report["runs"]["infonce"]["n"] == 500
    for name in ("variogram.png", "cumulative_error.png", "error_map_semivariogram.png", "report.md"):
        assert (tmp_path / "demo" / name).is_file()


def test_bench_losses_small(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "w"), "--n-train", "640", "--n-val", "50", "--n-test", "100", "--dim", "32"]) == 0
    code = main(["bench", "losses", "--world", str(tmp_path / "w"), "--out", str(tmp_path / "b"), "--seeds", "2", "--epochs", "1",
                 "--sweep", "s1=0,2"])
    assert code == 0, capsys.readouterr().err
    table = (tmp_path / "b" / "losses.md").read_text().splitlines()
    assert len(table) == 4 and "semivariogram: s1=0" in table[2] and "±" in table[3]
    data = json.loads((tmp_path / "b" / "losses.json").read_text())
    assert all(len(run["reports"]) == 2 for run in data["runs"].values())
    assert not list((tmp_path / "b" / "runs").glob("*/checkpoints"))  # deleted once each model is written
    assert main(["bench", "losses", "--world", str(tmp_path / "w"), "--out", str(tmp_path / "c"), "--sweep", "alpha=1"]) == 1
    assert "KEY one of theta1" in capsys.readouterr().err


def test_photos_scatter_around_their_place_by_the_configured_jitter(tmp_path):
    """Each photo sits an exponential distance (mean jitter_km) from its anchor, in a uniform direction, measured on
    the ground: as far east-west as north-south even at 60 degrees north, where a degree of longitude is half as long."""
    anchors = np.array([[60.0, 10.0], [0.0, -60.0], [-35.0, 150.0]])  # thousands of km apart: each photo's anchor is clear
    (tmp_path / "anchors.csv").write_text("LAT,LON\n" + "\n".join(f"{a},{b}" for a, b in anchors) + "\n")
    for jitter in (1.0, 5.0):
        config = WorldConfig(positions=str(tmp_path / "anchors.csv"), jitter_km=jitter)
        latlon = sample_positions(config, 30_000, np.random.default_rng(0))
        distance = haversine_km(latlon[:, None, 0], latlon[:, None, 1], anchors[None, :, 0], anchors[None, :, 1])
        anchor, km = distance.argmin(1), distance.min(1)
        assert km.mean() == pytest.approx(jitter, rel=0.03)  # exponential: mean jitter_km...
        assert np.median(km) == pytest.approx(jitter * np.log(2), rel=0.05)  # ...and median ln 2 of it
        north = latlon[:, 0] - anchors[anchor, 0]
        at_60 = anchor == 0
        east_km = haversine_km(anchors[0, 0], anchors[0, 1], anchors[0, 0], latlon[at_60, 1])
        north_km = haversine_km(anchors[0, 0], anchors[0, 1], latlon[at_60, 0], anchors[0, 1])
        assert np.mean(east_km**2) == pytest.approx(np.mean(north_km**2), rel=0.06)  # uniform direction, on the ground
        assert abs(north.mean()) < 0.02 * jitter / 111  # no drift
    still = sample_positions(WorldConfig(positions=str(tmp_path / "anchors.csv"), jitter_km=0.0), 100, np.random.default_rng(1))
    assert {tuple(p) for p in still} <= {tuple(a) for a in anchors}


def test_the_worlds_defaults_are_the_calibrated_values_on_record():
    """WorldConfig's defaults are what benchmarks/calibrate_world.py found (the last "Calibrated:" line of its log,
    benchmarks/results/calibration.md) and what it held fixed: an edit of one would silently move every lab number."""
    import ast
    from pathlib import Path

    log = (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "calibration.md").read_text()
    line = [row for row in log.splitlines() if row.startswith("Calibrated: ")][-1]
    calibrated = ast.literal_eval(line.removeprefix("Calibrated: ").split("}")[0] + "}")
    world = WorldConfig()
    assert calibrated == {"locatability_a": world.locatability_a, "locatability_b": world.locatability_b,
                          "fine_weight": world.scale_weights[0], "nugget_weight": world.nugget_weight,
                          "lookalike_weight": world.lookalike_weight, "coarse_exponent": world.coarse_exponent,
                          "country_weight": world.region_weights[0], "coarse_weight": world.scale_weights[2]}
    held = [row for row in log.splitlines() if row.startswith("Held fixed (WorldConfig's other defaults): ")][-1]
    fixed = ast.literal_eval(held.removeprefix("Held fixed (WorldConfig's other defaults): ").split("}")[0] + "}")
    assert fixed == {"seed": world.seed, "positions": world.positions, "jitter_km": world.jitter_km, "scales_km": world.scales_km,
                     "medium_weight": world.scale_weights[1], "admin1_weight": world.region_weights[1],
                     "content_types": world.content_types, "content_weight": world.content_weight,
                     "n_frequencies": world.n_frequencies}


def test_fields_of_1000_km_are_coarse_cues_and_of_100_km_fine_ones():
    """The README's world: a photo keeps λ of its street-level cues (the 10 and 100 km fields) but λ^0.5 of its coarse
    ones (the 1,000 km field, continent, climate), beside content it shares with the world."""
    config = WorldConfig(dim=16, seed=3, scales_km=[100.0, 1000.0], scale_weights=[1.0, 1.0], region_weights=[0.0, 0.0],
                         lookalike_weight=0.0, nugget_weight=0.5, coarse_exponent=0.5, locatability_a=1.0, locatability_b=1.0)
    latlon = sample_positions(config, 300, np.random.default_rng(3))
    unit, parts, _, lam = world_features(latlon, config, components=True)
    total = lam[:, None] * parts["field_100km"] + np.sqrt(lam)[:, None] * parts["field_1000km"] + parts["content"] + parts["nugget"]
    np.testing.assert_allclose(unit, total / np.linalg.norm(total, axis=1, keepdims=True), atol=1e-5)


def test_a_worlds_total_variance_by_hand():
    config = WorldConfig(scale_weights=[1.0, 2.0, 0.5], region_weights=[1.0, 0.0], lookalike_weight=3.0, nugget_weight=2.0)
    assert config.total_variance() == pytest.approx(1 + 4 + 0.25 + 1 + 9 + 4)


def test_the_default_world_is_the_one_the_readme_describes():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(row for row in readme.splitlines() if row.startswith("geovario simulate --out worlds/default"))
    n_train, n_val, n_test, dim = (int(x.replace(",", "")) for x in re.search(r"# ([\d,]+) train / ([\d,]+) val / ([\d,]+) test, (\d+)-d", line).groups())
    world = WorldConfig()
    assert (world.n_train, world.n_val, world.n_test, world.dim) == (n_train, n_val, n_test, dim)
    assert world.scales_km == [10.0, 100.0, 1000.0]  # "Spatial fields at 10, 100 and 1,000 km"
    assert "**Spatial fields** at 10, 100 and 1,000 km." in readme


def test_a_random_fourier_field_has_unit_variance_and_a_gaussian_covariance():
    """cos(ω·x + b) with b uniform over a period and ω ~ N(0, 1/l²) has covariance exp(-r²/2l²) (Rahimi & Recht 2007)."""
    from geovario.lab.world import _rff_field

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)) * 3
    field = _rff_field(x, 1.0, 256, 4096, np.random.default_rng(1)).astype(np.float64)
    a, b = np.triu_indices(400, 1)
    r = np.linalg.norm(x[a] - x[b], axis=1)
    product = (field[a] * field[b]).mean(1)
    assert abs(field.var() - 1) < 0.1 and abs(field.mean()) < 0.05
    # Near the origin too (a phase short of a whole period shows there: E cos(2ω·x + 2b) no longer vanishes).
    centre = _rff_field(rng.normal(size=(400, 2)) * 0.2, 1.0, 256, 4096, np.random.default_rng(2)).astype(np.float64)
    assert abs(centre.var() - 1) < 0.1
    for lag in (0.5, 1.0, 2.0):
        near = np.abs(r - lag) < 0.05
        assert abs(product[near].mean() - np.exp(-lag**2 / 2)) < 0.05, lag


def test_uniform_positions_cover_the_sphere_evenly():
    latlon = sample_positions(WorldConfig(positions="uniform"), 200_000, np.random.default_rng(0))
    assert latlon.shape == (200_000, 2) and np.isfinite(latlon).all()
    assert np.abs(latlon[:, 0]).max() <= 90 and -180 <= latlon[:, 1].min() and latlon[:, 1].max() <= 180
    # Equal areas: half the sphere lies within 30 degrees of the equator, a quarter in each lon quadrant.
    assert abs(np.mean(np.abs(latlon[:, 0]) < 30) - 0.5) < 0.01
    assert all(abs(np.mean((latlon[:, 1] >= lo) & (latlon[:, 1] < lo + 90)) - 0.25) < 0.01 for lo in (-180, -90, 0, 90))


def test_jitter_near_a_pole_and_the_date_line_stays_valid_and_close(tmp_path):
    (tmp_path / "edge.csv").write_text("LAT,LON\n89.9995,0.0\n0.0,179.9995\n0.0,-179.9995\n")
    config = WorldConfig(positions=str(tmp_path / "edge.csv"), jitter_km=1.0)
    latlon = sample_positions(config, 3000, np.random.default_rng(0))
    assert np.abs(latlon[:, 0]).max() <= 90 and latlon[:, 1].min() >= -180 and latlon[:, 1].max() < 180
    anchors = np.array([[89.9995, 0.0], [0.0, 179.9995], [0.0, -179.9995]])
    nearest = np.min([haversine_km(latlon[:, 0], latlon[:, 1], a[0], a[1]) for a in anchors], axis=0)
    assert nearest.max() < 15  # an exponential radius of mean 1 km, not a jump across the map
    assert (latlon[:, 1] > 179.9995).any() and (latlon[:, 1] < -179.9995).any()  # jitter crosses the date line


def test_the_climate_descriptor_varies_over_thousands_of_kilometres():
    """Its second coordinate is a 3,000 km field: nearly equal 50 km apart, independent across the world."""
    config = WorldConfig(dim=16, positions="uniform", seed=2)
    latlon = sample_positions(config, 4000, np.random.default_rng(2))
    _, _, descriptor, _ = world_features(latlon, config, components=True)
    continental = descriptor[:, 1]
    assert continental.std() > 0.5
    shifted = latlon.copy()
    shifted[:, 0] = np.clip(shifted[:, 0] + 0.45, -90, 90)  # 50 km north
    _, _, moved, _ = world_features(shifted, config, components=True)
    assert np.corrcoef(continental, moved[:, 1])[0, 1] > 0.98


def test_look_alike_terms_decorrelate_with_the_climate_gap():
    """The look-alike term is a field over the climate descriptor with length 0.3: two photos whose descriptors are
    0.3 apart share e^-0.5 of it, 0.6 apart e^-2."""
    config = WorldConfig(dim=256, seed=5, positions="uniform")
    latlon = sample_positions(config, 3000, np.random.default_rng(5))
    _, parts, descriptor, _ = world_features(latlon, config, components=True)
    look = parts["lookalike"].astype(np.float64) / config.lookalike_weight
    i, j = np.random.default_rng(0).integers(0, 3000, (2, 400_000))
    gap = np.linalg.norm(descriptor[i] - descriptor[j], axis=1)
    product = (look[i] * look[j]).mean(1)
    for lag in (0.3, 0.6):
        near = np.abs(gap - lag) < 0.02
        assert abs(product[near].mean() - np.exp(-lag**2 / (2 * 0.3**2))) < 0.06, lag


def test_a_world_with_one_region_weight_has_that_term_alone():
    config = WorldConfig(dim=16, region_weights=[1.0, 0.0])
    latlon = sample_positions(config, 200, np.random.default_rng(0))
    _, parts, _, _ = world_features(latlon, config, components=True)
    assert abs(np.linalg.norm(parts["country"], axis=1).mean() - 4.0) < 0.5  # a N(0, I_16) vector: norm about 4
    assert not parts["admin1"].any()


def test_the_theoretical_variogram_by_hand():
    """One 100 km field of weight 1, look-alikes of weight 3, a nugget of 0.5: total variance 10.25. At lag 0 only the
    nugget, 0.25 / 10.25; far away the field too, 1.25 / 10.25; uncorrelated look-alikes add 9 / 10.25 to the upper
    bound."""
    config = WorldConfig(scales_km=[100.0], scale_weights=[1.0], lookalike_weight=3.0, nugget_weight=0.5)
    lower, upper = theoretical_variogram(config, np.array([0.0, 100.0, 15000.0]))
    chord = 2 * np.sin(100.0 / (2 * 6371.0088))
    field_at_100 = 1 - np.exp(-chord**2 / (2 * (100 / 6371.0088) ** 2))
    np.testing.assert_allclose(lower, [0.25 / 10.25, (0.25 + field_at_100) / 10.25, 1.25 / 10.25], rtol=1e-6)
    np.testing.assert_allclose(upper - lower, 9 / 10.25, rtol=1e-9)


def test_content_is_the_unlocatable_share_of_a_prototype_of_its_weight():
    """One kind of content, of weight 2: every photo's content term is (1 - locatability) times 2 times the same
    prototype, a standard normal vector."""
    config = WorldConfig(dim=512, seed=2, content_types=1, content_weight=2.0)
    latlon = sample_positions(config, 50, np.random.default_rng(2))
    _, parts, _, lam = world_features(latlon, config, components=True)
    per_unit = parts["content"] / (1 - lam)[:, None]
    np.testing.assert_allclose(per_unit, np.broadcast_to(per_unit[0], per_unit.shape), rtol=1e-4, atol=1e-5)
    assert np.std(per_unit[0]) == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize("change, refused", [
    (dict(n_train=3, n_val=1, n_test=1, dim=2), None), (dict(locatability_b=0.0), None), (dict(content_types=1), None),
    (dict(coarse_exponent=1.0), None),
    (dict(n_train=2), "a world needs"), (dict(n_test=0), "a world needs"), (dict(n_val=0), "a world needs"), (dict(dim=1), "a world needs"),
    (dict(locatability_a=0.0), "a world needs"), (dict(locatability_b=-0.1), "a world needs"),
    (dict(region_weights=[0.5, 0.4, 0.1]), "a world needs"), (dict(content_types=0), "a world needs"),
    (dict(coarse_exponent=0.0), r"coarse_exponent must be in \(0, 1\]"), (dict(coarse_exponent=1.01), r"coarse_exponent must be in \(0, 1\]"),
])
def test_the_smallest_world_is_accepted_and_anything_smaller_refused(tmp_path, change, refused):
    config = WorldConfig(n_train=20, n_val=5, n_test=5, dim=8) if "n_train" not in change else WorldConfig(n_val=5, dim=8)
    config = replace(config, **change)
    if refused is None:
        simulate(tmp_path / "w", config, progress=False)
        assert FeatureStore(tmp_path / "w" / "train").dim == config.dim and len(FeatureStore(tmp_path / "w" / "test")) == config.n_test
    else:
        with pytest.raises(GeovarioError, match=refused):
            simulate(tmp_path / "w", config, progress=False)
        assert not (tmp_path / "w").exists()


def test_a_world_is_not_replaced_unless_asked(tmp_path):
    config = WorldConfig(n_train=20, n_val=5, n_test=5, dim=8)
    simulate(tmp_path / "w", config, progress=False)
    with pytest.raises(GeovarioError, match="holds a world already"):
        simulate(tmp_path / "w", replace(config, seed=1), progress=False)
    simulate(tmp_path / "w", replace(config, seed=1), progress=False, overwrite=True)
    assert json.loads((tmp_path / "w" / "truth.json").read_text())["config"]["seed"] == 1


def test_each_part_of_a_world_draws_from_its_own_random_stream():
    """Positions, fields, noise, regions and content: no two parts of a world replay the same random numbers."""
    from geovario.lab.world import STREAMS, _stream

    draws = {part: tuple(_stream(7, part).random(4)) for part in STREAMS}
    assert len(set(draws.values())) == len(STREAMS) == 6


def test_two_datasets_on_one_earth_share_its_fields_and_draw_their_own_photos():
    """mp16 and osv5m are drawn on the same Earth: at the same positions their unit spatial fields, region and
    look-alike terms are identical, and only the dataset's gains differ; their per-photo draws (nugget) are
    independent. Another Earth seed gives other fields."""
    from geovario.lab.world import preset

    mp16, osv5m = preset("mp16", dim=32), preset("osv5m", dim=32)
    assert mp16.earth() == osv5m.earth() and mp16.dataset != osv5m.dataset
    latlon = sample_positions(mp16, 500, np.random.default_rng(0))
    _, a, descriptor_a, _ = world_features(latlon, mp16, components=True)
    _, b, descriptor_b, _ = world_features(latlon, osv5m, components=True)
    np.testing.assert_array_equal(descriptor_a, descriptor_b)
    for part, weight_a, weight_b in (("field_10km", mp16.scale_weights[0], osv5m.scale_weights[0]),
                                     ("field_100km", mp16.scale_weights[1], osv5m.scale_weights[1]),
                                     ("country", mp16.region_weights[0], osv5m.region_weights[0]),
                                     ("admin1", mp16.region_weights[1], osv5m.region_weights[1])):
        np.testing.assert_allclose(a[part] / weight_a, b[part] / weight_b, rtol=1e-5, atol=1e-6)
    unit_nugget = [parts["nugget"] / config.nugget_weight for parts, config in ((a, mp16), (b, osv5m))]
    assert abs(np.corrcoef(unit_nugget[0].ravel(), unit_nugget[1].ravel())[0, 1]) < 0.02
    _, other_earth, _, _ = world_features(latlon, preset("mp16", dim=32, seed=1), components=True)
    assert abs(np.corrcoef(a["field_10km"].ravel(), other_earth["field_10km"].ravel())[0, 1]) < 0.05


def test_a_split_keeps_its_photos_when_another_split_grows(tmp_path):
    """Each split draws from its own stream: more test photos leave the training and validation photos as they were."""
    small, large = WorldConfig(n_train=30, n_val=10, n_test=10, dim=8), WorldConfig(n_train=30, n_val=10, n_test=40, dim=8)
    simulate(tmp_path / "small", small, progress=False)
    simulate(tmp_path / "large", large, progress=False)
    for split in ("train", "val"):
        a, b = FeatureStore(tmp_path / "small" / split), FeatureStore(tmp_path / "large" / split)
        np.testing.assert_array_equal(a.gps, b.gps)
        np.testing.assert_array_equal(a.features(), b.features())
    assert len(FeatureStore(tmp_path / "large" / "test")) == 40
    test_small = FeatureStore(tmp_path / "small" / "test")
    assert not np.isin(FeatureStore(tmp_path / "small" / "train").gps[:, 0], test_small.gps[:, 0]).any()


def test_the_osv5m_preset_is_street_view_along_populated_places(tmp_path, capsys):
    """Its photos sit a few km around GeoNames places (not MP-16's positions), nearly all show their street, and an
    unknown preset is refused in one line."""
    from geovario.lab.world import photo_locatability, preset

    osv5m = preset("osv5m")
    assert osv5m.positions == "cities" and osv5m.dataset == "osv5m"
    lam = photo_locatability(osv5m, np.random.default_rng(0), 20_000)
    lam_mp16 = photo_locatability(WorldConfig(), np.random.default_rng(0), 20_000)
    assert lam.mean() > 0.6 > 0.35 > lam_mp16.mean()
    assert osv5m.region_weights[0] > WorldConfig().region_weights[0] and osv5m.region_weights[1] > WorldConfig().region_weights[1]
    with pytest.raises(GeovarioError, match="unknown world preset 'osv6m'"):
        preset("osv6m")
    assert main(["simulate", "--out", str(tmp_path / "w"), "--preset", "osv5m", "--n-train", "50", "--n-val", "5", "--n-test", "5",
                 "--dim", "8"]) == 0
    truth = json.loads((tmp_path / "w" / "truth.json").read_text())
    assert truth["config"]["dataset"] == "osv5m" and truth["earth"] == preset("mp16", dim=8).earth()
    assert "val" in capsys.readouterr().out


def test_the_osv5m_preset_is_the_calibration_on_record():
    """PRESETS["osv5m"] holds what benchmarks/calibrate_osv5m.py found (the "Calibrated:" line of its log) and what
    it held fixed."""
    import ast
    from pathlib import Path

    from geovario.lab.world import PRESETS, preset

    log = (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "calibration-osv5m.md").read_text()
    calibrated = ast.literal_eval([row for row in log.splitlines() if row.startswith("Calibrated: ")][-1].removeprefix("Calibrated: ").split(" (")[0])
    held = ast.literal_eval([row for row in log.splitlines() if row.startswith("Held fixed")][-1].split(": ", 1)[1].split("; ")[0])
    osv5m = preset("osv5m")
    assert calibrated == {"scale_weights": osv5m.scale_weights, "region_weights": osv5m.region_weights}
    assert held == {k: v for k, v in PRESETS["osv5m"].items() if k not in calibrated}
