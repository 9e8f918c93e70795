"""A prediction on the world map: every gallery point coloured by its probability (log scale, the most probable
drawn on top), Natural Earth's 1:110m coastlines (the outline the page bundles), the best places numbered, and the
photo's EXIF position where known. ``predict --heatmap`` draws one per input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DECADES = 4  # the colour scale spans this many powers of ten below the most probable point
# Where a place's label may sit, in points from its star, tried in order until it overlaps no label placed before.
LABEL_OFFSETS = [(6, 6), (6, -16), (-52, 6), (-52, -16), (6, 20), (-52, 20), (6, -30), (-52, -30), (20, 34), (20, -44)]
HEAT_POINTS = 2000  # the most probable gallery points the page shades (about 60 KB of JSON)


def heat_points(gallery_latlon: np.ndarray, prob: np.ndarray, most: int = HEAT_POINTS) -> list[list[float]]:
    """The page's shading: the ``most`` most probable gallery points down to 10^-DECADES of the most probable, each
    [lat, lon, log10 p], the most probable last (drawn on top), as the PNG draws them."""
    from geovario.confidence import GalleryPlaces

    prob = np.asarray(prob, dtype=np.float64)
    top = GalleryPlaces.most_probable(prob, most)  # in O(N), not a sort of the whole gallery on every upload
    top = top[prob[top] >= prob[top[0]] * 10.0 ** -DECADES][::-1]
    return [[float(gallery_latlon[i, 0]), float(gallery_latlon[i, 1]), round(float(np.log10(prob[i])), 3)] for i in top]


def label_places(ax, places: list) -> list:
    """Each place's label ("rank: prob") beside its star, at the first offset of LABEL_OFFSETS where its box overlaps
    no earlier label (the last offset if every one does), so places a few km apart stay readable; the annotations."""
    renderer = ax.figure.canvas.get_renderer()
    placed, boxes = [], []
    for rank, place in enumerate(places, 1):
        for offset in LABEL_OFFSETS:
            label = ax.annotate(f"{rank}: {place.prob:.2f}", (place.lon, place.lat), xytext=offset, textcoords="offset points",
                                fontsize=9, zorder=5, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0})
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in boxes) or offset == LABEL_OFFSETS[-1]:
                break
            label.remove()
        placed.append(label)
        boxes.append(box)
    return placed


def draw_coastlines(ax, color: str = "0.55", linewidth: float = 0.5) -> int:
    """Natural Earth's land outline on lon/lat axes, repeated at ±360° for rings that cross the antimeridian;
    returns the number of rings drawn."""
    from geovario.land import coastlines

    rings = coastlines()
    for ring in rings:
        for shift in (-360.0, 0.0, 360.0):
            ax.plot(ring[:, 0] + shift, ring[:, 1], color=color, linewidth=linewidth, zorder=1)
    return len(rings)


def probability_map(gallery_latlon: np.ndarray, prob: np.ndarray, places: list, out: str | Path,
                    truth: tuple[float, float] | None = None, title: str = "") -> dict:
    """Draw and save the map; returns what was drawn (the points in drawing order with their log10 probabilities,
    the marked places, the number of coastline rings, the labels and their offsets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geovario.atomic import save_figure

    gallery = np.asarray(gallery_latlon, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    order = np.argsort(prob, kind="stable")  # the most probable last, on top
    top = np.log10(max(float(prob.max()), 1e-300))
    values = np.log10(np.maximum(prob[order], 10.0 ** (top - DECADES)))
    fig, ax = plt.subplots(figsize=(11, 5.8))
    rings = draw_coastlines(ax)
    dots = ax.scatter(gallery[order, 1], gallery[order, 0], c=values, s=5, cmap="magma_r", vmin=top - DECADES, vmax=top, zorder=2,
                      linewidths=0)
    fig.colorbar(dots, ax=ax, shrink=0.8, label="log10 probability of the gallery point")
    marked = []
    for place in places:
        ax.plot(place.lon, place.lat, marker="*", markersize=14, color="tab:cyan", markeredgecolor="black", zorder=4)
        marked.append((place.lon, place.lat))
    if truth is not None:
        ax.plot(truth[1], truth[0], marker="X", markersize=11, color="limegreen", markeredgecolor="black", zorder=4, label="EXIF GPS")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    labels = label_places(ax, places)  # after the layout: the boxes are measured where they will be drawn
    save_figure(fig, Path(out), dpi=130)
    plt.close(fig)
    return {"points": gallery[order][:, ::-1], "values": values, "marked": marked, "coastlines": rings,
            "labels": [label.get_text() for label in labels], "label_offsets": [label.xyann for label in labels]}
