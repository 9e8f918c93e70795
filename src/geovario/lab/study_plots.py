"""The study's figures, drawn from its summary (``lab.study.summarize``): the theta/s sweeps as heat maps and
curves, and each arm's paired difference against InfoNCE at every threshold with its 95 % band. They compute no
number the study reports; study.md and study.json hold those."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geovario.atomic import save_figure
from geovario.lab.study import THETA1, THETA2, THRESHOLDS, _km


def plot_sweeps(summary: dict, out: Path) -> list[Path]:
    """Per training dataset, heat maps of the theta1 x theta2 sweep (difference to the anchor on its test photos at
    25 and 200 km) and the s sweeps: sweep_theta-<dataset>.png, sweep_s-<dataset>.png."""
    return [path for trained_on, sets in summary.items() for path in _plot_sweep(sets["test"], out, trained_on)]


def _plot_sweep(summary: list[dict], out: Path, suffix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    theta = [row for row in summary if row["group"] == "sweep-theta" and row["vs_anchor"]]
    if theta:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for ax, t in zip(axes, (25, 200)):
            grid = np.full((len(THETA2), len(THETA1)), np.nan)
            for row in theta:
                grid[THETA2.index(row["params"]["theta2"]), THETA1.index(row["params"]["theta1"])] = row["vs_anchor"][f"acc_{t}km"]["mean"]
            limit = max(np.nanmax(np.abs(grid)), 0.5)
            image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, origin="lower", aspect="auto")
            ax.set_xticks(range(len(THETA1)), [_km(v) for v in THETA1])
            ax.set_yticks(range(len(THETA2)), [f"{v:g}" for v in THETA2])
            ax.set_xlabel("θ1 (km): hard negatives beyond")
            ax.set_ylabel("θ2 (km): false negatives within")
            ax.set_title(f"Δ accuracy at {t} km vs InfoNCE (points)")
            for (i, j), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=8)
            fig.colorbar(image, ax=ax)
        fig.tight_layout()
        written.append(out / f"sweep_theta-{suffix}.png")
        save_figure(fig, written[-1], dpi=120)
        plt.close(fig)
    s_rows = [row for row in summary if row["group"] in ("sweep-s1", "sweep-s2") and row["vs_anchor"]]
    if s_rows:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for group, label in (("sweep-s1", "s1 (s2 = 5)"), ("sweep-s2", "s2 (s1 = 5)")):
            rows = sorted((r for r in s_rows if r["group"] == group), key=lambda r: next(iter(r["params"].values())))
            x = [next(iter(r["params"].values())) for r in rows]
            for t, style in ((25, "-o"), (200, "--s")):
                y = [r["vs_anchor"][f"acc_{t}km"]["mean"] for r in rows]
                low = [r["vs_anchor"][f"acc_{t}km"]["low"] for r in rows]
                high = [r["vs_anchor"][f"acc_{t}km"]["high"] for r in rows]
                ax.errorbar(x, y, yerr=[np.subtract(y, low), np.subtract(high, y)], fmt=style, capsize=3, label=f"{label}, {t} km")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("weight scale")
        ax.set_ylabel("Δ accuracy vs InfoNCE (points)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / f"sweep_s-{suffix}.png")
        save_figure(fig, written[-1], dpi=120)
        plt.close(fig)
    return written


def plot_differences(summary: dict, out: Path, groups: tuple[str, ...] = ("losses", "noise"), stem: str = "differences",
                     also: tuple[str, ...] = ()) -> list[Path]:
    """Per training dataset, the paired difference against InfoNCE of each arm in ``groups`` (and the arms named in
    ``also``) at every threshold with its 95% band, on its own test photos and on the other dataset's:
    <stem>-<dataset>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for trained_on, sets in summary.items():
        shown = [name for name in sets if name != "val"]
        fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.2), squeeze=False)
        for ax, name in zip(axes[0], shown):
            for row in sets[name]:
                if row["vs_anchor"] is None or (row["group"] not in groups and row["name"] not in also):
                    continue
                diffs = [row["vs_anchor"][f"acc_{t}km"] for t in THRESHOLDS]
                line, = ax.plot(THRESHOLDS, [d["mean"] for d in diffs], "-o", ms=3, label=f"{row['name']} ({len(row['seeds'])} seeds)")
                ax.fill_between(THRESHOLDS, [d["low"] for d in diffs], [d["high"] for d in diffs], color=line.get_color(), alpha=0.15)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_xticks(THRESHOLDS, [f"{t:,}" for t in THRESHOLDS])
            ax.set_xlabel("threshold (km)")
            ax.set_ylabel("Δ accuracy vs InfoNCE (points), 95% band")
            tested = trained_on if name == "test" else name.split(":", 1)[1]
            ax.set_title(f"trained on {trained_on}, tested on {tested}")
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        written.append(out / f"{stem}-{trained_on}.png")
        save_figure(fig, written[-1], dpi=120)
        plt.close(fig)
    return written
