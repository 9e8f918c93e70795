"""Semivariogram engine: empirical estimation, model fitting, plots.

    from geovario.variogram import empirical_variogram, fit_variogram, VariogramModel
    emp = empirical_variogram(features, latlon, bins=50)
    model = fit_variogram(emp, "spherical")
    model(torch.tensor([10.0, 100.0]))      # differentiable gamma(h), for the loss

The names load on first use (PEP 562), so that ``geovario.variogram.choices`` and the CLI's option
parsing stay free of torch and scipy.
"""

import importlib

from geovario.variogram.choices import ESTIMATORS, MAX_LAG_KM, MODELS, WEIGHTS

_WHERE = {
    "EmpiricalVariogram": "empirical", "bin_edges": "empirical", "cressie_hawkins_constants": "empirical",
    "empirical_variogram": "empirical",
    "VariogramFitError": "fit", "empirical_for_loss": "fit", "fit_for_loss": "fit", "fit_variogram": "fit",
    "VariogramModel": "models", "model_gamma": "models", "slope_range_km": "models",
}

__all__ = [
    "ESTIMATORS", "MAX_LAG_KM", "MODELS", "WEIGHTS", "EmpiricalVariogram", "VariogramFitError", "VariogramModel", "bin_edges",
    "cressie_hawkins_constants", "empirical_for_loss", "empirical_variogram", "fit_for_loss", "fit_variogram", "model_gamma",
    "slope_range_km",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'geovario.variogram' has no attribute {name!r}")
    return getattr(importlib.import_module(f"geovario.variogram.{_WHERE[name]}"), name)


def __dir__():
    return sorted(__all__)
