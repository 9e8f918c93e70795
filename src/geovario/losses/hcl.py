"""The thesis's HCL-style losses (after Robinson et al., "Contrastive Learning with Hard Negative Samples", ICLR 2021).

"Weighted" (thesis 15.01.2025): importance weights w_ij = exp(beta l_ij) / mean_j exp(beta l_ij) over
the negatives of row i (detached), then cross-entropy on the logits with each negative logit
multiplied by its weight: hard (high-similarity) negatives get larger logits.

"Weighted2": HCL's debiased, hardness-weighted estimator. With pos = e^{l_ii}, neg_j = e^{l_ij}
over the N negatives, imp_j = neg_j^beta:
    Ng = ( -tau_plus N pos + sum_j imp_j neg_j / mean_j imp_j ) / (1 - tau_plus),
    Ng = max(Ng, N e^{-scale})     (the smallest value the N negatives can take)
    L_i = -log( pos / (pos + Ng) )
tau_plus = 0.1 and beta = 1 as in the thesis. Computed in log space, so it stays finite at any logit
scale (the learned scale is clamped at ln 100, where e^{(1 + beta) l} would overflow float32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from geovario.losses.base import ContrastiveLoss, LossInputs, LossOutput


class HCLWeighted(ContrastiveLoss):
    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, inputs: LossInputs) -> LossOutput:
        negative = inputs.negatives_mask()
        scaled = (self.beta * inputs.logits.detach()).masked_fill(~negative, float("-inf"))
        # exp(beta l) / mean over the row's negatives, in log space for stability.
        log_w = scaled - (torch.logsumexp(scaled, dim=1, keepdim=True) - torch.log(negative.sum(1, keepdim=True).to(scaled.dtype)))
        weights = torch.where(negative, log_w.exp(), torch.ones_like(log_w))
        stats = {"max_weight": float(weights[negative].max()), "mean_weight": float(weights[negative].mean())}
        return LossOutput(F.cross_entropy(inputs.present(inputs.logits * weights), inputs.targets), stats)


class HCLDebiased(ContrastiveLoss):
    def __init__(self, tau_plus: float = 0.1, beta: float = 1.0):
        super().__init__()
        if not 0 <= tau_plus < 1:
            raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus}")
        self.tau_plus, self.beta = tau_plus, beta

    def forward(self, inputs: LossInputs) -> LossOutput:
        """In log space throughout: at logit scale 100, e^{(1 + beta) l} is e^200, past float32's range."""
        logits, negative = inputs.logits, inputs.negatives_mask()
        rows = torch.arange(len(logits), device=logits.device)
        log_n = torch.log(negative.sum(1).to(logits.dtype))  # the row's count of negatives, N
        l_pos = logits[rows, inputs.targets]
        l_neg = logits.masked_fill(~negative, float("-inf"))
        # log R, R = sum_j imp_j neg_j / mean_j imp_j = e^{logsumexp((1 + beta) l) - logsumexp(beta l)} N
        log_r = torch.logsumexp((1 + self.beta) * l_neg, 1) - torch.logsumexp(self.beta * l_neg, 1) + log_n
        # Ng = (R - tau+ N pos) / (1 - tau+) = R (1 - e^{log_ratio}) / (1 - tau+), positive while log_ratio < 0.
        if self.tau_plus > 0:
            log_ratio = math.log(self.tau_plus) + log_n + l_pos - log_r
            positive = log_ratio < 0
            safe = torch.where(positive, log_ratio, torch.full_like(log_ratio, -1.0))  # no inf/NaN in the unused branch
            log_ng = log_r + torch.log(-torch.expm1(safe)) - math.log(1 - self.tau_plus)
            log_ng = torch.where(positive, log_ng, torch.full_like(log_ng, float("-inf")))
        else:
            log_ng = log_r
        log_floor = log_n - float(inputs.logit_scale.detach())  # log(N e^{-scale})
        clamped = log_ng.detach() <= log_floor
        log_ng = torch.clamp(log_ng, min=log_floor)
        loss = F.softplus(log_ng - l_pos)  # -log(pos / (pos + Ng)) = log(1 + Ng / pos)
        return LossOutput(loss.mean(), {"clamped_fraction": float(clamped.float().mean())})
