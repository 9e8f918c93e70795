"""The paper's semivariogram-weighted InfoNCE (arXiv 2509.21573; DESIGN.md §4), and the thesis's penalty.

delta_ij = d_ij - gamma(h_ij): how much more alike images i and j look than their distance h_ij
predicts (d = 1 - cos of frozen features; gamma the fitted semivariogram).

mode "paper":
  hard negative   h >= theta1 and delta < 0:  w = exp( s1 |delta|)   (counts more)
  false negative  h <= theta2 and delta < 0:  w = exp(-s2 |delta|)   (counts less)
  optionally h <= theta_mask: w = 0 (masked); every other pair w = 1.
  L_i = -log( e^{l_ii} / (e^{l_ii} + sum_j w_ij e^{l_ij}) ), computed stably as cross-entropy on
  l + log w with detached weights.
mode "soft_positives" (beyond the paper; losses.soft_targets): the hard negatives are weighted as in
  "paper", but a false negative is not down-weighted: it becomes a partial positive, with target mass
  rho(h) = 1 - gamma(h) / sill (the spatial correlation the variogram gives at its lag) beside the
  positive's 1, normalised per row. With s1 = 0 only the soft positives remain.
mode "penalty" (the thesis's final code, ``SemivarioPenalty.get_penalty5``): p_ij = max(0, d_ij - gamma(h_ij))
  for h_ij < range, else 0, and the negative logits are multiplied by e^{p_ij}. The range is the
  variogram's effective range (``penalty_range="effective"``, geovario's default), or the thesis's own
  rule (``"thesis"``): the first lag, on a 0.01 rad grid, where the fitted curve's slope falls below 1e-2
  per radian (``variogram.models.slope_range_km``).
The thesis's four earlier variants of ``SemivarioPenalty`` (DeoBye/Thesis_GeoLoc, geoclip/model/strategy.py):
  "logit_abs"    (get_penalty)   each negative logit is replaced by |gamma(h) - d|, clamped to the
                                 [min, max] of the step's logits; a constant, so negatives get no gradient
  "logit_excess" (get_penalty3)  each negative logit is replaced by max(0, d - gamma(h)), cut and clamped
  "beta_abs"     (get_penalty2)  HCL "Weighted" with a per-pair beta = |gamma(h) - d| clamped to [0.2, 0.5]:
                                 w_ij = exp(beta_ij l_ij) / mean_j exp(beta_ij l_ij), negative logits times w
  "beta_excess"  (get_penalty4)  the same with beta_ij = max(0, d - gamma(h)), cut (the work log's to-do:
                                 "use the semivariogram to adjust beta in Weighted")
  Where the excess modes cut: beyond the effective range ("effective"), or by get_penalty3/4's own test
  ("thesis"): entry (i, j) is zeroed where |gamma(h_{i+1,j}) - gamma(h_{ij})| < 1e-6, comparing
  consecutive rows of the step's gamma matrix (the last row is never cut); with a curve that reaches its
  sill, that cuts pairs where both lags lie beyond the range. The abs modes have no cut in the thesis.
  Every thesis mode applies once the feature queue has filled (``SemivarioPenalty.queue_initialized``),
  plain InfoNCE before.

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
from geovario.losses.soft_targets import soft_target_cross_entropy
from geovario.variogram.models import VariogramModel, slope_range_km

MODES = ("paper", "soft_positives", "penalty", "logit_abs", "logit_excess", "beta_abs", "beta_excess")
BETA_ABS_CLAMP = (0.2, 0.5)  # get_penalty2's clamp of beta
FLAT_ROWS = 1e-6  # get_penalty3/4's flatness threshold between consecutive rows of gamma
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

    def pair_sets(self, inputs: LossInputs) -> tuple[torch.Tensor, ...]:
        """(h, delta, negative, hard, false): the lags, d - gamma(h), and the paper's masks of negatives, hard and false ones."""
        h, d = inputs.lags_km.detach(), inputs.dissimilarity.detach()
        delta = d - self.variogram(h.double()).to(d.dtype)
        negative = inputs.negatives_mask()
        alike = negative & (delta < 0)
        hard = alike & (h >= self.theta1_km)
        false = alike & (h <= self.theta2_km) & ~hard
        return h, delta, negative, hard, false

    def log_weights(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """(B, C) detached log w (0 on the positives), and what was reweighted: the paper mode's, or with
        mode "soft_positives" the hard negatives' alone (its false negatives become soft positives)."""
        h, delta, negative, hard, false = self.pair_sets(inputs)
        log_w = torch.zeros_like(delta)
        log_w = torch.where(hard, self.s1 * delta.abs(), log_w)
        if self.mode != "soft_positives":
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
        if self.mode == "soft_positives":
            log_w, stats = self.log_weights(inputs)
            h, _, _, _, false = self.pair_sets(inputs)
            correlation = torch.clamp(1 - self.variogram(h.double()) / self.variogram.sill, min=0).to(inputs.logits.dtype)
            positive = F.one_hot(inputs.targets, h.shape[1]).to(correlation.dtype)
            targets = torch.where(false, correlation, positive)
            stats["mean_soft_target"] = float(correlation[false].mean()) if false.any() else 0.0
            return LossOutput(soft_target_cross_entropy(inputs, targets, inputs.logits + log_w), stats)
        if not inputs.queue_full:  # the thesis turns its penalties on once the feature queue has filled
            return LossOutput(F.cross_entropy(inputs.present(inputs.logits), inputs.targets), {"penalized_fraction": 0.0})
        h, d = inputs.lags_km.detach(), inputs.dissimilarity.detach()
        gamma = self.variogram(h.double()).to(d.dtype)
        negative = inputs.negatives_mask()
        if self.mode in ("logit_abs", "beta_abs"):
            penalty = (gamma - d).abs()
        else:
            penalty = torch.clamp(d - gamma, min=0) * self._kept(h, gamma)
        if self.mode == "penalty":
            factor = torch.where(negative, penalty.exp(), torch.ones_like(penalty))
            logits = inputs.logits * factor
            changed = negative & (penalty > 0)
            stats = {"mean_penalty_factor": float(factor[changed].mean()) if changed.any() else 1.0}
        elif self.mode in ("logit_abs", "logit_excess"):
            present = inputs.logits.detach()[~self._excluded(inputs)]  # the thesis: logits.min(), .max()
            replaced = torch.clamp(penalty, min=float(present.min()), max=float(present.max()))
            logits = torch.where(negative, replaced, inputs.logits)
            changed = negative & (penalty > 0)
            stats = {"mean_replaced_logit": float(replaced[negative].mean()) if negative.any() else 0.0}
        else:
            beta = torch.clamp(penalty, *BETA_ABS_CLAMP) if self.mode == "beta_abs" else penalty
            scaled = (beta * inputs.logits.detach()).masked_fill(~negative, float("-inf"))
            # exp(beta l) / its mean over the row's negatives, in log space (as losses.hcl.HCLWeighted)
            log_w = scaled - (torch.logsumexp(scaled, dim=1, keepdim=True) - torch.log(negative.sum(1, keepdim=True).to(scaled.dtype)))
            weights = torch.where(negative, log_w.exp(), torch.ones_like(log_w))
            logits = inputs.logits * weights
            changed = negative & (beta > 0)
            stats = {"mean_beta": float(beta[negative].mean()) if negative.any() else 0.0,
                     "max_weight": float(weights[negative].max()) if negative.any() else 1.0}
        stats["penalized_fraction"] = float(changed[negative].float().mean()) if negative.any() else 0.0
        return LossOutput(F.cross_entropy(inputs.present(logits), inputs.targets), stats)

    @staticmethod
    def _excluded(inputs: LossInputs) -> torch.Tensor:
        return inputs.excluded if inputs.excluded is not None else torch.zeros_like(inputs.logits, dtype=torch.bool)

    def _kept(self, h: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """1 where an excess penalty applies, 0 where the mode's range rule cuts it."""
        if self.penalty_range == "effective" or self.mode == "penalty":
            return (h < self.range_km).to(gamma.dtype)
        flat = (gamma[1:] - gamma[:-1]).abs() < FLAT_ROWS  # get_penalty3/4: consecutive rows, same column
        return torch.cat([~flat, torch.ones_like(flat[:1])]).to(gamma.dtype)
