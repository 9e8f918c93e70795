"""The thesis's other semivariogram penalties, haversine smoothing and variogram soft positives, each against an
independent computation: a numpy port of the thesis's own code (sklearn distances, its masks and clamps), or a
per-row loop over the formula."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_distances, haversine_distances

from geovario.geo import EARTH_RADIUS_KM
from geovario.losses import HaversineSmoothing, InfoNCE, LossInputs, SemivariogramWeightedInfoNCE
from geovario.variogram import VariogramModel
from geovario.variogram.models import slope_range_km

# Spherical: flat beyond its range, so get_penalty3/4's flat-rows test cuts pairs there.
VARIOGRAM = VariogramModel("spherical", nugget=0.1, psill=0.4, range_km=2000.0)


def thesis_case(seed=0, b=5, q=7, scale=0.5):
    """A batch of b with a queue of q: GPS (a few within the range of each other), features, logits."""
    rng = np.random.default_rng(seed)
    centre = np.array([45.0, 10.0])
    gps = np.concatenate([centre + rng.normal(0, 6, (b + q - 4, 2)), np.stack([rng.uniform(-60, 60, 4), rng.uniform(-180, 180, 4)], 1)])
    rng.shuffle(gps)
    features = rng.normal(size=(b + q, 4)) + np.array([1.5, 0, 0, 0])  # cos distances from 0 to about 1
    logits = scale * rng.uniform(0.1, 1.0, (b, b + q))  # a narrow logit range, so the thesis's clamps bite
    return gps, features, logits


def thesis_matrices(gps, features, b):
    rad = np.radians(gps)
    gc = haversine_distances(rad[:b], rad)  # radians, as the thesis
    cos_d = cosine_distances(features[:b], features)
    return gc, cos_d, VARIOGRAM(gc * EARTH_RADIUS_KM)


def reweight(logits, neg, beta):
    """get_penalty2/4's reweighting: exp(beta l) / its mean over the row's negatives, times the negative logits."""
    out = logits.copy()
    for i in range(len(logits)):
        cols = np.flatnonzero(neg[i])
        w = np.exp(beta[i, cols] * logits[i, cols])
        out[i, cols] = logits[i, cols] * w / w.mean()
    return out


def thesis_logits(variant, logits, gps, features):
    """SemivarioPenalty.get_penalty{,2,3,4,5} of DeoBye/Thesis_GeoLoc, ported to numpy as written."""
    b = len(logits)
    gc, cos_d, pred = thesis_matrices(gps, features, b)
    neg = np.ones_like(logits, dtype=bool)
    neg[np.arange(b), np.arange(b)] = False
    out = logits.copy()
    if variant in ("get_penalty", "get_penalty3"):
        if variant == "get_penalty":
            penalty = np.abs(pred - cos_d)
        else:
            penalty = np.maximum(0, cos_d - pred)
            penalty[np.where(np.abs(pred[1:] - pred[:-1]) < 1e-6)] = 0
        penalty = np.clip(penalty, logits.min(), logits.max())
        out[neg] = penalty[neg]
        return out
    if variant == "get_penalty2":
        return reweight(logits, neg, np.clip(np.abs(pred - cos_d), 0.2, 0.5))
    if variant == "get_penalty4":
        penalty = np.maximum(0, cos_d - pred)
        penalty[np.where(np.abs(pred[1:] - pred[:-1]) < 1e-6)] = 0
        return reweight(logits, neg, penalty)
    # get_penalty5: rho on a 0.01 rad grid where the slope falls below 1e-2, penalty 0 beyond it
    t = np.arange(0, np.pi, 0.01)
    curve = VARIOGRAM(t * EARTH_RADIUS_KM)
    rho = np.where((curve[1:] - curve[:-1]) / 0.01 < 1e-2)[0][0] * 0.01
    penalty = np.maximum(0, cos_d - pred)
    penalty[gc > rho] = 0
    out[neg] = logits[neg] * np.exp(penalty[neg])
    return out


def cross_entropy(logits):
    top = logits.max(1, keepdims=True)
    log_p = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(logits)), np.arange(len(logits))].mean())


def our_inputs(logits, gps, features, queue_full=True):
    b = len(logits)
    gc, cos_d, _ = thesis_matrices(gps, features, b)
    return LossInputs(torch.tensor(logits), torch.arange(b), torch.tensor(1.0, dtype=torch.float64),
                      torch.tensor(gc * EARTH_RADIUS_KM), torch.tensor(cos_d), queue_full=queue_full)


VARIANTS = {"logit_abs": "get_penalty", "beta_abs": "get_penalty2", "logit_excess": "get_penalty3", "beta_excess": "get_penalty4",
            "penalty": "get_penalty5"}


@pytest.mark.parametrize("mode", VARIANTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_thesis_penalty_equals_a_port_of_its_function(mode, seed):
    gps, features, logits = thesis_case(seed)
    expected = cross_entropy(thesis_logits(VARIANTS[mode], logits, gps, features))
    loss = SemivariogramWeightedInfoNCE(VARIOGRAM, mode, penalty_range="thesis")
    assert float(loss(our_inputs(logits, gps, features)).loss) == pytest.approx(expected, rel=1e-10)
    assert expected != pytest.approx(cross_entropy(logits), rel=1e-6)  # the variant changed something


def thesis_penalty(mode, logits, gps, features):
    """The port's per-pair value each mode uses (before the logit clamp), and its replacement logits or weights."""
    b = len(logits)
    gc, cos_d, pred = thesis_matrices(gps, features, b)
    flat = np.zeros_like(pred, dtype=bool)
    flat[np.where(np.abs(pred[1:] - pred[:-1]) < 1e-6)] = True
    if mode == "logit_abs":
        return np.abs(pred - cos_d)
    if mode == "beta_abs":
        return np.clip(np.abs(pred - cos_d), 0.2, 0.5)
    excess = np.maximum(0, cos_d - pred)
    if mode == "penalty":
        t = np.arange(0, np.pi, 0.01)
        curve = VARIOGRAM(t * EARTH_RADIUS_KM)
        return np.where(gc > np.where((curve[1:] - curve[:-1]) / 0.01 < 1e-2)[0][0] * 0.01, 0, excess)
    return np.where(flat, 0, excess)


@pytest.mark.parametrize("mode", VARIANTS)
def test_each_thesis_penalty_reports_what_it_did(mode):
    gps, features, logits = thesis_case(0)
    value = thesis_penalty(mode, logits, gps, features)
    neg = ~np.eye(*logits.shape, dtype=bool)
    stats = SemivariogramWeightedInfoNCE(VARIOGRAM, mode, penalty_range="thesis")(our_inputs(logits, gps, features)).stats
    assert stats["penalized_fraction"] == pytest.approx(float((value[neg] > 0).mean()), rel=1e-6)  # a float32 mean
    if mode.startswith("logit"):
        assert stats["mean_replaced_logit"] == pytest.approx(float(np.clip(value, logits.min(), logits.max())[neg].mean()), rel=1e-10)
    elif mode.startswith("beta"):
        ported = thesis_logits(VARIANTS[mode], logits, gps, features)
        weights = np.where(neg, ported / logits, 1.0)
        assert stats["mean_beta"] == pytest.approx(float(value[neg].mean()), rel=1e-10)
        assert stats["max_weight"] == pytest.approx(float(weights[neg].max()), rel=1e-10)
    else:
        factors = np.exp(value)[neg & (value > 0)]
        assert stats["mean_penalty_factor"] == pytest.approx(float(factors.mean()), rel=1e-10)


@pytest.mark.parametrize("mode", ["beta_abs", "beta_excess", "penalty"])
def test_the_thesis_reweightings_are_constants_of_the_gradient(mode):
    """The weights multiply the negative logits as constants (the thesis computes them from detached logits): the
    gradient is the one of cross-entropy on logits * W with W fixed."""
    gps, features, logits = thesis_case(1, scale=3.0)
    inputs = our_inputs(logits, gps, features)
    inputs.logits.requires_grad_(True)
    SemivariogramWeightedInfoNCE(VARIOGRAM, mode, penalty_range="thesis")(inputs).loss.backward()
    weights = torch.tensor(thesis_logits(VARIANTS[mode], logits, gps, features) / logits)
    fixed = torch.tensor(logits, requires_grad=True)
    torch.nn.functional.cross_entropy(fixed * weights, torch.arange(len(logits))).backward()
    torch.testing.assert_close(inputs.logits.grad, fixed.grad, rtol=1e-9, atol=1e-12)


def test_the_flat_rows_cut_is_the_theses_threshold():
    """get_penalty3/4 cut an entry when gamma of the next row, same column, differs by less than 1e-6: here 1.5e-6
    apart is kept, 0.5e-6 apart is cut (spherical curve near 100 km: 3e-4 per km)."""
    slope = 1.5 * VARIOGRAM.psill / VARIOGRAM.range_km * (1 - (100 / VARIOGRAM.range_km) ** 2)
    kept_step, cut_step = 1.5e-6 / slope, 0.5e-6 / slope
    lags = torch.tensor([[0.0, 100.0, 100.0], [100.0, 0.0, 100.0], [100.0 + kept_step, 100.0 + cut_step, 0.0]], dtype=torch.float64)
    inputs = LossInputs(torch.full((3, 3), 0.5, dtype=torch.float64), torch.arange(3), torch.tensor(1.0, dtype=torch.float64), lags,
                        torch.full((3, 3), 0.9, dtype=torch.float64))  # d above gamma everywhere: an excess to keep or cut
    gamma = VARIOGRAM(lags.numpy())
    assert 1.2e-6 < abs(gamma[2, 0] - gamma[1, 0]) < 1.8e-6 and abs(gamma[2, 1] - gamma[1, 1]) > 1e-3  # column 0: rows 1 and 2
    loss = SemivariogramWeightedInfoNCE(VARIOGRAM, "beta_excess", penalty_range="thesis")
    kept = loss._kept(lags, torch.from_numpy(gamma))
    assert kept[1, 0] == 1  # 1.5e-6 apart: kept
    lags[2, 0] = 100.0 + cut_step
    assert loss._kept(lags, VARIOGRAM(lags.double()))[1, 0] == 0  # 0.5e-6 apart: cut
    assert (kept[2] == 1).all()  # the last row is never cut


def test_the_hand_case_reaches_every_branch_of_the_thesis_rules():
    """The case above is only a test of the clamps and the cut if it hits them: logit-range clamps at both ends,
    beta clamped at both 0.2 and 0.5, and the flat-rows cut removing some positive excess."""
    gps, features, logits = thesis_case(0)
    gc, cos_d, pred = thesis_matrices(gps, features, len(logits))
    off = ~np.eye(*logits.shape, dtype=bool)
    absolute, excess = np.abs(pred - cos_d)[off], np.maximum(0, cos_d - pred)
    assert (absolute > logits.max()).any() and (absolute < logits.min()).any()
    assert (absolute < 0.2).any() and (absolute > 0.5).any()
    cut = np.zeros_like(excess, dtype=bool)
    cut[np.where(np.abs(pred[1:] - pred[:-1]) < 1e-6)] = True
    assert (cut & (excess > 0) & off).any() and (~cut & (excess > 0) & off).any()
    assert (gc * EARTH_RADIUS_KM > slope_range_km(VARIOGRAM))[off].any()


@pytest.mark.parametrize("mode", ["logit_excess", "beta_excess"])
def test_effective_range_cuts_the_excess_at_the_variograms_range(mode):
    """penalty_range=effective: the excess applies only below the variogram's range; so a variogram whose range lies
    below every lag leaves the excess modes with no penalty at all."""
    gps, features, logits = thesis_case(1)
    inputs = our_inputs(logits, gps, features)
    near_nothing = VariogramModel("spherical", nugget=0.1, psill=0.4, range_km=float(inputs.lags_km[~torch.eye(*logits.shape, dtype=bool)].min()) * 0.5)
    out = SemivariogramWeightedInfoNCE(near_nothing, mode, penalty_range="effective")(inputs)
    if mode == "beta_excess":  # beta = 0 everywhere: weights exp(0) / mean = 1, InfoNCE
        assert float(out.loss) == pytest.approx(float(InfoNCE()(inputs).loss), rel=1e-12)
    else:  # every negative logit replaced by the clamp of 0, the logit range's minimum
        replaced = np.where(np.eye(*logits.shape, dtype=bool), logits, logits.min())
        assert float(out.loss) == pytest.approx(cross_entropy(replaced), rel=1e-12)
    assert out.stats["penalized_fraction"] == 0.0


@pytest.mark.parametrize("mode", VARIANTS)
def test_every_thesis_penalty_waits_for_the_queue_to_fill(mode):
    gps, features, logits = thesis_case(2)
    out = SemivariogramWeightedInfoNCE(VARIOGRAM, mode, penalty_range="thesis")(our_inputs(logits, gps, features, queue_full=False))
    assert float(out.loss) == pytest.approx(cross_entropy(logits), rel=1e-12)


def test_logit_replacing_penalties_leave_the_negatives_without_gradient():
    """get_penalty and get_penalty3 write numpy values into the logits: only the positives keep their gradient."""
    gps, features, logits = thesis_case(0)
    inputs = our_inputs(logits, gps, features)
    inputs.logits.requires_grad_(True)
    SemivariogramWeightedInfoNCE(VARIOGRAM, "logit_abs")(inputs).loss.backward()
    grad = inputs.logits.grad
    assert (grad[~torch.eye(*logits.shape, dtype=bool)] == 0).all() and (grad.diagonal() < 0).all()


# --- haversine smoothing (PIGEON) ---

def slow_soft_cross_entropy(logits, targets_of):
    total = 0.0
    for i in range(len(logits)):
        row = [float(v) for v in logits[i]]
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        weights = [targets_of(i, j) for j in range(len(row))]
        total += -sum(w / sum(weights) * (row[j] - log_z) for j, w in enumerate(weights))
    return total / len(logits)


def test_haversine_smoothing_matches_the_pigeon_formula_per_row():
    gps, features, logits = thesis_case(3, scale=20.0)
    inputs = our_inputs(logits, gps, features)
    h = inputs.lags_km.numpy()
    expected = slow_soft_cross_entropy(logits, lambda i, j: math.exp(-(h[i, j] - h[i, i]) / 75.0))
    out = HaversineSmoothing()(inputs)
    assert float(out.loss) == pytest.approx(expected, rel=1e-10)
    shares = [sum(math.exp(-h[i, j] / 75.0) for j in range(h.shape[1]) if j != i) / sum(math.exp(-h[i, j] / 75.0) for j in range(h.shape[1]))
              for i in range(len(h))]  # the target mass on the negatives
    assert out.stats["neighbour_target_share"] == pytest.approx(sum(shares) / len(shares), rel=1e-9) and 0 < out.stats["neighbour_target_share"]


def test_haversine_smoothings_target_share_leaves_out_excluded_columns():
    gps, features, logits = thesis_case(3, scale=20.0)
    inputs = our_inputs(logits, gps, features)
    excluded = torch.zeros(logits.shape, dtype=torch.bool)
    excluded[0, 1] = excluded[2, 6] = True  # a row's own sample queued earlier
    inputs.excluded = excluded
    h = inputs.lags_km.numpy()
    present = lambda i: [j for j in range(h.shape[1]) if not excluded[i, j]]  # noqa: E731
    shares = [sum(math.exp(-h[i, j] / 75.0) for j in present(i) if j != i) / sum(math.exp(-h[i, j] / 75.0) for j in present(i))
              for i in range(len(h))]
    assert HaversineSmoothing()(inputs).stats["neighbour_target_share"] == pytest.approx(sum(shares) / len(shares), rel=1e-9)


def test_haversine_smoothing_with_a_tiny_tau_is_infonce_and_a_neighbour_at_zero_km_is_a_second_positive():
    gps, features, logits = thesis_case(4, scale=20.0)
    inputs = our_inputs(logits, gps, features)
    assert float(HaversineSmoothing(tau_km=1e-3)(inputs).loss) == pytest.approx(float(InfoNCE()(inputs).loss), rel=1e-12)
    one = LossInputs(torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64), torch.tensor([0]), torch.tensor(20.0),
                     torch.tensor([[0.0, 0.0, 5000.0]], dtype=torch.float64))
    log_p = torch.log_softmax(one.logits[0], 0)
    assert float(HaversineSmoothing()(one).loss) == pytest.approx(float(-(log_p[0] + log_p[1]) / 2), rel=1e-6)
    with pytest.raises(ValueError, match="tau_km"):
        HaversineSmoothing(0.0)


# --- variogram soft positives ---

def slow_soft_positives(inputs, theta1, theta2, s1):
    h, d, l = inputs.lags_km.numpy(), inputs.dissimilarity.numpy(), inputs.logits.numpy()
    total = 0.0
    for i in range(len(l)):
        t = int(inputs.targets[i])
        shifted, weights = [], []
        for j in range(l.shape[1]):
            gamma = float(VARIOGRAM(np.array([h[i, j]]))[0])
            delta = d[i, j] - gamma
            value, weight = l[i, j], 0.0
            if j == t:
                weight = 1.0
            elif delta < 0 and h[i, j] >= theta1:
                value += s1 * abs(delta)
            elif delta < 0 and h[i, j] <= theta2:
                weight = max(0.0, 1 - gamma / VARIOGRAM.sill)
            shifted.append(value)
            weights.append(weight)
        log_z = math.log(sum(math.exp(v) for v in shifted))
        total += -sum(w / sum(weights) * (v - log_z) for v, w in zip(shifted, weights))
    return total / len(l)


@pytest.mark.parametrize("s1", [0.0, 4.0])
def test_soft_positives_match_the_formula_per_row(s1):
    gps, features, logits = thesis_case(5, scale=20.0)
    inputs = our_inputs(logits, gps, features)
    loss = SemivariogramWeightedInfoNCE(VARIOGRAM, "soft_positives", theta1_km=1500.0, theta2_km=800.0, s1=s1)
    out = loss(inputs)
    assert float(out.loss) == pytest.approx(slow_soft_positives(inputs, 1500.0, 800.0, s1), rel=1e-10)
    assert out.stats["false_fraction"] > 0 and 0 < out.stats["mean_soft_target"] < 1 - VARIOGRAM.nugget / VARIOGRAM.sill
    if s1:
        assert out.stats["hard_fraction"] > 0


def test_soft_positives_without_near_look_alikes_are_the_papers_hard_half():
    """With theta2 = 0 no pair is a soft positive, and s2 = 0 removes the paper's down-weighting: the two modes agree."""
    gps, features, logits = thesis_case(6, scale=20.0)
    inputs = our_inputs(logits, gps, features)
    soft = SemivariogramWeightedInfoNCE(VARIOGRAM, "soft_positives", theta1_km=1500.0, theta2_km=0.0, s1=4.0)(inputs)
    paper = SemivariogramWeightedInfoNCE(VARIOGRAM, "paper", theta1_km=1500.0, theta2_km=0.0, s1=4.0, s2=0.0)(inputs)
    assert float(soft.loss) == pytest.approx(float(paper.loss), rel=1e-12)
    assert soft.stats["mean_soft_target"] == 0.0 and soft.stats["false_fraction"] == 0.0


@pytest.mark.parametrize("mode", VARIANTS)
def test_a_step_without_negatives_costs_nothing_and_reports_nothing_changed(mode):
    """Every column but the row's own excluded (a queue of the batch's own samples): the loss is 0 and the
    statistics say no negative was touched, not NaN: fractions and means over no negatives are 0, factors and
    weights 1."""
    gps, features, logits = thesis_case(0, b=2, q=2)
    inputs = our_inputs(logits, gps, features)
    inputs.excluded = ~torch.eye(2, 4, dtype=torch.bool)
    out = SemivariogramWeightedInfoNCE(VARIOGRAM, mode, penalty_range="thesis")(inputs)
    assert float(out.loss) == 0.0
    expected = {"logit_abs": {"mean_replaced_logit": 0.0}, "logit_excess": {"mean_replaced_logit": 0.0},
                "beta_abs": {"mean_beta": 0.0, "max_weight": 1.0}, "beta_excess": {"mean_beta": 0.0, "max_weight": 1.0},
                "penalty": {"mean_penalty_factor": 1.0}}[mode]
    assert out.stats == expected | {"penalized_fraction": 0.0}
