"""GeoCLIP's loss: image -> GPS cross-entropy over the batch GPS and the GPS queue.

L_i = -log( exp(l_ii) / sum_j exp(l_ij) ),  l_ij = exp(logit_scale) cos(image_i, location_j)
(Vivanco Cepeda et al., GeoCLIP, NeurIPS 2023; GeoCLIP 1.3.0 geoclip/train/train.py).
"""

from __future__ import annotations

import torch.nn.functional as F

from geovario.losses.base import ContrastiveLoss, LossInputs, LossOutput


class InfoNCE(ContrastiveLoss):
    def forward(self, inputs: LossInputs) -> LossOutput:
        return LossOutput(F.cross_entropy(inputs.present(inputs.logits), inputs.targets))
