import os
import re

import numpy as np
import pytest
import torch

from conftest import random_gallery, tiny_config
from geovario.errors import GeovarioError
from geovario.model import GeoLocModel
from geovario.retrieval import cache_problem, cached_gallery_embeddings, topk_softmax


def _unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.mark.parametrize("chunk_rows", [None, 7, 100, 1000])
def test_chunked_topk_equals_full_softmax(chunk_rows):
    torch.manual_seed(0)
    queries, gallery = _unit(torch.randn(9, 16)), _unit(torch.randn(1000, 16))
    index, prob, logits = topk_softmax(queries, gallery.numpy(), 20.0, k=5, chunk_rows=chunk_rows)
    full = 20.0 * queries @ gallery.T
    expected = torch.topk(full.softmax(1), 5, dim=1)
    torch.testing.assert_close(index, expected.indices, rtol=0, atol=0)
    torch.testing.assert_close(prob, expected.values, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits, full.gather(1, index))


def test_ties_are_ordered_by_gallery_index_whatever_the_chunking():
    torch.manual_seed(1)
    base = _unit(torch.randn(50, 8))
    gallery = torch.cat([base, base[[3, 3, 17]]])  # rows 50, 51 duplicate row 3; 52 duplicates 17
    query = base[3:4] + 1e-3 * base[17:18]
    for chunk_rows in (None, 5, 51):
        index, prob, _ = topk_softmax(_unit(query), gallery, 10.0, k=3, chunk_rows=chunk_rows)
        assert index[0].tolist() == [3, 50, 51]
        assert prob[0, 0] == prob[0, 1] == prob[0, 2]


def test_k_out_of_range():
    gallery = _unit(torch.randn(4, 3))
    with pytest.raises(GeovarioError, match="between 1 and the gallery size 4, got 5"):
        topk_softmax(_unit(torch.randn(1, 3)), gallery, 1.0, k=5)
    with pytest.raises(GeovarioError, match="got 0"):
        topk_softmax(_unit(torch.randn(1, 3)), gallery, 1.0, k=0)


def test_gallery_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = GeoLocModel(tiny_config()).eval()
    gallery = random_gallery(500)
    calls = []
    original = model.encode_locations
    monkeypatch.setattr(model, "encode_locations", lambda x: calls.append(len(x)) or original(x))

    first = cached_gallery_embeddings(model, gallery, "weights-a", tmp_path, progress=False)
    assert sum(calls) == 500 and len(list((tmp_path / "cache").glob("gallery-*.npy"))) == 1
    np.testing.assert_allclose(np.asarray(first), model.encode_locations(torch.from_numpy(gallery)).detach().numpy(), atol=1e-6)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)

    calls.clear()
    again = cached_gallery_embeddings(model, gallery, "weights-a", tmp_path, progress=False)
    assert calls == [64] and isinstance(again, np.memmap)  # reused: only a sample of 64 rows encoded, to check it

    calls.clear()
    cached_gallery_embeddings(model, gallery, "weights-b", tmp_path, progress=False)  # new weights
    assert sum(calls) == 500
    moved = gallery.copy()
    moved[123, 1] += 0.001
    cached_gallery_embeddings(model, moved, "weights-a", tmp_path, progress=False)  # one point moved
    assert sum(calls) == 1000
    assert len(list((tmp_path / "cache").glob("gallery-*.npy"))) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_gallery_cache_falls_back_when_model_dir_is_read_only(tmp_path, monkeypatch):
    model = GeoLocModel(tiny_config()).eval()
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    monkeypatch.setenv("GEOVARIO_CACHE_DIR", str(read_only / "cache"))  # unwritable too
    try:
        emb = cached_gallery_embeddings(model, random_gallery(20), "w", read_only, progress=False)
    finally:
        read_only.chmod(0o755)
    assert emb.shape == (20, 16)
    if os.geteuid() != 0:  # root can write anywhere, so only check the fallback path as a normal user
        assert str(emb.filename).startswith(str(tmp_path / "home"))


def _spoil_zeros(path):
    array = np.load(path)
    array[7] = 0
    np.save(path, array)


def _spoil_nan(path):
    array = np.load(path)
    array[-1, 3] = np.nan
    np.save(path, array)


def _spoil_other_model(path):
    torch.manual_seed(5)  # unit vectors, but another model's: only the spot check against the key can tell
    other = GeoLocModel(tiny_config()).eval()
    with torch.no_grad():
        np.save(path, other.encode_locations(torch.from_numpy(random_gallery(500))).numpy())


def _spoil_truncated(path):
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("spoil, problem", [(_spoil_zeros, "row 7 is not a unit vector (norm 0)"),
                                            (_spoil_nan, "row 499 is not a unit vector (norm nan)"),
                                            (_spoil_other_model, "rows differ from the model's embeddings"),
                                            (_spoil_truncated, "unreadable")])
def test_a_spoiled_gallery_cache_is_noticed_and_rebuilt(tmp_path, spoil, problem):
    torch.manual_seed(0)
    model = GeoLocModel(tiny_config()).eval()
    gallery = random_gallery(500)
    expected = np.array(cached_gallery_embeddings(model, gallery, "w", tmp_path, progress=False))
    cache = next((tmp_path / "cache").glob("gallery-*.npy"))
    spoil(cache)
    with pytest.warns(UserWarning, match=re.escape(f"gallery cache is not what its name claims ({problem}")):
        rebuilt = cached_gallery_embeddings(model, gallery, "w", tmp_path, progress=False)
    np.testing.assert_array_equal(np.asarray(rebuilt), expected)
    assert cache.is_file() and cache_problem(np.load(cache), model, gallery) is None  # the file itself was replaced


def test_a_killed_encoders_leftover_is_removed(tmp_path):
    import subprocess
    import sys

    model = GeoLocModel(tiny_config()).eval()
    (tmp_path / "cache").mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / "cache" / f".gallery-0123.npy.{gone}.tmp"  # what a kill -9 during encoding leaves
    stale.write_bytes(b"x" * 1000)
    mine = tmp_path / "cache" / f".gallery-4567.npy.{os.getpid()}.tmp"  # a live process's: left alone
    mine.write_bytes(b"x")
    cached_gallery_embeddings(model, random_gallery(20), "w", tmp_path, progress=False)
    assert not stale.exists() and mine.exists()


def test_a_live_encoders_temporary_is_left_alone_and_the_process_untouched(tmp_path, monkeypatch):
    """Probing whether a process lives must not signal it (kill(pid, 0)); one we may not signal lives too."""
    import signal
    import subprocess
    import sys

    from geovario import retrieval

    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
                              "print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # its SIGHUP handler is the default one now
        live = tmp_path / f".gallery-0123.npy.{child.pid}.tmp"
        live.write_bytes(b"x")
        retrieval.remove_stale_temporaries(tmp_path)
        assert live.exists()
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)  # still running
    finally:
        child.kill()
        child.wait()
    other = tmp_path / ".gallery-4567.npy.1.tmp"
    other.write_bytes(b"x")

    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(retrieval.os, "kill", not_permitted)  # another user's process: alive, not ours to judge
    retrieval.remove_stale_temporaries(tmp_path)
    assert other.exists()


def test_the_cache_goes_where_geovario_cache_dir_says_else_under_home(tmp_path, monkeypatch):
    model = GeoLocModel(tiny_config()).eval()
    gallery = random_gallery(20)
    monkeypatch.setenv("GEOVARIO_CACHE_DIR", str(tmp_path / "env" / "nested"))
    emb = cached_gallery_embeddings(model, gallery, "w", tmp_path / "model", progress=False)
    assert os.path.dirname(emb.filename) == str(tmp_path / "env" / "nested")
    monkeypatch.delenv("GEOVARIO_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    emb = cached_gallery_embeddings(model, gallery, "w2", None, progress=False)  # no model folder: the user's cache
    assert os.path.dirname(emb.filename) == str(tmp_path / "home" / ".cache" / "geovario" / "galleries")


def test_no_writable_cache_folder_is_one_error_naming_each(tmp_path, monkeypatch):
    model = GeoLocModel(tiny_config()).eval()
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GEOVARIO_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "file"))
    with pytest.raises(GeovarioError, match="cannot write the gallery cache anywhere") as error:
        cached_gallery_embeddings(model, random_gallery(20), "w", None, progress=False)
    assert str(tmp_path / "file" / "cache") in str(error.value)
    assert str(tmp_path / "file" / ".cache" / "geovario" / "galleries") in str(error.value)


def test_the_cache_check_reaches_every_part_of_the_gallery(tmp_path):
    """A norm off by more than 1e-3 in any row, or a sampled row (the first, the last) that is another unit
    vector, is a problem; a rotation well inside the tolerances is not."""
    torch.manual_seed(0)
    model = GeoLocModel(tiny_config()).eval()
    gallery = random_gallery(300)
    good = model.encode_locations(torch.from_numpy(gallery)).detach().numpy()
    assert cache_problem(good, model, gallery) is None
    sampled = set(np.unique(np.linspace(0, 299, 64).astype(np.int64)).tolist())
    unsampled = next(r for r in range(300) if r not in sampled)
    for factor, bad in ((1.0015, True), (1.0005, False)):
        spoiled = good.copy()
        spoiled[unsampled] *= factor
        problem = cache_problem(spoiled, model, gallery)
        assert (problem is not None and f"row {unsampled} " in problem) if bad else problem is None
    for row in (0, 299):
        spoiled = good.copy()
        spoiled[row] = good[row + (1 if row == 0 else -1)]
        assert "differ from the model's embeddings" in cache_problem(spoiled, model, gallery)


def _rotated(vector, angle):
    """The vector turned by ``angle`` in the plane of its two largest components: still a unit vector."""
    i, j = np.argsort(-np.abs(vector))[:2]
    out = vector.astype(np.float64).copy()
    c, s = np.cos(angle), np.sin(angle)
    out[i], out[j] = c * vector[i] - s * vector[j], s * vector[i] + c * vector[j]
    return out.astype(np.float32)


def test_the_cache_check_tolerates_rounding_but_not_a_drift_of_1e4():
    torch.manual_seed(0)
    model = GeoLocModel(tiny_config()).eval()
    gallery = random_gallery(300)
    good = model.encode_locations(torch.from_numpy(gallery)).detach().numpy()
    for target, bad in ((1.5e-4, True), (0.5e-4, False)):
        spoiled = good.copy()
        spoiled[0] = _rotated(good[0], target / np.sort(np.abs(good[0]))[-1])
        drift = np.max(np.abs(spoiled[0] - good[0]))
        assert abs(drift - target) < 0.3e-4
        assert (cache_problem(spoiled, model, gallery) is not None) == bad


def test_retrieval_chunks_keep_the_logit_block_near_64_mb():
    """The (queries x chunk) float32 block stays within 2^24 elements once a chunk is at its floor of 1,024 rows,
    and uses most of that budget: memory is bounded whatever the number of queries."""
    from geovario.retrieval import _chunk_rows

    budget = 1 << 24
    for n_queries in (1, 3, 100, 4096, 16384, 1_000_000):
        rows = _chunk_rows(n_queries)
        assert rows >= 1024
        if n_queries * 1024 <= budget:
            assert budget - n_queries < rows * n_queries <= budget, n_queries
        else:
            assert rows == 1024, n_queries


def test_a_faiss_index_that_needs_training_is_trained_on_the_gallery():
    from geovario.retrieval import faiss_index, faiss_topk

    rng = np.random.default_rng(0)
    gallery = _unit(torch.tensor(rng.normal(size=(400, 16)), dtype=torch.float32)).numpy()
    index = faiss_index(gallery, "IVF4,Flat")
    index.nprobe = 4  # every list: exact
    queries = _unit(torch.tensor(rng.normal(size=(5, 16)), dtype=torch.float32))
    found, _, _ = faiss_topk(index, queries, 10.0, 3)
    expected, _, _ = topk_softmax(queries, gallery, 10.0, 3)
    assert found.tolist() == expected.tolist()


def test_faiss_top_k_bounds_probabilities_and_a_gallery_past_the_training_sample():
    """k from 1 to the gallery size, a softmax over the k candidates' scaled scores by brute force, queries that
    carry a gradient, and a gallery over 100K rows (training then samples every other row)."""
    from geovario.retrieval import faiss_index, faiss_topk

    pytest.importorskip("faiss", reason="faiss-cpu is optional (pip install 'geovario[faiss]')")
    rng = np.random.default_rng(1)
    gallery = _unit(torch.tensor(rng.normal(size=(50, 8)), dtype=torch.float32))
    queries = _unit(torch.tensor(rng.normal(size=(3, 8)), dtype=torch.float32)).requires_grad_()
    index = faiss_index(gallery.numpy(), "Flat")
    for k in (1, 50):
        found, probabilities, logits = faiss_topk(index, queries, 7.0, k)
        scores = queries.detach() @ gallery.T
        expected = scores.topk(k, dim=1)
        assert found.tolist() == expected.indices.tolist()
        torch.testing.assert_close(logits, 7.0 * expected.values)
        torch.testing.assert_close(probabilities, (7.0 * expected.values).softmax(dim=1))
    for k in (0, 51):
        with pytest.raises(GeovarioError, match=f"top_k must be between 1 and the gallery size 50, got {k}"):
            faiss_topk(index, queries, 7.0, k)
    large = np.zeros((200_001, 4), np.float32)
    large[:, 0] = 1.0
    large[1::2, :2] = [0.0, 1.0]
    index = faiss_index(large, "IVF2,Flat")
    assert index.is_trained and index.ntotal == 200_001
