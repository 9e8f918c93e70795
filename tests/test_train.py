import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from geovario.cli import main
from geovario.config import load_config
from geovario.data.store import write_store
from geovario.errors import GeovarioError
from geovario.train import Trainer, train

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
SMALL = ["model.queue_size=64", "model.embed_dim=16", "model.hidden_dim=32", "model.rff_dim=16", "train.batch_size=16",
         "optim.lr=0.002", "negatives.k=8", "train.log_every=1", "train.checkpoint_every=1000"]


def structured_features(latlon, dims, seed):
    """Features that vary smoothly with position plus noise, so a model can learn where they come from."""
    rng = np.random.default_rng(seed)
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    unit = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)
    return np.cos(unit @ np.random.default_rng(99).normal(size=(3, dims)) * 3) + 0.2 * rng.normal(size=(len(latlon), dims))


def make_store(folder, n, dims=32, seed=0, views=0):
    rng = np.random.default_rng(seed)
    latlon = np.stack([np.degrees(np.arcsin(rng.uniform(-0.9, 0.9, n))), rng.uniform(-180, 180, n)], 1)
    features = structured_features(latlon, dims, seed)
    stored = features[:, None] + 0.3 * rng.normal(size=(n, views, dims)) if views else None  # augmented views near the plain one
    return write_store(folder, features, latlon, views=stored)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return make_store(root / "train", 320, seed=0).folder, make_store(root / "val", 64, seed=1).folder


@pytest.fixture(scope="module")
def view_stores(tmp_path_factory, stores):
    """The training store again with two augmented views per row (for the ssl loss), and the same validation store."""
    return make_store(tmp_path_factory.mktemp("views") / "train", 320, seed=0, views=2).folder, stores[1]


# The thesis's get_penalty and get_penalty3 replace the negative logits by constants clamped to the step's logit range:
# nothing pushes a negative down, every logit can rise together and the clamp's floor rises with them, so the loss need
# not fall (here it climbs towards log(columns)). They must train, finitely; the study measures what they do.
LOSS_NEED_NOT_FALL = {"semivariogram_penalty_logit_abs", "semivariogram_penalty_logit_excess"}


@pytest.mark.parametrize("config_path", [c for c in CONFIGS if "geoclip" not in c.stem or c.stem == "geoclip_baseline"], ids=lambda p: p.stem)
def test_every_config_trains_and_the_loss_falls(tmp_path, request, config_path):
    train_store, val_store = request.getfixturevalue("view_stores" if config_path.stem == "ssl" else "stores")
    config = load_config(config_path, SMALL + [f"data.train={train_store}", f"data.val={val_store}", "train.epochs=3"])
    final = train(config, tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 60 and metrics["step"].tolist() == list(range(1, 61))
    assert np.isfinite(metrics["loss"]).all()
    if config_path.stem not in LOSS_NEED_NOT_FALL:
        assert metrics["loss"].tail(10).mean() < metrics["loss"].head(10).mean()
    assert "val_acc_2500km" in metrics.columns and metrics["val_acc_2500km"].notna().sum() == 3
    assert (final / "model.safetensors").is_file() and (final / "gallery.csv").is_file()
    assert main(["evaluate", "--model", str(final), "--store", str(val_store), "--out", str(tmp_path / "r.json"), "--no-admin", "--no-progress"]) == 0


def test_finetune_from_geoclip_starts_from_its_weights_and_learns(tmp_path, geoclip_reference_dir):
    from geovario.interop.geoclip import geoclip_model, read_release_folder
    from geovario.modeldir import load_model_dir
    from geovario.train import Trainer

    store = make_store(tmp_path / "store", 256, dims=768)
    overrides = [f"data.train={store.folder}", "data.val=null", f"model.geoclip_from={geoclip_reference_dir}", "model.queue_size=64",
                 "train.batch_size=16", "train.max_steps=30", "train.log_every=1", "optim.lr=0.001"]
    config_file = Path(__file__).resolve().parents[1] / "configs" / "semivariogram_finetune_geoclip.yaml"
    trainer = Trainer(load_config(config_file, overrides), tmp_path / "run", progress=False)
    release = geoclip_model(read_release_folder(geoclip_reference_dir)).state_dict()
    start = trainer.model.state_dict()
    assert start.keys() == release.keys() and all(torch.equal(start[k], release[k]) for k in release)  # every weight, strictly
    final = trainer.run()
    losses = pd.read_csv(tmp_path / "run" / "metrics.csv")["loss"]
    assert losses.tail(5).mean() < 0.8 * losses.head(5).mean()  # it learned this store, from GeoCLIP's start
    tuned = load_model_dir(final).model.state_dict()
    assert not torch.equal(tuned["image_head.mlp.0.weight"], release["image_head.mlp.0.weight"])
    assert torch.equal(tuned["location_encoder.branches.0.rff.b"], release["location_encoder.branches.0.rff.b"])  # fixed RFF
    # A shape that contradicts the pretrained model is refused, naming the key.
    with pytest.raises(GeovarioError, match=r"config key model.embed_dim: 256 contradicts the initial model \(geoclip\), which has 512"):
        Trainer(load_config(config_file, overrides + ["model.embed_dim=256"]), tmp_path / "bad", progress=False)


def test_init_from_a_model_directory_is_strict_and_keeps_its_shapes(tmp_path, stores):
    from geovario.train import Trainer

    first = train(load_config(None, SMALL + [f"data.train={stores[0]}", "train.max_steps=3"]), tmp_path / "first", progress=False)
    trained = load_file(first / "model.safetensors")
    base = [s for s in SMALL if not s.startswith(("model.embed_dim", "model.hidden_dim", "model.rff_dim"))]
    again = Trainer(load_config(None, base + [f"data.train={stores[0]}", f"model.init={first}"]), tmp_path / "again", progress=False)
    state = again.model.state_dict()
    assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in trained)
    assert again.model.config.embed_dim == 16  # the directory's shape, not GeoCLIP's default 512
    with pytest.raises(GeovarioError, match="config key model.hidden_dim: 64 contradicts the initial model"):
        Trainer(load_config(None, base + [f"data.train={stores[0]}", f"model.init={first}", "model.hidden_dim=64"]),
                tmp_path / "bad", progress=False)
    sigmas = again.model.config.sigmas
    same = "[" + ",".join(f"{int(x)}" if float(x).is_integer() else repr(x) for x in sigmas) + "]"  # written as integers
    Trainer(load_config(None, base + [f"data.train={stores[0]}", f"model.init={first}", f"model.sigmas={same}"]),
            tmp_path / "same-sigmas", progress=False)
    with pytest.raises(GeovarioError, match="config key model.sigmas: .* contradicts the initial model"):
        Trainer(load_config(None, base + [f"data.train={stores[0]}", f"model.init={first}", f"model.sigmas=[{2 * sigmas[0]}]"]),
                tmp_path / "other-sigmas", progress=False)


def test_logit_scale_is_clamped_at_ln_100(tmp_path, stores):
    from geovario.train import MAX_LOGIT_SCALE, Trainer

    assert MAX_LOGIT_SCALE == pytest.approx(4.60517, abs=1e-5)
    trainer = Trainer(load_config(None, SMALL + [f"data.train={stores[0]}"]), tmp_path / "run", progress=False)
    with torch.no_grad():
        trainer.model.logit_scale.fill_(6.0)  # a temperature of 1/403
    trainer.step()
    assert float(trainer.model.logit_scale.detach()) == pytest.approx(math.log(100), abs=1e-6)
    with torch.no_grad():
        trainer.model.logit_scale.fill_(0.5)  # a temperature of 0.61: allowed, only a scale below 0 (T > 1) is not
    trainer.step()
    assert 0.4 < float(trainer.model.logit_scale.detach()) < 0.6


def test_semivariogram_metrics_are_logged(tmp_path, stores):
    config = load_config(None, SMALL + [f"data.train={stores[0]}", "loss.name=semivariogram", "train.max_steps=10", "loss.refit_every=5"])
    train(config, tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert {"reweighted_fraction", "mean_hard_weight", "mean_false_weight"} <= set(metrics.columns)
    assert (metrics["reweighted_fraction"] > 0).all()
    assert metrics["epoch"].tolist() == [0] * 10 and (metrics["samples_per_s"] > 0).all()  # 20 steps an epoch
    frozen = json.loads((tmp_path / "run" / "variogram.json").read_text())
    checkpoint = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text()
    refitted = json.loads((checkpoint / "state.json").read_text())["variogram"]
    assert frozen["n_points"] == refitted["n_points"] == 320
    assert refitted["bins"] != frozen["bins"]  # re-estimated, on the learned embeddings
    assert [b["n"] for b in refitted["bins"]] == [b["n"] for b in frozen["bins"]]  # over every pair of the same 320 places


def test_image_level_training(tmp_path, tiny_clip_dir):
    from test_data_readers import jpeg

    rows = ["IMG_FILE,LAT,LON"]
    for i in range(24):
        jpeg(tmp_path / "images" / f"{i}.jpg", seed=i)
        rows.append(f"{i}.jpg,{-60 + 5 * i},{-170 + 14 * i}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    config = load_config(None, SMALL + [f"data.images={tmp_path / 'data.csv'}", f"data.backbone={tiny_clip_dir}", "train.batch_size=8",
                                        "train.max_steps=4", "train.epochs=2"])
    final = train(config, tmp_path / "run", progress=False)
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 4 and (final / "model.safetensors").is_file()


def test_image_level_training_with_decoding_workers_equals_training_without(tmp_path, tiny_clip_dir):
    """Workers decode the coming steps ahead; each step's pixels still come from its own seed."""
    from test_data_readers import jpeg

    rows = ["IMG_FILE,LAT,LON"]
    for i in range(24):
        jpeg(tmp_path / "images" / f"{i}.jpg", size=(80, 60), seed=i)
        rows.append(f"{i}.jpg,{-60 + 5 * i},{-170 + 14 * i}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    from geovario.variogram import VariogramModel

    VariogramModel("spherical", nugget=0.1, psill=0.4, range_km=2000.0).save(tmp_path / "variogram.json")
    base = SMALL + [f"data.images={tmp_path / 'data.csv'}", f"data.backbone={tiny_clip_dir}", "train.batch_size=8",
                    "train.epochs=2", "loss.name=semivariogram", f"loss.variogram={tmp_path / 'variogram.json'}"]
    from geovario.train import Trainer

    weights = {}
    for workers in (0, 2):
        trainer = Trainer(load_config(None, base + [f"data.workers={workers}"]), tmp_path / f"run{workers}", progress=False)
        weights[workers] = load_file(trainer.run() / "model.safetensors")
        assert trainer.data.steps_from_workers == (6 if workers else 0)
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert len(pd.read_csv(tmp_path / "run2" / "metrics.csv")) == 6


def test_training_with_store_rows_read_ahead_equals_training_without(tmp_path, stores, monkeypatch):
    """Across an epoch's end (the read-ahead asks for the next epoch's order first): the same weights, bit for bit."""
    from geovario.train import StoreData

    config = load_config(None, SMALL + [f"data.train={stores[0]}", "train.epochs=2", "loss.name=semivariogram"])
    ahead = Trainer(config, tmp_path / "ahead", progress=False)
    weights_ahead = load_file(ahead.run() / "model.safetensors")
    assert ahead.data.steps_read_ahead == ahead.total == 40
    monkeypatch.setattr(StoreData, "prefetch", lambda self, *args: None)
    here = Trainer(config, tmp_path / "here", progress=False)
    weights_here = load_file(here.run() / "model.safetensors")
    assert here.data.steps_read_ahead == 0
    assert all(torch.equal(weights_ahead[k], weights_here[k]) for k in weights_here)


def test_image_level_reference_features_are_the_plain_centre_crop(tmp_path, tiny_clip_dir):
    """The dissimilarity reads what extraction stores as view 0, whatever augmentation the head is fed."""
    from test_data_readers import jpeg

    from geovario.backbones import ClipBackbone
    from geovario.data import read_dataset
    from geovario.train import ImageData

    rows = ["IMG_FILE,LAT,LON"] + [f"{i}.jpg,{i},{i}" for i in range(6)]
    for i in range(6):
        jpeg(tmp_path / "images" / f"{i}.jpg", size=(96, 64), seed=i)
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    dataset = read_dataset(tmp_path / "data.csv", images=tmp_path / "images")
    backbone = ClipBackbone.load(str(tiny_clip_dir), "cpu")
    data = ImageData(dataset, backbone, reference=True, workers=0)
    index = np.array([4, 1, 5, 0])
    batch = data.batch(index, slice(1, 3), torch.Generator().manual_seed(0), "cpu")
    plain = backbone.encode_paths([dataset.records[i].image for i in (1, 5)], batch_size=2)
    torch.testing.assert_close(batch.reference, plain, rtol=1e-4, atol=1e-5)
    assert (batch.features - batch.reference).abs().max() > 1e-3  # the head is fed an augmented crop
    np.testing.assert_array_equal(batch.gps.numpy(), [[1, 1], [5, 5]])


def _run(config_file, run_dir, *extra):
    return [sys.executable, "-m", "geovario", "train", "--config", str(config_file), "--out", str(run_dir), "--no-progress", *extra]


@pytest.mark.slow
def test_kill_minus_nine_and_resume_gives_bitwise_equal_weights(tmp_path, stores):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(
        f"name: kill\ndata: {{train: {stores[0]}}}\n"
        "model: {queue_size: 64, embed_dim: 32, hidden_dim: 128, rff_dim: 32}\n"
        "loss: {name: semivariogram}\noptim: {lr: 0.001}\n"
        "train: {batch_size: 16, epochs: 30, checkpoint_every: 7, log_every: 5}\n"
    )
    killed = tmp_path / "killed"
    process = subprocess.Popen(_run(config_file, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoints" / "latest").is_file():
        time.sleep(0.01)
    time.sleep(0.3)  # well into the run, between checkpoints
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    latest = (killed / "checkpoints" / "latest").read_text()
    assert subprocess.run([sys.executable, "-m", "geovario", "train", "--resume", str(killed), "--no-progress"], capture_output=True).returncode == 0
    assert subprocess.run(_run(config_file, tmp_path / "clean"), capture_output=True).returncode == 0
    resumed, clean = load_file(killed / "model" / "model.safetensors"), load_file(tmp_path / "clean" / "model" / "model.safetensors")
    assert resumed.keys() == clean.keys() and all((resumed[k] == clean[k]).all() for k in clean), f"resumed from {latest}"
    steps = pd.read_csv(killed / "metrics.csv")["step"].tolist()
    assert steps == sorted(set(steps)) == pd.read_csv(tmp_path / "clean" / "metrics.csv")["step"].tolist()


@pytest.mark.parametrize("overrides, message", [
    (["loss.nme=infonce"], "unknown config key loss.nme"),
    (["train.batch_size=big"], "config key train.batch_size: expected int, got str"),
    (["optim.lr=[1]"], "config key optim.lr: expected float"),
    (["model.queue_size=8"], "config key model.queue_size: 8 is smaller than train.batch_size 16"),
    (["loss.name=semivariogramm"], "config key loss.name: 'semivariogramm' is not one of"),
])
def test_bad_configs_name_the_key(overrides, message, stores):
    with pytest.raises(GeovarioError, match=message):
        load_config(None, SMALL + [f"data.train={stores[0]}"] + overrides)


def test_resume_removes_half_written_checkpoints_and_refuses_a_changed_store(tmp_path, capsys):
    store = make_store(tmp_path / "store", 320).folder
    run = tmp_path / "run"
    train(load_config(None, SMALL + [f"data.train={store}", "train.max_steps=3"]), run, progress=False)
    stale = run / "checkpoints" / ".tmp-step-00000004-99999"  # what a kill -9 during a checkpoint leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=5", "--no-progress"]) == 0
    assert not stale.exists() and (run / "checkpoints" / "latest").read_text() == "step-00000005"
    # The store is re-made with other data: the run refuses to continue on it, naming both fingerprints.
    started = json.loads((run / "data.json").read_text())["fingerprint"]
    shutil.rmtree(store)
    make_store(store, 320, seed=7)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=7", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"geovario: error: {store}: the training data changed since the run started" in err and f"fingerprint {started[:12]} then" in err


def test_resume_refuses_a_store_whose_features_changed_under_the_same_index(tmp_path, capsys):
    """Rehashed after an edit of its features only (the index as it was): still other training data."""
    from geovario.data.store import rehash_store

    store = make_store(tmp_path / "store", 320).folder
    run = tmp_path / "run"
    train(load_config(None, SMALL + [f"data.train={store}", "train.max_steps=3"]), run, progress=False)
    shard = store / "shards" / "00000.npy"
    features = np.load(shard)
    features[10] *= 2.0
    np.save(shard, features)
    argv = ["train", "--resume", str(run), "--set", "train.max_steps=5", "--no-progress"]
    assert main(argv) == 1  # edited: the store itself refuses to open
    assert "00000.npy: sha256 differs" in capsys.readouterr().err
    rehash_store(store)
    assert main(argv) == 1  # the edit accepted for the store, but not for a run that began on the old features
    assert "training data changed since the run started" in capsys.readouterr().err
    assert (run / "checkpoints" / "latest").read_text() == "step-00000003"


def test_a_failed_checkpoint_write_keeps_the_last_one(tmp_path, stores, monkeypatch):
    import errno

    from geovario.train import Trainer, checkpoints

    run = tmp_path / "run"
    trainer = Trainer(load_config(None, SMALL + [f"data.train={stores[0]}", "train.max_steps=6", "train.checkpoint_every=2"]), run,
                      progress=False)
    original = checkpoints.save_file

    def full_disk_on_step_4(tensors, path, **kwargs):
        if "step-00000004" in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, path, **kwargs)

    monkeypatch.setattr(checkpoints, "save_file", full_disk_on_step_4)
    with pytest.raises(GeovarioError, match=r"step-00000004: cannot write the checkpoint of step 4 \(No space left on device\); "
                                            r"the last one \(checkpoints/step-00000002\) is intact"):
        trainer.run()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000002"]  # no half-written folder
    monkeypatch.setattr(checkpoints, "save_file", original)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # and the run goes on from step 2
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == list(range(1, 7))


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, stores, capsys):
    run = tmp_path / "run"
    base = ["--set", f"data.train={stores[0]}", "--set", "data.val=null", "--set", "train.checkpoint_every=2", "--out", str(run), "--no-progress"]
    assert main(["train", "--config", str(CONFIGS[0]), *sum([["--set", s] for s in SMALL], []), *base, "--set", "train.max_steps=4"]) == 0
    latest = (run / "checkpoints" / "latest").read_text()
    from geovario.train import Trainer

    shutil.rmtree(run / "model")  # the 4-step model; a diverged run must not write one
    trainer = Trainer(load_config(None, SMALL + [f"data.train={stores[0]}", "train.max_steps=8"]), run, resume=True, progress=False)
    with torch.no_grad():
        trainer.model.image_head.mlp[0].weight[0, 0] = float("nan")  # as a diverged step leaves the weights
    with pytest.raises(GeovarioError, match=rf"step 5: the loss is nan, not finite; stopped before updating the weights .*{latest}"):
        trainer.run()
    assert (run / "checkpoints" / "latest").read_text() == latest and not (run / "model").exists()


def test_numbers_are_read_by_their_declared_type(tmp_path, stores):
    """PyYAML's YAML 1.1 reads 1e-4 (no dot) as a string; a key declared float takes it as the number."""
    assert load_config(None, [f"data.train={stores[0]}", "optim.lr=1e-4"]).optim.lr == 1e-4  # the README's --set
    (tmp_path / "c.yaml").write_text(f"data: {{train: {stores[0]}}}\noptim: {{lr: 1e-4, weight_decay: 0}}\ntrain: {{max_steps: 7}}\n")
    config = load_config(tmp_path / "c.yaml")
    assert (config.optim.lr, config.optim.weight_decay, config.train.max_steps) == (1e-4, 0.0, 7)
    assert isinstance(config.optim.weight_decay, float)
    with pytest.raises(GeovarioError, match="config key optim.lr: must be a finite number, got nan"):
        load_config(None, [f"data.train={stores[0]}", "optim.lr=.nan"])


def test_bad_configs_through_the_cli(tmp_path, stores, capsys):
    def one_line_error(argv, message):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("geovario: error: ") and message in err[0], err

    one_line_error(["train", "--set", "data.train=/nowhere/store", "--set", "model.queue_size=256", "--out", str(tmp_path / "r0"),
                    "--config", str(CONFIGS[0])], "config key data.train: feature store /nowhere/store not found")
    (tmp_path / "v.json").write_text("{not json")
    one_line_error(["train", "--config", str(CONFIGS[0]), *sum([["--set", s] for s in SMALL], []), "--set", f"data.train={stores[0]}",
                    "--set", "data.val=null", "--set", "loss.name=semivariogram", "--set", f"loss.variogram={tmp_path / 'v.json'}",
                    "--out", str(tmp_path / "r1")], "config key loss.variogram:")
    (tmp_path / "bad.yaml").write_text("loss: [unclosed\n")
    one_line_error(["train", "--config", str(tmp_path / "bad.yaml")], "not valid YAML")
    # A checkpoint from an incompatible model.
    base = [*sum([["--set", s] for s in SMALL], []), "--set", f"data.train={stores[0]}", "--set", "data.val=null", "--set", "train.max_steps=3"]
    assert main(["train", "--config", str(CONFIGS[0]), *base, "--out", str(tmp_path / "r2"), "--no-progress"]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "r2" / "config.json").read_text())
    saved["model"]["embed_dim"] = 8  # the run's config edited by hand: the checkpoint no longer fits it
    (tmp_path / "r2" / "config.json").write_text(json.dumps(saved))
    one_line_error(["train", "--resume", str(tmp_path / "r2"), "--set", "train.max_steps=6", "--no-progress"],
                   "checkpoint from an incompatible model")


def test_metrics_lr_is_the_rate_each_logged_step_used(tmp_path, stores):
    config = load_config(None, SMALL + [f"data.train={stores[0]}", "train.epochs=3", "train.log_every=7", "optim.step_gamma=0.5"])
    train(config, tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    steps_per_epoch = 320 // 16
    for _, row in metrics.iterrows():  # epoch e (0-based) trains at lr * 0.5**e, its last step included
        epoch = (int(row["step"]) - 1) // steps_per_epoch
        assert row["lr"] == pytest.approx(0.002 * 0.5**epoch), row.to_dict()
    assert steps_per_epoch in metrics["step"].tolist()  # an epoch's last row is among them


def test_a_new_run_fits_its_own_variogram_over_a_stray_variogram_json(tmp_path, stores):
    """variogram.json is not a file that marks a started run, so a new run may find one (copied there, or left by a
    `geovario variogram --out`); it fits its own, and only a resumed run reads the run's saved fit."""
    from geovario.train import Trainer
    from geovario.variogram import VariogramModel

    run = tmp_path / "run"
    run.mkdir()
    VariogramModel("spherical", nugget=0.123, psill=0.4, range_km=12345.0).save(run / "variogram.json")
    trainer = Trainer(load_config(None, SMALL + [f"data.train={stores[0]}", "loss.name=semivariogram"]), run, progress=False)
    assert trainer.loss_fn.variogram.range_km != 12345.0 and trainer.loss_fn.variogram.nugget != 0.123
    assert json.loads((run / "variogram.json").read_text())["range_km"] != 12345.0


@pytest.mark.parametrize("loss, needs_features", [("semivariogram", True), ("infonce", False)])
def test_gallery_negatives_read_the_gallery_stores_features_only_for_a_loss_that_needs_them(tmp_path, stores, loss, needs_features):
    from geovario.train import Trainer

    config = load_config(None, SMALL + [f"data.train={stores[0]}", "negatives.source=gallery", f"negatives.gallery={stores[1]}",
                                        f"loss.name={loss}"])
    negatives = Trainer(config, tmp_path / "run", progress=False).negatives
    assert negatives.geometry is needs_features and (negatives.gallery_features is not None) is needs_features
    if needs_features:
        from geovario.data.store import FeatureStore

        rows = np.array([0, 5, 63])
        np.testing.assert_array_equal(np.asarray(negatives.gallery_features(rows), np.float32),
                                      FeatureStore(stores[1]).features()[rows])


def test_a_gallery_store_of_another_width_is_refused(tmp_path, stores):
    from geovario.train import Trainer

    wide = make_store(tmp_path / "wide", 64, dims=48, seed=2).folder
    config = load_config(None, SMALL + [f"data.train={stores[0]}", "negatives.source=gallery", f"negatives.gallery={wide}",
                                        "loss.name=semivariogram"])
    with pytest.raises(GeovarioError, match=rf"config key negatives.gallery: {wide} holds 48-d features, the training data 32-d"):
        Trainer(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_refitted_variogram_reaches_every_loss_that_weighs_by_one():
    """A refit (or a resume) hands the new variogram to the loss: in a combined loss, to its semivariogram part, and to
    nothing that has no variogram."""
    from geovario.config import load_config
    from geovario.losses import build_loss
    from geovario.train.build import set_variogram
    from geovario.variogram import VariogramModel

    config = load_config(None, ["data.train=unused", "loss.name=combined",
                                "loss.parts=[{name: infonce, weight: 1}, {name: semivariogram, weight: 1}]"])
    first, refitted = (VariogramModel("spherical", nugget=0.1, psill=0.4, range_km=r) for r in (2000.0, 3500.0))
    loss = build_loss(config.loss.name, config.loss.__dict__, first)
    set_variogram(loss, refitted)
    weighted = [m for m in loss.modules() if type(m).__name__ == "SemivariogramWeightedInfoNCE"]
    plain = [m for m in loss.modules() if type(m).__name__ == "InfoNCE"]
    assert len(weighted) == len(plain) == 1
    assert weighted[0].variogram is refitted and not hasattr(plain[0], "variogram")


def test_a_refused_start_leaves_a_folder_the_user_made_and_a_batch_of_every_sample_trains(tmp_path):
    store = make_store(tmp_path / "store", 16, seed=0).folder
    mine = tmp_path / "mine"
    mine.mkdir()  # made by the user, empty: not ours to remove
    with pytest.raises(GeovarioError, match="config key train.batch_size: 32 is larger than the 16 training samples"):
        Trainer(load_config(None, SMALL + [f"data.train={store}", "train.batch_size=32"]), mine, progress=False)
    assert mine.is_dir()
    trainer = Trainer(load_config(None, SMALL + [f"data.train={store}", "train.batch_size=16"]), tmp_path / "all", progress=False)
    assert trainer.sampler.steps_per_epoch == 1
    assert json.loads((tmp_path / "all" / "data.json").read_text())["train"] == str(store)
    cosine = SMALL + [f"data.train={store}", "train.batch_size=16", "train.max_steps=3", "optim.schedule=cosine"]
    with pytest.raises(GeovarioError, match="config key optim.warmup_steps: 3 warmup steps in a run of 3 steps"):
        Trainer(load_config(None, cosine + ["optim.warmup_steps=3"]), tmp_path / "warm", progress=False)
    assert Trainer(load_config(None, cosine + ["optim.warmup_steps=2"]), tmp_path / "warm", progress=False).total == 3


def test_a_resumed_run_weighs_by_its_refitted_variogram(tmp_path):
    store = make_store(tmp_path / "store", 64, seed=0).folder
    config = load_config(None, SMALL + [f"data.train={store}", "loss.name=semivariogram", "train.max_steps=4", "loss.refit_every=2"])
    train(config, tmp_path / "run", progress=False)
    frozen = json.loads((tmp_path / "run" / "variogram.json").read_text())
    resumed = Trainer(load_config(None, SMALL + [f"data.train={store}", "loss.name=semivariogram", "train.max_steps=6",
                                                 "loss.refit_every=2"]), tmp_path / "run", resume=True, progress=False)
    assert resumed.learned_space and resumed.state.step == 4
    assert resumed.loss_fn.variogram.to_dict() == resumed.state.variogram != frozen


def test_the_loss_takes_each_refit_from_the_step_it_is_made(tmp_path):
    """loss.refit_every=3: the frozen fit for steps 1-3, the fit on learned embeddings from step 3 on, handed to the loss."""
    store = make_store(tmp_path / "store", 64, seed=0).folder
    trainer = Trainer(load_config(None, SMALL + [f"data.train={store}", "loss.name=semivariogram", "loss.refit_every=3"]),
                      tmp_path / "run", progress=False)
    frozen = trainer.loss_fn.variogram
    for _ in range(2):
        trainer.step()
        assert not trainer.learned_space and trainer.state.variogram is None and trainer.loss_fn.variogram is frozen
    trainer.step()
    assert trainer.learned_space and trainer.loss_fn.variogram is not frozen
    assert trainer.loss_fn.variogram.to_dict() == trainer.state.variogram


def test_a_run_folder_that_is_a_file_is_refused_before_training(tmp_path):
    store = make_store(tmp_path / "store", 64, seed=0).folder
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(GeovarioError, match="run: cannot create the output folder: a file of that name is in the way"):
        Trainer(load_config(None, SMALL + [f"data.train={store}"]), tmp_path / "run", progress=False)
