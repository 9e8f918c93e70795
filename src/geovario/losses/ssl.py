"""The thesis's "ssl" strategy: InfoNCE on two views of each image plus a SimSiam term (Chen & He, "Exploring
Simple Siamese Representation Learning", CVPR 2021), as in DeoBye/Thesis_GeoLoc (geoclip/model/strategy.py
``SSL``, geoclip/train/loss.py ``SimsiamLoss``, geoclip/model/GeoCLIP.py ``projection_MLP``/``prediction_MLP``).

Both views are scored against the same candidate locations (the batch and the queue), and

    clip    = (CE(logits of view 1) + CE(logits of view 2)) / 2
    simsiam = -(D(p1, z2) + D(p2, z1)) / 2,   D(p, z) = mean_i cos(p_i, stopgrad(z_i))
    loss    = (1 - w) clip + w simsiam,       w = 0.1 in the thesis

where z = projector(head(x)) and p = predictor(z) are computed from the image head's output before it is
normalised. The projector is three Linear layers with batch norm (embed -> 512 -> 512 -> 512, ReLU between,
batch norm after each), the predictor a bottleneck (512 -> 256 -> 512, batch norm and ReLU on the hidden
layer only), the thesis's sizes. They train with the model and are dropped with the training run: a
geolocation model is the head, the location encoder and the logit scale, as before.

With frozen features, the two views are two different stored views of the image (``extract --views K``;
view 0 is the plain centre crop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geovario.losses.base import ContrastiveLoss, LossInputs, LossOutput

THESIS_SSL_WEIGHT = 0.1  # loss = 0.9 * clip + 0.1 * simsiam (geoclip/train/loss.py, get_loss)


class SimSiamHeads(nn.Module):
    """The projector and predictor trained beside the model (the thesis's projection_MLP and prediction_MLP)."""

    def __init__(self, embed_dim: int, hidden_dim: int = 512, out_dim: int = 512, bottleneck_dim: int = 256):
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, out_dim), nn.BatchNorm1d(out_dim),
        )
        self.predictor = nn.Sequential(nn.Linear(out_dim, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU(),
                                       nn.Linear(bottleneck_dim, out_dim))

    def forward(self, head_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(head_output)
        return z, self.predictor(z)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-mean_i cos(p_i, z_i), with no gradient through z (SimSiam's stop-gradient)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


class SimSiamInfoNCE(ContrastiveLoss):
    def __init__(self, ssl_weight: float = THESIS_SSL_WEIGHT):
        super().__init__()
        if not 0 <= ssl_weight <= 1:
            raise ValueError(f"ssl_weight must lie in [0, 1], got {ssl_weight}")
        self.ssl_weight = ssl_weight

    def forward(self, inputs: LossInputs) -> LossOutput:
        if inputs.second_view is None or inputs.siamese is None:
            raise ValueError("the ssl loss needs a second view and the SimSiam outputs (LossInputs.second_view, .siamese)")
        second = inputs.second_view
        clip = (F.cross_entropy(inputs.present(inputs.logits), inputs.targets)
                + F.cross_entropy(second.present(second.logits), second.targets)) / 2
        z1, z2, p1, p2 = inputs.siamese
        simsiam = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        loss = (1 - self.ssl_weight) * clip + self.ssl_weight * simsiam
        return LossOutput(loss, {"clip_loss": float(clip.detach()), "simsiam_loss": float(simsiam.detach())})
