"""Evaluation reports: JSON, a Markdown table in the layout papers use, PNG figures, side-by-side comparison."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from geovario.atomic import save_figure
from geovario.errors import GeovarioError
from geovario.jsonio import read_json


def load_report(path: str | Path) -> dict:
    """A report from ``evaluate`` or ``score``, its numbers checked: one line names the first bad key."""
    report = read_json(path, "report")
    if not isinstance(report, dict) or not isinstance(report.get("accuracy"), dict) or not report["accuracy"]:
        raise GeovarioError(f"{path}: not a geovario evaluation report (no \"accuracy\" table)")

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    for threshold, value in report["accuracy"].items():
        if not number(value) or not 0 <= value <= 100:
            raise GeovarioError(f"{path}: accuracy at {threshold} km is {value!r}, not a percentage")
    for key in ("median_km", "mean_km", "geoscore"):
        if not number(report.get(key)):
            raise GeovarioError(f"{path}: {key} is {report.get(key)!r}, not a number")
    if not isinstance(report.get("n"), int) or isinstance(report.get("n"), bool) or report["n"] < 1:
        raise GeovarioError(f"{path}: n is {report.get('n')!r}, not a positive count")
    return report


def comparison_warnings(reports: list[tuple[str, dict]]) -> list[str]:
    """What makes reports not comparable: other n, another convention (d <= t or d < t), other thresholds."""
    base_name, base = reports[0]
    warnings = []
    for name, report in reports[1:]:
        if report["n"] != base["n"]:
            warnings.append(f"{name} has n = {report['n']}, {base_name} n = {base['n']}: not the same test set")
        if report.get("convention") != base.get("convention"):
            warnings.append(f"{name} counts {report.get('convention')}, {base_name} {base.get('convention')}")
        if list(report["accuracy"]) != list(base["accuracy"]):
            warnings.append(f"{name} has thresholds {', '.join(report['accuracy'])} km, {base_name} {', '.join(base['accuracy'])} km")
    return warnings


def markdown_table(reports: list[tuple[str, dict]]) -> str:
    """| Method | 1 km | 25 km | ... | Median km | GeoScore |, one row per report (accuracies in %)."""
    thresholds = list(reports[0][1]["accuracy"])
    admin = [level for level in ("country", "region", "sub-region", "city") if any(level in (r.get("admin") or {}) for _, r in reports)]
    head = ["Method", *(f"{t} km" for t in thresholds), "Median km", "GeoScore", *(level.capitalize() for level in admin)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    def cell(value, digits: int) -> str:  # a metric a report does not have is a dash, never "nan"
        return "–" if value is None or value != value else f"{value:.{digits}f}"

    for name, r in reports:
        cells = [name, *(cell(r["accuracy"].get(t), 1) for t in thresholds), cell(r["median_km"], 1),
                 cell(r["geoscore"], 0), *(cell((r.get("admin") or {}).get(level), 1) for level in admin)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_text(reports: list[tuple[str, dict]]) -> str:
    """Runs side by side, each after the first with its delta against the first."""
    base_name, base = reports[0]
    keys = [(f"acc@{t} km (%)", lambda r, t=t: r["accuracy"].get(t)) for t in base["accuracy"]]
    keys += [("median km", lambda r: r["median_km"]), ("mean km", lambda r: r["mean_km"]), ("GeoScore", lambda r: r["geoscore"])]
    keys += [(f"{level} (%)", lambda r, level=level: r.get("admin", {}).get(level)) for level in ("country", "region", "sub-region", "city")
             if level in base.get("admin", {})]
    width = max(14, *(len(name) for name, _ in reports))
    lines = [f"{'':<18}" + "".join(f"{name[-width:]:>{width + 12}}" for name, _ in reports)]
    for label, get in keys:
        row = f"{label:<18}"
        for k, (_, r) in enumerate(reports):
            value = get(r)
            if value is None:
                row += f"{'—':>{width + 12}}"
                continue
            delta = "" if k == 0 or get(base) is None else f" ({value - get(base):+.2f})"
            row += f"{f'{value:.2f}{delta}':>{width + 12}}"
        lines.append(row)
    return "\n".join(lines)


ERROR_GRID_KM = np.geomspace(0.1, 20015, 240)  # the cumulative curves' x axis: 0.1 km to half the Earth's circumference
BAND_RESAMPLES = 1000  # bootstrap resamples of the photos for the paired-difference band


def paired_difference_band(errors: np.ndarray, anchor: np.ndarray, grid_km: np.ndarray = ERROR_GRID_KM,
                           resamples: int = BAND_RESAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The difference in percentage points between two runs' shares of photos within each distance of ``grid_km``
    (``errors`` minus ``anchor``, the same photos in the same order), and its 95 % paired bootstrap band (photos
    resampled with replacement, both runs together; the 2.5th and 97.5th percentiles). O(photos) memory per resample:
    a photo within x km is one whose error's grid position is at most x's, so each share is a cumulative sum of counts."""
    errors, anchor = np.asarray(errors, np.float64), np.asarray(anchor, np.float64)
    if errors.shape != anchor.shape:
        raise ValueError(f"paired runs need the same photos: {errors.shape} against {anchor.shape}")
    position = [np.searchsorted(grid_km, e, side="left") for e in (errors, anchor)]  # within grid[g] iff position <= g

    def difference(weights: np.ndarray | None) -> np.ndarray:
        counts = [np.bincount(p, weights, minlength=len(grid_km) + 1)[: len(grid_km)] for p in position]
        return 100 * np.cumsum(counts[0] - counts[1]) / len(errors)

    rng = np.random.default_rng(seed)
    drawn = np.stack([difference(np.bincount(rng.integers(0, len(errors), len(errors)), minlength=len(errors)).astype(np.float64))
                      for _ in range(resamples)])
    low, high = np.percentile(drawn, [2.5, 97.5], axis=0)
    return difference(None), low, high


def plot_cumulative_error(errors_by_run: dict[str, np.ndarray], thresholds, path: str | Path) -> Path:
    """The share of photos within each distance, one curve per run; where there are several runs on the same photos, a
    second panel with each run's paired difference from the first and its 95 % bootstrap band
    (:func:`paired_difference_band`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(errors_by_run.items())
    paired = len(runs) > 1 and len({len(e) for _, e in runs}) == 1
    fig, axes = plt.subplots(2 if paired else 1, 1, figsize=(7, 6.5 if paired else 4.5), dpi=120, sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2] if paired else [1]})
    ax = axes[0, 0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, errors) in enumerate(runs):
        ordered = np.sort(np.maximum(errors, 1e-3))
        ax.plot(ordered, 100 * np.arange(1, len(ordered) + 1) / len(ordered), lw=2, label=name, color=colours[k % len(colours)])
    for panel in axes[:, 0]:
        for t in thresholds:
            panel.axvline(float(t), color="grey", ls=":", lw=1)
        panel.grid(alpha=0.3)
    for t in thresholds:
        ax.annotate(f"{t} km", (float(t), 2), rotation=90, fontsize=8, color="grey", ha="right")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20015)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of images within")
    ax.set_title("Cumulative error")
    ax.legend(fontsize=8)
    if paired:
        below = axes[1, 0]
        anchor_name, anchor = runs[0]
        below.axhline(0, color=colours[0], lw=1)
        for k, (name, errors) in enumerate(runs[1:], 1):
            difference, low, high = paired_difference_band(errors, anchor)
            below.fill_between(ERROR_GRID_KM, low, high, color=colours[k % len(colours)], alpha=0.25, lw=0)
            below.plot(ERROR_GRID_KM, difference, color=colours[k % len(colours)], lw=1.5, label=f"{name} − {anchor_name}")
        below.set_ylabel("paired difference\n(points, 95 % band)")
        below.legend(fontsize=8)
    axes[-1, 0].set_xlabel("great-circle error (km)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_error_map(true_latlon: np.ndarray, errors: np.ndarray, path: str | Path, title: str = "Error by true location") -> Path:
    """A world scatter of the true positions coloured by error, over Natural Earth's coastlines and the GeoNames places
    as a backdrop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from geovario.geo import populated_cells
    from geovario.maps import draw_coastlines

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    land = populated_cells()
    ax.imshow(land, extent=(-180, 180, -90, 90), origin="lower", cmap="Greys", alpha=0.25, vmin=0, vmax=2.5, aspect="auto")
    draw_coastlines(ax)
    order = np.argsort(errors)
    points = ax.scatter(true_latlon[order, 1], true_latlon[order, 0], c=np.maximum(errors[order], 0.1), s=6,
                        cmap="viridis_r", norm=LogNorm(vmin=0.1, vmax=20015))
    fig.colorbar(points, ax=ax, label="error (km)")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_reliability(calibration: dict, path: str | Path) -> Path:
    """A reliability diagram per within-t probability (from an evaluation report's "calibration"): the rate observed
    against the mean forecast of each bin, sized by its photos, beside the diagonal of perfect calibration, the
    share of photos per bin below, and the ECE and the radius's coverage in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = calibration["reliability"]
    fig, axes = plt.subplots(2, len(curves), figsize=(3.2 * len(curves), 4.6), dpi=120, sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
    for column, (t, curve) in enumerate(curves.items()):
        top, bottom = axes[0, column], axes[1, column]
        photos = np.array(curve["photos"], dtype=float)
        bins = len(photos)
        centres = (np.arange(bins) + 0.5) / bins
        used = photos > 0
        forecast, observed = (np.array([np.nan if v is None else v for v in curve[k]]) for k in ("forecast", "observed"))
        top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="calibrated")
        top.plot(forecast[used], observed[used], color="tab:blue", lw=1.5, zorder=2)
        top.scatter(forecast[used], observed[used], s=10 + 90 * np.sqrt(photos[used] / photos.max()),
                    color="tab:blue", zorder=3, label="observed")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_aspect("equal")
        top.set_title(f"within {int(t):,} km: ECE {calibration['within_km'][t]['ece']:.3f}", fontsize=9)
        top.grid(alpha=0.3)
        bottom.bar(centres, photos / photos.sum(), width=1 / bins, color="tab:blue", alpha=0.5, edgecolor="white")
        bottom.set_xlabel("forecast probability")
        if column == 0:
            top.set_ylabel("share of photos that close")
            bottom.set_ylabel("share of photos")
            top.legend(fontsize=7, loc="upper left")
    radius = calibration["radius"]
    fig.suptitle(f"Reliability of the best place's confidence ({calibration['photos']:,} photos, temperature "
                 f"{calibration['temperature']:.3g}{', Platt-scaled' if calibration.get('platt') else ''}); the "
                 f"{round(100 * radius['level'])} % radius holds {100 * radius['coverage']:.1f} %", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def write_report_files(report: dict, out: Path | None, plots: Path | None, true_latlon: np.ndarray, pred_latlon: np.ndarray,
                       thresholds, label: str) -> list[str]:
    """The report JSON (``out``) and the cumulative-error and world-error PNGs (in ``plots``), and the reliability diagram
    where the report has a calibration; every file written, in order."""
    from geovario.atomic import output_dir
    from geovario.jsonio import write_json
    from geovario.metrics import errors_km

    written = [report["predictions"]] if report.get("predictions") else []
    if out is not None:
        write_json(out, report)
        written.insert(0, str(out))
    if plots is not None:
        output_dir(plots)
        errors = errors_km(true_latlon, pred_latlon)
        plot_cumulative_error({label: errors}, [f"{t:g}" for t in thresholds], plots / "cumulative_error.png")
        plot_error_map(true_latlon, errors, plots / "error_map.png")
        written += [str(plots / "cumulative_error.png"), str(plots / "error_map.png")]
        if report.get("calibration"):
            written.append(str(plot_reliability(report["calibration"], plots / "reliability.png")))
    return written
