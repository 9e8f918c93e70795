"""The thesis's ssl strategy: two stored views, InfoNCE on both, SimSiam with stop-gradient; checked against a
per-row computation written here, the store's own arrays, and a resumed run."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geovario.config import load_config
from geovario.errors import GeovarioError
from geovario.losses import LossInputs, SimSiamInfoNCE
from geovario.train import StoreData, Trainer, train
from geovario.train.data import step_generator
from test_train import SMALL, make_store


def slow_cross_entropy(logits, targets):
    total = 0.0
    for row, t in zip(logits.tolist(), targets.tolist()):
        total += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    return total / len(logits)


def slow_cosine_mean(p, z):
    total = 0.0
    for a, b in zip(p.tolist(), z.tolist()):
        total += sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return total / len(p)


def test_the_ssl_loss_is_the_theses_weighted_sum_and_stops_the_gradient_at_z():
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3, torch.randn(4, 9, generator=g, dtype=torch.float64) * 3
    z1, z2, p1, p2 = (torch.randn(4, 6, generator=g, dtype=torch.float64).requires_grad_() for _ in range(4))
    targets, scale = torch.arange(4), torch.tensor(10.0)
    inputs = LossInputs(l1, targets, scale, second_view=LossInputs(l2, targets, scale), siamese=(z1, z2, p1, p2))
    out = SimSiamInfoNCE(0.1)(inputs)
    clip = (slow_cross_entropy(l1, targets) + slow_cross_entropy(l2, targets)) / 2
    simsiam = -(slow_cosine_mean(p1, z2) + slow_cosine_mean(p2, z1)) / 2
    assert float(out.loss.detach()) == pytest.approx(0.9 * clip + 0.1 * simsiam, rel=1e-12)
    assert out.stats["clip_loss"] == pytest.approx(clip) and out.stats["simsiam_loss"] == pytest.approx(simsiam)
    out.loss.backward()
    assert z1.grad is None and z2.grad is None  # SimSiam's stop-gradient: z is a target
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="second view"):
        SimSiamInfoNCE()(LossInputs(l1, targets, scale))
    with pytest.raises(ValueError, match="second view"):  # a second view without SimSiam's outputs
        SimSiamInfoNCE()(LossInputs(l1, targets, scale, second_view=LossInputs(l2, targets, scale)))
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="ssl_weight"):
            SimSiamInfoNCE(bad)
    assert float(SimSiamInfoNCE(0.0)(inputs).loss.detach()) == pytest.approx(clip)  # both ends are allowed: InfoNCE alone...
    assert float(SimSiamInfoNCE(1.0)(inputs).loss.detach()) == pytest.approx(simsiam)  # ...or SimSiam alone


@pytest.fixture(scope="module")
def view_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("ssl") / "store", 96, seed=3, views=3)


def test_the_second_view_is_another_stored_view_of_the_same_image(view_store):
    data = StoreData(view_store, use_views=True)
    index = np.arange(96)
    batch = data.batch(index, slice(0, 96), step_generator(0, 0), "cpu", second_view=True)
    plain = view_store.rows(index)
    options = np.concatenate([plain[:, None], view_store.view_rows(index)], 1).astype(np.float32)  # (n, 1 + K, D)

    def which(x):
        found = [int(np.flatnonzero((options[i] == x[i].numpy()).all(1))[0]) for i in range(len(x))]
        return np.array(found)

    first, second = which(batch.features), which(batch.second)
    assert (first != second).all()  # never the same view twice
    assert set(first) == set(second) == {0, 1, 2, 3}  # every view is drawn, the plain one included
    assert set(zip(first.tolist(), second.tolist())) == {(a, b) for a in range(4) for b in range(4) if a != b}  # every other view
    again = data.batch(index, slice(0, 96), step_generator(0, 0), "cpu")  # without the second view: the same first draw
    assert torch.equal(again.features, batch.features) and again.second is None


def test_a_step_scores_both_views_against_the_same_columns_with_batch_norm_per_view(tmp_path, view_store):
    config = load_config(None, SMALL + [f"data.train={view_store.folder}", "loss.name=ssl", "model.queue_size=32", "train.batch_size=16"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.step()
    trainer.step()  # the queue (32) is now full: columns beyond the batch
    step = 2
    generator, rng = step_generator(0, step), np.random.default_rng([0, step])
    batch = trainer.data.batch(*trainer.sampler.batch(step), generator, "cpu", second_view=True)
    candidates = trainer.negatives.candidates(batch, generator, rng)
    inputs = trainer._two_view_inputs(batch, candidates)
    m, heads = trainer.model, trainer.ssl_heads
    with torch.no_grad():
        locations = F.normalize(m.location_encoder(candidates.locations), dim=-1)
        scale = m.logit_scale.exp()
        for features, logits in ((batch.features, inputs.logits), (batch.second, inputs.second_view.logits)):
            torch.testing.assert_close(logits, scale * F.normalize(m.image_head(features), dim=-1) @ locations.T)
        assert inputs.logits.shape[1] == 16 + 32 and torch.equal(inputs.targets, torch.arange(16))
        z2 = heads.projector(m.image_head(batch.second))  # train-mode batch norm over this view's rows alone
        torch.testing.assert_close(inputs.siamese[1], z2)
        torch.testing.assert_close(inputs.siamese[3], heads.predictor(z2))


def test_an_ssl_run_resumes_with_its_heads_to_the_same_weights(tmp_path, view_store):
    base = SMALL + [f"data.train={view_store.folder}", "loss.name=ssl", "model.queue_size=32", "train.batch_size=16",
                    "train.checkpoint_every=3"]
    whole = Trainer(load_config(None, base + ["train.max_steps=6"]), tmp_path / "whole", progress=False)
    whole.run()
    train(load_config(None, base + ["train.max_steps=3"]), tmp_path / "part", progress=False)
    resumed = Trainer(load_config(None, base + ["train.max_steps=6"]), tmp_path / "part", resume=True, progress=False)
    assert resumed.state.step == 3
    resumed.run()
    for ours, theirs in ((whole.model, resumed.model), (whole.ssl_heads, resumed.ssl_heads)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = Trainer(load_config(None, base + ["train.max_steps=6"]), tmp_path / "fresh", progress=False).ssl_heads.state_dict()
    assert not torch.equal(fresh["projector.0.weight"], whole.ssl_heads.state_dict()["projector.0.weight"])  # the heads train
    # Heads that hold NaN (a damaged checkpoint, its checksums made to match) are refused by name.
    import json

    from safetensors.torch import load_file, save_file

    from geovario.hashing import sha256_file

    latest = tmp_path / "part" / "checkpoints" / (tmp_path / "part" / "checkpoints" / "latest").read_text().strip()
    heads = load_file(latest / "extra.safetensors")
    heads["predictor.0.weight"][0, 0] = float("nan")
    save_file(heads, str(latest / "extra.safetensors"))
    sums = json.loads((latest / "checksums.json").read_text())
    (latest / "checksums.json").write_text(json.dumps(sums | {"extra.safetensors": sha256_file(latest / "extra.safetensors")}))
    with pytest.raises(GeovarioError, match=r"extra.safetensors: predictor.0.weight holds NaN"):
        Trainer(load_config(None, base + ["train.max_steps=9"]), tmp_path / "part", resume=True, progress=False)
    # Heads of another shape (a checkpoint edited by hand, checksums matched) are refused in one line, by key.
    heads["predictor.0.weight"] = torch.zeros(3, 3)
    save_file(heads, str(latest / "extra.safetensors"))
    (latest / "checksums.json").write_text(json.dumps(sums | {"extra.safetensors": sha256_file(latest / "extra.safetensors")}))
    with pytest.raises(GeovarioError, match=r"other ssl heads \(differs at \['predictor.0.weight'\]\)"):
        Trainer(load_config(None, base + ["train.max_steps=9"]), tmp_path / "part", resume=True, progress=False)
    # A plain run's checkpoint has no heads to resume the ssl loss from.
    plain = SMALL + [f"data.train={view_store.folder}", "model.queue_size=32", "train.batch_size=16", "train.max_steps=3"]
    train(load_config(None, plain), tmp_path / "plain", progress=False)
    with pytest.raises(GeovarioError, match="without the ssl loss's heads"):
        Trainer(load_config(None, base + ["train.max_steps=6"]), tmp_path / "plain", resume=True, progress=False)


def test_ssl_refuses_a_store_without_views_and_gradient_accumulation(tmp_path):
    store = make_store(tmp_path / "plain", 64, seed=0).folder
    with pytest.raises(GeovarioError, match=r"config key data.train: the ssl loss needs two views .* --views K"):
        Trainer(load_config(None, SMALL + [f"data.train={store}", "loss.name=ssl"]), tmp_path / "run", progress=False)
    with pytest.raises(GeovarioError, match="config key train.accumulate"):
        load_config(None, SMALL + [f"data.train={store}", "loss.name=ssl", "train.accumulate=2"])
    with pytest.raises(GeovarioError, match=r"config key loss.parts\[0\]"):
        load_config(None, SMALL + [f"data.train={store}", "loss.name=combined", "loss.parts=[{name: ssl, weight: 1}]"])


def test_synthetic_views_add_noise_of_the_asked_relative_norm(tmp_path):
    store = make_store(tmp_path / "plain", 400, dims=64, seed=1)
    data = StoreData(store, use_views=True, view_noise=0.3)
    index = np.arange(400)
    batch = data.batch(index, slice(0, 400), step_generator(0, 5), "cpu", second_view=True)
    plain = torch.from_numpy(store.rows(index)).float()
    for view in (batch.features, batch.second):
        ratio = (view - plain).norm(dim=1) / plain.norm(dim=1)
        assert float(ratio.mean()) == pytest.approx(0.3, rel=0.05)
    assert not torch.equal(batch.features, batch.second)
    torch.testing.assert_close(batch.reference, plain)  # the dissimilarity still compares the plain features
    halves = [data.batch(index, rows, step_generator(0, 5), "cpu", second_view=True) for rows in (slice(0, 200), slice(200, 400))]
    torch.testing.assert_close(torch.cat([h.second for h in halves]), batch.second)  # drawn for the global batch
    unchanged = StoreData(store, use_views=True).batch(index, slice(0, 400), step_generator(0, 5), "cpu")
    torch.testing.assert_close(unchanged.features, plain, rtol=0, atol=0)  # no synthetic views unless asked
    views = make_store(tmp_path / "views", 64, seed=0, views=2).folder
    with pytest.raises(GeovarioError, match="config key data.view_noise: .* 2 stored views"):
        Trainer(load_config(None, SMALL + [f"data.train={views}", "data.view_noise=0.3"]), tmp_path / "run", progress=False)


def test_the_heads_have_the_theses_sizes():
    """projection_MLP(in_dim=512): 512 -> 512 -> 512 -> 512 with batch norm after each; prediction_MLP(512): 512 -> 256 -> 512
    (DeoBye/Thesis_GeoLoc, geoclip/model/GeoCLIP.py), here from the model's embedding width."""
    from geovario.losses import SimSiamHeads

    heads = SimSiamHeads(64)
    linear = [m for m in heads.projector if isinstance(m, torch.nn.Linear)] + [m for m in heads.predictor if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 512), (512, 512), (512, 512), (512, 256), (256, 512)]
    norms = [m.num_features for m in heads.projector if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms == [512, 512, 512] and [m.num_features for m in heads.predictor if isinstance(m, torch.nn.BatchNorm1d)] == [256]


def test_view_zero_is_the_plain_centre_crop_and_view_k_the_kth_stored_one():
    """StoreData._view's numbering, as the store documents it: 0 the plain features, k the k-th augmented view."""
    plain = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    views = torch.stack([torch.full((2, 2), 10.0 * (i + 1)) + torch.tensor([[0.0], [1.0]]) for i in range(3)])  # (3, K=2, 2)
    out = StoreData._view(plain, views, torch.tensor([0, 1, 2]))
    assert out.tolist() == [[1.0, 1.0], [20.0, 20.0], [31.0, 31.0]]


def test_a_non_finite_ssl_loss_stops_the_run_before_the_weights_change(tmp_path, view_store):
    config = load_config(None, SMALL + [f"data.train={view_store.folder}", "loss.name=ssl", "model.queue_size=32", "train.batch_size=16",
                                        "train.max_steps=2"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    with torch.no_grad():
        trainer.ssl_heads.predictor[0].weight[0, 0] = float("nan")  # only the SimSiam term diverges
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(GeovarioError, match="step 1: the loss is nan, not finite; stopped before updating the weights"):
        trainer.run()
    torch.testing.assert_close(trainer.model.state_dict(), before, rtol=0, atol=0)
