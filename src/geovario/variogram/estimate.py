"""``geovario variogram``: estimate and fit one or more feature sources the same way, as one report.

A fit that fails is not fatal here: its empirical bins are still reported (and written), with the
reason, so the caller can show what was measured and exit non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from geovario.variogram.choices import EstimateSettings  # noqa: F401 (re-exported: its home is importable without torch)
from geovario.variogram.empirical import EmpiricalVariogram, empirical_variogram
from geovario.variogram.fit import VariogramFitError, fit_variogram
from geovario.variogram.models import VariogramModel


@dataclass
class Estimate:
    label: str
    empirical: EmpiricalVariogram
    model: VariogramModel | None
    error: str | None  # why the fit failed, when it did

    def to_dict(self, model_name: str) -> dict:
        if self.model is not None:
            return {"label": self.label, **self.model.to_dict()}
        return {"label": self.label, "model": model_name, "nugget": None, "psill": None, "range_km": None,
                "fit_error": self.error, **self.empirical.to_dict()}


def estimate(source, label: str, settings: EstimateSettings, progress: bool = True) -> Estimate:
    """The empirical semivariogram of a feature source and its fitted model (or why the fit failed)."""
    # Read lazily: the exact path loads every row once, the sampled one only the rows each chunk of pairs needs, so
    # a store of millions of rows is never loaded whole.
    empirical = empirical_variogram(
        source.lazy(), source.gps,
        bins=settings.bins, max_lag_km=settings.max_lag_km, log_bins=settings.log_bins, min_lag_km=settings.min_lag_km,
        estimator=settings.estimator, exact_max=settings.exact_max, max_pairs=settings.max_pairs,
        short_lag_km=settings.short_lag_km, seed=settings.seed, progress=progress,
    )
    try:
        return Estimate(label, empirical, fit_variogram(empirical, settings.model, settings.weights), None)
    except VariogramFitError as e:
        return Estimate(label, empirical, None, str(e))


def estimates_report(estimates: list[Estimate], model_name: str) -> dict:
    """The JSON report: the first source's fit and bins, the others under ``compare``."""
    report = estimates[0].to_dict(model_name)
    if len(estimates) > 1:
        report["compare"] = [e.to_dict(model_name) for e in estimates[1:]]
    return report
