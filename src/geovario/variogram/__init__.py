"""Semivariogram engine: empirical estimation, model fitting, plots.

    from geovario.variogram import empirical_variogram, fit_variogram, VariogramModel
    emp = empirical_variogram(features, latlon, bins=50)
    model = fit_variogram(emp, "spherical")
    model(torch.tensor([10.0, 100.0]))      # differentiable gamma(h), for the loss
"""

from geovario.variogram.empirical import (ESTIMATORS, MAX_LAG_KM, EmpiricalVariogram, bin_edges, cressie_hawkins_constants,
                                         empirical_variogram)
from geovario.variogram.fit import WEIGHTS, VariogramFitError, empirical_for_loss, fit_for_loss, fit_variogram
from geovario.variogram.models import MODELS, VariogramModel, model_gamma, slope_range_km

__all__ = [
    "ESTIMATORS", "MAX_LAG_KM", "MODELS", "WEIGHTS", "EmpiricalVariogram", "VariogramFitError", "VariogramModel",
    "bin_edges", "cressie_hawkins_constants", "empirical_for_loss", "empirical_variogram", "fit_for_loss", "fit_variogram", "model_gamma", "slope_range_km",
]
