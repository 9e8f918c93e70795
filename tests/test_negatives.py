import numpy as np

from geovario.geo import haversine_km
from geovario.negatives import GalleryNegatives


def test_selections_respect_their_definitions():
    rng = np.random.default_rng(0)
    gallery = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, 3000))), rng.uniform(-180, 180, 3000)], 1)
    gallery[:5] = [[45.0, 7.0], [45.001, 7.0], [45.05, 7.0], [45.2, 7.1], [46.0, 7.0]]  # neighbours of the query
    negatives = GalleryNegatives(gallery, far_km=2500, exclude_km=1.0)
    query = np.array([[45.0, 7.0]])

    def km(index):
        return haversine_km(query[:, None, 0], query[:, None, 1], gallery[index][..., 0], gallery[index][..., 1])[0]

    near = negatives.select(query, 3, "near", rng)
    assert near[0].tolist() == [2, 3, 4]  # nearest first, the true spot and anything within 1 km excluded
    far = negatives.select(query, 50, "far", rng)
    assert (km(far) >= 2500).all()
    random = negatives.select(query, 50, "random", rng)
    assert (km(random) > 1.0).all() and len(set(random[0])) > 40
    mixed = negatives.select(query, 6, "mixed", rng)
    assert mixed[0, :3].tolist() == [2, 3, 4] and (km(mixed[:, 3:]) >= 2500).all()
