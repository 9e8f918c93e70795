"""Distinct places and their confidence, against brute force over every pair of gallery points and a hand case."""

import math

import numpy as np
import pytest
from sklearn.metrics.pairwise import haversine_distances

from geovario.confidence import WITHIN_KM, GalleryPlaces
from geovario.geo import EARTH_RADIUS_KM, haversine_km

PARIS, LONDON = (48.8566, 2.3522), (51.5074, -0.1278)


def test_a_hand_case_pools_a_city_and_measures_its_reach():
    """Three gallery points in Paris (within 10 km) and one in London, 344 km away."""
    gallery = np.array([PARIS, (48.90, 2.40), (48.80, 2.30), LONDON])
    prob = np.array([0.3, 0.3, 0.2, 0.2])
    places = GalleryPlaces(gallery).places(prob, k=3, level=0.75)
    assert [p.gallery_index for p in places] == [0, 3]  # equal first probabilities: the lower index; London is the second place
    assert places[0].prob == pytest.approx(0.8) and places[1].prob == pytest.approx(0.2)
    assert places[0].within_km == pytest.approx({25: 0.8, 200: 0.8, 750: 1.0, 2500: 1.0})
    farthest_paris = max(haversine_km(*PARIS, *gallery[i]) for i in (1, 2))
    assert places[0].radius_km == math.ceil(farthest_paris)  # 0.3 + 0.3 + 0.2 reach 0.75 at the last Paris point, in whole km
    assert places[1].within_km[25] == pytest.approx(0.2) and places[1].within_km[750] == pytest.approx(1.0)
    at_90 = GalleryPlaces(gallery).places(prob, k=1, level=0.9)[0]
    assert at_90.radius_km == math.ceil(haversine_km(*PARIS, *LONDON))  # 0.9 needs London's mass
    # Pooling at 0 km: only the same coordinates pool, so each Paris point is its own place.
    assert [p.gallery_index for p in GalleryPlaces(gallery).places(prob, k=4, pool_km=0.0)] == [0, 1, 2, 3]


def brute_force_places(gallery, prob, k, pool_km, level, candidates=64):
    """Peaks in order of probability (equal ones by index) among the first m = max(candidates, 8 k) points, then m at
    a time until k places exist, each claiming the unclaimed points within pool_km (none but itself at pool_km None);
    the k largest masses; the radius rounded up to the km."""
    distance = haversine_distances(np.radians(gallery)) * EARTH_RADIUS_KM
    order = sorted(range(len(prob)), key=lambda i: (-prob[i], i))
    m = max(candidates, 8 * k)
    claimed = np.zeros(len(prob), bool)
    found = []

    def claim(peak):
        if claimed[peak]:
            return
        members = ~claimed & ((distance[peak] <= pool_km) if pool_km is not None else (np.arange(len(prob)) == peak))
        claimed[members] = True
        within = {t: prob[distance[peak] <= t].sum() for t in WITHIN_KM}
        radius = min(d for d in distance[peak] if prob[distance[peak] <= d].sum() >= level * prob.sum())
        found.append((peak, prob[members].sum(), within, math.ceil(radius)))

    for peak in order[:m]:
        claim(peak)
    rest = [i for i in order if not claimed[i]]
    for start in range(0, len(rest) if len(found) < k else 0, m):
        for peak in rest[start : start + m]:
            claim(peak)
        if len(found) >= k:
            break
    return sorted(found, key=lambda f: -f[1])[:k]


@pytest.mark.parametrize("pool_km", [None, 0.0, 25.0, 400.0])
def test_places_match_brute_force_on_a_clustered_gallery(pool_km):
    rng = np.random.default_rng(0)
    centres = np.stack([rng.uniform(-50, 60, 12), rng.uniform(-170, 170, 12)], 1)
    gallery = np.concatenate([c + rng.normal(0, 0.2, (25, 2)) for c in centres] + [centres[:3]])  # duplicates too
    logits = rng.normal(0, 3, len(gallery))
    prob = np.exp(logits - logits.max())
    prob /= prob.sum()
    places = GalleryPlaces(gallery).places(prob, k=8, pool_km=pool_km, level=0.9)
    expected = brute_force_places(gallery, prob, 8, pool_km, 0.9)
    assert [p.gallery_index for p in places] == [e[0] for e in expected]
    for place, (_, mass, within, radius) in zip(places, expected):
        assert place.prob == pytest.approx(mass, rel=1e-9)
        assert place.within_km == pytest.approx(within, rel=1e-9)
        assert place.radius_km == radius
    peaks = gallery[[p.gallery_index for p in places]]
    apart = haversine_distances(np.radians(peaks)) * EARTH_RADIUS_KM
    if pool_km is not None:  # no place sits within pool_km of another
        assert (apart[np.triu_indices(len(peaks), 1)] > pool_km).all()


def test_every_gallery_point_belongs_to_one_place_when_k_is_large():
    rng = np.random.default_rng(1)
    gallery = np.stack([rng.uniform(-60, 60, 300), rng.uniform(-180, 180, 300)], 1)
    prob = rng.dirichlet(np.ones(300))
    places = GalleryPlaces(gallery).places(prob, k=300, pool_km=1000.0)
    assert len(places) < 300 and sum(p.prob for p in places) == pytest.approx(1.0)
    assert [p.prob for p in places] == sorted((p.prob for p in places), reverse=True)


def test_a_sharp_prediction_still_gives_k_places():
    """All 64 most probable points lie in one city: the next places come from the points beyond them."""
    rng = np.random.default_rng(6)
    city = np.array([35.68, 139.69]) + rng.normal(0, 0.02, (100, 2))
    elsewhere = np.stack([rng.uniform(-60, 60, 200), rng.uniform(-180, 180, 200)], 1)
    gallery = np.concatenate([city, elsewhere])
    prob = np.concatenate([np.full(100, 0.99 / 100), rng.dirichlet(np.ones(200)) * 0.01])
    places = GalleryPlaces(gallery).places(prob, k=3)
    assert len(places) == 3 and places[0].prob == pytest.approx(0.99) and all(p.gallery_index >= 100 for p in places[1:])
    expected = brute_force_places(gallery, prob, 3, 25.0, 0.9)
    assert [p.gallery_index for p in places] == [e[0] for e in expected]


def test_a_wide_place_of_small_points_outranks_a_single_higher_peak():
    """Ranked by the mass a place gathers: 50 points of 0.012 around Rome (0.6 together) beat one point of 0.4 in
    Oslo, although Oslo holds the highest single probability; and the search stops once no place can catch up."""
    rng = np.random.default_rng(2)
    rome = np.array([41.9, 12.5]) + rng.normal(0, 0.03, (50, 2))
    gallery = np.concatenate([[[59.9, 10.75]], rome])
    prob = np.concatenate([[0.4], np.full(50, 0.6 / 50)])
    places = GalleryPlaces(gallery).places(prob, k=1)
    assert len(places) == 1 and places[0].gallery_index > 0 and places[0].prob == pytest.approx(0.6)


def test_a_predictor_pools_the_softmax_over_its_whole_gallery(tiny_model_dir):
    """Predictor.predict_features: the model's softmax over every gallery point (computed here from its two
    encoders), pooled by brute force; with a temperature the softmax is of logits / temperature."""
    import torch
    import torch.nn.functional as F

    from geovario.predict import Predictor

    rng = np.random.default_rng(4)
    centres = np.stack([rng.uniform(-50, 60, 30), rng.uniform(-170, 170, 30)], 1)
    gallery = np.concatenate([c + rng.normal(0, 0.1, (10, 2)) for c in centres]).astype(np.float32)
    features = rng.normal(size=(3, 32)).astype(np.float32)
    predictor = Predictor(tiny_model_dir, gallery=gallery, progress=False)
    model = predictor.model
    with torch.no_grad():
        images = F.normalize(model.encode_images(torch.from_numpy(features)), dim=-1).double()
        locations = F.normalize(model.encode_locations(torch.from_numpy(gallery)), dim=-1).double()
    for temperature in (1.0, 0.05):
        predictor.temperature = temperature
        got = predictor.predict_features(features, top_k=4, level=0.5)
        logits = float(model.logit_scale.detach().exp()) * images @ locations.T / temperature
        for row, places in zip(torch.softmax(logits, dim=1).numpy(), got):
            expected = brute_force_places(gallery.astype(np.float64), row, 4, 25.0, 0.5)
            assert [p.gallery_index for p in places] == [e[0] for e in expected]
            assert [p.prob for p in places] == pytest.approx([e[1] for e in expected], rel=1e-4)  # float32 cosines
            assert [p.radius_km for p in places] == [e[3] for e in expected]
    assert max(p.prob for p in got[0]) > 0.5  # a sharp temperature concentrates the mass


def test_the_predict_command_prints_places_with_their_confidence(tiny_model_dir, tmp_path, capsys):
    import json

    from geovario.cli import main
    from geovario.predict import Predictor

    features = np.random.default_rng(5).normal(size=(2, 32)).astype(np.float32)
    np.save(tmp_path / "f.npy", features)
    expected = Predictor(tiny_model_dir, progress=False).predict_features(features, top_k=3, pool_km=500.0, level=0.8)
    args = ["predict", "--model", str(tiny_model_dir), "--features", str(tmp_path / "f.npy"), "--top-k", "3", "--no-progress"]
    assert main(args + ["--pool-km", "500", "--level", "0.8", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [entry["predictions"] for entry in printed] == [[p.to_dict() for p in row] for row in expected]
    assert set(printed[0]["predictions"][0]) == {"lat", "lon", "prob", "within_km", "radius_km", "level"}
    assert set(printed[0]["predictions"][0]["within_km"]) == {"25", "200", "750", "2500"}
    assert main(args + ["--pool-km", "none", "--json"]) == 0
    unpooled = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert [p["prob"] for p in unpooled] == pytest.approx(sorted(model_softmax_row(tiny_model_dir, features[0]))[::-1][:3], rel=1e-4)
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "P(25 km)" in table and "90 % within" in table and table.count(" km") == 2 + 6  # headers, then each place's radius


def model_softmax_row(model_dir, feature):
    import torch
    import torch.nn.functional as F

    from geovario.predict import Predictor

    predictor = Predictor(model_dir, progress=False)
    with torch.no_grad():
        image = F.normalize(predictor.model.encode_images(torch.from_numpy(feature[None])), dim=-1)
        places = F.normalize(predictor.model.encode_locations(torch.from_numpy(predictor.gallery)), dim=-1)
    return torch.softmax(float(predictor.model.logit_scale.detach().exp()) * image @ places.T, dim=1)[0].numpy()


def isolated_and_cluster(n_isolated: int, seed: int = 7):
    """``n_isolated`` lone points 1,000+ km apart, each more probable than any point of a tight 300-point cluster
    whose mass (0.6) outweighs them all: the cluster is the best place exactly when a peak candidate reaches it."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-70, 70, 15)
    lone = np.array([[a, b] for a in lat for b in np.linspace(-170, 170, 12)])[:n_isolated]
    cluster = np.array([-35.0, 149.0]) + rng.normal(0, 0.01, (300, 2))
    prob = np.concatenate([np.full(n_isolated, 0.4 / n_isolated), np.full(300, 0.6 / 300)])
    assert prob[:n_isolated].min() > prob[n_isolated:].max()
    return np.concatenate([lone, cluster]), prob


@pytest.mark.parametrize("k, n_isolated, found", [(1, 63, True), (1, 64, False), (10, 79, True), (10, 80, False)])
def test_peaks_are_looked_for_among_the_max_of_64_and_8k_most_probable_points(k, n_isolated, found):
    """The documented search: the first max(64, 8 k) most probable points are the peak candidates; a place none of
    them reaches is not looked for once k places exist (here a heavy cluster just past the candidates)."""
    gallery, prob = isolated_and_cluster(n_isolated)
    places = GalleryPlaces(gallery).places(prob, k=k)
    assert (places[0].gallery_index >= n_isolated) is found
    assert len(places) == k


def test_the_search_stops_at_exactly_k_places_and_goes_on_only_while_fewer():
    """Candidates that form exactly k places end the search, even with a heavier place further down the ranking;
    a later chunk of m points is searched only while fewer than k places exist, and stops as soon as k do."""
    rng = np.random.default_rng(8)
    a = np.array([10.0, 10.0]) + rng.normal(0, 0.01, (32, 2))
    b = np.array([-20.0, -60.0]) + rng.normal(0, 0.01, (32, 2))
    heavy = np.array([50.0, 100.0]) + rng.normal(0, 0.01, (400, 2))
    gallery = np.concatenate([a, b, heavy])
    prob = np.concatenate([np.full(64, 0.3 / 64), np.full(400, 0.7 / 400)])
    two = GalleryPlaces(gallery).places(prob, k=2)  # the 64 candidates are exactly A and B
    assert sorted(p.gallery_index // 32 for p in two) == [0, 1]
    # Sharp: the 64 candidates are one place (A), the next chunk of 64 holds B, the chunk after it a heavier C.
    c = np.array([-40.0, 170.0]) + rng.normal(0, 0.01, (300, 2))
    gallery = np.concatenate([np.array([10.0, 10.0]) + rng.normal(0, 0.01, (64, 2)), np.array([-20.0, -60.0]) + rng.normal(0, 0.01, (64, 2)), c])
    prob = np.concatenate([np.full(64, 0.5 / 64), np.full(64, 0.2 / 64 - 1e-9), np.full(300, 0.3 / 300)])
    assert prob[64:128].min() > prob[128:].max()
    places = GalleryPlaces(gallery).places(prob, k=2)
    assert [p.gallery_index // 64 for p in places] == [0, 1]  # C (0.3) is never reached: B made the second place
    # Fewer points beyond the candidates than a chunk: they are still searched.
    gallery = np.concatenate([np.array([10.0, 10.0]) + rng.normal(0, 0.01, (64, 2)), [[-20.0, -60.0], [40.0, 40.0], [-50.0, 120.0]]])
    prob = np.concatenate([np.full(64, 0.97 / 64), [0.01, 0.01, 0.01]])
    assert len(GalleryPlaces(gallery).places(prob, k=3)) == 3


def test_antipodal_points_are_half_the_earth_apart_not_nan():
    """Rounding puts some antipodal unit vectors' dot product just below -1; the distance is still half the Earth's
    circumference (the clip to [0, 1] keeps the arcsine defined)."""
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-89, 89, 200), rng.uniform(-179, 0, 200)
    places = GalleryPlaces(np.concatenate([np.stack([lat, lon], 1), np.stack([-lat, lon + 180], 1)]))
    for i in range(200):
        distance = places.distances_km(i)
        assert np.isfinite(distance).all() and distance[200 + i] == pytest.approx(math.pi * EARTH_RADIUS_KM, abs=0.01)


def test_level_is_a_share_of_the_whole_mass_and_must_lie_in_zero_to_one():
    rng = np.random.default_rng(9)
    gallery = np.stack([rng.uniform(-60, 60, 200), rng.uniform(-180, 180, 200)], 1)
    prob = rng.dirichlet(np.ones(200))
    places = GalleryPlaces(gallery)
    # Unnormalised weights: the radius holds `level` of their sum, the same circle as for the normalised ones.
    assert [p.radius_km for p in places.places(3 * prob, k=2)] == [p.radius_km for p in places.places(prob, k=2)]
    assert places.places(prob, k=1, level=1.0)[0].radius_km > places.places(prob, k=1, level=0.9)[0].radius_km
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="level must lie in"):
            places.places(prob, k=1, level=bad)


def test_at_pool_km_zero_only_points_at_the_same_coordinates_pool():
    """Three points at one position and one a metre away: the three are one place with their summed mass, the
    fourth is its own place; every point claimed once (the masses sum to 1)."""
    gallery = np.array([[48.85, 2.35], [48.85, 2.35], [48.85, 2.35], [48.85001, 2.35], [10.0, 10.0]])
    prob = np.array([0.3, 0.2, 0.1, 0.25, 0.15])
    places = GalleryPlaces(gallery).places(prob, k=5, pool_km=0.0)
    assert [p.prob for p in places] == pytest.approx([0.6, 0.25, 0.15]) and [p.gallery_index for p in places] == [0, 3, 4]
