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
