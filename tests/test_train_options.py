"""Training options beyond GeoCLIP's recipe: gradient accumulation, warmup + cosine, parameter groups,
validation every N steps, the best/ model, fp16's settings and Weights & Biases."""

import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from geovario.cli import main
from geovario.config import load_config
from geovario.errors import GeovarioError
from geovario.train import Trainer, train
from test_train import SMALL, make_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("option-stores")
    return make_store(root / "train", 320, seed=0).folder, make_store(root / "val", 64, seed=1).folder


def trainer(run_dir, stores, *overrides, loss="infonce"):
    train_store, val_store = stores
    config = load_config(None, SMALL + [f"data.train={train_store}", f"loss.name={loss}", *overrides])
    return Trainer(config, run_dir, progress=False)


def _gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss, clip", [("infonce", None), ("semivariogram", None), ("infonce", 0.05), ("semivariogram", 0.05)])
def test_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path, stores, loss, clip):
    """GradCache's micro-batches give the whole batch's loss and (clipped) gradient, step after step.

    Gradients are compared, not the weights after Adam's step: Adam's first update is about lr * sign(g),
    so a gradient element within rounding of 0 can move its weight by a whole lr either way. Before
    each step both runs hold the same weights (the whole batch's are copied over), so each comparison
    is of one step's arithmetic, while the queue fills and the weights move as training goes on.
    """
    clipping = [f"optim.grad_clip={clip}"] if clip else []
    whole = trainer(tmp_path / "whole", stores, "train.batch_size=32", *clipping, loss=loss)
    split = trainer(tmp_path / "split", stores, "train.batch_size=32", "train.accumulate=4", *clipping, loss=loss)
    for step in range(3):
        split.model.load_state_dict(whole.model.state_dict())
        expected, got = whole.step(), split.step()
        assert float(got.loss.detach()) == pytest.approx(float(expected.loss.detach()), rel=1e-6)
        theirs, ours = _gradients(whole.model), _gradients(split.model)
        assert sorted(ours) == sorted(theirs) == sorted(name for name, _ in whole.model.named_parameters())
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in theirs.values()]))
        if clip:  # the clip is active, and applies to the whole batch's gradient, once
            assert float(norm) == pytest.approx(clip, rel=1e-4)
        for name in theirs:  # float reassociation only: tolerance relative to the gradient's size
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5 * float(norm), msg=f"step {step}: {name}")
    assert whole.negatives.queue.count == 64  # the queue filled: later steps had queue negatives


def test_warmup_then_cosine_matches_torchs_own_schedulers(tmp_path, stores):
    lr, min_lr, warmup = 1e-3, 1e-5, 5
    train(load_config(None, SMALL + [f"data.train={stores[0]}", "train.epochs=2", "optim.schedule=cosine", f"optim.lr={lr}",
                                     f"optim.min_lr={min_lr}", f"optim.warmup_steps={warmup}"]), tmp_path / "run", progress=False)
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv")["lr"].to_numpy()
    total = len(logged)
    assert total == 40  # 320 samples / 16 per batch x 2 epochs, one row per step
    # The reference: torch's LinearLR warmup followed by CosineAnnealingLR down to min_lr at the last step.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    reference = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup - 1, eta_min=min_lr)], milestones=[warmup])
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    np.testing.assert_allclose(logged, expected, rtol=1e-5)  # metrics.csv keeps 6 significant digits
    assert logged[0] == pytest.approx(lr / warmup) and logged.max() == pytest.approx(lr) and logged[-1] == pytest.approx(min_lr)


def test_resume_continues_the_cosine_schedule_exactly(tmp_path, stores):
    overrides = SMALL + [f"data.train={stores[0]}", "train.epochs=2", "optim.schedule=cosine", "optim.warmup_steps=3",
                         "train.checkpoint_every=7"]
    train(load_config(None, overrides), tmp_path / "whole", progress=False)
    original = Trainer.step

    def killed_after_step_14(self):  # as if killed right after the checkpoint at step 14
        if self.state.step == 14:
            raise KeyboardInterrupt
        return original(self)

    Trainer.step = killed_after_step_14
    try:
        with pytest.raises(KeyboardInterrupt):
            train(load_config(None, overrides), tmp_path / "cut", progress=False)
    finally:
        Trainer.step = original
    assert main(["train", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    whole, resumed = (pd.read_csv(tmp_path / run / "metrics.csv") for run in ("whole", "cut"))
    np.testing.assert_array_equal(resumed["lr"], whole["lr"])
    np.testing.assert_array_equal(resumed["loss"], whole["loss"])


def test_decay_weights_only_spares_biases_and_the_logit_scale(tmp_path, stores):
    run = trainer(tmp_path / "run", stores, "optim.weight_decay=0.01", "optim.decay_weights_only=true")
    names = {id(p): name for name, p in run.model.named_parameters()}
    groups = {group["weight_decay"]: sorted(names[id(p)] for p in group["params"]) for group in run.optimizer.param_groups}
    assert set(groups) == {0.01, 0.0}
    assert groups[0.0] == sorted(n for n in names.values() if n.endswith(".bias") or n == "logit_scale")
    assert groups[0.01] == sorted(n for n in names.values() if n.endswith(".weight"))
    assert len(groups[0.0]) + len(groups[0.01]) == len(names)  # every trained parameter, once
    # Without the option, one group decays everything (GeoCLIP's Adam).
    plain = trainer(tmp_path / "plain", stores, "optim.weight_decay=0.01")
    assert [len(g["params"]) for g in plain.optimizer.param_groups] == [len(names)]
    # And it matters: with a zero gradient, a decayed bias would move, a spared one does not.
    run.optimizer.zero_grad()
    for p in run.model.parameters():
        p.grad = torch.zeros_like(p)
    bias_before, weight_before = run.model.image_head.mlp[0].bias.clone(), run.model.image_head.mlp[0].weight.clone()
    run.optimizer.step()
    assert torch.equal(run.model.image_head.mlp[0].bias, bias_before)
    assert not torch.equal(run.model.image_head.mlp[0].weight, weight_before)


@pytest.mark.parametrize("metric, pick", [("acc_2500km", np.argmax), ("median_km", np.argmin)])
def test_best_model_is_the_validation_with_the_best_metric(tmp_path, stores, metric, pick, capsys):
    train_store, val_store = stores
    config = load_config(None, SMALL + [f"data.train={train_store}", f"data.val={val_store}", "train.epochs=2",
                                        "train.val_every=4", f"train.keep_best={metric}"])
    train(config, tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    validated = metrics.dropna(subset=[f"val_{metric}"])
    assert validated["step"].tolist() == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]  # every 4 steps, epoch ends included
    assert validated["val_geoscore"].between(0, 5000).all()
    column = validated[f"val_{metric}"].to_numpy()
    assert len(set(column)) > 1  # the choice is not trivial
    best_step = int(validated["step"].iloc[int(pick(column))])
    from geovario.modeldir import load_model_dir

    assert load_model_dir(tmp_path / "run" / "best").meta["trained"]["best"]["step"] == best_step
    # Evaluating best/ the way users do gives the logged number.
    out = tmp_path / "best.json"
    assert main(["evaluate", "--model", str(tmp_path / "run" / "best"), "--store", str(val_store), "--gallery", str(train_store),
                 "--out", str(out), "--no-admin", "--no-progress", "--json"]) == 0
    import json

    report = json.loads(out.read_text())
    value = report["accuracy"]["2500"] if metric == "acc_2500km" else report["median_km"]
    assert value == pytest.approx(float(column[int(pick(column))]), rel=1e-5)


def test_a_run_cut_short_before_its_first_epoch_end_is_validated_at_its_last_step(tmp_path, stores):
    """keep_best with no epoch end and no val_every inside the run: the last step is validated, so best/ exists."""
    train_store, val_store = stores
    config = load_config(None, SMALL + [f"data.train={train_store}", f"data.val={val_store}", "train.max_steps=5",
                                        "train.keep_best=acc_2500km"])
    train(config, tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics.dropna(subset=["val_acc_2500km"])["step"].tolist() == [5]
    from geovario.modeldir import load_model_dir

    assert load_model_dir(tmp_path / "run" / "best").meta["trained"]["best"]["step"] == 5


def test_options_are_checked_and_name_their_key(stores):
    base = SMALL + [f"data.train={stores[0]}"]
    for overrides, message in [
        (["optim.warmup_steps=5"], "optim.warmup_steps: belongs to optim.schedule: cosine"),
        (["optim.schedule=linear"], "optim.schedule: 'linear' is not one of step, cosine"),
        (["train.keep_best=acc_25km"], "train.keep_best: needs a validation store in data.val"),
        (["train.keep_best=accuracy"], "train.keep_best: 'accuracy' is not one of"),
        (["train.accumulate=32"], "train.accumulate: 32 micro-batches are more than train.batch_size 16"),
        (["train.amp_dtype=float8"], "train.amp_dtype: 'float8' is not one of bfloat16, float16"),
        (["optim.schedule=cosine", "optim.min_lr=1"], "optim.min_lr: 1.0 is above optim.lr"),
    ]:
        with pytest.raises(GeovarioError, match=message.replace("(", r"\(")):
            load_config(None, base + overrides)


def test_wandb_logs_every_metrics_row_and_resumes_the_same_run(tmp_path, stores, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    ids = iter(["abc123", "def456"])  # a new id on every call: a resume must read back the first
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or FakeRun(),
                                 util=types.SimpleNamespace(generate_id=lambda: next(ids)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    overrides = SMALL + [f"data.train={stores[0]}", "train.max_steps=6", "train.log_every=2", "train.wandb=true", "train.wandb_project=p"]
    train(load_config(None, overrides), tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    logged = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logged] == metrics["step"].tolist() == [2, 4, 6]
    assert [c[2]["loss"] for c in logged] == pytest.approx(metrics["loss"].tolist(), rel=1e-5)
    init = calls[0][1]
    assert (init["project"], init["id"], init["resume"], init["name"]) == ("p", "abc123", "allow", "experiment") and calls[-1] == ("finish",)
    assert all("step" not in c[2] and c[2]["epoch"] == 0 for c in logged)  # the step is W&B's own axis, not a metric
    calls.clear()
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "train.max_steps=8", "--no-progress"]) == 0
    assert calls[0][1]["id"] == "abc123"  # the same W&B run continues
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: one line naming the key
    with pytest.raises(GeovarioError, match="train.wandb: the wandb package is not installed"):
        train(load_config(None, overrides), tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()  # refused at the start, before the run folder is written


def test_float16_amp_is_accepted_and_inert_on_cpu(tmp_path, stores):
    run = trainer(tmp_path / "run", stores, "train.amp_dtype=float16", "train.device=cpu")
    assert not run.scaler.is_enabled() and not run.amp._enabled  # autocast and loss scaling are CUDA-only here
    run.step()


def test_only_float16_autocast_on_cuda_scales_the_loss():
    """bfloat16 has float32's exponent range and needs no loss scaling; float16 does; CPU runs use no autocast."""
    from types import SimpleNamespace

    from geovario.train.loop import uses_loss_scaling

    cases = [(True, "float16", "cuda", True), (True, "bfloat16", "cuda", False), (False, "float16", "cuda", False),
             (True, "float16", "cpu", False)]
    for amp, dtype, device, expected in cases:
        assert uses_loss_scaling(SimpleNamespace(amp=amp, amp_dtype=dtype), SimpleNamespace(type=device)) is expected, (amp, dtype, device)


@pytest.mark.parametrize("dtype, accumulate", [("bfloat16", 1), ("float16", 1), ("float16", 2)])
def test_the_cuda_only_precision_branches_run_on_cpu_when_forced(tmp_path, stores, monkeypatch, dtype, accumulate):
    """What only CUDA runs (autocast; for float16 the loss scaler: scaled backward, unscale before clipping, step,
    update; the GradCache micro-batches under autocast), forced on CPU, where torch.autocast("cpu") takes both
    dtypes: finite losses, weights that follow float32 training's to reduced precision, and an enabled scaler whose
    scale reaches the checkpoint."""
    import json

    from geovario.train import loop

    monkeypatch.setattr(loop, "autocast_enabled", lambda t, device: bool(t.amp))
    options = ["train.device=cpu", f"train.accumulate={accumulate}", "optim.grad_clip=1.0", "optim.lr=1e-3"]
    forced = trainer(tmp_path / "amp", stores, f"train.amp_dtype={dtype}", *options)
    plain = trainer(tmp_path / "fp32", stores, "train.amp=false", *options)
    assert forced.amp._enabled and forced.scaler.is_enabled() is (dtype == "float16") and not plain.amp._enabled
    if dtype == "float16":
        # 65,536, the scaler's first scale, overflows float16's gradients here (the scaler would skip the step and
        # halve it, below); a scale that fits compares the gradients of one real step
        default, forced.scaler = forced.scaler, torch.amp.GradScaler("cpu", init_scale=2.0**8)
    forced.step()
    plain.step()
    reduced, full = _gradients(forced.model), _gradients(plain.model)  # after the scaler's unscale_, at true scale
    assert reduced.keys() == full.keys() and len(full) > 4 and all(torch.isfinite(g).all() for g in reduced.values())
    a, b = (torch.cat([g[name].flatten() for name in sorted(full)]) for g in (full, reduced))
    # The whole gradient: bfloat16 keeps 8 bits of mantissa, float16 11, and a contrastive gradient is a difference of
    # near-equal terms, so single small tensors (a bias) can differ a lot while the whole points the same way.
    cosine, rel = (0.9, 0.2) if dtype == "bfloat16" else (0.98, 0.05)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > cosine
    assert float(b.norm()) == pytest.approx(float(a.norm()), rel=rel)
    for _ in range(2):
        assert np.isfinite(float(forced.step().loss))
    if dtype == "float16":
        from geovario.train.checkpoints import save_checkpoint

        assert forced.scaler.get_scale() == 256.0  # no overflow at 256 in three steps: the scale kept
        save_checkpoint(forced.run_dir, forced.model, forced.optimizer, forced.scheduler, forced.negatives, forced.state, forced.scaler)
        latest = forced.run_dir / "checkpoints" / (forced.run_dir / "checkpoints" / "latest").read_text().strip()
        assert json.loads((latest / "state.json").read_text())["grad_scaler"]["scale"] == 256.0
        # The trainer's own scaler from 65,536: overflowing steps are skipped (the weights stay finite) and the scale
        # halves until the gradients fit.
        forced.scaler = default
        for _ in range(6):
            forced.step()
        assert all(torch.isfinite(p).all() for p in forced.model.parameters())
        assert forced.scaler.get_scale() in [2.0**k for k in range(17)]


def _kept_bytes(model, latlon: torch.Tensor, features: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward through one contrastive forward pass (each storage once),
    plus the embeddings and their gradients: what a step holds at its peak, measured, not estimated."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        locations = model.encode_locations(latlon)
        images = model.encode_images(features)
        logits = images @ locations.T
        torch.nn.functional.cross_entropy(logits, torch.arange(len(images))).backward()
    return sum(seen.values()) + 2 * (locations.numel() + images.numel()) * 4


# Each case makes one part of a step dominate: the location encoder's activations, the queue's storage, the geometry.
MEMORY_CASES = {
    "queue, activations": ("queue", dict(feature_dim=32, head_hidden_dim=32, embed_dim=32, rff_dim=64, hidden_dim=128, hidden_layers=2), 64, 2048, 31),
    "queue, queue storage": ("queue", dict(feature_dim=768, head_hidden_dim=8, embed_dim=8, rff_dim=4, hidden_dim=8, hidden_layers=1), 16, 4096, 31),
    "queue, geometry": ("queue", dict(feature_dim=8, head_hidden_dim=8, embed_dim=8, rff_dim=4, hidden_dim=8, hidden_layers=1), 512, 512, 31),
    "gallery, activations": ("gallery", dict(feature_dim=32, head_hidden_dim=32, embed_dim=32, rff_dim=64, hidden_dim=128, hidden_layers=2), 64, 2048, 31),
}


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_the_step_memory_estimate_bounds_what_a_step_keeps(case):
    """check_step_memory refuses what cannot fit by step_memory_bytes, "a rough upper estimate": it must not be below
    what a step measurably keeps (activations, embeddings, geometry, queues), nor more than a few times above it."""
    from geovario.model import GeoLocModel, ModelConfig
    from geovario.negatives.queue import NegativeQueue
    from geovario.train.build import step_memory_bytes

    source, dims, batch, queue, k = MEMORY_CASES[case]
    model_config = ModelConfig(**dims)
    overrides = ["data.train=unused", f"train.batch_size={batch}", f"model.queue_size={queue}", f"negatives.k={k}"]
    if source == "gallery":
        overrides += ["negatives.source=gallery", "negatives.gallery=unused.csv"]
    config = load_config(None, overrides)
    estimate, what = step_memory_bytes(config, model_config)
    columns = batch + queue if source == "queue" else batch * (k + 1)
    torch.manual_seed(0)
    model = GeoLocModel(model_config)
    kept = _kept_bytes(model, torch.rand(columns, 2) * torch.tensor([180.0, 360.0]) - torch.tensor([90.0, 180.0]),
                       torch.randn(batch, model_config.feature_dim))
    geometry = batch * columns * 8 if source == "queue" else columns * 8  # lag and dissimilarity, float32
    if source == "queue":
        fixed = sum(b.numel() * b.element_size() for b in NegativeQueue(queue, model_config.feature_dim).buffers())
    else:
        fixed = batch * k * (8 + 16)  # int64 indices and float64 GPS
    measured = kept + geometry + fixed
    assert measured <= estimate <= 4 * measured, (measured, estimate)
    assert (f"model.queue_size {queue:,}" if source == "queue" else f"negatives.k {k:,} for each of {batch:,} samples") == what
    halved, _ = step_memory_bytes(load_config(None, overrides + ["train.accumulate=2"]), model_config)
    assert halved < estimate  # accumulation splits the batch's activations


def test_the_step_memory_estimate_divides_the_batch_among_processes():
    from geovario.model import ModelConfig
    from geovario.train.build import step_memory_bytes

    config = load_config(None, ["data.train=unused", "train.batch_size=64", "negatives.source=gallery", "negatives.gallery=unused.csv", "negatives.k=31"])
    one, _ = step_memory_bytes(config, ModelConfig())
    two, what = step_memory_bytes(config, ModelConfig(), world_size=2)
    assert 0.45 * one < two < 0.55 * one and "for each of 32 samples" in what


@pytest.mark.parametrize("source, key", [("queue", "model.queue_size"), ("gallery", "negatives.k")])
def test_a_step_that_cannot_fit_names_the_key_that_sizes_it(monkeypatch, source, key):
    from geovario import machine
    from geovario.model import ModelConfig
    from geovario.train.build import check_step_memory, step_memory_bytes

    overrides = ["data.train=unused", "train.batch_size=64", "model.queue_size=4096", "negatives.k=64"]
    if source == "gallery":
        overrides += ["negatives.source=gallery", "negatives.gallery=unused.csv"]
    config = load_config(None, overrides)
    needed, _ = step_memory_bytes(config, ModelConfig())
    monkeypatch.setattr(machine, "memory_bytes", lambda device: needed)
    check_step_memory(config, ModelConfig(), "cpu")  # exactly enough
    monkeypatch.setattr(machine, "memory_bytes", lambda device: needed // 2)
    with pytest.raises(GeovarioError, match=rf"^config key {key}: "):
        check_step_memory(config, ModelConfig(), "cpu")


def test_an_enabled_loss_scalers_state_survives_a_checkpoint(tmp_path):
    """fp16 training scales its loss (CUDA only in training); the checkpoint keeps the scale it has reached, so a resumed run
    neither restarts at 65,536 nor overflows. Exercised on CPU with an enabled scaler; a disabled one saves nothing."""
    from geovario.train.checkpoints import load_checkpoint, save_checkpoint

    import json

    store = make_store(tmp_path / "store", 64, seed=0).folder
    run = Trainer(load_config(None, SMALL + [f"data.train={store}"]), tmp_path / "run", progress=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.tensor(1.0))  # the scale exists from the first scaled loss on
    scaler.update(new_scale=256.0)
    save_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, run.negatives, run.state, scaler)
    restored = torch.amp.GradScaler("cpu")
    load_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, run.negatives, restored)
    assert restored.get_scale() == 256.0
    run.state.step += 1
    save_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, run.negatives, run.state, torch.amp.GradScaler("cpu", enabled=False))
    latest = run.run_dir / "checkpoints" / (run.run_dir / "checkpoints" / "latest").read_text().strip()
    assert json.loads((latest / "state.json").read_text())["grad_scaler"] is None
    run.state.step += 1
    save_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler, run.negatives, run.state)  # no scaler at all
    latest = run.run_dir / "checkpoints" / (run.run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest.name == f"step-{run.state.step:08d}" and json.loads((latest / "state.json").read_text())["grad_scaler"] is None


def test_a_validation_that_only_ties_the_best_keeps_the_earlier_model(tmp_path):
    from types import SimpleNamespace

    from geovario.train.loop import Trainer

    for metric, values in (("acc_2500km", [50.0, 60.0, 60.0, 55.0]), ("median_km", [900.0, 800.0, 800.0, 850.0])):
        written = []

        def save(folder, extra, written=written):
            folder.mkdir()
            (folder / "step").write_text(str(extra["best"]["step"]))
            written.append(extra["best"]["step"])

        run_dir = tmp_path / metric
        (run_dir / ".best.tmp").mkdir(parents=True)  # left by a run killed while it wrote best/: cleared first
        (run_dir / ".best.tmp" / "half-written").write_text("")
        fake = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(keep_best=metric)), state=SimpleNamespace(best=None),
                               run_dir=run_dir, _save_model=save)
        for step, value in enumerate(values, 1):
            Trainer._keep_if_best(fake, {f"val_{metric}": value}, step)
        assert written == [1, 2] and fake.state.best["step"] == 2 and (run_dir / "best" / "step").read_text() == "2", metric
        assert sorted(p.name for p in (run_dir / "best").iterdir()) == ["step"]


def test_a_stores_variogram_reads_it_lazily_with_the_in_memory_fit(tmp_path, monkeypatch):
    """store_variogram (what a run without loss.variogram, the lab's benchmarks and its study fit) reads a store
    through store.lazy(), so that above the exact path's size only the sampled pairs' rows are read (issue 28; the
    sampled path's reads are tested in test_variogram.py); the fit is the one of the same features held in memory."""
    from geovario.data.store import FeatureStore, write_store
    from geovario.train import build
    from geovario.variogram import empirical_for_loss, fit_for_loss

    lazy_reads = []
    original = FeatureStore.lazy
    monkeypatch.setattr(FeatureStore, "lazy", lambda self, *a: lazy_reads.append(len(self)) or original(self, *a))
    rng = np.random.default_rng(0)
    latlon = np.stack([rng.uniform(-60, 60, 301), rng.uniform(-180, 180, 301)], 1)
    features = (rng.normal(size=(301, 8)) + latlon[:, :1] / 30).astype(np.float32)
    for rows in (300, 301):
        store = write_store(tmp_path / str(rows), features[:rows], latlon[:rows], dtype="float32", shard_size=128)
        expected = fit_for_loss(empirical_for_loss(features[:rows], latlon[:rows])).to_dict()
        assert build.store_variogram(store).to_dict() == expected
    assert lazy_reads == [300, 301]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_non_finite_loss_stops_a_plain_or_accumulated_step_before_the_weights_change(tmp_path, stores, accumulate):
    run = trainer(tmp_path / "run", stores, "train.max_steps=2", f"train.accumulate={accumulate}")
    with torch.no_grad():
        run.model.image_head.mlp[0].weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    with pytest.raises(GeovarioError, match="step 1: the loss is nan, not finite; stopped before updating the weights"):
        run.run()
    torch.testing.assert_close(run.model.state_dict(), before, rtol=0, atol=0, equal_nan=True)


def test_metrics_log_every_log_every_steps_and_the_last_with_the_rate_of_its_window(tmp_path, stores, monkeypatch):
    """metrics.csv has a row every train.log_every steps and at the last step (7 steps, log_every 3: 3, 6, 7); each
    row's samples_per_s is the samples since the previous row over the seconds since it, read here off a clock that
    advances 0.5 s per reading (the loop reads it at the start, then twice per row: the rate, the next window)."""
    from geovario.train import loop

    readings = iter(np.arange(1, 100) * 0.5)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(readings))))
    trainer(tmp_path / "run", stores, "train.max_steps=7", "train.log_every=3").run()  # 320 samples, batch 16: no epoch end
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["step"].tolist() == [3, 6, 7]
    assert metrics["samples_per_s"].tolist() == [3 * 16 / 0.5, 3 * 16 / 0.5, 1 * 16 / 0.5]


def test_a_resume_drops_the_rows_logged_after_its_checkpoint_even_the_only_one(tmp_path):
    from geovario.train.metrics_log import _truncate

    path = tmp_path / "metrics.csv"
    path.write_text("step,epoch,loss\n5,0,1.5\n")
    _truncate(path, 2)
    assert path.read_text() == "step,epoch,loss\n"
    path.write_text("step,epoch,loss\n2,0,1.5\n4,0,1.25\n6,0,1.0\n")
    _truncate(path, 4)
    assert path.read_text() == "step,epoch,loss\n2,0,1.5\n4,0,1.25\n"


def test_metrics_rows_round_floats_to_6_digits_and_leave_everything_else_as_is(tmp_path):
    from geovario.train.metrics_log import _append_row

    path = tmp_path / "metrics.csv"
    _append_row(path, {"step": 1234567, "loss": 0.123456789, "lr": float("nan"), "note": "warm"})
    assert path.read_text().splitlines() == ["step,loss,lr,note", "1234567,0.123457,nan,warm"]


@pytest.mark.parametrize("total", [2, 3, 10])
def test_the_cosine_schedule_reaches_its_floor_at_the_last_step(total):
    from geovario.train.optim import cosine_factor

    assert cosine_factor(0, 0, total, 0.1) == 1.0  # the peak at the first step after (no) warmup
    assert cosine_factor(total - 1, 0, total, 0.1) == pytest.approx(0.1)
    assert cosine_factor(3, 2, 2 + total, 0.25) == pytest.approx(0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi / (total - 1))))


def test_tensorboard_gets_every_numeric_metric_at_its_step_when_installed(tmp_path, stores, monkeypatch):
    """With the tensorboard package installed (faked here: it is optional), every metrics row's numbers go to a
    SummaryWriter in RUN/tensorboard at the row's step, and the writer is closed at the end."""
    calls = []

    class FakeWriter:
        def __init__(self, folder):
            calls.append(("open", folder))

        def add_scalar(self, key, value, step):
            calls.append(("scalar", key, value, step))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(load_config(None, SMALL + [f"data.train={stores[0]}", "train.max_steps=4", "train.log_every=2"]), tmp_path / "run", progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert calls[0] == ("open", str(tmp_path / "run" / "tensorboard")) and calls[-1] == ("close",)
    losses = [(c[3], c[2]) for c in calls if c[0] == "scalar" and c[1] == "loss"]
    assert [s for s, _ in losses] == metrics["step"].tolist() == [2, 4]
    assert [v for _, v in losses] == pytest.approx(metrics["loss"].tolist(), rel=1e-5)
    assert not any(c[0] == "scalar" and c[1] in ("step", "epoch") for c in calls)
