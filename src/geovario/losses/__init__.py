"""Contrastive losses, one module per idea; ``build_loss`` makes one from a config section."""

from __future__ import annotations

from geovario.losses.base import ContrastiveLoss, LossInputs, LossOutput
from geovario.losses.combined import WeightedSum
from geovario.losses.hcl import HCLDebiased, HCLWeighted
from geovario.losses.infonce import InfoNCE
from geovario.losses.semivariogram import SemivariogramWeightedInfoNCE
from geovario.losses.soft_targets import HaversineSmoothing
from geovario.losses.ssl import SimSiamHeads, SimSiamInfoNCE
from geovario.losses.triplet import Triplet

LOSSES = ("infonce", "semivariogram", "hcl_weighted", "hcl_debiased", "triplet", "haversine_smoothing", "ssl", "combined")
_CLASSES = {"infonce": InfoNCE, "semivariogram": SemivariogramWeightedInfoNCE, "hcl_weighted": HCLWeighted,
            "hcl_debiased": HCLDebiased, "triplet": Triplet, "haversine_smoothing": HaversineSmoothing, "ssl": SimSiamInfoNCE}
NEEDS_VARIOGRAM = ("semivariogram",)

__all__ = ["LOSSES", "ContrastiveLoss", "HCLDebiased", "HCLWeighted", "HaversineSmoothing", "InfoNCE", "LossInputs",
           "LossOutput", "SemivariogramWeightedInfoNCE", "SimSiamHeads", "SimSiamInfoNCE", "Triplet", "WeightedSum", "build_loss",
           "loss_needs_geometry", "loss_needs_variogram"]


def loss_needs_geometry(name: str, params: dict) -> bool:
    """Whether the named loss (a combined one: any of its parts) uses each column's lag and image dissimilarity,
    so that the negatives must carry them; known from the config, before the loss (and its variogram) is built."""
    if name == "combined":
        return any(loss_needs_geometry(part["name"], params) for part in params["parts"])
    return _CLASSES[name].needs_geometry


def loss_needs_variogram(name: str, params: dict) -> bool:
    """Whether the named loss (a combined one: any of its parts) compares dissimilarities with a fitted variogram."""
    if name == "combined":
        return any(loss_needs_variogram(part["name"], params) for part in params["parts"])
    return name in NEEDS_VARIOGRAM


def build_loss(name: str, params: dict, variogram=None) -> ContrastiveLoss:
    """``params`` holds the loss's own options (validated by the config); ``variogram`` is needed by semivariogram."""
    if name == "infonce":
        return InfoNCE()
    if name == "semivariogram":
        return SemivariogramWeightedInfoNCE(variogram, params["mode"], params["theta1_km"], params["theta2_km"],
                                            params["s1"], params["s2"], params["mask_km"], params["penalty_range"])
    if name == "hcl_weighted":
        return HCLWeighted(params["beta"])
    if name == "hcl_debiased":
        return HCLDebiased(params["tau_plus"], params["beta"])
    if name == "triplet":
        return Triplet(params["margin"], params["distance"])
    if name == "haversine_smoothing":
        return HaversineSmoothing(params["tau_km"])
    if name == "ssl":
        return SimSiamInfoNCE(params["ssl_weight"])
    if name == "combined":
        return WeightedSum([(part["name"], part["weight"], build_loss(part["name"], params, variogram)) for part in params["parts"]])
    raise ValueError(f"unknown loss {name!r}")
