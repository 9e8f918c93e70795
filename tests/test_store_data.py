"""What a training step reads from a feature store: one of the K + 1 views per sample, uniformly."""
import numpy as np
import torch

from geovario.data.store import write_store
from geovario.train import StoreData


def _labelled_store(folder, n=50, k=3):
    """Every value of a row's view v is v + 1 (the plain features are 0), so a feature says which view it came from."""
    latlon = np.stack([np.linspace(-60, 60, n), np.linspace(-170, 170, n)], 1)
    plain = np.zeros((n, 4), np.float32)
    views = np.broadcast_to(np.arange(1, k + 1, dtype=np.float32)[None, :, None], (n, k, 4)).copy()
    return write_store(folder, plain, latlon, views=views, dtype="float32")


def test_each_sample_reads_the_plain_crop_or_one_of_its_views_uniformly(tmp_path):
    data = StoreData(_labelled_store(tmp_path / "s"), use_views=True)
    index = np.arange(50)
    picked = []
    for step in range(60):
        batch = data.batch(index, slice(0, 50), torch.Generator().manual_seed(step), "cpu")
        assert torch.equal(batch.reference, torch.zeros(50, 4))  # the dissimilarity always compares plain crops
        values = batch.features[:, 0]
        assert torch.equal(batch.features, values[:, None].expand(50, 4))  # a whole row from one view
        picked.append(values)
    counts = np.bincount(torch.cat(picked).long().numpy(), minlength=5)
    assert counts[4] == 0 and (np.abs(counts[:4] / 3000 - 0.25) < 0.04).all(), counts  # plain, view 1, 2, 3: a quarter each


def test_without_views_every_sample_reads_its_plain_crop(tmp_path):
    data = StoreData(_labelled_store(tmp_path / "s"), use_views=False)
    batch = data.batch(np.arange(50), slice(10, 30), torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(batch.features, torch.zeros(20, 4)) and torch.equal(batch.reference, torch.zeros(20, 4))


def _image_data(tmp_path, monkeypatch, source):
    """ImageData over three records, with the decoding replaced by a marker: which path made a step's pixels shows."""
    from types import SimpleNamespace

    from geovario.train import data as training_data

    monkeypatch.setattr(training_data, "decode_step", lambda records, own, seed, preprocess, reference: np.full((len(own), 1), -1.0))
    records = [SimpleNamespace(id=f"p{i}", lat=float(i), lon=float(i), image=f"{i}.jpg") for i in range(3)]
    backbone = SimpleNamespace(feature_dim=4, preprocess=None, device=torch.device("cpu"))
    return training_data.ImageData(SimpleNamespace(records=records, source=str(source)), backbone, reference=False, workers=0)


def test_pixels_decoded_ahead_are_used_only_for_the_step_they_were_decoded_for(tmp_path, monkeypatch):
    import pytest

    from geovario.errors import GeovarioError

    data = _image_data(tmp_path, monkeypatch, tmp_path)
    own = np.array([2, 0])
    ahead = {"own": own, "seed": 5, "pixels": torch.ones(2, 1)}
    data._ahead = iter([ahead])
    assert torch.equal(data._pixels(own, 5), torch.ones(2, 1)) and data.steps_from_workers == 1
    for other_own, other_seed in ((own, 6), (np.array([2, 1]), 5)):  # another augmentation, or other rows
        data._ahead = iter([ahead])
        assert (data._pixels(other_own, other_seed) == -1).all() and data._ahead is None  # decoded here from now on
    data._ahead = iter([])  # the workers' plan is used up
    assert (data._pixels(own, 5) == -1).all() and data._ahead is None
    data._ahead = iter([{"own": own, "seed": 5, "error": "2.jpg: not an image"}])
    with pytest.raises(GeovarioError, match="2.jpg: not an image"):
        data._pixels(own, 5)


def test_an_image_datasets_fingerprint_is_its_files_or_its_folders_photos(tmp_path, monkeypatch):
    import hashlib

    (tmp_path / "data.csv").write_text("IMG_FILE,LAT,LON\n0.jpg,0,0\n")
    as_file = _image_data(tmp_path, monkeypatch, tmp_path / "data.csv").fingerprint()
    assert as_file == hashlib.sha256((tmp_path / "data.csv").read_bytes()).hexdigest()
    listing = "\n".join(f"p{i},{float(i)!r},{float(i)!r}" for i in range(3))
    assert _image_data(tmp_path, monkeypatch, tmp_path).fingerprint() == hashlib.sha256(listing.encode()).hexdigest()


def test_every_steps_augmentations_draw_from_a_wide_range_of_seeds():
    from geovario.train.data import _view_seed, step_generator

    seeds = {_view_seed(step_generator(0, step)) for step in range(500)}
    assert len(seeds) >= 495  # not a handful of augmentations repeated


def test_gallery_negatives_from_training_positions_take_distinct_rows(tmp_path):
    from geovario.config import load_config
    from geovario.train.data import training_positions

    store = _labelled_store(tmp_path / "s", n=50)
    data = StoreData(store, use_views=False)
    for gallery_max, expected in ((40, 40), (50, 50), (80, 50)):
        latlon, rows = training_positions(data, load_config(None, ["data.train=unused", f"data.gallery_max={gallery_max}"]))
        assert len(rows) == expected and len(set(rows.tolist())) == expected and (np.diff(rows) > 0).all()
        np.testing.assert_allclose(latlon, store.gps[rows], atol=1e-4)


def test_store_rows_read_ahead_are_the_planned_steps_rows_read_in_the_background(tmp_path, monkeypatch):
    """prefetch: a thread reads the next steps' rows (and views) while a step runs; each step gets its own rows,
    exactly what a read in the step would give, the plan stops at its last step, and leaving the plan reads here."""
    import threading

    from geovario.train import data as training_data

    from test_store_reads import numbered_store

    store = numbered_store(tmp_path / "s", n=40, views=2)[0]  # row i reads i in column 0, its view v 100 v more
    data = StoreData(store, use_views=True)
    readers = []
    original = store.rows
    monkeypatch.setattr(store, "rows", lambda own, *a: readers.append(threading.current_thread().name) or original(own, *a))
    orders = [np.random.default_rng(step).permutation(40)[:8] for step in range(6)]
    plan = lambda step: (orders[step], slice(2, 6))  # noqa: E731  this rank's rows 2..5 of each global batch
    data.prefetch(plan, 0, 1, 5)  # steps 1..4, as a run resumed at step 1 of 5
    assert len(data._ahead) == training_data.READ_AHEAD_STEPS == 2
    for step in range(1, 5):
        batch = data.batch(*plan(step), torch.Generator().manual_seed(step), "cpu")
        assert torch.equal(batch.reference[:, 0], torch.from_numpy(orders[step][2:6]).float())
        assert torch.equal(batch.features.remainder(100), batch.reference)  # a view of the same rows
        assert len(data._ahead) == min(2, 4 - step)  # never past the plan's last step
    assert data.steps_read_ahead == 4 and readers == ["geovario-store-rows_0"] * 4
    data.prefetch(plan, 0, 0, 6)
    batch = data.batch(orders[3], slice(2, 6), torch.Generator(), "cpu")  # not step 0's rows
    assert torch.equal(batch.reference[:, 0], torch.from_numpy(orders[3][2:6]).float())
    assert readers[-1] == threading.current_thread().name and data._reader is None and not data._ahead
    data.prefetch(plan, 0, 3, 3)  # nothing to read
    assert data._reader is None


def test_a_bad_row_read_ahead_fails_the_step_that_reads_it(tmp_path):
    import pytest

    from geovario.errors import GeovarioError

    from test_store_reads import numbered_store

    store = numbered_store(tmp_path / "s", n=40, shard_size=100)[0]  # one shard; row i reads i in column 0
    store._shards[0] = np.array(store._shards[0])  # an in-memory copy of the shard, its row 7 then spoilt
    store._shards[0][7] = np.nan
    data = StoreData(store, use_views=False)
    plan = lambda step: (np.array([[0, 1], [2, 3], [7, 4]][step]), slice(0, 2))  # noqa: E731
    data.prefetch(plan, 0, 0, 3)
    for step in (0, 1):  # step 2's read has already failed in the thread; steps 0 and 1 train
        assert torch.equal(data.batch(*plan(step), torch.Generator(), "cpu").reference[:, 0], torch.tensor(plan(step)[0], dtype=torch.float32))
    with pytest.raises(GeovarioError, match="feature row 7 .* contains NaN"):
        data.batch(*plan(2), torch.Generator(), "cpu")
