"""Semivariogram models with a nugget, in numpy (for fitting) and torch (for the loss).

Parameters follow scikit-gstat's conventions (skgstat.models), so that ``range_km`` is the
*effective* range for every model: the lag at which the spherical model reaches its sill, and at
which the exponential, Gaussian and stable models reach about 95% of it.

    spherical    gamma = c0 + c (1.5 h/a - 0.5 (h/a)^3) for h < a, else c0 + c;   a = range
    exponential  gamma = c0 + c (1 - exp(-h / a));                                 a = range / 3
    gaussian     gamma = c0 + c (1 - exp(-(h / a)^2));                             a = range / 2
    stable       gamma = c0 + c (1 - exp(-(h / a)^s)), 0 < s <= 2;                 a = range / 3^(1/s)

c0 is the nugget, c the partial sill (sill = c0 + c), h the great-circle lag in km.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from geovario.errors import GeovarioError
from geovario.geo import EARTH_RADIUS_KM
from geovario.jsonio import read_json, write_json
from geovario.variogram.choices import MODELS  # noqa: F401 (re-exported)


def _scale(model: str, range_km: float, shape: float) -> float:
    return {"spherical": 1.0, "exponential": 3.0, "gaussian": 2.0}.get(model) or 3.0 ** (1.0 / shape)


def model_gamma(model: str, h, nugget: float, psill: float, range_km: float, shape: float = 1.0):
    """gamma(h) for numpy arrays or torch tensors (differentiable in h; device follows h)."""
    is_torch = isinstance(h, torch.Tensor)
    lib = torch if is_torch else np
    a = max(float(range_km), 1e-12) / _scale(model, range_km, shape)
    x = h / a
    if model == "spherical":
        inside = 1.5 * x - 0.5 * x**3
        structure = lib.where(x < 1, inside, lib.ones_like(x) if is_torch else np.ones_like(x))
    elif model == "exponential":
        structure = 1 - lib.exp(-x)
    elif model == "gaussian":
        structure = 1 - lib.exp(-(x**2))
    elif model == "stable":
        structure = 1 - lib.exp(-(lib.clamp(x, min=0) if is_torch else np.clip(x, 0, None)) ** shape)
    else:
        raise GeovarioError(f"unknown variogram model {model!r}; choose from {', '.join(MODELS)}")
    return nugget + psill * structure


@dataclass
class VariogramModel:
    """A fitted semivariogram: gamma(h) = nugget + psill * structure(h / range)."""

    model: str
    nugget: float
    psill: float
    range_km: float
    shape: float = 1.0  # the stable model's exponent s
    info: dict = field(default_factory=dict)  # fit diagnostics, empirical bins, provenance

    @property
    def sill(self) -> float:
        return self.nugget + self.psill

    def __call__(self, h):
        """gamma at lag(s) ``h`` km: numpy in, numpy out; torch in, torch out (differentiable)."""
        return model_gamma(self.model, h, self.nugget, self.psill, self.range_km, self.shape)

    def to_dict(self) -> dict:
        out = {"model": self.model, "nugget": self.nugget, "psill": self.psill, "sill": self.sill, "range_km": self.range_km}
        if self.model == "stable":
            out["shape"] = self.shape
        return out | self.info

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "VariogramModel":
        try:
            model = data["model"]
            if model not in MODELS:
                raise GeovarioError(f"unknown variogram model {model!r}")
            core = {"model", "nugget", "psill", "range_km", "shape", "sill"}
            return cls(model, float(data["nugget"]), float(data["psill"]), float(data["range_km"]),
                       float(data["shape"]) if model == "stable" else 1.0, {k: v for k, v in data.items() if k not in core})
        except (KeyError, TypeError, ValueError) as e:
            raise GeovarioError(f"not a fitted variogram ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | Path) -> "VariogramModel":
        data = read_json(path, "variogram file")
        if not isinstance(data, dict) or data.get("nugget") is None:
            raise GeovarioError(f"{path}: has no fitted model (was the fit unsuccessful?)")
        try:
            return cls.from_dict(data)
        except GeovarioError as e:
            raise GeovarioError(f"{path}: {e}") from None

    def __str__(self) -> str:
        extra = f", shape {self.shape:.3g}" if self.model == "stable" else ""
        return f"{self.model}: nugget {self.nugget:.4g}, partial sill {self.psill:.4g}, range {self.range_km:.4g} km{extra}"


def slope_range_km(model: VariogramModel, threshold: float = 1e-2, step_rad: float = 0.01) -> float:
    """The thesis's range: the first lag, on a ``step_rad`` grid over [0, pi), where the fitted curve's
    slope, in gamma per radian of central angle, falls below ``threshold`` (DeoBye/Thesis_GeoLoc,
    geoclip/model/strategy.py, SemivarioPenalty: ``np.where(der < 1e-2)[0][0] * 0.01``). Half the
    Earth's circumference when the slope never falls that low."""
    grid = np.arange(0.0, np.pi, step_rad)
    slope = np.diff(model(grid * EARTH_RADIUS_KM)) / step_rad
    flat = np.flatnonzero(slope < threshold)
    return float(flat[0] * step_rad * EARTH_RADIUS_KM) if len(flat) else float(np.pi * EARTH_RADIUS_KM)
