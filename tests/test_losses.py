"""Each loss against a direct, slow, per-sample implementation written here."""

import math

import numpy as np
import pytest
import torch

from geovario.errors import GeovarioError
from geovario.losses import (HaversineSmoothing, HCLDebiased, HCLWeighted, InfoNCE, LossInputs, SemivariogramWeightedInfoNCE,
                             SimSiamInfoNCE, Triplet, WeightedSum)
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
    out = loss(inputs)
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-12)
    b, c = logits.shape
    penalized = sum(1 for i in range(b) for j in range(c) if j != i and logits[i, j] != inputs.logits[i, j])
    assert out.stats["penalized_fraction"] == pytest.approx(penalized / (b * (c - 1)))  # over the negatives only
    inputs.queue_full = False
    assert torch.equal(loss(inputs).loss, InfoNCE()(inputs).loss)


def test_hcl_weighted_matches_the_thesis_formula():
    inputs = make_inputs(scale=5.0)
    total, weights = 0.0, []
    for i in range(len(inputs.logits)):
        negatives = [j for j in range(inputs.logits.shape[1]) if j != i]
        raw = {j: math.exp(1.0 * float(inputs.logits[i, j])) for j in negatives}
        mean = sum(raw.values()) / len(raw)
        weights += [raw[j] / mean for j in negatives]
        row = [float(inputs.logits[i, j]) * (raw[j] / mean if j != i else 1.0) for j in range(inputs.logits.shape[1])]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
    out = HCLWeighted(beta=1.0)(inputs)
    assert float(out.loss) == pytest.approx(total / len(inputs.logits), rel=1e-10)
    assert out.stats == pytest.approx({"max_weight": max(weights), "mean_weight": sum(weights) / len(weights)}, rel=1e-9)


def test_hcl_debiased_on_hand_computed_cases():
    # One row, positive logit 1, negatives 0 and ln 2, scale 1, tau+ = 0.1, beta = 1. By hand:
    # pos = e, neg = (1, 2), imp = neg, R = (1*1 + 2*2) / ((1 + 2) / 2) = 10/3,
    # Ng = (10/3 - 0.1 * 2 * e) / 0.9 = 3.0996411, above the floor 2/e, and L = log(1 + Ng / e).
    inputs = LossInputs(torch.tensor([[1.0, 0.0, math.log(2)]], dtype=torch.float64), torch.tensor([0]), torch.tensor(1.0))
    out = HCLDebiased(0.1, 1.0)(inputs)
    assert float(out.loss) == pytest.approx(0.7609433086301557, rel=1e-12) and out.stats["clamped_fraction"] == 0.0
    # The clamp: positive logit 3, negatives 0 and 0, scale 3. R = 2, so Ng = (2 - 0.1 * 2 * e^3) / 0.9 < 0
    # and is raised to the floor N e^-scale = 2 e^-3; L = log(1 + 2 e^-3 / e^3).
    clamped = LossInputs(torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64), torch.tensor([0]), torch.tensor(3.0))
    out = HCLDebiased(0.1, 1.0)(clamped)
    assert float(out.loss) == pytest.approx(0.004945256391496459, rel=1e-12) and out.stats["clamped_fraction"] == 1.0
    # tau+ = 0 is HCL without debiasing: L = log(1 + R / pos), with R = 10/3 in the first case.
    assert float(HCLDebiased(0.0, 1.0)(inputs).loss) == pytest.approx(math.log(1 + (10 / 3) / math.e), rel=1e-12)


def linear_hcl_debiased(inputs, tau_plus=0.1, beta=1.0):
    """HCL's debiased loss as Robinson et al. write it, in Python float64, row by row."""
    scale, total = float(inputs.logit_scale), 0.0
    for i in range(len(inputs.logits)):
        t = int(inputs.targets[i])
        pos = math.exp(float(inputs.logits[i, t]))
        neg = [math.exp(float(v)) for j, v in enumerate(inputs.logits[i]) if j != t]
        imp = [n**beta for n in neg]
        reweighted = sum(a * n for a, n in zip(imp, neg)) / (sum(imp) / len(imp))
        ng = max((-tau_plus * len(neg) * pos + reweighted) / (1 - tau_plus), len(neg) * math.exp(-scale))
        total += -math.log(pos / (pos + ng))
    return total / len(inputs.logits)


@pytest.mark.parametrize("scale", [5.0, 20.0, 100.0])
def test_hcl_debiased_in_log_space_equals_the_linear_formula_and_stays_finite(scale):
    # At scale 100, e^{(1 + beta) l} reaches e^200: past float32 (e^88), though not float64 (e^709).
    inputs = make_inputs(b=8, c=40, scale=scale)
    expected = linear_hcl_debiased(inputs)
    assert float(HCLDebiased(0.1, 1.0)(inputs).loss) == pytest.approx(expected, rel=1e-10)
    single = LossInputs(inputs.logits.float().requires_grad_(True), inputs.targets, torch.tensor(scale))
    loss = HCLDebiased(0.1, 1.0)(single).loss
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(single.logits.grad).all()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


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


def test_a_variogram_from_another_estimator_is_refused():
    robust = VariogramModel("spherical", nugget=0.1, psill=0.4, range_km=2000.0, info={"estimator": "cressie"})
    with pytest.raises(GeovarioError, match="needs a variogram estimated as the mean of d per lag .*cressie estimator"):
        SemivariogramWeightedInfoNCE(robust)


def test_thesis_range_rule_on_a_spherical_curve():
    """gamma = c (1.5 x - 0.5 x^3), x = h / a: the slope per radian, 1.5 c (1 - x^2) R / a, falls below 1e-2 at
    x* = sqrt(1 - 1e-2 a / (1.5 c R)); the rule returns the first 0.01 rad grid lag past it."""
    from geovario.geo import EARTH_RADIUS_KM
    from geovario.variogram import slope_range_km

    model = VariogramModel("spherical", nugget=0.1, psill=0.4, range_km=2000.0)
    x_star = math.sqrt(1 - 1e-2 * 2000.0 / (1.5 * 0.4 * EARTH_RADIUS_KM))
    step = 0.01 * EARTH_RADIUS_KM
    found = slope_range_km(model)
    # The secant over [g, g + step] first drops below 1e-2 somewhat before x*; the answer is a grid lag within a step of it.
    assert found / step == pytest.approx(round(found / step), abs=1e-9)  # a lag of the 0.01 rad grid
    assert x_star * 2000.0 - 2 * step < found <= x_star * 2000.0
    assert found < model.range_km  # the thesis's rule stops before the effective range here
    flat = VariogramModel("spherical", nugget=0.1, psill=1e-6, range_km=2000.0)
    assert slope_range_km(flat) == 0.0  # never rising by 1e-2 per radian: the range is the first lag
    # A gentle curve whose slope starts at 1.91e-2 per radian: the 1e-2 threshold (the thesis's) decides the answer.
    gentle = VariogramModel("spherical", nugget=0.0, psill=0.01, range_km=5000.0)
    x_star = math.sqrt(1 - 1e-2 * 5000.0 / (1.5 * 0.01 * EARTH_RADIUS_KM))  # 0.69: 3,452 km
    assert x_star * 5000.0 - 2 * step < slope_range_km(gentle) <= x_star * 5000.0
    steep = VariogramModel("exponential", nugget=0.0, psill=100.0, range_km=1e6)  # rising by > 1 per radian everywhere
    assert slope_range_km(steep) == pytest.approx(math.pi * EARTH_RADIUS_KM)  # never flat: half the circumference


def test_penalty_range_rule_changes_which_negatives_are_penalized():
    inputs = make_inputs(b=6, c=40, seed=3)
    inputs.dissimilarity = torch.full_like(inputs.dissimilarity, 0.9)  # every pair less alike than predicted
    from geovario.variogram import slope_range_km

    for rule, limit in (("effective", VARIOGRAM.range_km), ("thesis", slope_range_km(VARIOGRAM))):
        out = SemivariogramWeightedInfoNCE(VARIOGRAM, "penalty", penalty_range=rule)(inputs)
        mask = inputs.negatives_mask()
        expected = float(((inputs.lags_km < limit) & mask).sum()) / float(mask.sum())
        assert out.stats["penalized_fraction"] == pytest.approx(expected)


def test_theta1_follows_a_refitted_variogram():
    loss = SemivariogramWeightedInfoNCE(VARIOGRAM)
    assert loss.theta1_km == 2000.0
    loss.variogram = VariogramModel("spherical", nugget=0.1, psill=0.4, range_km=3500.0)  # as a refit sets it
    assert loss.theta1_km == 3500.0
    assert SemivariogramWeightedInfoNCE(VARIOGRAM, theta1_km=800.0).theta1_km == 800.0


def with_own_entries(inputs: LossInputs, seed: int) -> LossInputs:
    """Exclude about a third of each row's negative columns (as queued copies of the row's own sample are)."""
    excluded = torch.rand(inputs.logits.shape, generator=torch.Generator().manual_seed(seed)) < 0.3
    excluded[torch.arange(len(inputs.targets)), inputs.targets] = False
    inputs.excluded = excluded
    return inputs


def row_without_excluded(inputs: LossInputs, i: int) -> LossInputs:
    """Row i alone, its excluded columns deleted: what the row's loss must see."""
    keep = ~inputs.excluded[i]
    target = int(keep[: int(inputs.targets[i])].sum())  # the positive's column once the excluded ones are gone
    cut = lambda x: None if x is None else x[i : i + 1, keep]  # noqa: E731
    return LossInputs(inputs.logits[i : i + 1, keep], torch.tensor([target]), inputs.logit_scale, cut(inputs.lags_km),
                      cut(inputs.dissimilarity), inputs.queue_full)


EVERY_LOSS = {
    "infonce": InfoNCE(),
    "semivariogram": SemivariogramWeightedInfoNCE(VARIOGRAM, theta1_km=1500, theta2_km=800, s1=3.0, s2=2.0, mask_km=300),
    "semivariogram-penalty": SemivariogramWeightedInfoNCE(VARIOGRAM, "penalty"),
    "semivariogram-beta_abs": SemivariogramWeightedInfoNCE(VARIOGRAM, "beta_abs"),
    "semivariogram-beta_excess": SemivariogramWeightedInfoNCE(VARIOGRAM, "beta_excess"),
    "semivariogram-soft_positives": SemivariogramWeightedInfoNCE(VARIOGRAM, "soft_positives", theta1_km=1500, theta2_km=800, s1=3.0),
    "haversine_smoothing": HaversineSmoothing(900.0),
    "hcl_weighted": HCLWeighted(1.0),
    "hcl_debiased": HCLDebiased(0.1, 1.0),
    "triplet": Triplet(1.0, "cosine"),
    "combined": WeightedSum([("infonce", 0.5, InfoNCE()), ("hcl_debiased", 0.5, HCLDebiased(0.1, 1.0))]),
}


@pytest.mark.parametrize("name", EVERY_LOSS)
def test_every_loss_treats_an_excluded_column_as_absent_from_its_row(name):
    loss = EVERY_LOSS[name]
    inputs = with_own_entries(make_inputs(b=6, c=14, seed=4, scale=5.0), seed=1)
    assert inputs.excluded.any(1).all()  # every row loses some columns
    rows = [row_without_excluded(inputs, i) for i in range(len(inputs.logits))]
    if name == "triplet":  # the mean over every (row, negative) pair
        counts = [r.logits.shape[1] - 1 for r in rows]
        expected = sum(float(loss(r).loss) * n for r, n in zip(rows, counts)) / sum(counts)
    else:  # the mean over rows
        expected = sum(float(loss(r).loss) for r in rows) / len(rows)
    assert float(loss(inputs).loss) == pytest.approx(expected, rel=1e-10)
    inputs.excluded = None  # and the exclusion matters here
    assert float(loss(inputs).loss) != pytest.approx(expected, rel=1e-3)


def test_hcl_weighted_importance_weights_are_constants_of_the_gradient():
    """Robinson et al. treat the importance weights as fixed (detached): the gradient of row i's loss with
    respect to a negative logit l_ij is then softmax_j(w l) * w_ij, with w held constant. Were the weights
    differentiated, d(w_ij l_ij)/d l_ij would add l_ij * dw_ij/dl_ij terms and change the update, not the value."""
    inputs = make_inputs(b=4, c=9, seed=2, scale=3.0)
    logits = inputs.logits.clone().requires_grad_(True)
    inputs.logits = logits
    HCLWeighted(beta=1.0)(inputs).loss.backward()
    values = logits.detach()
    expected = torch.zeros_like(values)
    b, c = values.shape
    for i in range(b):
        raw = [math.exp(float(values[i, j])) if j != i else None for j in range(c)]
        mean = sum(r for r in raw if r is not None) / (c - 1)
        w = [1.0 if j == i else raw[j] / mean for j in range(c)]
        z = [w[j] * float(values[i, j]) for j in range(c)]
        top = max(z)
        soft = [math.exp(v - top) for v in z]
        total = sum(soft)
        for j in range(c):
            expected[i, j] = (soft[j] / total - (1.0 if j == i else 0.0)) * w[j] / b
    torch.testing.assert_close(logits.grad, expected, rtol=1e-9, atol=1e-12)


def test_the_paper_modes_thresholds_include_their_boundaries():
    """DESIGN.md §4: hard at h >= theta1, false at h <= theta2, masked at h <= theta_mask; pairs exactly on a boundary
    belong to it. One row: the positive, then a negative at each boundary and one just beyond it, all alike (delta < 0)."""
    theta1, theta2, mask, s1, s2 = 1500.0, 50.0, 10.0, 3.0, 2.0
    lags = [0.0, theta1, theta1 - 1e-6, theta2, theta2 + 1e-6, mask, mask + 1e-6]
    inputs = LossInputs(torch.tensor([[4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64), torch.tensor([0]),
                        torch.tensor(20.0, dtype=torch.float64), torch.tensor([lags], dtype=torch.float64),
                        torch.zeros(1, 7, dtype=torch.float64))  # d = 0: more alike than gamma(h) > 0 predicts
    delta = [-float(VARIOGRAM(np.array([h]))[0]) for h in lags]
    loss = SemivariogramWeightedInfoNCE(VARIOGRAM, theta1_km=theta1, theta2_km=theta2, s1=s1, s2=s2, mask_km=mask)
    log_w, stats = loss.log_weights(inputs)
    expected = [0.0, s1 * -delta[1], 0.0, -s2 * -delta[3], 0.0, float("-inf"), -s2 * -delta[6]]
    np.testing.assert_allclose(log_w[0].numpy(), expected, rtol=1e-12)
    assert stats["hard_fraction"] == pytest.approx(1 / 6) and stats["false_fraction"] == pytest.approx(3 / 6)


def test_a_losss_own_defaults_are_the_configs():
    """The constants from the paper and the thesis appear twice, as a loss's defaults and as the config's: the same."""
    from geovario.config import LossSection
    from geovario.losses import build_loss

    section = LossSection().__dict__
    for cls, name, attributes in [(HCLWeighted, "hcl_weighted", ["beta"]), (HCLDebiased, "hcl_debiased", ["tau_plus", "beta"]),
                                  (Triplet, "triplet", ["margin", "distance"]),
                                  (HaversineSmoothing, "haversine_smoothing", ["tau_km"]), (SimSiamInfoNCE, "ssl", ["ssl_weight"])]:
        own, configured = cls(), build_loss(name, section)
        assert [getattr(own, a) for a in attributes] == [getattr(configured, a) for a in attributes], name
    own, configured = SemivariogramWeightedInfoNCE(VARIOGRAM), build_loss("semivariogram", section, VARIOGRAM)
    for attribute in ("mode", "theta1", "theta2_km", "s1", "s2", "mask_km", "penalty_range"):
        assert getattr(own, attribute) == getattr(configured, attribute), attribute


def test_tau_plus_of_one_is_refused():
    """HCL divides by 1 - tau+: tau+ must lie in [0, 1)."""
    HCLDebiased(0.0, 1.0)
    HCLDebiased(0.999, 1.0)
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"tau_plus must lie in \[0, 1\)"):
            HCLDebiased(bad, 1.0)


@pytest.mark.parametrize("mode", ["paper", "penalty"])
def test_the_semivariogram_weights_are_constants_of_the_gradient(mode):
    """The weights (and the penalty) are detached: no gradient reaches the dissimilarity or the lags through them."""
    inputs = make_inputs(b=4, c=9, seed=6)
    inputs.logits.requires_grad_(True)
    inputs.dissimilarity.requires_grad_(True)
    inputs.lags_km.requires_grad_(True)
    SemivariogramWeightedInfoNCE(VARIOGRAM, mode, theta1_km=1500, theta2_km=800)(inputs).loss.backward()
    assert inputs.logits.grad is not None and inputs.dissimilarity.grad is None and inputs.lags_km.grad is None


def test_paper_mode_statistics_on_a_hand_case():
    """One row: the positive, a hard negative, a pair exactly as alike as predicted (delta = 0: neither hard nor
    false), and a plain one. The stats are what metrics.csv logs."""
    h = [0.0, 3000.0, 3000.0, 3000.0]
    gamma = [float(VARIOGRAM(np.array([x]))[0]) for x in h]
    d = [0.0, gamma[1] - 0.2, gamma[2], gamma[3] + 0.1]
    inputs = LossInputs(torch.tensor([[3.0, 1.0, 1.0, 1.0]], dtype=torch.float64), torch.tensor([0]), torch.tensor(10.0),
                        torch.tensor([h], dtype=torch.float64), torch.tensor([d], dtype=torch.float64))
    _, stats = SemivariogramWeightedInfoNCE(VARIOGRAM, theta1_km=1500, theta2_km=25, s1=5.0, s2=5.0).log_weights(inputs)
    assert stats == pytest.approx({"reweighted_fraction": 1 / 3, "hard_fraction": 1 / 3, "false_fraction": 0.0,
                                   "mean_hard_weight": math.exp(5.0 * 0.2), "mean_false_weight": 1.0}, rel=1e-9)
    one = LossInputs(inputs.logits[:, :2], inputs.targets, inputs.logit_scale, inputs.lags_km[:, :2], inputs.dissimilarity[:, :2])
    _, stats = SemivariogramWeightedInfoNCE(VARIOGRAM, theta1_km=5000, theta2_km=25, s1=5.0, s2=5.0).log_weights(one)
    assert stats == {"reweighted_fraction": 0.0, "hard_fraction": 0.0, "false_fraction": 0.0,  # a single negative, not hard
                     "mean_hard_weight": 1.0, "mean_false_weight": 1.0}
    _, stats = SemivariogramWeightedInfoNCE(VARIOGRAM, theta1_km=1500, theta2_km=25, s1=5.0, s2=5.0).log_weights(one)
    assert stats == pytest.approx({"reweighted_fraction": 1.0, "hard_fraction": 1.0, "false_fraction": 0.0,  # a single, hard one
                                   "mean_hard_weight": math.exp(5.0 * 0.2), "mean_false_weight": 1.0}, rel=1e-9)


def test_penalty_mode_statistics_and_its_range_boundary():
    """The penalty applies where h < range (the thesis's strict bound), so a pair exactly at the range is not penalized."""
    rng = VARIOGRAM.range_km
    h = [0.0, 100.0, rng, rng - 1e-6, 200.0]
    gamma = [float(VARIOGRAM(np.array([x]))[0]) for x in h]
    d = [0.0, gamma[1] + 0.3, gamma[2] + 0.3, gamma[3] + 0.2, gamma[4] - 0.1]  # the last: less than predicted, no penalty
    inputs = LossInputs(torch.tensor([[3.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64), torch.tensor([0]), torch.tensor(10.0),
                        torch.tensor([h], dtype=torch.float64), torch.tensor([d], dtype=torch.float64))
    out = SemivariogramWeightedInfoNCE(VARIOGRAM, "penalty")(inputs)
    assert out.stats == pytest.approx({"penalized_fraction": 2 / 4, "mean_penalty_factor": (math.exp(0.3) + math.exp(0.2)) / 2},
                                      rel=1e-9)
    logits = [3.0, math.exp(0.3), 1.0, math.exp(0.2), 1.0]
    expected = -3.0 + math.log(sum(math.exp(v) for v in logits))
    assert float(out.loss) == pytest.approx(expected, rel=1e-12)
    inputs.dissimilarity = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # nothing above the curve
    assert SemivariogramWeightedInfoNCE(VARIOGRAM, "penalty")(inputs).stats == {"penalized_fraction": 0.0, "mean_penalty_factor": 1.0}
    inputs.queue_full = False
    assert SemivariogramWeightedInfoNCE(VARIOGRAM, "penalty")(inputs).stats == {"penalized_fraction": 0.0}


def test_triplet_active_fraction_counts_the_violated_pairs():
    """Margin 1, cosine distance: a negative is active when d_pos - d_neg + 1 > 0; one exactly at 0 is not."""
    cos = torch.tensor([[0.75, 0.75, -0.5, 0.0, -0.25]], dtype=torch.float64)  # d_pos = 0.25; d_neg 0.25, 1.5, 1, 1.25
    out = Triplet(1.0, "cosine")(LossInputs(cos * 4.0, torch.tensor([0]), torch.tensor(4.0, dtype=torch.float64)))
    assert out.stats["active_fraction"] == 2 / 4  # violations 1, 0 (clamped), 0.25 and exactly 0: two active
    assert float(out.loss) == (1.0 + 0.0 + 0.25 + 0.0) / 4

