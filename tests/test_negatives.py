"""Negative sources: every column of every step carries its own location and its own image.

The expectations are built here from scratch: which sample each column holds (the global batch,
then a plain ring buffer of earlier batches), its great-circle distance from scikit-learn's
haversine, and its dissimilarity from the store's plain (view-0) features in float64.
"""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics.pairwise import haversine_distances

from geovario.config import load_config
from geovario.data.store import FeatureStore, write_store
from geovario.distributed import Dist, DistributedBatchSampler
from geovario.errors import GeovarioError
from geovario.geo import EARTH_RADIUS_KM, haversine_km
from geovario.negatives import GalleryNeighbours, NegativeQueue
from geovario.train import Trainer, train
from test_train import SMALL, structured_features

BATCH, QUEUE = 16, 40  # the queue wraps mid-batch at the third step


def spread_positions(n: int) -> np.ndarray:
    """n positions on a 6 x 8 degree grid within +-54 degrees latitude: every pair is at least 300 km apart."""
    lat = np.arange(-54.0, 55.0, 6.0)
    lon = np.arange(-180.0, 180.0, 8.0)
    grid = np.stack(np.meshgrid(lat, lon, indexing="ij"), -1).reshape(-1, 2)
    return grid[np.random.default_rng(0).permutation(len(grid))[:n]]


def make_view_store(folder, n=192, dims=24, seed=0):
    """A store whose augmented views differ from the plain features, so a geometry read from a view shows."""
    latlon = spread_positions(n)
    plain = structured_features(latlon, dims, seed)
    views = plain[:, None] + np.random.default_rng(seed + 1).normal(scale=0.8, size=(n, 3, dims))
    return write_store(folder, plain, latlon, views=views, dtype="float32")


@pytest.fixture(scope="module")
def view_store(tmp_path_factory):
    return make_view_store(tmp_path_factory.mktemp("views") / "store")


def ring_buffer_ids(batches: list[np.ndarray], size: int) -> list[int]:
    """Sample ids a GPS queue of ``size`` holds after ``batches``, in storage order (GeoCLIP's ring buffer)."""
    slots, ptr, count = [None] * size, 0, 0
    for batch in batches:
        ids = [int(i) for i in batch]
        if len(ids) >= size:
            ids, ptr = ids[-size:], 0
        for i in ids:
            slots[ptr], ptr = i, (ptr + 1) % size
        count = min(size, count + len(ids))
    return slots[:count]


def reference_geometry(store: FeatureStore, queries: np.ndarray, columns: np.ndarray, embed=None):
    """(lags km, 1 - cos) from scikit-learn's haversine and the plain features in float64.

    ``columns`` is (C,) for columns every query shares, or (q, C) for per-query columns.
    """
    gps = np.radians(store.gps.astype(np.float32).astype(np.float64))  # training reads the GPS as float32
    features = store.rows(np.arange(len(store))).astype(np.float64)
    if embed is not None:
        with torch.no_grad():
            features = embed(torch.from_numpy(features).float()).double().numpy()
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    per_row = columns if columns.ndim == 2 else np.broadcast_to(columns, (len(queries), len(columns)))
    lags = np.stack([haversine_distances(gps[[q]], gps[c])[0] for q, c in zip(queries, per_row)]) * EARTH_RADIUS_KM
    dissimilarity = np.stack([1 - unit[c] @ unit[q] for q, c in zip(queries, per_row)])
    return lags, dissimilarity


def expected_queue_step(store, step, world=Dist(), local_loss=False, batch=BATCH, queue=QUEUE, seed=0):
    """(query sample ids, column sample ids) of a queue step: [global batch, queue in storage order]."""
    sampler = DistributedBatchSampler(len(store), batch, seed, world)
    index, rows = sampler.batch(step)
    columns = np.array(list(index) + ring_buffer_ids([sampler.batch(s)[0] for s in range(step)], queue))
    return (index[rows] if local_loss else index), columns


def check_queue_record(record: dict, store, step, noise: bool, world=Dist(), local_loss=False, embed=None, batch=BATCH, queue=QUEUE):
    """Every column's GPS, encoded GPS, lag and dissimilarity belong to that column's own sample, and a row's
    own sample, queued earlier, is excluded from that row (and only there)."""
    queries, columns = expected_queue_step(store, step, world, local_loss, batch, queue)
    gps = torch.from_numpy(store.gps.astype(np.float32))
    torch.testing.assert_close(record["query_gps"], gps[queries], rtol=0, atol=0)
    torch.testing.assert_close(record["column_gps"], gps[columns], rtol=0, atol=0)
    first = world.rank * len(queries) if local_loss else 0
    assert record["targets"].tolist() == list(range(first, first + len(queries)))
    own = columns[None, :] == queries[:, None]
    own[np.arange(len(queries)), first + np.arange(len(queries))] = False  # the positive stays
    np.testing.assert_array_equal(record["excluded"].numpy(), own)
    encoded = record["column_locations"].double().numpy()
    moved = haversine_km(encoded[:, 0], encoded[:, 1], gps[columns, 0].double().numpy(), gps[columns, 1].double().numpy())
    if noise:  # 150 m on the batch, 1000 m on the queue: each column is encoded near its own sample
        assert moved.max() < 8.0 and moved.mean() > 0.05
    else:
        assert moved.max() == 0.0
    lags, dissimilarity = reference_geometry(store, queries, columns, embed)
    np.testing.assert_allclose(record["lags_km"].numpy(), lags, rtol=0, atol=1e-6)
    np.testing.assert_allclose(record["dissimilarity"].numpy(), dissimilarity, rtol=0, atol=2e-5)


def record_of(trainer, step):
    from ddp_worker import candidate_record

    return {k.split(".", 1)[1]: v for k, v in candidate_record(trainer, step).items()}


def queue_trainer(store, tmp_path, *extra):
    config = load_config(None, SMALL + [f"data.train={store.folder}", "loss.name=semivariogram", f"model.queue_size={QUEUE}",
                                        f"train.batch_size={BATCH}", *extra])
    return Trainer(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize("noise", [True, False], ids=["noise", "no-noise"])
def test_queue_columns_carry_their_own_geometry_before_and_after_the_wrap(tmp_path, view_store, noise):
    extra = [] if noise else ["negatives.batch_noise_m=0", "negatives.queue_noise_m=0"]
    trainer = queue_trainer(view_store, tmp_path, *extra)
    for step in range(6):  # steps 0-1 fill the queue, step 2 wraps it mid-batch, 3-5 run on a wrapped queue
        trainer.step()
        record = record_of(trainer, step)
        assert record["column_gps"].shape[0] == BATCH + min(QUEUE, BATCH * step)
        check_queue_record(record, view_store, step, noise)
        assert torch.equal(trainer.last_candidates.locations, record["column_locations"])  # one process encodes every column


def test_a_sample_never_meets_its_own_queued_entry_as_a_negative(tmp_path):
    """48 samples, batches of 16, a queue of 64: from the second epoch every sample's earlier entry waits in the
    queue. That column is excluded from the sample's own row only; the queue keeps its size; the loss sees it."""
    store = make_view_store(tmp_path / "store", n=48)
    config = load_config(None, SMALL + [f"data.train={store.folder}", "loss.name=semivariogram", "model.queue_size=64",
                                        "train.batch_size=16"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    seen = []
    real_loss = trainer.loss_fn.forward
    trainer.loss_fn.forward = lambda inputs: seen.append(inputs.excluded) or real_loss(inputs)
    for step in range(9):  # three epochs
        out = trainer.step()
        record = record_of(trainer, step)
        check_queue_record(record, store, step, noise=True, batch=16, queue=64)
        own = record["excluded"]
        assert int(trainer.negatives.queue.count) == min(64, 16 * (step + 1))
        if step < 3:  # the first epoch: nobody has been queued before
            assert trainer.last_candidates.excluded is None and seen[-1] is None and "own_entries_excluded" not in out.stats
        else:  # samples of the batch were queued in an earlier epoch (at step 3 all of them, exactly once)
            assert own.sum(1).max() <= 2 and (own.sum(1).min() == 1 if step == 3 else own.any())
            assert seen[-1] is trainer.last_candidates.excluded  # what the loss received
            assert out.stats["own_entries_excluded"] == int(own.sum())
            lags = record["lags_km"][own]
            assert float(lags.max()) == 0.0  # each excluded column was the row itself, at 0 km


def test_learned_space_geometry_embeds_each_columns_own_plain_features(tmp_path, view_store):
    trainer = queue_trainer(view_store, tmp_path, "loss.refit_every=2")
    for step in range(6):
        before = copy.deepcopy(trainer.model)  # the model the step's geometry is computed with
        learned = trainer.learned_space
        trainer.step()
        check_queue_record(record_of(trainer, step), view_store, step, noise=True,
                           embed=before.encode_images if learned else None)
    assert trainer.learned_space  # refitted at steps 2 and 4


def check_gallery_record(record: dict, store, queries: np.ndarray, k: int, noise: bool = True):
    """Column 0 is the query's own location; columns 1..k the gallery points the record names, with their geometry."""
    gps = store.gps.astype(np.float32).astype(np.float64)
    picked = record["column_index"].numpy()
    columns = np.concatenate([queries[:, None], picked], 1)  # the gallery is the training store: index = sample
    assert picked.shape == (len(queries), k) and (picked != queries[:, None]).all()
    np.testing.assert_array_equal(record["column_gps"].numpy(), gps[columns])
    np.testing.assert_array_equal(record["column_locations"][:, 1:].double().numpy(), gps[picked].astype(np.float32))
    moved = haversine_km(*record["column_locations"][:, 0].double().numpy().T, *gps[queries].T)
    assert (0 < moved.max() < 2.0) if noise else moved.max() == 0  # the true location, with 150 m of noise or none
    lags, dissimilarity = reference_geometry(store, queries, columns)
    np.testing.assert_allclose(record["lags_km"].numpy(), lags, rtol=0, atol=1e-6)
    np.testing.assert_allclose(record["dissimilarity"].numpy(), dissimilarity, rtol=0, atol=2e-5)


@pytest.mark.parametrize("noise", [True, False], ids=["noise", "no-noise"])
def test_gallery_columns_carry_their_own_geometry(tmp_path, view_store, noise):
    config = load_config(None, SMALL + [f"data.train={view_store.folder}", "loss.name=semivariogram", "negatives.source=gallery",
                                        "negatives.selection=mixed", f"train.batch_size={BATCH}",
                                        f"negatives.batch_noise_m={150 if noise else 0}"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    for step in range(3):
        trainer.step()
        index, rows = trainer.sampler.batch(step)
        check_gallery_record(record_of(trainer, step), view_store, index[rows], k=8, noise=noise)


def test_gallery_of_positions_only_cannot_serve_a_geometry_loss(tmp_path, view_store):
    (tmp_path / "g.csv").write_text("LAT,LON\n" + "\n".join(f"{a},{b}" for a, b in spread_positions(50)) + "\n")
    config = load_config(None, SMALL + [f"data.train={view_store.folder}", "loss.name=semivariogram", "negatives.source=gallery",
                                        f"negatives.gallery={tmp_path / 'g.csv'}"])
    with pytest.raises(GeovarioError, match="config key negatives.gallery: .*must be a feature store"):
        Trainer(config, tmp_path / "run", progress=False)


def test_no_false_negatives_where_no_two_places_are_close(tmp_path):
    """The reproduction of issue 13: positions >= 300 km apart, no GPS noise, queue wrapping at step 4.

    Before the fix the wrapped queue's overwritten columns carried the current batch's own GPS and
    features, so every query met itself at h = 0 and 1/79 of negatives counted as false negatives.
    (From the second epoch on a queue can hold a sample's own earlier entry: that pair is at 0 km.)
    """
    store = make_view_store(tmp_path / "store", n=320)  # 20 steps an epoch: no sample comes back into a batch
    config = load_config(None, SMALL + [f"data.train={store.folder}", "loss.name=semivariogram", "loss.theta2_km=25",
                                        "negatives.batch_noise_m=0", "negatives.queue_noise_m=0", "model.queue_size=64",
                                        "train.batch_size=16", "train.max_steps=12"])
    train(config, tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["step"].tolist() == list(range(1, 13))
    assert (metrics["false_fraction"] == 0).all(), metrics["false_fraction"].tolist()
    assert (metrics["hard_fraction"] > 0).all()  # the loss did act: far look-alikes were found


def test_selections_respect_their_definitions():
    rng = np.random.default_rng(0)
    gallery = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, 3000))), rng.uniform(-180, 180, 3000)], 1)
    gallery[:5] = [[45.0, 7.0], [45.001, 7.0], [45.05, 7.0], [45.2, 7.1], [46.0, 7.0]]  # neighbours of the query
    negatives = GalleryNeighbours(gallery, far_km=2500, exclude_km=1.0)
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


def _reference_queue(chunks, size):
    """What a queue of ``size`` must hold: the last ``size`` rows ever enqueued, as a set of ids."""
    seen = np.concatenate(chunks) if chunks else np.zeros(0)
    return set(seen[-size:].tolist())


@pytest.mark.parametrize("batch_sizes", [[3] * 10, [7, 1, 16, 5, 2, 9], [20], [13, 13, 13], [16, 16, 16, 16, 1]])
def test_queue_wraps_for_any_batch_size(batch_sizes):
    size = 16
    queue = NegativeQueue(size, feature_dim=3)
    chunks, next_id, expected_ptr = [], 0, 0
    for n in batch_sizes:
        ids = np.arange(next_id, next_id + n, dtype=np.float32)
        next_id += n
        gps = torch.from_numpy(np.stack([ids, -ids], 1))
        features = torch.from_numpy(np.stack([ids, ids * 2, ids * 3], 1))
        queue.enqueue(gps, features)
        chunks.append(ids)
        gps_rows, feature_rows = queue.filled()
        assert len(gps_rows) == min(size, next_id)
        assert set(gps_rows[:, 0].tolist()) == _reference_queue(chunks, size)
        assert gps_rows[:, 0].tolist() == ring_buffer_ids(chunks, size)  # and in the storage order the columns use
        # The feature queue stays row-aligned with the GPS queue.
        torch.testing.assert_close(feature_rows[:, 0], gps_rows[:, 0])
        torch.testing.assert_close(feature_rows[:, 2], 3 * gps_rows[:, 0])
        torch.testing.assert_close(gps_rows[:, 1], -gps_rows[:, 0])
        # GeoCLIP's pointer rule: advance by n, or restart at 0 after a batch as large as the queue.
        expected_ptr = 0 if n >= size else (expected_ptr + n) % size
        assert int(queue.ptr) == expected_ptr


def test_queue_pointer_matches_geoclip_ring_buffer():
    queue = NegativeQueue(10, feature_dim=1)
    for n in [4, 4, 4]:
        queue.enqueue(torch.zeros(n, 2))
    assert int(queue.ptr) == 2 and int(queue.count) == 10
    queue.enqueue(torch.zeros(25, 2))  # larger than the queue: keeps the tail, pointer back to 0
    assert int(queue.ptr) == 0
    with pytest.raises(ValueError, match="3 GPS rows but 2 feature rows"):
        queue.enqueue(torch.zeros(3, 2), torch.zeros(2, 1))


def test_a_checkpoint_from_before_the_queue_kept_ids_loads_with_every_entry_unknown():
    from geovario.negatives import QueueNegatives

    old = QueueNegatives(8, feature_dim=3)
    old.queue.enqueue(torch.ones(5, 2), torch.ones(5, 3), torch.arange(5))
    state = {k: v for k, v in old.state_dict().items() if k != "queue.ids"}  # as saved before 0.2
    new = QueueNegatives(8, feature_dim=3)
    new.load_state_dict(state)
    assert int(new.queue.count) == 5 and new.queue.filled_ids().tolist() == [-1] * 5
    # Unknown entries are never excluded, even for a query whose id is -1's neighbour in value.
    from geovario.negatives.queue import own_entries

    excluded = own_entries(torch.tensor([0, 1]), torch.cat([torch.tensor([0, 1]), new.queue.filled_ids()]), torch.tensor([0, 1]))
    assert not excluded.any()


def test_batch_and_queue_gps_get_their_own_noise():
    """GeoCLIP's recipe: 150 m on the batch's GPS, 1,000 m on the queue's (DESIGN.md §4), measured apart."""
    from geovario.negatives import Batch, QueueNegatives

    n = 4096
    rng = np.random.default_rng(0)
    gps = torch.from_numpy(np.stack([rng.uniform(-60, 60, n), rng.uniform(-170, 170, n)], 1).astype(np.float32))
    features = torch.ones(n, 4)
    source = QueueNegatives(n, feature_dim=4, batch_noise_m=150.0, queue_noise_m=1000.0)
    source.queue.enqueue(gps, features, torch.arange(n) + n)  # earlier samples fill the queue
    batch = Batch(features, features, gps, np.arange(n), slice(0, n))
    candidates = source.candidates(batch, torch.Generator().manual_seed(3))
    moved = (candidates.column_locations.double() - candidates.column_gps.double()).numpy() * 111_320  # metres, GeoCLIP's degree
    batch_m, queue_m = moved[:n].std(0), moved[n:].std(0)
    assert batch_m.tolist() == pytest.approx([150.0, 150.0], rel=0.05)
    assert queue_m.tolist() == pytest.approx([1000.0, 1000.0], rel=0.05)


@pytest.mark.parametrize("loss, parts, geometry", [("infonce", None, False), ("hcl_debiased", None, False), ("triplet", None, False),
                                                   ("semivariogram", None, True),
                                                   ("combined", "[{name: infonce, weight: 1}, {name: semivariogram, weight: 1}]", True),
                                                   ("combined", "[{name: infonce, weight: 1}, {name: triplet, weight: 1}]", False)])
def test_only_losses_that_use_geometry_pay_for_it(tmp_path, view_store, loss, parts, geometry):
    """Lags and dissimilarities cost a (B, C) pair of matrices and a feature queue read every step: computed for the
    semivariogram loss (alone or in a combination), not for the others."""
    extra = [f"loss.parts={parts}"] if parts else []
    config = load_config(None, SMALL + [f"data.train={view_store.folder}", f"loss.name={loss}", f"model.queue_size={QUEUE}",
                                        f"train.batch_size={BATCH}", *extra])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.step()
    candidates = trainer.last_candidates
    assert (candidates.lags_km is not None) == geometry and (candidates.dissimilarity is not None) == geometry
    assert ((tmp_path / "run" / "variogram.json").is_file()) == geometry  # the fitted variogram, only where it is used


def test_a_gallery_source_keeps_no_state_and_its_defaults_are_the_configs():
    from geovario.config import NegativesSection
    from geovario.negatives import GalleryNegatives, QueueNegatives

    gallery = spread_positions(50)
    source = GalleryNegatives(gallery)
    assert source.state_dict() == {}
    source.load_state_dict({})  # a checkpoint of a gallery run holds nothing for it
    with pytest.raises(ValueError, match="GalleryNegatives keeps no state, got"):
        source.load_state_dict({"queue.gps": torch.zeros(3, 2)})  # a queue run's checkpoint
    configured = NegativesSection()
    assert (source.k, source.selection, source.neighbours.far_km, source.neighbours.exclude_km, source.batch_noise_m) == (
        configured.k, configured.selection, configured.far_km, configured.exclude_km, configured.batch_noise_m)
    queue = QueueNegatives(8, feature_dim=3)
    assert (queue.batch_noise_m, queue.queue_noise_m) == (configured.batch_noise_m, configured.queue_noise_m)
    own = GalleryNeighbours(gallery)
    assert (own.far_km, own.exclude_km) == (configured.far_km, configured.exclude_km)


def _equator(lons) -> np.ndarray:
    """Points on the equator: the distance between two is R times their longitude difference, exactly as haversine_km says."""
    return np.stack([np.zeros(len(lons)), np.asarray(lons, dtype=np.float64)], 1)


def test_far_negatives_are_uniform_among_the_points_far_enough_and_the_boundary_counts():
    """Index 3 is too close; 0, 1 and 2 lie beyond far_km, index 2 exactly at it ("at least far_km" includes it).
    Redrawn slots must be uniform among all far points, index 0 included."""
    query = np.array([[0.0, 0.0]])
    gallery = _equator([60.0, 80.0, 40.0, 10.0])
    far_km = float(haversine_km(0.0, 0.0, 0.0, 40.0))
    neighbours = GalleryNeighbours(gallery, far_km=far_km, exclude_km=1.0)
    picks = neighbours.select(np.repeat(query, 3000, axis=0), 10, "far", np.random.default_rng(0)).ravel()
    frequency = np.bincount(picks, minlength=4) / len(picks)
    np.testing.assert_allclose(frequency, [1 / 3, 1 / 3, 1 / 3, 0.0], atol=0.01)


def test_when_redraws_do_not_find_far_points_the_exact_fallback_does():
    """A gallery of 1,000 close points and one far one: uniform redraws rarely hit it within 20 rounds."""
    gallery = np.concatenate([_equator([120.0]), _equator(np.linspace(0.001, 0.01, 1000))])
    neighbours = GalleryNeighbours(gallery, far_km=2500.0, exclude_km=1.0)
    picks = neighbours.select(np.zeros((4, 2)), 8, "far", np.random.default_rng(1))
    assert (picks == 0).all()
    lonely = GalleryNeighbours(_equator(np.linspace(0.001, 0.01, 50)), far_km=2500.0)
    with pytest.raises(GeovarioError, match=r"no gallery point lies 2500 km or more from \(0.0000, 0.0000\)"):
        lonely.select(np.zeros((1, 2)), 3, "far", np.random.default_rng(2))


def test_near_negatives_are_the_nearest_beyond_the_exclusion_even_past_many_excluded_points():
    """40 points closer than exclude_km to the query (more than a fixed look-ahead of 32), then the ring of real
    neighbours; a point exactly at exclude_km is one ("at least exclude_km"). k = 1 and k = 0 (mixed, k = 1) too."""
    exclude_km = float(haversine_km(0.0, 0.0, 0.0, 0.05))
    inside = _equator(np.linspace(0.0, 0.049, 40))
    ring = _equator([0.05, 0.3, 0.4, 0.5, 0.6, 0.7])  # the first exactly at exclude_km
    gallery = np.concatenate([ring[::-1], inside])
    far_km = float(haversine_km(0.0, 0.0, 0.0, 0.6))
    neighbours = GalleryNeighbours(gallery, far_km=far_km, exclude_km=exclude_km)
    query = np.zeros((1, 2))
    near = neighbours.select(query, 4, "near", np.random.default_rng(0))
    assert near[0].tolist() == [5, 4, 3, 2]  # 0.05, 0.3, 0.4 and 0.5 degrees east: nearest first
    assert neighbours.select(query, 1, "near", np.random.default_rng(0))[0].tolist() == [5]
    mixed = neighbours.select(query, 1, "mixed", np.random.default_rng(0))  # k // 2 = 0 near, 1 far
    assert mixed.shape == (1, 1) and mixed[0, 0] in (0, 1)
    small = GalleryNeighbours(np.concatenate([inside, _equator([0.3, 90.0])]), far_km=2500.0, exclude_km=exclude_km)
    topped = small.select(query, 3, "near", np.random.default_rng(0))[0]  # only 2 points beyond: topped up from them
    assert topped[:2].tolist() == [40, 41] and topped[2] in (40, 41)


def test_a_gallery_source_uses_the_world_it_is_given():
    from geovario.negatives import GalleryNegatives

    world = Dist(1, 1, 2)
    assert GalleryNegatives(spread_positions(10), world=world).world is world


def test_a_queue_of_one_keeps_the_last_entry():
    queue = NegativeQueue(1, feature_dim=2)
    queue.enqueue(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.ones(2, 2), torch.tensor([7, 8]))
    assert queue.filled()[0].tolist() == [[3.0, 4.0]] and queue.filled_ids().tolist() == [8] and queue.full


def test_pair_geometry_without_features_on_either_side_has_no_dissimilarity():
    from geovario.negatives import pair_geometry

    gps = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    features = torch.randn(2, 4)
    for query, columns in ((features, None), (None, features), (None, None)):
        lags, dissimilarity = pair_geometry(gps, gps, query, columns)
        assert dissimilarity is None and lags.shape == (2, 2) and float(lags[0, 1]) == pytest.approx(float(haversine_km(0, 0, 0, 1)))


def test_the_thesis_penalty_applies_from_the_first_step_with_gallery_negatives(tmp_path, view_store):
    """The penalty waits for the feature queue to fill; gallery negatives have no queue to wait for."""
    config = load_config(None, SMALL + [f"data.train={view_store.folder}", "loss.name=semivariogram", "loss.mode=penalty",
                                        "negatives.source=gallery", f"train.batch_size={BATCH}"])
    out = Trainer(config, tmp_path / "run", progress=False).step()
    assert out.stats["penalized_fraction"] > 0


def test_the_logits_are_the_scaled_cosines_of_each_row_with_each_column(tmp_path, view_store):
    """Row i, column j: scale * image_i . location_j, with the columns in the order the candidates list them (the batch,
    then the queue) or, for gallery negatives, each row's own [true location, k negatives]."""
    for source in ("queue", "gallery"):
        config = load_config(None, SMALL + [f"data.train={view_store.folder}", "loss.name=infonce", f"negatives.source={source}",
                                            f"model.queue_size={QUEUE}", f"train.batch_size={BATCH}"])
        trainer = Trainer(config, tmp_path / source, progress=False)
        for _ in range(3):  # the queue holds earlier batches
            trainer.step()
        c = trainer.last_candidates
        image = torch.nn.functional.normalize(torch.randn(BATCH, 16, dtype=torch.float64), dim=1)
        locations = torch.nn.functional.normalize(torch.randn(len(c.locations), 16, dtype=torch.float64), dim=1)
        scale = torch.tensor(7.0, dtype=torch.float64)
        logits = c.loss_inputs(image, locations, scale).logits
        if source == "queue":
            expected = np.array([[7.0 * float(image[i] @ locations[j]) for j in range(len(locations))] for i in range(BATCH)])
        else:
            per_row = locations.reshape(BATCH, -1, 16)
            expected = np.array([[7.0 * float(image[i] @ per_row[i, j]) for j in range(per_row.shape[1])] for i in range(BATCH)])
        assert logits.shape == expected.shape == ((BATCH, BATCH + min(QUEUE, 2 * BATCH)) if source == "queue" else (BATCH, 9))
        np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-12)


def test_the_queue_state_round_trips_with_its_ids_and_entries_without_ids_are_nobodys():
    from geovario.negatives import QueueNegatives
    from geovario.negatives.queue import own_entries

    source = QueueNegatives(6, feature_dim=2)
    source.queue.enqueue(torch.ones(3, 2), torch.ones(3, 2), torch.tensor([0, 1, 2]))
    source.queue.enqueue(torch.zeros(2, 2))  # no ids given (a library caller): unknown, never anyone's own entry
    restored = QueueNegatives(6, feature_dim=2)
    restored.load_state_dict(source.state_dict())
    assert restored.queue.filled_ids().tolist() == [0, 1, 2, -1, -1]
    columns = torch.cat([torch.tensor([1, 2]), restored.queue.filled_ids()])
    assert own_entries(torch.tensor([1, 2]), columns, torch.tensor([0, 1])).tolist() == [
        [False, False, False, True, False, False, False], [False, False, False, False, True, False, False]]


def test_near_negatives_look_far_enough_ahead_for_every_row():
    """Two queries: one with 40 gallery points inside its exclusion radius, one with none. The look-ahead must
    suit the first (the most excluded), or its nearest real neighbours would be replaced by random ones."""
    exclude_km = float(haversine_km(0.0, 0.0, 0.0, 0.05))
    crowded = _equator(np.linspace(0.0, 0.049, 40))
    ring = _equator([0.2, 0.3, 0.4])
    elsewhere = np.array([[30.0, 60.0], [30.0, 60.3], [30.0, 60.6]])
    neighbours = GalleryNeighbours(np.concatenate([ring, crowded, elsewhere]), far_km=2500.0, exclude_km=exclude_km)
    for seed in range(5):  # the nearest are no draw: any seed gives them (a random top-up would match one seed by luck)
        near = neighbours.select(np.array([[0.0, 0.0], [30.0, 59.9]]), 2, "near", np.random.default_rng(seed))
        assert near.tolist() == [[0, 1], [43, 44]], seed


def test_the_exact_fallback_alone_keeps_the_rule(monkeypatch):
    """With no uniform redraws at all, every far negative still comes from the points at least far_km away (one exactly
    at it), for every row, including rows whose first draw was partly right."""
    from geovario.negatives import gallery as gallery_module

    monkeypatch.setattr(gallery_module, "REDRAW_ROUNDS", 0)
    rng = np.random.default_rng(4)
    gallery = np.stack([rng.uniform(40, 60, 200), rng.uniform(-10, 30, 200)], 1)  # Europe...
    gallery[:3] = [[-33.9, 151.2], [35.7, 139.7], [40.7, -74.0]]  # ...and Sydney, Tokyo, New York
    queries = np.array([[48.85, 2.35], [52.5, 13.4], [41.9, 12.5]])
    far_km = float(haversine_km(48.85, 2.35, 40.7, -74.0))  # New York lies exactly far_km from Paris
    picks = GalleryNeighbours(gallery, far_km=far_km).select(queries, 12, "far", np.random.default_rng(5))
    chosen = gallery[picks]
    distances = haversine_km(queries[:, None, 0], queries[:, None, 1], chosen[..., 0], chosen[..., 1])
    assert (distances >= far_km).all()
    assert 2 in set(picks[0].tolist())  # the point exactly at far_km is eligible


def test_a_queue_source_moves_its_buffers_to_the_device():
    from geovario.negatives import QueueNegatives

    source = QueueNegatives(8, feature_dim=3).to(torch.device("meta"))  # any device but the CPU shows the move
    assert {source.queue.gps.device.type, source.queue.features.device.type, source.queue.ids.device.type} == {"meta"}


# --- the thesis's neighbourhood negatives (get_neg) ---

def brute_force_neighbourhoods(gallery: np.ndarray, latlon: np.ndarray, k: int) -> tuple[set, set]:
    """The thesis's near set (each location's k nearest gallery points, those at a batch location's exact coordinates
    dropped) and far set (each location's 2k nearest without any near point), from every distance."""
    near, wider = set(), set()
    for lat, lon in latlon:
        order = np.argsort(haversine_km(lat, lon, gallery[:, 0], gallery[:, 1]), kind="stable")
        near |= set(order[:k].tolist())
        wider |= set(order[: 2 * k].tolist())
    batch = {(round(a, 6), round(b, 6)) for a, b in latlon}
    far = wider - near
    near = {i for i in near if (round(gallery[i, 0], 6), round(gallery[i, 1], 6)) not in batch}
    return near, far


@pytest.mark.parametrize("count", [40, 4000])
def test_neighbourhood_negatives_follow_the_thesis_rule(count):
    from geovario.negatives import NeighbourhoodNegatives

    rng = np.random.default_rng(0)
    gallery = np.stack([rng.uniform(-60, 60, 3000), rng.uniform(-180, 180, 3000)], 1)
    latlon = np.concatenate([gallery[:5], np.stack([rng.uniform(-60, 60, 7), rng.uniform(-180, 180, 7)], 1)])  # 5 at gallery points
    source = NeighbourhoodNegatives(gallery, count=count, neighbours=8)
    picked = source.select(latlon, np.random.default_rng(1))
    near, far = brute_force_neighbourhoods(gallery, latlon, 8)
    assert not set(range(5)) & near  # the batch's own places are never its negatives
    n_near = min(count // 2, len(near))
    assert len(picked) == len(set(picked.tolist())) == n_near + min(count - count // 2, len(far))
    assert set(picked[:n_near].tolist()) <= near and set(picked[n_near:].tolist()) <= far
    if count == 4000:  # more wanted than there are: every near and far point, once
        assert set(picked.tolist()) == near | far
    else:
        assert n_near == 20 and len(picked) == 40


def test_neighbourhood_columns_carry_their_own_geometry(tmp_path, view_store):
    """Columns: the global batch, then the drawn gallery points (the training store, so each is a sample), each with
    its own lag and dissimilarity; noise of 150 m on the batch and 1,000 m on the negatives."""
    config = load_config(None, SMALL + [f"data.train={view_store.folder}", "loss.name=semivariogram", "negatives.source=neighbourhood",
                                        "negatives.neighbours=4", f"train.batch_size={BATCH}", "model.queue_size=200"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.step()
    record = record_of(trainer, 0)
    index, _ = trainer.sampler.batch(0)
    gps = view_store.gps.astype(np.float32).astype(np.float64)
    place = {(a, b): i for i, (a, b) in enumerate(gps)}
    negatives = np.array([place[tuple(p)] for p in record["column_gps"][BATCH:].numpy()])
    near, far = brute_force_neighbourhoods(gps, gps[index], 4)
    assert set(negatives.tolist()) == near | far  # 200 wanted: all of them
    columns = np.concatenate([index, negatives])
    np.testing.assert_array_equal(record["column_gps"].numpy(), gps[columns])
    lags, dissimilarity = reference_geometry(view_store, index, columns)
    np.testing.assert_allclose(record["lags_km"].numpy(), lags, rtol=0, atol=1e-6)
    np.testing.assert_allclose(record["dissimilarity"].numpy(), dissimilarity, rtol=0, atol=2e-5)
    encoded = record["column_locations"].double().numpy()
    moved = haversine_km(encoded[:, 0], encoded[:, 1], gps[columns, 0], gps[columns, 1]) / np.sqrt(2)  # km per axis, roughly
    assert 0.05 < moved[:BATCH].mean() < 0.4 and 0.5 < moved[BATCH:].mean() < 2.0
    assert record["targets"].tolist() == list(range(BATCH))


def test_haversine_smoothing_gets_lags_and_no_variogram(tmp_path, view_store):
    config = load_config(None, SMALL + [f"data.train={view_store.folder}", "loss.name=haversine_smoothing", f"model.queue_size={QUEUE}",
                                        f"train.batch_size={BATCH}"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    out = trainer.step()
    assert trainer.last_candidates.lags_km is not None and not (tmp_path / "run" / "variogram.json").is_file()
    assert 0 < out.stats["neighbour_target_share"] < 1


def test_a_neighbourhood_source_keeps_no_state_and_its_defaults_are_the_configs():
    from geovario.config import ModelSection, NegativesSection
    from geovario.negatives import NeighbourhoodNegatives

    source = NeighbourhoodNegatives(spread_positions(50))
    configured = NegativesSection()
    assert (source.count, source.neighbours, source.batch_noise_m, source.noise_m, source.geometry) == (
        ModelSection().queue_size, configured.neighbours, configured.batch_noise_m, configured.queue_noise_m, False)
    assert source.state_dict() == {}
    from geovario.negatives import Batch  # and it runs alone, outside torchrun

    gps = torch.from_numpy(spread_positions(50)[:4].astype(np.float32))
    candidates = source.candidates(Batch(torch.ones(4, 3), torch.ones(4, 3), gps, np.arange(4), slice(0, 4)), torch.Generator().manual_seed(0),
                                   np.random.default_rng(0))
    assert torch.equal(candidates.column_gps[:4], gps) and len(candidates.column_gps) > 4
    assert len(candidates.locations) == len(candidates.column_gps)  # one process encodes every column, no padding


def test_a_gallery_too_small_for_2k_neighbours_splits_itself_in_half():
    """neighbours = 8 over a gallery of 11 points: the near set is each location's 5 nearest, the far set the next 5
    (2k must not exceed the gallery)."""
    from geovario.negatives import NeighbourhoodNegatives

    rng = np.random.default_rng(2)
    gallery = np.stack([rng.uniform(-60, 60, 11), rng.uniform(-180, 180, 11)], 1)
    latlon = np.array([[10.0, 20.0]])
    source = NeighbourhoodNegatives(gallery, count=100, neighbours=8)
    assert source.neighbours == 5
    near, far = brute_force_neighbourhoods(gallery, latlon, 5)
    picked = source.select(latlon, np.random.default_rng(0))
    assert set(picked[:5].tolist()) == near and set(picked[5:].tolist()) == far and len(picked) == 10


def test_a_gallery_point_within_a_tenth_of_a_metre_of_a_batch_location_is_that_place():
    """The thesis drops gallery points at a batch location's coordinates; coordinates that differ by less than
    1e-6 degrees (0.1 m, a float's rounding) are the same place, and 3e-6 degrees (0.3 m) away is another."""
    from geovario.negatives import NeighbourhoodNegatives

    rng = np.random.default_rng(3)
    gallery = np.stack([rng.uniform(-60, 60, 200), rng.uniform(-180, 180, 200)], 1)
    gallery[0], gallery[1] = [10.0, 20.0], [-30.0, 40.0]
    latlon = np.array([[10.0000003, 19.9999998], [-30.000003, 40.0]])
    source = NeighbourhoodNegatives(gallery, count=400, neighbours=4)
    picked = set(source.select(latlon, np.random.default_rng(0)).tolist())
    assert 0 not in picked and 1 in picked
