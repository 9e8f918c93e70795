"""The paper's semivariogram-weighted InfoNCE (arXiv 2509.21573; DESIGN.md §4), and the thesis's penalty.

delta_ij = d_ij - gamma(h_ij): how much more alike images i and j look than their distance h_ij
predicts (d = 1 - cos of frozen features; gamma the fitted semivariogram).

mode "paper":
  hard negative   h >= theta1 and delta < 0:  w = exp( s1 |delta|)   (counts more)
  false negative  h <= theta2 and delta < 0:  w = exp(-s2 |delta|)   (counts less)
  optionally h <= theta_mask: w = 0 (masked); every other pair w = 1.
  L_i = -log( e^{l_ii} / (e^{l_ii} + sum_j w_ij e^{l_ij}) ), computed stably as cross-entropy on
  l + log w with detached weights.
mode "penalty" (the thesis): p_ij = max(0, d_ij - gamma(h_ij)) for h_ij < range, else 0, and the
  negative logits are multiplied by e^{p_ij}; it applies once the feature queue has filled. The range
  is the variogram's effective range (``penalty_range="effective"``, geovario's default), or the
  thesis's own rule (``"thesis"``): the first lag, on a 0.01 rad grid, where the fitted curve's slope
  falls below 1e-2 per radian (``variogram.models.slope_range_km``).

Which features d compares: the plain centre-crop features (view 0) of both images, also on a step
where the image head is fed a randomly augmented view. The variogram was fitted on view-0 features,
so d and gamma(h) describe the same quantity; an augmentation draw would add its own dissimilarity
and shift delta. The queue keeps view-0 features beside its GPS for the same reason. Once the
variogram is refitted on learned embeddings (``loss.refit_every``), d is 1 - cos of the image head's
embeddings of those same view-0 features. gamma must be Matheron's estimate (the mean of d per lag):
delta compares a pair's d with that mean, so a variogram from another estimator is refused.

The paper leaves theta1, theta2, s1 and s2 open. geovario's defaults: theta1 = the variogram's
range (beyond it, two places should look as unalike as any two), theta2 = 25 km (the city-level
threshold of the benchmarks), s1 = s2 = 5 (|delta| is typically 0.05-0.3 for CLIP features, giving
weights of about 1.3-4.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geovario.errors import GeovarioError
from geovario.losses.base import ContrastiveLoss, LossInputs, LossOutput
from geovario.variogram.models import VariogramModel, slope_range_km

MODES = ("paper", "penalty")
PENALTY_RANGES = ("effective", "thesis")


class SemivariogramWeightedInfoNCE(ContrastiveLoss):
    needs_geometry = True

    def __init__(self, variogram: VariogramModel, mode: str = "paper", theta1_km: float | None = None,
                 theta2_km: float = 25.0, s1: float = 5.0, s2: float = 5.0, mask_km: float | None = None,
                 penalty_range: str = "effective"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if penalty_range not in PENALTY_RANGES:
            raise ValueError(f"penalty_range must be one of {PENALTY_RANGES}, got {penalty_range!r}")
        estimator = variogram.info.get("estimator", "matheron")
        if estimator != "matheron":
            raise GeovarioError(f"the semivariogram loss needs a variogram estimated as the mean of d per lag (Matheron); "
                                f"this one used the {estimator} estimator. Refit it with `geovario variogram --estimator matheron`")
        self.variogram = variogram  # replaced when the variogram is refitted on learned embeddings
        self.mode, self.penalty_range = mode, penalty_range
        self.theta1, self.theta2_km, self.s1, self.s2, self.mask_km = theta1_km, theta2_km, s1, s2, mask_km

    @property
    def theta1_km(self) -> float:
        """theta1, or (unset) the current variogram's range."""
        return self.variogram.range_km if self.theta1 is None else self.theta1

    @property
    def range_km(self) -> float:
        """Where the penalty mode stops: the variogram's (effective) range, or the thesis's slope rule."""
        return self.variogram.range_km if self.penalty_range == "effective" else slope_range_km(self.variogram)

    def log_weights(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """(B, C) detached log w for the paper mode (0 on the positives), and what was reweighted."""
        h, d = inputs.lags_km.detach(), inputs.dissimilarity.detach()
        delta = d - self.variogram(h.double()).to(d.dtype)
        negative = inputs.negatives_mask()
        alike = negative & (delta < 0)
        hard = alike & (h >= self.theta1_km)
        false = alike & (h <= self.theta2_km) & ~hard
        log_w = torch.zeros_like(d)
        log_w = torch.where(hard, self.s1 * delta.abs(), log_w)
        log_w = torch.where(false, -self.s2 * delta.abs(), log_w)
        if self.mask_km is not None:
            masked = negative & (h <= self.mask_km)
            log_w = torch.where(masked, torch.full_like(log_w, float("-inf")), log_w)
        n_neg = max(int(negative.sum()), 1)
        stats = {
            "reweighted_fraction": float((hard | false).sum()) / n_neg,
            "hard_fraction": float(hard.sum()) / n_neg,
            "false_fraction": float(false.sum()) / n_neg,
            "mean_hard_weight": float(log_w[hard].exp().mean()) if hard.any() else 1.0,
            "mean_false_weight": float(log_w[false].exp().mean()) if false.any() else 1.0,
        }
        return log_w, stats

    def forward(self, inputs: LossInputs) -> LossOutput:
        if self.mode == "paper":
            log_w, stats = self.log_weights(inputs)
            return LossOutput(F.cross_entropy(inputs.present(inputs.logits + log_w), inputs.targets), stats)
        if not inputs.queue_full:  # the thesis turns the penalty on once the feature queue has filled
            return LossOutput(F.cross_entropy(inputs.present(inputs.logits), inputs.targets), {"penalized_fraction": 0.0})
        h, d = inputs.lags_km.detach(), inputs.dissimilarity.detach()
        excess = torch.clamp(d - self.variogram(h.double()).to(d.dtype), min=0)
        penalty = torch.where((h < self.range_km) & inputs.negatives_mask(), excess, torch.zeros_like(excess))
        logits = inputs.logits * penalty.exp()
        penalized = (penalty > 0)[inputs.negatives_mask()]
        stats = {"penalized_fraction": float(penalized.float().mean()),
                 "mean_penalty_factor": float(penalty[penalty > 0].exp().mean()) if penalized.any() else 1.0}
        return LossOutput(F.cross_entropy(inputs.present(logits), inputs.targets), stats)
