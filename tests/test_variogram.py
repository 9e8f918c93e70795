import json

import numpy as np
import pytest
import torch

from geovario.cli import main
from geovario.errors import GeovarioError
from geovario.geo import EARTH_RADIUS_KM, haversine_km
from geovario.variogram import (VariogramFitError, VariogramModel, bin_edges, cressie_hawkins_constants, empirical_for_loss, empirical_variogram,
                                fit_variogram)


def sphere_points(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)], 1)


def spherical_field(latlon, dims, range_km, nugget, psill, seed=0):
    """Gaussian vectors whose every dimension has a spherical covariance in great-circle distance."""
    rng = np.random.default_rng(seed)
    h = haversine_km(latlon[:, None, 0], latlon[:, None, 1], latlon[None, :, 0], latlon[None, :, 1])
    x = h / range_km
    cov = psill * np.where(x < 1, 1 - 1.5 * x + 0.5 * x**3, 0.0) + nugget * np.eye(len(latlon))
    return np.linalg.cholesky(cov + 1e-9 * np.eye(len(latlon))) @ rng.normal(size=(len(latlon), dims))


@pytest.fixture(scope="module")
def field():
    latlon = sphere_points(2000)
    return latlon, spherical_field(latlon, 64, range_km=4000.0, nugget=0.3, psill=1.0)


def brute_force(features, latlon, edges, normalize=True, mean_lags=False):
    f = features / np.linalg.norm(features, axis=1, keepdims=True) if normalize else features
    i, j = np.triu_indices(len(f), 1)
    d = 0.5 * ((f[i] - f[j]) ** 2).sum(1)
    h = haversine_km(latlon[i, 0], latlon[i, 1], latlon[j, 0], latlon[j, 1])
    k = np.searchsorted(edges, h, side="right") - 1
    inside = k < len(edges) - 1
    k, d, h = np.maximum(k[inside], 0), d[inside], h[inside]
    count = np.bincount(k, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore"):
        gamma = np.bincount(k, d, len(edges) - 1) / count
        mean_h = np.bincount(k, h, len(edges) - 1) / count
    return (gamma, count, mean_h) if mean_lags else (gamma, count)


@pytest.mark.parametrize("log_bins", [False, True])
def test_empirical_equals_brute_force(field, log_bins):
    latlon, features = field
    edges = bin_edges(40, 15000.0, log=log_bins, min_lag_km=50.0)
    gamma, count, mean_h = brute_force(features, latlon, edges, mean_lags=True)
    ev = empirical_variogram(features, latlon, bins=40, max_lag_km=15000.0, log_bins=log_bins, min_lag_km=50.0)
    np.testing.assert_array_equal(ev.n, count)
    np.testing.assert_array_equal(ev.n_weighted, count)  # exact: every pair weighs 1
    np.testing.assert_allclose(ev.gamma, gamma, atol=1e-6)
    np.testing.assert_allclose(ev.mean_h_km, mean_h, rtol=1e-9)  # the lag each bin is fitted at
    raw = empirical_variogram(features, latlon, bins=40, max_lag_km=15000.0, log_bins=log_bins, min_lag_km=50.0, normalize=False)
    np.testing.assert_allclose(raw.gamma, brute_force(features, latlon, edges, normalize=False)[0], rtol=1e-9)


def test_agrees_with_gstools(field):
    gs = pytest.importorskip("gstools", reason="gstools is a test dependency (pip install -e '.[test]')")
    latlon, features = field
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    edges = np.linspace(0, 12000, 31)
    centres, gamma, counts = gs.vario_estimate((latlon[:, 0], latlon[:, 1]), unit.T, edges, latlon=True,
                                               geo_scale=EARTH_RADIUS_KM, return_counts=True)
    ours = empirical_variogram(features, latlon, bins=30, max_lag_km=12000.0)
    # gstools averages the per-dimension semivariances of a vector field: ours / D.
    np.testing.assert_allclose(gamma * unit.shape[1], ours.gamma, atol=1e-6)
    model = gs.Spherical(dim=1)  # great-circle km as a plain 1-d lag, the same model as ours
    model.fit_variogram(centres, gamma * unit.shape[1], nugget=True, weights=np.sqrt(ours.n))
    fitted = fit_variogram(ours, "spherical", weights="pairs", lag="centre")
    assert fitted.range_km == pytest.approx(model.len_scale, rel=0.03)
    assert fitted.psill == pytest.approx(model.var, rel=0.03)
    assert fitted.nugget == pytest.approx(model.nugget, rel=0.05, abs=0.01)


def test_agrees_with_scikit_gstat():
    skg = pytest.importorskip("skgstat", reason="scikit-gstat is a test dependency (pip install -e '.[test]')")
    latlon = sphere_points(1200, seed=3)
    values = spherical_field(latlon, 1, range_km=3000.0, nugget=0.2, psill=1.0, seed=3)
    # scikit-gstat has no great-circle metric: give it 3-d points on the sphere and the chord edges
    # of our arc bins, so that each bin holds exactly the same pairs.
    arc_edges = np.linspace(0, 9000, 31)
    chord_edges = 2 * EARTH_RADIUS_KM * np.sin(arc_edges / (2 * EARTH_RADIUS_KM))
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    xyz = EARTH_RADIUS_KM * np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)
    theirs = skg.Variogram(xyz, values[:, 0], bin_func=list(chord_edges[1:]), maxlag=chord_edges[-1],
                           model="spherical", use_nugget=True, fit_method="trf")
    ours = empirical_variogram(values, latlon, bins=30, max_lag_km=9000.0, normalize=False)
    np.testing.assert_allclose(ours.gamma, theirs.experimental, atol=1e-6)
    # Cressie-Hawkins on a scalar field: our D-dimensional constants reduce to scikit-gstat's 0.457 + 0.494 / N.
    robust = skg.Variogram(xyz, values[:, 0], bin_func=list(chord_edges[1:]), maxlag=chord_edges[-1], estimator="cressie")
    ours_robust = empirical_variogram(values, latlon, bins=30, max_lag_km=9000.0, normalize=False, estimator="cressie")
    np.testing.assert_allclose(ours_robust.gamma, robust.experimental, rtol=2e-3)
    fitted = fit_variogram(ours, "spherical", weights="none", lag="upper")
    their_range_chord, their_psill, their_nugget = theirs.parameters
    their_range = 2 * EARTH_RADIUS_KM * np.arcsin(their_range_chord / (2 * EARTH_RADIUS_KM))
    assert fitted.range_km == pytest.approx(their_range, rel=0.04)
    assert fitted.psill == pytest.approx(their_psill, rel=0.04)
    assert fitted.nugget == pytest.approx(their_nugget, rel=0.1, abs=0.02)


def test_recovers_a_known_spherical_field():
    latlon = sphere_points(1500, seed=1)
    features = spherical_field(latlon, 32, range_km=3000.0, nugget=0.3, psill=1.0, seed=1)
    model = fit_variogram(empirical_variogram(features, latlon, bins=40, max_lag_km=10000.0), "spherical")
    # 1 - cos of normalised vectors measures the field relative to its total sill (0.3 + 1.0).
    assert model.range_km == pytest.approx(3000.0, rel=0.08)
    assert model.nugget == pytest.approx(0.3 / 1.3, abs=0.03)
    assert model.psill == pytest.approx(1.0 / 1.3, abs=0.04)
    assert not model.info["fit"]["at_bounds"]


def test_cressie_hawkins_constants_reduce_to_the_published_ones_and_are_unbiased():
    a, b = cressie_hawkins_constants(1)
    assert (a, b) == (pytest.approx(0.457, abs=5e-4), pytest.approx(0.494, abs=5e-4))  # Cressie & Hawkins (1980)
    # Monte Carlo: N Gaussian increments in D dimensions with E|Z|^2 = 2 gamma, many bins of them.
    rng = np.random.default_rng(0)
    gamma, n = 0.35, 12
    for dim, bins in ((1, 20_000), (3, 20_000), (64, 2_000), (768, 500)):  # |Z| concentrates as D grows
        z = rng.normal(scale=np.sqrt(2 * gamma / dim), size=(bins, n, dim)).astype(np.float32)
        root = np.sqrt(np.linalg.norm(z, axis=2))
        a, b = cressie_hawkins_constants(dim)
        estimates = dim * root.mean(axis=1) ** 4 / (a + b / n) / 2
        assert estimates.mean() == pytest.approx(gamma, rel=0.01), dim


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "unit"])
def test_robust_estimator_recovers_a_known_multivariate_variogram(normalize):
    """A 64-d Gaussian field whose every dimension has a spherical covariance: the variogram is known."""
    latlon = sphere_points(1500, seed=2)
    dims, nugget, psill, range_km = 64, 0.3, 1.0, 3000.0
    features = spherical_field(latlon, dims, range_km=range_km, nugget=nugget, psill=psill, seed=2)
    kwargs = dict(bins=20, max_lag_km=6000.0, normalize=normalize)
    robust = empirical_variogram(features, latlon, estimator="cressie", **kwargs)
    x = np.minimum(robust.mean_h_km / range_km, 1.0)
    truth = nugget + psill * (1.5 * x - 0.5 * x**3)  # per dimension
    truth = truth * dims if not normalize else truth / (nugget + psill)  # 1 - cos: relative to the total sill
    used = robust.n > 500
    np.testing.assert_allclose(robust.gamma[used], truth[used], rtol=0.03)
    matheron = empirical_variogram(features, latlon, **kwargs)
    np.testing.assert_allclose(robust.gamma[used], matheron.gamma[used], rtol=0.03)  # Gaussian data: both estimate gamma


def clustered_photos(n=6000, clusters=300, seed=5):
    """Positions clustered like photos (a few km around each of ``clusters`` places) and features varying with them."""
    rng = np.random.default_rng(seed)
    centres = sphere_points(clusters, seed=seed)
    latlon = centres[rng.integers(0, clusters, n)] + rng.normal(scale=0.05, size=(n, 2))
    latlon[:, 0] = np.clip(latlon[:, 0], -90, 90)
    u = np.stack([np.cos(np.radians(latlon[:, 0])) * np.cos(np.radians(latlon[:, 1])),
                  np.cos(np.radians(latlon[:, 0])) * np.sin(np.radians(latlon[:, 1])), np.sin(np.radians(latlon[:, 0]))], 1)
    return latlon, np.cos(u @ rng.normal(size=(3, 32)) * 4) + 0.5 * rng.normal(size=(n, 32))


def test_stratified_sampling_of_part_of_the_short_pairs_stays_unbiased():
    """A short-pair budget below the short pairs there are: anchors are sampled (q < 1) and each short pair
    carries the weight 1 / (1 - (1 - q)^2); bin counts, means and mean lags still match every pair's."""
    latlon, features = clustered_photos()
    kwargs = dict(bins=30, max_lag_km=20015.0, log_bins=True, min_lag_km=1.0)
    exact = empirical_variogram(features, latlon, **kwargs)
    short = exact.edges_km[1:] <= 25
    assert exact.n[short].sum() > 40_000  # more short pairs than the 20,000 the budget below allows
    sampled = empirical_variogram(features, latlon, exact_max=1000, max_pairs=40_000, seed=3, **kwargs)
    assert sampled.sampling == "stratified"
    assert 0.2 * exact.n[short].sum() < sampled.n[short].sum() < 0.8 * exact.n[short].sum()  # a part of them, drawn
    populated = short & (exact.n > 3000)
    assert populated.sum() >= 3
    np.testing.assert_allclose(sampled.n_weighted[populated], exact.n[populated], rtol=0.15)  # the weights undo the sampling
    np.testing.assert_allclose(sampled.gamma[populated], exact.gamma[populated], rtol=0.05)
    np.testing.assert_allclose(sampled.mean_h_km[populated], exact.mean_h_km[populated], rtol=0.05)
    far = ~short & (exact.n > 50_000)
    np.testing.assert_allclose(sampled.n_weighted[far], exact.n[far], rtol=0.15)
    np.testing.assert_allclose(sampled.mean_h_km[far], exact.mean_h_km[far], rtol=0.02)
    # The raw multivariate Matheron estimator (normalize=False: 1/2 |f_i - f_j|^2) samples alike.
    raw_exact = empirical_variogram(features, latlon, normalize=False, **kwargs)
    raw = empirical_variogram(features, latlon, exact_max=1000, max_pairs=40_000, seed=3, normalize=False, **kwargs)
    np.testing.assert_allclose(raw.gamma[populated], raw_exact.gamma[populated], rtol=0.05)
    np.testing.assert_allclose(raw.gamma[far], raw_exact.gamma[far], rtol=0.05)


def test_stratified_sampling_is_unbiased_and_fills_short_lags():
    rng = np.random.default_rng(5)
    centres = sphere_points(300, seed=5)
    latlon = centres[rng.integers(0, 300, 6000)] + rng.normal(scale=0.05, size=(6000, 2))  # clustered, like photos
    latlon[:, 0] = np.clip(latlon[:, 0], -90, 90)
    u = np.stack([np.cos(np.radians(latlon[:, 0])) * np.cos(np.radians(latlon[:, 1])),
                  np.cos(np.radians(latlon[:, 0])) * np.sin(np.radians(latlon[:, 1])), np.sin(np.radians(latlon[:, 0]))], 1)
    features = np.cos(u @ rng.normal(size=(3, 32)) * 4) + 0.5 * rng.normal(size=(6000, 32))
    kwargs = dict(bins=30, max_lag_km=20015.0, log_bins=True, min_lag_km=1.0)
    exact = empirical_variogram(features, latlon, **kwargs)
    sampled = empirical_variogram(features, latlon, exact_max=1000, max_pairs=400_000, seed=1, **kwargs)
    assert sampled.sampling == "stratified" and exact.sampling == "exact"
    populated = exact.n > 2000
    np.testing.assert_allclose(sampled.gamma[populated], exact.gamma[populated], rtol=0.05)
    np.testing.assert_allclose(sampled.n_weighted[populated], exact.n[populated], rtol=0.25)
    np.testing.assert_allclose(sampled.mean_h_km[populated], exact.mean_h_km[populated], rtol=0.02)
    short = exact.edges_km[1:] <= 25
    assert (sampled.n[short & (exact.n > 0)] > 0).all()
    np.testing.assert_array_equal(sampled.n[short], exact.n[short])  # the budget holds every short pair: all are used


def test_models_at_half_their_range_by_hand():
    """structure(h) at h = range / 2 from each model's textbook form with geovario's range convention (the lag where
    spherical reaches its sill, exponential 1 - e^-3, gaussian 1 - e^-4, stable 1 - e^-3)."""
    half = {"spherical": 1.5 * 0.5 - 0.5 * 0.5**3, "exponential": 1 - np.exp(-1.5), "gaussian": 1 - np.exp(-1.0),
            "stable": 1 - np.exp(-3 / 2**1.5)}
    for name, structure in half.items():
        model = VariogramModel(name, nugget=0.1, psill=0.5, range_km=1000.0, shape=1.5)
        assert model(np.array([500.0]))[0] == pytest.approx(0.1 + 0.5 * structure, rel=1e-12), name
        assert model(torch.tensor([500.0], dtype=torch.float64)).item() == pytest.approx(0.1 + 0.5 * structure, rel=1e-12), name
    assert str(VariogramModel("stable", 0.1, 0.5, 1000.0, 1.5)) == "stable: nugget 0.1, partial sill 0.5, range 1000 km, shape 1.5"
    assert str(VariogramModel("spherical", 0.1, 0.5, 1000.0)) == "spherical: nugget 0.1, partial sill 0.5, range 1000 km"


def test_a_stable_model_without_its_shape_is_refused(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"model": "stable", "nugget": 0.1, "psill": 0.5, "range_km": 900.0}))
    with pytest.raises(GeovarioError, match="v.json: not a fitted variogram .*shape"):
        VariogramModel.load(tmp_path / "v.json")
    (tmp_path / "s.json").write_text(json.dumps({"model": "spherical", "nugget": 0.1, "psill": 0.5, "range_km": 900.0}))
    assert VariogramModel.load(tmp_path / "s.json").range_km == 900.0  # no shape to give


def test_models_evaluate_in_numpy_and_torch_and_roundtrip(tmp_path):
    for name, at_range in [("spherical", 1.0), ("exponential", 1 - np.exp(-3)), ("gaussian", 1 - np.exp(-4)), ("stable", 1 - np.exp(-3))]:
        model = VariogramModel(name, nugget=0.1, psill=0.5, range_km=1000.0, shape=1.5)
        assert model(np.array([0.0]))[0] == pytest.approx(0.1)
        assert model(np.array([1000.0]))[0] == pytest.approx(0.1 + 0.5 * at_range, rel=1e-9)
        h = torch.tensor([10.0, 500.0, 2000.0], dtype=torch.float64, requires_grad=True)
        gamma = model(h)
        np.testing.assert_allclose(gamma.detach().numpy(), model(h.detach().numpy()))
        gamma.sum().backward()
        assert torch.isfinite(h.grad).all() and (h.grad[:2] > 0).all()
        model.save(tmp_path / f"{name}.json")
        again = VariogramModel.load(tmp_path / f"{name}.json")
        assert (again.model, again.nugget, again.psill, again.range_km) == (name, 0.1, 0.5, 1000.0)
    assert VariogramModel.load(tmp_path / "stable.json").shape == 1.5


def test_bad_input_is_refused(tmp_path):
    latlon = sphere_points(10)
    features = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(GeovarioError, match="at least 3 points"):
        empirical_variogram(features[:2], latlon[:2])
    with pytest.raises(GeovarioError, match="all 10 points are at one location"):
        empirical_variogram(features, np.tile([[45.0, 7.0]], (10, 1)))
    bad = features.copy()
    bad[4, 2] = np.nan
    with pytest.raises(GeovarioError, match="row 4 contains NaN"):
        empirical_variogram(bad, latlon)
    many = np.ones((70_000, 2), np.float32)  # checked a block of rows at a time: a row past the first block
    many[65_540, 1] = np.inf
    with pytest.raises(GeovarioError, match="features row 65540 contains NaN or inf"):
        empirical_variogram(many, np.tile(latlon, (7_000, 1)))
    many[65_540, 1] = 1.0
    many[65_539] = 0.0
    with pytest.raises(GeovarioError, match="features row 65539 has zero norm"):
        empirical_variogram(many, np.tile(latlon, (7_000, 1)))
    zero = features.copy()
    zero[6] = 0
    with pytest.raises(GeovarioError, match="row 6 has zero norm"):
        empirical_variogram(zero, latlon)
    for lag in (0.0, -5.0):
        with pytest.raises(GeovarioError, match="--max-lag-km must be positive"):
            empirical_variogram(features, latlon, max_lag_km=lag)
    with pytest.raises(VariogramFitError, match="only 2 non-empty bins") as failure:
        fit_variogram(empirical_variogram(features, latlon, bins=2))
    assert failure.value.empirical.n.sum() == 45
    with pytest.raises(GeovarioError, match="has no fitted model"):
        (tmp_path / "failed.json").write_text('{"model": "spherical", "nugget": null}')
        VariogramModel.load(tmp_path / "failed.json")


def _write_arrays(folder, features, latlon):
    np.save(folder / "f.npy", features.astype(np.float32))
    (folder / "g.csv").write_text("LAT,LON\n" + "\n".join(f"{a},{b}" for a, b in latlon) + "\n")
    return ["--features", str(folder / "f.npy"), "--gps", str(folder / "g.csv")]


def test_cli_writes_schema_and_plot(tmp_path, field, capsys):
    latlon, features = field
    args = _write_arrays(tmp_path, features[:800], latlon[:800])
    code = main(["variogram", *args, "--bins", "25", "--out", str(tmp_path / "v.json"), "--plot", str(tmp_path / "v.png"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "v.json").read_text())
    assert {"model", "nugget", "psill", "range_km", "bins"} <= set(report) and report["model"] == "spherical"
    assert len(report["bins"]) == 25 and {"h_km", "gamma", "n"} <= set(report["bins"][0])
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert VariogramModel.load(tmp_path / "v.json").range_km == report["range_km"]


def test_cli_fit_failure_still_writes_bins(tmp_path, capsys):
    args = _write_arrays(tmp_path, np.random.default_rng(0).normal(size=(20, 4)), sphere_points(20))
    code = main(["variogram", *args, "--bins", "2", "--linear-bins", "--out", str(tmp_path / "v.json"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "only 2 non-empty bins" in err[0] and "bins were still written" in err[0]
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["nugget"] is None and "fit_error" in report and sum(b["n"] for b in report["bins"]) == 190


def test_cli_bad_input_one_line(tmp_path, capsys):
    args = _write_arrays(tmp_path, np.zeros((5, 4)), sphere_points(5))
    assert main(["variogram", *args, "--out", str(tmp_path / "v.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zero norm" in err[0]
    args = _write_arrays(tmp_path, np.ones((5, 4)), sphere_points(5))
    assert main(["variogram", *args, "--max-lag-km", "0", "--out", str(tmp_path / "v.json")]) == 2  # a bad option
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-lag-km" in err[0] and "0" in err[0], err


def test_cli_default_bins_are_the_losses_log_bins(tmp_path, capsys):
    """`geovario variogram` bins as the loss's fit does (log-spaced from 1 km), so short lags get bins of their own."""
    rng = np.random.default_rng(1)
    latlon = np.stack([rng.uniform(40, 41, 300), rng.uniform(2, 3, 300)], 1)  # pairs from 0 to ~140 km
    features = rng.normal(size=(300, 8))
    args = _write_arrays(tmp_path, features, latlon)
    assert main(["variogram", *args, "--out", str(tmp_path / "v.json"), "--no-progress", "--model", "exponential"]) in (0, 1)
    capsys.readouterr()
    bins = json.loads((tmp_path / "v.json").read_text())["bins"]
    expected = empirical_for_loss(features, latlon)
    assert [b["n"] for b in bins] == expected.n.tolist()
    assert sum(1 for b in bins if b["n"] and b["h_km"] < 25) >= 5  # linear 40 bins would put all of them in one


def test_cli_plot_without_suffix_gets_png_and_says_so(tmp_path, capsys):
    args = _write_arrays(tmp_path, np.random.default_rng(0).normal(size=(60, 4)), sphere_points(60))
    main(["variogram", *args, "--out", str(tmp_path / "v.json"), "--plot", str(tmp_path / "out" / "x"), "--no-progress"])
    out = capsys.readouterr().out
    assert (tmp_path / "out" / "x.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "out" / "x").exists()
    assert f"and {tmp_path / 'out' / 'x.png'}" in out


def test_the_plot_formats_the_cli_accepts_are_the_ones_matplotlib_writes():
    import matplotlib.figure

    from geovario.cli.options import FIGURE_FORMATS

    assert set(FIGURE_FORMATS) <= set(matplotlib.figure.Figure().canvas.get_supported_filetypes())  # each one can be drawn


def uneven_bins():
    """Bins with very unequal pair counts and a bump the model cannot follow, so each weighting fits differently."""
    from geovario.variogram.empirical import EmpiricalVariogram

    edges = np.concatenate([[0.0], np.geomspace(20, 12000, 14)])
    centres = np.sqrt(edges[1:-1] * edges[2:])
    mean_h = np.concatenate([[10.0], centres])
    x = np.minimum(mean_h / 3000.0, 1)
    gamma = 0.2 + 0.5 * (1.5 * x - 0.5 * x**3)
    gamma[2:5] += 0.08  # a regional bump at short lags
    gamma[-3:] -= 0.05
    gamma[0] = 0.0  # photos at one place that look the same: the Cressie weight is floored, not infinite
    n = np.where(mean_h < 500, 20, 2_000_000).astype(np.int64)
    return EmpiricalVariogram(edges, gamma, n, n.astype(float), mean_h, "matheron", "exact", 1000)


def fit_checked_against_another_optimiser(weights: str) -> list[float]:
    """Cressie (1985): each bin counts N_k / gamma_k^2; "pairs": N_k; "none": 1. The fit must be the minimum of
    sum_k w_k (model(h_k) - gamma_k)^2, found here by another optimiser from another start."""
    from scipy.optimize import minimize

    from geovario.variogram.models import model_gamma

    empirical = uneven_bins()
    h, gamma, n = empirical.mean_h_km, empirical.gamma, empirical.n.astype(float)
    w = {"cressie": n / np.maximum(gamma, 0.01 * gamma.max()) ** 2, "pairs": n, "none": np.ones_like(n)}[weights]

    def objective(p):
        return float(np.sum(w * (model_gamma("spherical", h, *p) - gamma) ** 2))

    fitted = fit_variogram(empirical, "spherical", weights=weights)
    ours = [fitted.nugget, fitted.psill, fitted.range_km]
    best = minimize(objective, x0=[0.3, 0.3, 1500.0], method="Nelder-Mead",
                    options={"xatol": 1e-8, "fatol": 1e-14, "maxiter": 20000, "maxfev": 40000})
    assert objective(ours) <= best.fun * (1 + 1e-6) + 1e-15
    np.testing.assert_allclose(ours, best.x, rtol=2e-3)
    return ours


@pytest.mark.parametrize("weights", ["cressie", "pairs", "none"])
def test_the_fit_minimises_its_documented_weighted_least_squares(weights):
    fit_checked_against_another_optimiser(weights)


def test_the_weightings_give_different_fits_on_uneven_bins():
    fits = {w: fit_checked_against_another_optimiser(w) for w in ("cressie", "pairs", "none")}
    assert abs(fits["none"][2] - fits["pairs"][2]) > 50 and abs(fits["cressie"][0] - fits["none"][0]) > 0.005


def test_the_losses_fit_weighs_every_bin_alike():
    """fit_for_loss: the stable model at equal bin weights (the loss acts at short and long lags alike)."""
    from scipy.optimize import minimize

    from geovario.variogram import fit_for_loss
    from geovario.variogram.models import model_gamma

    empirical = uneven_bins()
    h, gamma = empirical.mean_h_km, empirical.gamma
    fitted = fit_for_loss(empirical)
    assert fitted.model == "stable"

    def objective(p):
        return float(np.sum((model_gamma("stable", h, *p) - gamma) ** 2))

    ours = [fitted.nugget, fitted.psill, fitted.range_km, fitted.shape]
    best = minimize(objective, x0=[0.25, 0.45, 2500.0, 1.2], method="Nelder-Mead",
                    options={"xatol": 1e-9, "fatol": 1e-15, "maxiter": 40000, "maxfev": 80000})
    assert objective(ours) <= best.fun * (1 + 1e-6) + 1e-15
    counted = fit_variogram(empirical, "stable", weights="pairs")
    assert abs(counted.nugget - fitted.nugget) > 0.005  # weighting by pairs would have fitted another curve


def test_bin_edges_boundaries_and_the_default_first_log_edge():
    np.testing.assert_array_equal(bin_edges(1, 0.5), [0.0, 0.5])  # one bin, and a max lag under a kilometre, are fine
    np.testing.assert_allclose(bin_edges(3, 1000.0, log=True), [0.0, 0.1, 10.0, 1000.0])  # unset: the first edge max lag / 10^4
    np.testing.assert_allclose(bin_edges(2, 100.0, log=True, min_lag_km=1.0), [0.0, 1.0, 100.0])
    for bins, max_lag, log, low, message in [(0, 100.0, False, None, "--bins must be at least 1"),
                                              (2, 0.0, False, None, "--max-lag-km must be positive"),
                                              (2, 100.0, True, 100.0, "--min-lag-km must lie in"),
                                              (2, 100.0, True, 0.0, "--min-lag-km must lie in")]:
        with pytest.raises(GeovarioError, match=message):
            bin_edges(bins, max_lag, log=log, min_lag_km=low)


def test_a_lag_exactly_on_an_edge_belongs_to_the_bin_above_on_linear_and_log_edges():
    """Bins are [lo, hi): the fast linear path and bucketize agree with numpy's searchsorted(side="right")."""
    from geovario.variogram.empirical import _Bins

    for edges in (bin_edges(5, 500.0), bin_edges(5, 500.0, log=True, min_lag_km=1.0)):
        lags = torch.tensor(np.concatenate([edges[:-1], (edges[:-1] + edges[1:]) / 2, [edges[-1], 1e6]]), dtype=torch.float64)
        expected = np.minimum(np.searchsorted(edges, lags.numpy(), side="right") - 1, 5)  # 5: beyond the last edge
        np.testing.assert_array_equal(_Bins(edges).index(lags).numpy(), expected)
    # The linear edges take the arithmetic path (a multiply, no search), the log edges the search.
    assert _Bins(bin_edges(5, 500.0)).linear and not _Bins(bin_edges(5, 500.0, log=True, min_lag_km=1.0)).linear


def test_photos_at_the_same_place_are_at_lag_zero():
    """Coincident positions: the chord's cosine rounds to just above 1, whose arccos would be NaN; it is clamped to 0 km."""
    from geovario.variogram.empirical import _lag_km

    assert _lag_km(torch.tensor([1.0 + 4e-16, 1.0, -1.0 - 4e-16], dtype=torch.float64)).tolist() == pytest.approx(
        [0.0, 0.0, np.pi * EARTH_RADIUS_KM])
    latlon = np.repeat(sphere_points(30, seed=3), 3, axis=0)  # every position three times
    features = np.random.default_rng(3).normal(size=(90, 8))
    edges = bin_edges(10, 20000.0)
    ev = empirical_variogram(features, latlon, bins=10, max_lag_km=20000.0)
    gamma, count = brute_force(features, latlon, edges)
    np.testing.assert_array_equal(ev.n, count)
    np.testing.assert_allclose(ev.gamma, gamma, atol=1e-6)
    np.testing.assert_array_equal(ev.n_weighted, count)  # exact: every pair weighs 1


def test_the_size_and_spread_a_variogram_needs():
    """At least 3 points, and more than one place: the same place written as lon 180 and -180, or any longitude at a
    pole, is one place; the two poles are not."""
    rng = np.random.default_rng(1)
    three = empirical_variogram(rng.normal(size=(3, 4)), sphere_points(3), bins=4, max_lag_km=20015.0)
    assert three.n.sum() == 3
    with pytest.raises(GeovarioError, match="at least 3 points, got 2"):
        empirical_variogram(rng.normal(size=(2, 4)), sphere_points(2))
    one_place = [np.tile([[45.0, 7.0]], (6, 1)), np.array([[10.0, 180.0], [10.0, -180.0]] * 3), np.array([[90.0, lon] for lon in range(6)])]
    for latlon in one_place:
        with pytest.raises(GeovarioError, match="all 6 points are at one location"):
            empirical_variogram(rng.normal(size=(6, 4)), latlon)
    poles = empirical_variogram(rng.normal(size=(4, 4)), np.array([[90.0, 0.0], [90.0, 50.0], [-90.0, 0.0], [-90.0, 10.0]]),
                                bins=2, max_lag_km=20016.0)
    assert poles.n.tolist() == [2, 4]  # two pairs at 0 km, four at half the globe


def test_exact_up_to_and_including_exact_max_points():
    latlon, features = sphere_points(50, seed=4), np.random.default_rng(4).normal(size=(50, 8))
    assert empirical_variogram(features, latlon, bins=5, exact_max=50).sampling == "exact"
    assert empirical_variogram(features, latlon, bins=5, exact_max=49, max_pairs=1000).sampling == "stratified"


def test_per_process_bin_sums_are_added_up():
    """Under torchrun each process bins its share of the pairs (every other row block) and ``reduce_sum`` all-reduces
    the sums. Two shards of the same data, the second adding the first's sums, equal one process."""
    latlon, features = sphere_points(2100, seed=6), np.random.default_rng(6).normal(size=(2100, 8))  # two row blocks
    kwargs = dict(bins=8, max_lag_km=20016.0)
    whole = empirical_variogram(features, latlon, **kwargs)
    stored = {}

    def keep(sums):
        stored["first"] = sums
        return sums

    first = empirical_variogram(features, latlon, shard=(0, 2), reduce_sum=keep, **kwargs)
    second = empirical_variogram(features, latlon, shard=(1, 2), reduce_sum=lambda sums: sums + stored["first"], **kwargs)
    assert 0 < first.n.sum() < whole.n.sum()  # a shard alone sees a part of the pairs
    np.testing.assert_array_equal(second.n, whole.n)
    np.testing.assert_allclose(second.gamma, whole.gamma, rtol=1e-9)


def test_random_pairs_stand_for_every_pair_with_the_right_weight():
    """A dozen points, sampled (exact_max below them) with a budget that draws each pair thousands of times: the
    random stratum's weight n(n - 1) / 2 / draws and its uniform draw of pairs give every bin's count and mean."""
    latlon, features = sphere_points(12, seed=8), np.random.default_rng(8).normal(size=(12, 6))
    kwargs = dict(bins=6, max_lag_km=20016.0)
    exact = empirical_variogram(features, latlon, **kwargs)
    sampled = empirical_variogram(features, latlon, exact_max=5, max_pairs=2_000_000, short_lag_km=1.0, seed=2, **kwargs)
    assert sampled.sampling == "stratified" and exact.n.sum() == 66
    used = exact.n > 0
    np.testing.assert_allclose(sampled.n_weighted[used], exact.n[used], rtol=0.03)
    np.testing.assert_allclose(sampled.gamma[used], exact.gamma[used], rtol=0.02)
    np.testing.assert_allclose(sampled.mean_h_km[used], exact.mean_h_km[used], rtol=0.02)


def test_what_the_fit_accepts_and_refuses_at_its_boundaries():
    from geovario.variogram.empirical import EmpiricalVariogram

    def bins(gamma, n=None):
        gamma = np.asarray(gamma, dtype=float)
        k = len(gamma)
        edges = np.linspace(0, 1000.0 * k, k + 1)
        counts = np.full(k, 50) if n is None else np.asarray(n)
        mean_h = (edges[:-1] + edges[1:]) / 2
        return EmpiricalVariogram(edges, np.where(counts > 0, gamma, np.nan), counts, counts.astype(float), mean_h,
                                  "matheron", "exact", 100)

    three = [0.2, 0.5, 0.6]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy cannot estimate the covariance of an exact fit: it is not used, nor shown
        assert fit_variogram(bins(three), "spherical").info["fit"]["bins_used"] == 3  # as many bins as parameters: fitted
    with pytest.raises(VariogramFitError, match="only 3 non-empty bins, fewer than the 4 parameters of the stable model"):
        fit_variogram(bins(three), "stable")
    one_pair = fit_variogram(bins([0.2, 0.4, 0.5, 0.55, 0.6, 0.6], n=[1, 50, 0, 50, 50, 50]), "spherical")
    assert one_pair.info["fit"]["bins_used"] == 5  # a bin of one pair counts; an empty one does not
    zero_first = bins([0.0, 0.3, 0.5, 0.6, 0.6])  # coincident photos: gamma 0 at the first lag, which is no reason to refuse
    assert fit_variogram(zero_first, "spherical", weights="pairs").sill > 0.5
    assert np.isfinite(fit_variogram(zero_first, "spherical").info["fit"]["weighted_rmse"])  # Cressie: floored, not infinite
    with pytest.raises(VariogramFitError, match="at most 1e-06 in every bin"):
        fit_variogram(bins([1e-6, -1e-6, 5e-7, 1e-6]), "spherical")


@pytest.mark.parametrize("weights", ["cressie", "pairs"])
def test_the_reported_weighted_rmse_is_in_the_units_of_the_fit_weights(weights):
    """info.fit.weighted_rmse = sqrt(mean((residual / sigma)^2)), sigma = gamma_k / sqrt(N_k) (Cressie) or 1 / sqrt(N_k)."""
    empirical = uneven_bins()
    fitted = fit_variogram(empirical, "spherical", weights=weights)
    residual = fitted(empirical.mean_h_km) - empirical.gamma
    gamma = empirical.gamma
    sigma = (np.maximum(gamma, 0.01 * gamma.max()) if weights == "cressie" else 1.0) / np.sqrt(empirical.n)
    assert fitted.info["fit"]["weighted_rmse"] == pytest.approx(float(np.sqrt(np.mean((residual / sigma) ** 2))), rel=1e-9)
    assert fitted.info["fit"]["rmse"] == pytest.approx(float(np.sqrt(np.mean(residual**2))), rel=1e-9)


def test_a_stable_models_shape_stays_at_most_two():
    """exp(-(h/a)^s) is a valid variogram only for 0 < s <= 2: bins rising more sharply than a Gaussian fit with s = 2."""
    from geovario.variogram.empirical import EmpiricalVariogram

    edges = np.linspace(0, 6000.0, 25)
    mean_h = (edges[:-1] + edges[1:]) / 2
    gamma = 0.1 + 0.6 * (1 - np.exp(-((mean_h / 2500.0) ** 4)))  # shape 4: sharper than any valid stable model
    counts = np.full(24, 100)
    fitted = fit_variogram(EmpiricalVariogram(edges, gamma, counts, counts.astype(float), mean_h, "matheron", "exact", 500), "stable")
    assert fitted.shape == pytest.approx(2.0) and "shape" in fitted.info["fit"]["at_bounds"]


def test_each_stratum_weighs_its_pairs_by_the_chance_they_are_drawn():
    """Bins one short lag wide, so the first holds the short stratum alone. Each short pair is drawn with
    probability budget / (short pairs there are, counted here with a haversine BallTree), so it weighs the inverse;
    each random pair weighs n(n - 1) / 2 / draws. And a budget of b random draws, all far apart, bins b pairs."""
    from sklearn.neighbors import BallTree

    latlon, features = clustered_photos(n=2000, clusters=200, seed=7)
    short_lag = 50.0
    tree = BallTree(np.radians(latlon), metric="haversine")
    short_total = (tree.query_radius(np.radians(latlon), short_lag / EARTH_RADIUS_KM, count_only=True) - 1).sum() // 2
    budget = int(short_total // 3)
    kwargs = dict(bins=401, max_lag_km=401 * short_lag, exact_max=1000, short_lag_km=short_lag, seed=4)
    sampled = empirical_variogram(features, latlon, max_pairs=2 * budget, **kwargs)
    assert sampled.sampling == "stratified" and 0.2 * budget < sampled.n[0] < 0.8 * short_total  # a part, drawn
    assert sampled.n_weighted[0] / sampled.n[0] == pytest.approx(short_total / budget, rel=1e-9)
    far = sampled.n[1:] > 0
    assert far.sum() > 100
    np.testing.assert_allclose(sampled.n_weighted[1:][far] / sampled.n[1:][far], 2000 * 1999 / 2 / budget, rtol=1e-9)

    spread, features = sphere_points(40, seed=9), np.random.default_rng(9).normal(size=(40, 4))
    for draws in (1, 2, (1 << 20) + 5):  # the last one more than a chunk of 2^20 draws
        every_pair_far = empirical_variogram(features, spread, bins=4, max_lag_km=20016.0, exact_max=10, max_pairs=2 * draws,
                                             short_lag_km=1e-3)
        assert every_pair_far.n.sum() == draws, draws


@pytest.mark.parametrize("weights", ["cressie", "pairs", "none"])
def test_a_fit_scales_with_its_semivariances(weights):
    """Raw features (normalize=False) have semivariances of any size: bins ten times as high fit a nugget and sill ten
    times as high at the same range (the bounds scale with the data)."""
    from dataclasses import replace

    empirical = uneven_bins()
    base = fit_variogram(empirical, "spherical", weights=weights)
    scaled = fit_variogram(replace(empirical, gamma=10 * empirical.gamma), "spherical", weights=weights)
    np.testing.assert_allclose([scaled.nugget, scaled.psill, scaled.range_km], [10 * base.nugget, 10 * base.psill, base.range_km],
                               rtol=1e-3, atol=1e-6)


def test_the_losses_bins_count_every_pair_over_several_row_blocks():
    latlon, features = sphere_points(2100, seed=2), np.random.default_rng(2).normal(size=(2100, 4))  # two row blocks
    assert empirical_for_loss(features, latlon).n.sum() == 2100 * 2099 // 2


def test_an_estimate_reads_float32_features_up_to_exact_max_and_reports_the_others_under_compare(tmp_path):
    import pandas as pd

    from geovario.data.store import ArrayFeatures
    from geovario.variogram.estimate import EstimateSettings, estimate, estimates_report

    latlon, features = sphere_points(60, seed=3), np.random.default_rng(3).normal(size=(60, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", features)
    pd.DataFrame({"LAT": latlon[:, 0], "LON": latlon[:, 1]}).to_csv(tmp_path / "g.csv", index=False)
    source = ArrayFeatures(tmp_path / "f.npy", tmp_path / "g.csv")
    settings = EstimateSettings(bins=6, log_bins=False, exact_max=60)
    result = estimate(source, "a", settings, progress=False)
    direct = empirical_variogram(features, latlon, bins=6, exact_max=60)
    np.testing.assert_allclose(result.empirical.gamma, direct.gamma, rtol=1e-7)  # float16 would be off by ~1e-4
    others = [estimate(source, label, settings, progress=False) for label in ("b", "c")]
    assert "compare" not in estimates_report([result], "spherical")
    assert [e["label"] for e in estimates_report([result, others[0]], "spherical")["compare"]] == ["b"]
    assert [e["label"] for e in estimates_report([result, *others], "spherical")["compare"]] == ["b", "c"]


def test_a_store_bigger_than_exact_max_is_sampled_through_lazy_reads_with_the_in_memory_result(tmp_path, monkeypatch):
    """estimate() hands a store above exact_max to the sampler as store.lazy(): rows read as the pairs need them,
    across shard boundaries and in any order, never the whole store (issue 28: 5M rows would be 7.7 GB). The
    estimate is the one of the same float32 features in memory, to the last bit; a NaN row is still named."""
    from geovario.data.store import write_store
    from geovario.variogram.estimate import EstimateSettings, estimate

    latlon, features = sphere_points(300, seed=5), np.random.default_rng(5).normal(size=(300, 8)).astype(np.float32)
    store = write_store(tmp_path / "s", features, latlon, dtype="float32", shard_size=64)
    lazy = store.lazy()
    assert lazy.shape == (300, 8) and len(lazy) == 300
    np.testing.assert_array_equal(lazy[50:200], features[50:200])
    index = np.array([299, 3, 64, 63, 3, 128])
    np.testing.assert_array_equal(lazy[index], features[index])
    whole = []
    monkeypatch.setattr(type(store), "features", lambda self, start=0, stop=None, dtype=np.float32: whole.append((start, stop)) or
                        self._finite(self._gather(self._shards, start, stop, dtype), np.arange(start, start + 1)))
    settings = EstimateSettings(bins=6, log_bins=False, exact_max=100, max_pairs=20_000, short_lag_km=2000.0)
    result = estimate(store, "s", settings, progress=False)
    direct = empirical_variogram(features, latlon, bins=6, log_bins=False, exact_max=100, max_pairs=20_000, short_lag_km=2000.0)
    assert result.empirical.sampling == "stratified"
    np.testing.assert_array_equal(result.empirical.gamma, direct.gamma)
    np.testing.assert_array_equal(result.empirical.n, direct.n)
    assert (0, None) not in whole  # the row-norm pass reads slices; nothing asks for the whole store

    bad = features.copy()
    bad[77, 2] = np.nan
    with pytest.raises(GeovarioError, match="row 77"):
        empirical_variogram(write_store(tmp_path / "bad", bad, latlon, dtype="float32", shard_size=64).lazy(), latlon,
                            exact_max=100, max_pairs=1000)
