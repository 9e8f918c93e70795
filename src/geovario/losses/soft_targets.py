"""Spatial structure in the targets instead of in the negatives' weights: the row's target is a
distribution over its candidate columns, and the loss is the cross-entropy with it,
L_i = -sum_j t_ij log softmax_j(l_i).

"haversine_smoothing" (PIGEON, Haas et al., CVPR 2024, §3.3 "haversine smoothing"): a candidate's
target mass decays with its great-circle distance from the true location,
    t_ij proportional to exp(-(hav(g_j, x_i) - hav(g_i, x_i)) / tau),  tau = 75 km (PIGEON's),
normalised over the row's candidates. The positive's own lag is 0 (its column holds the true GPS;
the noise GeoCLIP adds is on what the location encoder sees, not on the lag), so
t_ij = softmax_j(-h_ij / tau). PIGEON smooths over geocells; here the candidates are the step's
batch and queue locations. A neighbour 10 km away keeps e^(-10/75) = 0.88 of the positive's mass,
one 500 km away 0.1 %: the closest published way to stop near neighbours counting as full negatives.

Variogram soft positives (``semivariogram`` loss, mode "soft_positives"): where the paper's loss
down-weights a false negative (a look-alike, delta = d - gamma(h) < 0, within theta2 km), count it as a
partial positive instead, with the spatial correlation the fitted variogram gives at its lag: t_ij
proportional to rho(h_ij) = 1 - gamma(h_ij) / sill, clipped at 0, beside t_ii = 1; every other candidate
0. gamma includes the nugget, so even a neighbour at 0 km counts at most 1 - nugget / sill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geovario.losses.base import ContrastiveLoss, LossInputs, LossOutput

PIGEON_TAU_KM = 75.0  # Haas et al., CVPR 2024, "PIGEON: Predicting Image Geolocations", haversine smoothing


def soft_target_cross_entropy(inputs: LossInputs, weights: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of -sum_j t_ij log softmax_j(logits), t = ``weights`` normalised per row; excluded
    columns carry no target and no probability. ``logits`` default to the inputs' own."""
    present = ~inputs.excluded if inputs.excluded is not None else torch.ones_like(weights, dtype=torch.bool)
    weights = torch.where(present, weights, torch.zeros_like(weights))
    targets = weights / weights.sum(dim=1, keepdim=True)
    log_p = F.log_softmax(inputs.present(inputs.logits if logits is None else logits), dim=1)
    return -(targets * torch.where(present, log_p, torch.zeros_like(log_p))).sum(dim=1).mean()


class HaversineSmoothing(ContrastiveLoss):
    needs_geometry = True  # the lags (the dissimilarity comes along unused)

    def __init__(self, tau_km: float = PIGEON_TAU_KM):
        super().__init__()
        if not tau_km > 0:
            raise ValueError(f"tau_km must be positive, got {tau_km}")
        self.tau_km = tau_km

    def forward(self, inputs: LossInputs) -> LossOutput:
        weights = torch.exp(-inputs.lags_km.detach().to(inputs.logits.dtype) / self.tau_km)  # the positive's lag is 0
        loss = soft_target_cross_entropy(inputs, weights)
        negative = inputs.negatives_mask()
        positive = F.one_hot(inputs.targets, weights.shape[1]).bool()
        share = (weights * negative).sum(1) / (weights * (negative | positive)).sum(1)
        return LossOutput(loss, {"neighbour_target_share": float(share.mean())})
