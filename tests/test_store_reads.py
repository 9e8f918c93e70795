"""Reading a feature store: slices, single rows, the fast whole-store path, the manifest, the index and meta columns."""
import json

import numpy as np
import pytest

from geovario.data.store import FeatureStore, open_feature_source, write_store
from geovario.errors import GeovarioError


def numbered_store(folder, n=7, dim=3, shard_size=3, views=0, dtype="float32", meta=None, ids=None):
    """Row i's features are i + 0.25 * column, each view v adds 100 v: a read says which rows it holds."""
    latlon = np.stack([np.linspace(-50, 50, n), np.linspace(-150, 150, n)], 1)
    features = np.arange(n, dtype=np.float32)[:, None] + 0.25 * np.arange(dim, dtype=np.float32)[None]
    stored = features[:, None] + 100 * np.arange(1, views + 1, dtype=np.float32)[None, :, None] if views else None
    return write_store(folder, features, latlon, ids=ids, meta=meta, dtype=dtype, shard_size=shard_size, views=stored), features


def test_slices_across_shards_and_past_the_end(tmp_path):
    store, features = numbered_store(tmp_path / "s", views=2)  # shards of 3, 3 and 1 rows
    for start, stop in ((0, None), (2, 5), (5, None), (3, 6), (6, 7), (0, 100)):
        np.testing.assert_array_equal(store.features(start, stop), features[start:stop])
    for start, stop in ((3, 3), (7, None), (7, 9)):  # nothing to read: an empty (0, D) block, never a row of zeros
        empty = store.features(start, stop)
        assert empty.shape == (0, 3) and empty.dtype == np.float32
        assert store.views(start, stop).shape == (0, 2, 3)
    np.testing.assert_array_equal(store.views(2, 5)[:, 1], features[2:5] + 200)


def test_the_whole_single_shard_store_in_its_own_dtype_is_the_memory_map(tmp_path):
    store, features = numbered_store(tmp_path / "s", dtype="float16", shard_size=100)
    whole = store.features(dtype=np.float16)
    assert isinstance(whole, np.memmap) and whole.dtype == np.float16
    np.testing.assert_array_equal(whole, features.astype(np.float16))
    widened = store.features()  # the default float32: a widened copy, not the float16 map
    assert widened.dtype == np.float32 and not isinstance(widened, np.memmap)
    np.testing.assert_array_equal(store.features(4), features[4:])  # not from row 0
    np.testing.assert_array_equal(store.features(4, dtype=np.float16), features[4:].astype(np.float16))
    assert store.features(7, dtype=np.float16).shape == (0, 3)  # past the end of the only shard


def test_one_row_by_position_and_from_the_end(tmp_path):
    store, features = numbered_store(tmp_path / "s", ids=[f"p{i}" for i in range(7)])
    row, gps, name = store[-1]
    np.testing.assert_array_equal(row, features[6])
    assert name == "p6" and gps.tolist() == store.gps[6].tolist()
    assert store[-7][2] == "p0" and store[6][2] == "p6"
    for outside in (7, -8):
        with pytest.raises(IndexError):
            store[outside]


def test_reading_one_row_checks_that_row_only(tmp_path):
    store, _ = numbered_store(tmp_path / "s", views=1)
    store._shards[0] = np.array(store._shards[0])  # in-memory copies, their row 1 then spoilt
    store._shards[0][1] = np.nan
    store._views[1] = np.array(store._views[1])
    store._views[1][1, 0] = np.inf  # store row 4's view
    assert store[0][2] == "0"  # row 1 is bad, row 0 is not
    with pytest.raises(GeovarioError, match="feature row 1 .*NaN"):
        store[1]
    with pytest.raises(GeovarioError, match="feature row 4 .*NaN or inf"):
        store.views(3, 6)


def test_ids_are_read_as_written_and_meta_holds_only_the_extra_columns(tmp_path):
    ids = ["NA", "", "null", "nan", "None", "0012", "x"]  # pandas would read the first five as missing values
    store, _ = numbered_store(tmp_path / "s", ids=ids, meta={"country": ["FR"] * 7, "city": ["Paris"] * 7})
    reopened = FeatureStore(tmp_path / "s")
    assert reopened.ids.tolist() == ids
    assert list(reopened.meta.columns) == ["country", "city"] and reopened.meta["country"].tolist() == ["FR"] * 7


def test_a_manifest_must_be_a_geovario_store_of_a_version_this_geovario_reads(tmp_path):
    store, _ = numbered_store(tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["format_version"] == 1
    for bad in ([manifest], manifest | {"format": "webdataset"}):
        path.write_text(json.dumps(bad))
        with pytest.raises(GeovarioError, match="manifest.json: not a geovario feature store manifest"):
            FeatureStore(tmp_path / "s")
    path.write_text(json.dumps(manifest | {"format_version": 2}))
    with pytest.raises(GeovarioError, match=r"manifest.json: store format version 2; this geovario reads up to version 1"):
        FeatureStore(tmp_path / "s")


def test_a_manifest_without_views_means_a_store_without_views(tmp_path):
    numbered_store(tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["views"]
    path.write_text(json.dumps(manifest))
    store = FeatureStore(tmp_path / "s")
    assert store.n_views == 0
    with pytest.raises(GeovarioError, match="extracted without --views"):
        store.views(0, 2)


def test_a_store_opened_without_checking_does_not_say_it_was_checked(tmp_path):
    numbered_store(tmp_path / "s")
    assert FeatureStore(tmp_path / "s").verified and not FeatureStore(tmp_path / "s", verify=False).verified


def test_views_of_the_wrong_shape_are_refused(tmp_path):
    features, latlon = np.zeros((4, 3), np.float32), np.zeros((4, 2))
    for views in (np.zeros((4, 3)), np.zeros((5, 2, 3)), np.zeros((4, 2, 2))):
        with pytest.raises(GeovarioError, match=r"views must be \(N, K, D\) = \(4, K, 3\), got"):
            write_store(tmp_path / "s", features, latlon, views=views)


def test_a_store_or_features_with_gps_not_both(tmp_path):
    numbered_store(tmp_path / "s")
    np.save(tmp_path / "f.npy", np.zeros((7, 3), np.float32))
    for extra in ({"features": tmp_path / "f.npy"}, {"gps": tmp_path / "g.csv"}):
        with pytest.raises(GeovarioError, match="give either --store or --features with --gps, not both"):
            open_feature_source(store=tmp_path / "s", **extra)
    with pytest.raises(GeovarioError, match="need --store STORE, or both --features"):
        open_feature_source(features=tmp_path / "f.npy")


def test_bad_coordinates_in_the_index_name_the_first_row_and_count_the_rest(tmp_path):
    numbered_store(tmp_path / "s")
    index = tmp_path / "s" / "index.csv"
    lines = index.read_text().splitlines()
    for bad_rows, suffix in (([2], ""), ([2, 5], " (and 1 more rows)"), ([2, 4, 5], " (and 2 more rows)")):
        edited = [line.replace(line.split(",")[1], "95.0", 1) if k - 1 in bad_rows else line for k, line in enumerate(lines)]
        index.write_text("\n".join(edited) + "\n")
        with pytest.raises(GeovarioError) as error:
            FeatureStore(tmp_path / "s", verify=False)
        message = str(error.value)
        assert message.startswith(f"{index}:4: ") and "latitude" in message.lower()
        assert message.endswith(suffix) and message.count("more rows") == (1 if suffix else 0)


def test_a_store_written_from_arrays_reports_nothing_left_out(tmp_path, capsys):
    """Like an extracted store it lists its skipped images (none) and says, in `data info`, that no row was bad."""
    from geovario.cli import main

    numbered_store(tmp_path / "s")
    assert (tmp_path / "s" / "skipped.csv").read_text() == "file,line,id,kind,reason\n"
    assert main(["data", "info", "--store", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith(": 7 rows, 7 usable, 0 bad")
    assert lines[3] == "  left out  0 unreadable images and 0 bad rows"
