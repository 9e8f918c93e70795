"""Each loss against a direct, slow, per-sample implementation written here."""

import math

import numpy as np
import pytest
import torch

from geovario.losses import HCLDebiased, HCLWeighted, InfoNCE, LossInputs, SemivariogramWeightedInfoNCE, Triplet, WeightedSum
from geovario.variogram import VariogramModel

VARIOGRAM = VariogramModel("spherical", nugget=0.1, psill=0.4, range_km=2000.0)


def make_inputs(b=6, c=10, seed=0, scale=20.0, shared=True):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(b, c, generator=g, dtype=torch.float64) * 2 - 1
    targets = torch.arange(b) if shared else torch.zeros(b, dtype=torch.long)
    lags = torch.rand(b, c, generator=g, dtype=torch.float64) * 5000
    dissim = torch.rand(b, c, generator=g, dtype=torch.float64) * 0.8
    return LossInputs(scale * cos, targets, torch.tensor(scale, dtype=torch.float64), lags, dissim)


def slow_weighted_infonce(inputs, weight_of):
    total = 0.0
    for i in range(len(inputs.logits)):
        t = int(inputs.targets[i])
        positive = math.exp(float(inputs.logits[i, t]))
        negatives = sum(weight_of(i, j) * math.exp(float(inputs.logits[i, j])) for j in range(inputs.logits.shape[1]) if j != t)
        total += -math.log(positive / (positive + negatives))
    return total / len(inputs.logits)


@pytest.mark.parametrize("shared", [True, False])
def test_infonce(shared):
    inputs = make_inputs(shared=shared)
    assert float(InfoNCE()(inputs).loss) == pytest.approx(slow_weighted_infonce(inputs, lambda i, j: 1.0), rel=1e-12)


def test_semivariogram_paper_mode_matches_the_formula():
    inputs = make_inputs()
    loss = SemivariogramWeightedInfoNCE(VARIOGRAM, "paper", theta1_km=1500, theta2_km=800, s1=3.0, s2=2.0)

    def weight(i, j):
        h, d = float(inputs.lags_km[i, j]), float(inputs.dissimilarity[i, j])
        delta = d - float(VARIOGRAM(np.array([h]))[0])
        if delta < 0 and h >= 1500:
            return math.exp(3.0 * abs(delta))
        if delta < 0 and h <= 800:
            return math.exp(-2.0 * abs(delta))
        return 1.0

    out = loss(inputs)
    assert float(out.loss) == pytest.approx(slow_weighted_infonce(inputs, weight), rel=1e-10)
    assert 0 < out.stats["reweighted_fraction"] <= 1 and out.stats["mean_hard_weight"] > 1 > out.stats["mean_false_weight"]


def test_with_all_weights_one_semivariogram_equals_infonce_exactly():
    inputs = make_inputs()
    inputs.dissimilarity = torch.full_like(inputs.dissimilarity, 5.0)  # never more alike than predicted
    assert torch.equal(SemivariogramWeightedInfoNCE(VARIOGRAM)(inputs).loss, InfoNCE()(inputs).loss)
    no_scale = SemivariogramWeightedInfoNCE(VARIOGRAM, s1=0.0, s2=0.0)(make_inputs())
    assert torch.equal(no_scale.loss, InfoNCE()(make_inputs()).loss)


def test_weights_move_the_right_way_for_constructed_negatives():
    base = make_inputs(b=1, c=3, shared=False)
    base.logits = torch.tensor([[5.0, 2.0, 2.0]], dtype=torch.float64)
    base.dissimilarity = torch.tensor([[0.0, 0.05, 0.6]], dtype=torch.float64)  # col 1: looks alike
    plain = float(InfoNCE()(base).loss)
    loss = SemivariogramWeightedInfoNCE(VARIOGRAM, theta1_km=1500, theta2_km=50)
    base.lags_km = torch.tensor([[0.0, 4000.0, 4000.0]], dtype=torch.float64)  # alike but far: hard negative
    assert float(loss(base).loss) > plain
    base.lags_km = torch.tensor([[0.0, 10.0, 4000.0]], dtype=torch.float64)  # alike and close: false negative
    assert float(loss(base).loss) < plain
    masked = SemivariogramWeightedInfoNCE(VARIOGRAM, theta1_km=1500, theta2_km=50, mask_km=20)(base)
    expected = -math.log(math.exp(5) / (math.exp(5) + math.exp(2)))  # column 1 removed
    assert float(masked.loss) == pytest.approx(expected)


def test_penalty_mode_multiplies_negative_logits_once_the_queue_is_full():
    inputs = make_inputs()
    loss = SemivariogramWeightedInfoNCE(VARIOGRAM, "penalty")
    logits = inputs.logits.clone()
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            h, d = float(inputs.lags_km[i, j]), float(inputs.dissimilarity[i, j])
            if j != i and h < VARIOGRAM.range_km:
                logits[i, j] *= math.exp(max(0.0, d - float(VARIOGRAM(np.array([h]))[0])))
    expected = torch.nn.functional.cross_entropy(logits, inputs.targets)
    assert float(loss(inputs).loss) == pytest.approx(float(expected), rel=1e-12)
    inputs.queue_full = False
    assert torch.equal(loss(inputs).loss, InfoNCE()(inputs).loss)


def test_hcl_weighted_matches_the_thesis_formula():
    inputs = make_inputs(scale=5.0)
    total = 0.0
    for i in range(len(inputs.logits)):
        negatives = [j for j in range(inputs.logits.shape[1]) if j != i]
        raw = {j: math.exp(1.0 * float(inputs.logits[i, j])) for j in negatives}
        mean = sum(raw.values()) / len(raw)
        row = [float(inputs.logits[i, j]) * (raw[j] / mean if j != i else 1.0) for j in range(inputs.logits.shape[1])]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
    assert float(HCLWeighted(beta=1.0)(inputs).loss) == pytest.approx(total / len(inputs.logits), rel=1e-10)


def test_hcl_debiased_on_a_hand_computed_case():
    # One row, positive logit 1, negatives 0 and ln 2, scale 1, tau+ = 0.1, beta = 1.
    inputs = LossInputs(torch.tensor([[1.0, 0.0, math.log(2)]], dtype=torch.float64), torch.tensor([0]), torch.tensor(1.0))
    pos, neg = math.e, [1.0, 2.0]
    imp = neg  # neg ** beta
    reweighted = sum(i * n for i, n in zip(imp, neg)) / (sum(imp) / 2)  # (1 + 4) / 1.5 = 10/3
    ng = max((-0.1 * 2 * pos + reweighted) / 0.9, 2 * math.exp(-1.0))
    expected = -math.log(pos / (pos + ng))
    assert float(HCLDebiased(0.1, 1.0)(inputs).loss) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(-math.log(math.e / (math.e + (10 / 3 - 0.2 * math.e) / 0.9)))


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_triplet(distance):
    inputs = make_inputs(shared=False, scale=10.0)
    cos = inputs.logits / 10.0
    dist = (lambda c: 1 - c) if distance == "cosine" else (lambda c: math.sqrt(2 - 2 * c))
    terms = [max(0.0, dist(float(cos[i, 0])) - dist(float(cos[i, j])) + 1.0) for i in range(len(cos)) for j in range(1, cos.shape[1])]
    assert float(Triplet(1.0, distance)(inputs).loss) == pytest.approx(sum(terms) / len(terms), rel=1e-10)


def test_weighted_sum_and_gradients():
    inputs = make_inputs()
    inputs.logits.requires_grad_(True)
    combo = WeightedSum([("infonce", 0.7, InfoNCE()), ("semivariogram", 0.3, SemivariogramWeightedInfoNCE(VARIOGRAM))])
    out = combo(inputs)
    expected = 0.7 * InfoNCE()(inputs).loss + 0.3 * SemivariogramWeightedInfoNCE(VARIOGRAM)(inputs).loss
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()))
    assert combo.needs_geometry and "semivariogram_reweighted_fraction" in out.stats
    out.loss.backward()
    assert torch.isfinite(inputs.logits.grad).all()
