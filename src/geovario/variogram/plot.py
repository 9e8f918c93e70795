"""Semivariogram figures: empirical bins sized by pair count, the fitted curve, nugget, sill and range."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geovario.atomic import save_figure
from geovario.variogram.empirical import EmpiricalVariogram
from geovario.variogram.models import VariogramModel


def plot_variograms(curves: list[tuple[str, EmpiricalVariogram, VariogramModel | None]], path: str | Path,
                    title: str = "Semivariogram of image features", log_x: bool = False) -> Path:
    """Write a PNG with one (label, empirical, fitted model or None) per curve, overlaid."""
    import matplotlib.pyplot as plt

    fig = variogram_figure(curves, title, log_x)
    path = Path(path)
    save_figure(fig, path)
    plt.close(fig)
    return path


def variogram_figure(curves: list[tuple[str, EmpiricalVariogram, VariogramModel | None]],
                     title: str = "Semivariogram of image features", log_x: bool = False):
    """The figure of :func:`plot_variograms`: the legend below the axes, outside them, so it never covers a point, a
    curve or a label (nugget, sill, range) however the curves fall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5 + 0.2 * sum(2 if model is not None else 1 for _, _, model in curves)), dpi=120,
                           layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    largest = max(max(int(e.n.max()), 1) for _, e, _ in curves)
    for k, (label, empirical, model) in enumerate(curves):
        colour = colours[k % len(colours)]
        used = empirical.n > 0
        x = empirical.mean_h_km[used]
        sizes = 8 + 120 * np.sqrt(empirical.n[used] / largest)
        ax.scatter(x, empirical.gamma[used], s=sizes, color=colour, alpha=0.6, edgecolor="none",
                   label=f"{label}: empirical ({empirical.sampling}, {int(empirical.n.sum()):,} pairs)")
        if model is None:
            continue
        grid = np.geomspace(max(float(empirical.edges_km[1]) / 20, 1e-3), float(empirical.edges_km[-1]), 400) if log_x \
            else np.linspace(0, float(empirical.edges_km[-1]), 400)
        ax.plot(grid, model(grid), color=colour, lw=2, label=f"{label}: {model}")
        ax.axhline(model.nugget, color=colour, ls=":", lw=1)
        ax.axhline(model.sill, color=colour, ls="--", lw=1)
        ax.axvline(model.range_km, color=colour, ls="-.", lw=1)
        ax.annotate("nugget", (grid[-1], model.nugget), color=colour, fontsize=8, ha="right", va="bottom")
        ax.annotate("sill", (grid[-1], model.sill), color=colour, fontsize=8, ha="right", va="bottom")
        ax.annotate(f"range {model.range_km:,.0f} km", (model.range_km, ax.get_ylim()[0]), color=colour, fontsize=8,
                    rotation=90, ha="right", va="bottom")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("great-circle lag h (km)")
    ax.set_ylabel("semivariance γ(h) of 1 − cos(f_i, f_j)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center")
    return fig
