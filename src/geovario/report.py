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


def plot_cumulative_error(errors_by_run: dict[str, np.ndarray], thresholds, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, errors in errors_by_run.items():
        ordered = np.sort(np.maximum(errors, 1e-3))
        ax.plot(ordered, 100 * np.arange(1, len(ordered) + 1) / len(ordered), lw=2, label=name)
    for t in thresholds:
        ax.axvline(float(t), color="grey", ls=":", lw=1)
        ax.annotate(f"{t} km", (float(t), 2), rotation=90, fontsize=8, color="grey", ha="right")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 20015)
    ax.set_ylim(0, 100)
    ax.set_xlabel("great-circle error (km)")
    ax.set_ylabel("% of images within")
    ax.set_title("Cumulative error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_error_map(true_latlon: np.ndarray, errors: np.ndarray, path: str | Path, title: str = "Error by true location") -> Path:
    """A world scatter of the true positions coloured by error, over the GeoNames places as a backdrop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from geovario.geo import populated_cells

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    land = populated_cells()
    ax.imshow(land, extent=(-180, 180, -90, 90), origin="lower", cmap="Greys", alpha=0.25, vmin=0, vmax=2.5, aspect="auto")
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


def write_report_files(report: dict, out: Path | None, plots: Path | None, true_latlon: np.ndarray, pred_latlon: np.ndarray,
                       thresholds, label: str) -> list[str]:
    """The report JSON (``out``) and the cumulative-error and world-error PNGs (in ``plots``); every file written, in order."""
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
    return written
