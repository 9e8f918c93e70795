"""How many negatives lie near their query: the old simulated world against the new one.

False-negative suppression can only act on negatives that lie close to their query. This prints the
fraction of pairs within 1 / 25 / 200 km for (a) random pairs of training photos and (b) the negatives
GeoCLIP's loss sees, the rest of the batch plus the queue (batch 128, queue 4096, as GeoCLIP 1.3.0), for
the old default world (GeoNames places of 1,000+ people, 3 km jitter), the new default (MP-16 photo
positions, 1 km jitter), and MP-16's 100K positions themselves. Positions only: nothing is trained.

    python benchmarks/world_pairs.py
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from geovario.geo import haversine_km
from geovario.lab.world import WorldConfig, mp16_positions, sample_positions

THRESHOLDS_KM = (1, 25, 200)


def random_pairs(latlon: np.ndarray, rng: np.random.Generator, n: int = 4_000_000) -> np.ndarray:
    i = rng.integers(0, len(latlon), n)
    j = (i + rng.integers(1, len(latlon), n)) % len(latlon)
    h = haversine_km(latlon[i, 0], latlon[i, 1], latlon[j, 0], latlon[j, 1])
    return np.array([(h <= t).mean() for t in THRESHOLDS_KM])


def batch_queue_negatives(latlon: np.ndarray, rng: np.random.Generator, batch: int = 128, queue: int = 4096, steps: int = 40) -> np.ndarray:
    """Fractions over the (query, negative) pairs of ``steps`` steps taken once the queue is full."""
    order = rng.permutation(len(latlon))
    first = queue // batch
    hits, total = np.zeros(len(THRESHOLDS_KM)), 0
    for step in range(first, first + steps):
        rows = order[step * batch : (step + 1) * batch]
        negatives = np.concatenate([rows, order[step * batch - queue : step * batch]])
        h = haversine_km(latlon[rows, None, 0], latlon[rows, None, 1], latlon[None, negatives, 0], latlon[None, negatives, 1])
        h[np.arange(batch), np.arange(batch)] = np.inf  # the positive is not a negative
        hits += [(h <= t).sum() for t in THRESHOLDS_KM]
        total += batch * (len(negatives) - 1)
    return hits / total


def main() -> int:
    worlds = {
        "old default: GeoNames places, 3 km jitter": replace(WorldConfig(), positions="cities", jitter_km=3.0),
        "new default: MP-16 positions, 1 km jitter": WorldConfig(),
    }
    print(f"{'positions':46s} | {'pairs':>22s} | " + " | ".join(f"<= {t} km" for t in THRESHOLDS_KM))
    for name, config in worlds.items():
        latlon = sample_positions(config, config.n_train, np.random.default_rng([config.seed, 0]))
        for kind, fractions in (("random pairs", random_pairs(latlon, np.random.default_rng(1))),
                                ("batch 128 + queue 4096", batch_queue_negatives(latlon, np.random.default_rng(2)))):
            print(f"{name:46s} | {kind:>22s} | " + " | ".join(f"{100 * f:7.3f}%" for f in fractions))
    mp16 = mp16_positions()
    print(f"{'MP-16 100K (GeoCLIP 1.3.0 gallery), as is':46s} | {'random pairs':>22s} | "
          + " | ".join(f"{100 * f:7.3f}%" for f in random_pairs(mp16, np.random.default_rng(3))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
