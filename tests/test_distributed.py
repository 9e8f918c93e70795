"""Data-parallel training: 2 processes on CPU with gloo give what one process gives on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddp_worker import run_scenario
from geovario.cli import main
from geovario.distributed import Dist, DistributedBatchSampler, launch_env
from geovario.errors import GeovarioError
from geovario.data.store import FeatureStore
from test_negatives import check_gallery_record, check_queue_record, make_view_store
from test_train import SMALL, make_store

TESTS = Path(__file__).resolve().parent
GLOBAL_BATCH = 16


def torchrun(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def scenarios(store, view_store, small_store) -> list[dict]:
    base = SMALL + [f"data.train={store}", f"train.batch_size={GLOBAL_BATCH}"]
    queue = base + ["model.queue_size=40"]
    # Gradients after 5 steps: the 40-entry queue wrapped mid-batch at the third and is full and wrapped since.
    wrapped = [
        {"name": "infonce", "overrides": queue + ["loss.name=infonce"], "steps": 5},
        {"name": "semivariogram", "overrides": queue + ["loss.name=semivariogram"], "steps": 5},
        {"name": "semivariogram_local", "overrides": queue + ["loss.name=semivariogram", "train.local_loss=true"], "steps": 5},
        {"name": "infonce_local", "overrides": queue + ["loss.name=infonce", "train.local_loss=true"], "steps": 5},
        {"name": "triplet_gallery", "overrides": base + ["loss.name=triplet", "negatives.source=gallery"], "steps": 3},
        # The thesis's weighted_neg: negatives drawn for the global batch from its gallery neighbourhoods, shared by every row.
        {"name": "weighted_neg", "overrides": queue + ["loss.name=hcl_weighted", "negatives.source=neighbourhood", "negatives.neighbours=2"],
         "steps": 3},
        # Gradient accumulation: each rank encodes its rows in 2 micro-batches, DDP all-reduces once.
        {"name": "semivariogram_accumulate", "overrides": queue + ["loss.name=semivariogram", "train.accumulate=2"], "steps": 5},
    ]
    # 20 steps of 16 cross an epoch of the 256-sample store; the variogram is re-estimated on learned
    # embeddings (all-reduced bin sums) at steps 10 and 20.
    long = [
        {"name": "queue20", "overrides": queue + ["loss.name=semivariogram", "loss.refit_every=10"], "steps": 20},
    ]
    # Every step's columns, on a store whose augmented views differ from the plain features.
    views = SMALL + [f"data.train={view_store}", f"train.batch_size={GLOBAL_BATCH}", "loss.name=semivariogram"]
    geometry = [
        {"name": "geometry_noise", "overrides": views + ["model.queue_size=40"], "steps": 6, "record": True},
        {"name": "geometry_clean_local", "overrides": views + ["model.queue_size=40", "negatives.batch_noise_m=0",
                                                               "negatives.queue_noise_m=0", "train.local_loss=true"],
         "steps": 6, "record": True},
        {"name": "geometry_gallery", "overrides": views + ["negatives.source=gallery"], "steps": 3, "record": True},
    ]
    # 48 samples: from step 3 (the second epoch) samples meet their own queued entries, which are excluded.
    small = SMALL + [f"data.train={small_store}", f"train.batch_size={GLOBAL_BATCH}", "model.queue_size=40"]
    own = [
        {"name": "own_entries", "overrides": small + ["loss.name=semivariogram"], "steps": 5, "record": True},
        {"name": "own_entries_local", "overrides": small + ["loss.name=semivariogram", "train.local_loss=true"], "steps": 5,
         "record": True},
    ]
    # A loss that is NaN on rank 1 only (its own rows, with the local loss): every rank must stop, none may wait for ever.
    diverged = [{"name": "nan_one_rank", "overrides": queue + ["loss.name=infonce", "train.local_loss=true"], "steps": 1, "nan_on_rank": 1}]
    return wrapped + long + geometry + own + diverged


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every scenario, run once by 2 gloo processes under torchrun and once in this process."""
    root = tmp_path_factory.mktemp("ddp")
    store = make_store(root / "store", 256).folder
    view_store = make_view_store(root / "views").folder
    small_store = make_view_store(root / "small", n=48).folder
    spec = scenarios(store, view_store, small_store)
    (root / "spec.json").write_text(json.dumps(spec))
    torchrun(str(TESTS / "ddp_worker.py"), str(root / "spec.json"), str(root))
    results = {}
    for scenario in spec:
        ranks = [load_file(root / f"{scenario['name']}.rank{r}.safetensors") for r in (0, 1)]
        results[scenario["name"]] = ranks, run_scenario(scenario, root / "single")
    results["teardown"] = [json.loads((root / f"teardown.rank{r}.json").read_text()) for r in (0, 1)]
    results["view_store"] = FeatureStore(view_store)
    results["small_store"] = FeatureStore(small_store)
    return results


def test_teardown_frees_the_group_even_after_transformers_imports(two_ranks):
    # A group still alive at interpreter shutdown let gloo's worker threads abort a finished job
    # about one run in ten on a loaded 2-core machine (CI, 2026-11-22): torch.distributed.nn pinned
    # it once transformers imported it after init_process_group.
    assert two_ranks["teardown"] == [{"group_freed": True}] * 2


@pytest.mark.parametrize("name", ["infonce", "semivariogram", "infonce_local", "semivariogram_local", "triplet_gallery", "weighted_neg",
                                  "semivariogram_accumulate", "own_entries", "own_entries_local"])
def test_gradients_equal_a_single_process_on_a_wrapped_queue(two_ranks, name):
    (rank0, rank1), single = two_ranks[name]
    if "queue.count" in single:  # the last step ran on a full queue that had wrapped around
        assert int(single["queue.count"]) == 40 and int(single["queue.ptr"]) == (5 * GLOBAL_BATCH) % 40
    grads = [k for k in single if k.startswith("grad.")]
    assert len(grads) == sum(1 for k in single if k.startswith("param.")) > 10  # every parameter got a gradient
    total = torch.cat([single[k].double().flatten() for k in grads]).norm()
    for key in grads:
        assert torch.equal(rank0[key], rank1[key]), key  # DDP leaves the same averaged gradient on both ranks
        norm, error = float(single[key].double().norm()), float((rank0[key].double() - single[key].double()).norm())
        if norm < 1e-6 * total:  # zero up to rounding (the triplet loss's cos = logits / scale leaves ~1e-9 on the scale)
            assert float(rank0[key].double().norm()) < 1e-6 * total, key
        else:
            assert error < 1e-5 * norm, (key, error / norm)


def _records(tensors: dict, step: int) -> dict:
    prefix = f"step{step}."
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name, noise, local_loss", [("geometry_noise", True, False), ("geometry_clean_local", False, True)])
def test_queue_columns_carry_their_own_geometry_on_every_rank(two_ranks, name, noise, local_loss):
    ranks, single = two_ranks[name]
    store = two_ranks["view_store"]
    for step in range(6):  # before the wrap (0-1), wrapping mid-batch (2), wrapped (3-5)
        for rank, tensors in enumerate(ranks):
            check_queue_record(_records(tensors, step), store, step, noise, Dist(rank, rank, 2), local_loss)
        check_queue_record(_records(single, step), store, step, noise, Dist(), local_loss)


@pytest.mark.parametrize("name, local_loss", [("own_entries", False), ("own_entries_local", True)])
def test_own_queued_entries_are_excluded_alike_on_every_rank(two_ranks, name, local_loss):
    ranks, single = two_ranks[name]
    store = two_ranks["small_store"]
    for step in range(5):
        for rank, tensors in enumerate(ranks):
            check_queue_record(_records(tensors, step), store, step, True, Dist(rank, rank, 2), local_loss, queue=40)
        check_queue_record(_records(single, step), store, step, True, Dist(), local_loss, queue=40)
    assert _records(single, 4)["excluded"].any()  # the case arose


def test_gallery_columns_carry_their_own_geometry_on_every_rank(two_ranks):
    ranks, single = two_ranks["geometry_gallery"]
    store = two_ranks["view_store"]
    for step in range(3):
        for world, tensors in [(Dist(0, 0, 2), ranks[0]), (Dist(1, 1, 2), ranks[1]), (Dist(), single)]:
            index, rows = DistributedBatchSampler(len(store), GLOBAL_BATCH, 0, world).batch(step)
            check_gallery_record(_records(tensors, step), store, index[rows], k=8)
        # The two ranks' rows together pick the negatives one process picks.
        both = torch.cat([_records(t, step)["column_index"] for t in ranks])
        assert torch.equal(both, _records(single, step)["column_index"])


def test_queues_identical_after_20_steps(two_ranks):
    (rank0, rank1), single = two_ranks["queue20"]
    queue = [k for k in single if k.startswith("queue.")]
    assert {k.split(".", 1)[1] for k in queue} == {"gps", "features", "ids", "ptr", "count"}
    for key in queue:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], single[key]), key  # the gathered batch is the single-process batch, in order
    assert int(single["queue.ptr"]) == (20 * GLOBAL_BATCH) % 40 and int(single["queue.count"]) == 40


def test_a_loss_that_diverges_on_one_rank_stops_every_rank(two_ranks):
    ranks, single = two_ranks["nan_one_rank"]
    messages = [bytes(r["stopped"].tolist()).decode() for r in ranks]
    assert messages[1].startswith("step 1: the loss is nan, not finite; stopped before updating the weights")
    assert messages[0].startswith("step 1: another process's loss is not finite; stopped before updating the weights")
    assert single["stopped"].numel() == 0  # one process, without the NaN, goes on


def test_refit_variogram_is_shared_and_matches_single_process(two_ranks):
    (rank0, rank1), single = two_ranks["queue20"]
    fits = [json.loads(bytes(t.tolist())) for t in (rank0["variogram"], rank1["variogram"], single["variogram"])]
    assert fits[0] == fits[1]  # broadcast from rank 0
    assert fits[0]["n_points"] == 256 and fits[0]["model"] == "stable"
    for key in ("nugget", "sill", "range_km"):
        assert fits[0][key] == pytest.approx(fits[2][key], rel=1e-4), key


def test_twenty_steps_follow_the_single_process_trajectory(two_ranks):
    (rank0, rank1), single = two_ranks["queue20"]
    for key in (k for k in single if k.startswith("param.")):
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_geovario_train_under_torchrun_then_evaluate_and_resume(tmp_path):
    """`torchrun --nproc_per_node 2 -m geovario train`, killed-and-resumed in the middle, equals one uninterrupted process."""
    store = make_store(tmp_path / "store", 128).folder
    val = make_store(tmp_path / "val", 32, seed=1).folder
    config = ["--config", str(TESTS.parent / "configs" / "geoclip_baseline.yaml")]
    config += [arg for s in SMALL + [f"data.train={store}", "data.val=null", "train.epochs=2", "train.checkpoint_every=3"] for arg in ("--set", s)]
    run = tmp_path / "ddp"
    torchrun("-m", "geovario", "train", *config, "--set", "train.max_steps=6", "--out", str(run), "--no-progress")
    assert (run / "checkpoints" / "latest").read_text() == "step-00000006"
    done = torchrun("-m", "geovario", "train", "--resume", str(run), "--set", "train.max_steps=null", "--no-progress")
    assert done.stdout.count("trained geoclip_baseline") == 1  # rank 0 alone reports
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in metrics[1:]] == list(range(1, 17))
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["trained"]["processes"] == 2 and meta["trained"]["steps"] == 16

    assert main(["train", *config, "--out", str(tmp_path / "single"), "--no-progress"]) == 0
    ddp, single = load_file(run / "model" / "model.safetensors"), load_file(tmp_path / "single" / "model" / "model.safetensors")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5)
    report = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(run / "model"), "--store", str(val), "--out", str(report), "--no-admin", "--no-progress"]) == 0
    assert json.loads(report.read_text())["n"] == 32


def test_sampler_splits_each_global_batch_into_contiguous_rank_rows():
    ranks = [DistributedBatchSampler(100, 16, seed=3, world=Dist(r, r, 2)) for r in (0, 1)]
    one = DistributedBatchSampler(100, 16, seed=3, world=Dist())
    assert one.steps_per_epoch == 6
    for step in (0, 5, 6, 13):
        index, rows = one.batch(step)
        parts = [index_r[rows_r] for index_r, rows_r in (s.batch(step) for s in ranks)]
        np.testing.assert_array_equal(np.concatenate(parts), index[rows])
    epoch0 = np.concatenate([one.batch(s)[0] for s in range(6)])
    assert len(set(epoch0)) == 96  # no sample twice within an epoch
    assert not np.array_equal(one.batch(0)[0], one.batch(6)[0])  # a new order each epoch


def test_sampler_orders_do_not_depend_on_the_order_epochs_are_asked_for():
    """The store's read-ahead asks for the next epoch before the last steps of this one: any order of asking gives
    each epoch its own seeded permutation, and at most two are kept."""
    import torch

    sampler = DistributedBatchSampler(100, 16, seed=3, world=Dist())
    for epoch in (0, 1, 0, 2, 1, 1, 5, 0):
        alone = DistributedBatchSampler(100, 16, seed=3, world=Dist()).epoch_order(epoch)  # a sampler asked for it first
        assert torch.equal(sampler.epoch_order(epoch), alone) and len(sampler._orders) <= 2
    assert not torch.equal(sampler.epoch_order(0), sampler.epoch_order(1))


def test_shares_padded_and_gathered_rebuild_the_items_in_order():
    for n in (0, 1, 5, 40, 4000, 4001):
        for world_size in (1, 2, 3, 4, 8):
            items = np.arange(n)
            shares = [items[Dist(r, r, world_size).share(n)] for r in range(world_size)]
            size = -(-n // world_size)
            assert all(len(part) <= size for part in shares) and sum(map(len, shares)) == n
            gathered = np.concatenate([np.pad(part, (0, size - len(part)), constant_values=-1) for part in shares])
            assert gathered[:n].tolist() == items.tolist()


def test_batch_must_split_evenly_over_processes():
    with pytest.raises(GeovarioError, match="train.batch_size: the global batch 15 must be divisible by the 2 processes"):
        DistributedBatchSampler(100, 15, seed=0, world=Dist(0, 0, 2))


def test_launch_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    assert launch_env() == (0, 0, 1)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert launch_env() == (0, 0, 1)  # an srun allocation alone is not a distributed launch
    monkeypatch.setenv("MASTER_ADDR", "node1")
    assert launch_env() == (5, 1, 8)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launch_env() == (3, 3, 4)  # torchrun's variables win


def test_extract_under_torchrun_writes_the_single_process_store(tmp_path, tiny_clip_dir):
    from test_store_extract import make_dataset

    from geovario.data.store import FeatureStore

    csv = make_dataset(tmp_path, 11, bad={4: "corrupt"})
    args = ["--data", str(csv), "--backbone", str(tiny_clip_dir), "--shard-size", "3", "--batch-size", "2", "--dtype", "float32",
            "--no-progress"]
    done = torchrun("-m", "geovario", "extract", *args, "--out", str(tmp_path / "ddp"))
    assert done.stdout.count("10 features") == 1  # rank 0 alone reports
    assert main(["extract", *args, "--out", str(tmp_path / "single")]) == 0
    ddp, single = FeatureStore(tmp_path / "ddp"), FeatureStore(tmp_path / "single")
    assert ddp.manifest["complete"] and [s["rows"] for s in ddp.manifest["shards"]] == [3, 2, 3, 2]  # 4 shards, 2 per rank
    assert ddp.ids.tolist() == single.ids.tolist()
    np.testing.assert_allclose(ddp.features(), single.features(), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ddp" / "skipped.csv").read_text() == (tmp_path / "single" / "skipped.csv").read_text()


def test_each_rank_reads_its_rows_with_the_views_one_process_would_pick(tmp_path, tiny_clip_dir):
    from test_store_extract import make_dataset

    from geovario.backbones import ClipBackbone
    from geovario.data import read_dataset
    from geovario.data.store import FeatureStore
    from geovario.extract import ExtractSettings, extract_features
    from geovario.train import StoreData

    dataset = read_dataset(make_dataset(tmp_path, 8))
    extract_features(dataset, ClipBackbone.load(str(tiny_clip_dir), "cpu"), tmp_path / "store",
                     ExtractSettings(batch_size=4, views=3, dtype="float32"), progress=False)
    data = StoreData(FeatureStore(tmp_path / "store"), use_views=True)
    index = np.array([5, 2, 7, 0, 3, 6])
    whole = data.batch(index, slice(0, 6), torch.Generator().manual_seed(11), "cpu")
    parts = [data.batch(index, Dist(r, r, 3).local_rows(6), torch.Generator().manual_seed(11), "cpu") for r in range(3)]
    torch.testing.assert_close(torch.cat([p.features for p in parts]), whole.features, rtol=0, atol=0)
    plain = torch.from_numpy(data.store.rows(index))
    assert 0 < int((whole.features != plain).any(1).sum()) < 6  # some samples got an augmented view, some the plain crop
    torch.testing.assert_close(whole.reference, plain, rtol=0, atol=0)  # the reference is always the plain crop
