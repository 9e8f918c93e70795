"""Figures a researcher would put in a paper: measured on the rendered figure (legend and label boxes in pixels), the
paired-difference band against the normal approximation, the coastlines drawn."""

import numpy as np
import pytest

from geovario.variogram import VariogramModel
from geovario.variogram.empirical import EmpiricalVariogram


def _texts(fig, renderer):
    """Every text of the figure's axes (annotations, axis labels, tick labels, titles) that shows something."""
    found = []
    for ax in fig.axes:
        texts = list(ax.texts) + [ax.xaxis.label, ax.yaxis.label, ax.title]
        texts += [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_visible()]
        found += [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text()]
    return found


@pytest.mark.parametrize("log_x", [False, True])
def test_the_variogram_legend_covers_no_label_point_or_curve(log_x):
    """Two curves whose sills, nuggets and range labels fill every corner of the axes: the legend sits outside them."""
    import matplotlib.pyplot as plt

    from geovario.variogram.plot import variogram_figure

    edges = np.concatenate([[0.0], np.geomspace(20, 12000, 14)])
    mean_h = np.sqrt(np.maximum(edges[:-1], 5) * edges[1:])
    curves = []
    for k, (nugget, psill, range_km) in enumerate([(0.05, 0.6, 900.0), (0.4, 0.3, 6000.0)]):
        model = VariogramModel("spherical", nugget, psill, range_km)
        n = np.full(len(mean_h), 10 ** (5 + k), dtype=np.int64)
        curves.append((f"world {k}", EmpiricalVariogram(edges, model(mean_h), n, n.astype(float), mean_h, "matheron", "exact", 1000),
                       model))
    fig = variogram_figure(curves, log_x=log_x)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
    legend = fig.legends[0].get_window_extent(renderer)
    assert len(fig.legends[0].get_texts()) == 4 and fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)
    assert not legend.overlaps(fig.axes[0].get_window_extent(renderer))
    covered = [text for text, box in _texts(fig, renderer) if box.overlaps(legend)]
    assert covered == []
    assert {"nugget", "sill"} <= {text for text, _ in _texts(fig, renderer)}
    plt.close(fig)


def test_the_paired_difference_band_against_its_normal_approximation():
    """The difference of shares within x km, against a per-photo count; its bootstrap band's half-width against 1.96
    standard errors of the mean paired difference (each photo's +1, 0 or -1), within 15 %."""
    from geovario.report import paired_difference_band

    rng = np.random.default_rng(0)
    anchor = rng.lognormal(5, 2, 3000)
    errors = anchor * rng.lognormal(-0.2, 0.8, 3000)  # better on most photos, not all
    grid = np.array([1.0, 25.0, 200.0, 750.0, 2500.0])
    difference, low, high = paired_difference_band(errors, anchor, grid, resamples=2000)
    for g, x in enumerate(grid):
        per_photo = (errors <= x).astype(float) - (anchor <= x)
        assert difference[g] == pytest.approx(100 * per_photo.mean())
        half_width = 1.96 * 100 * per_photo.std(ddof=1) / np.sqrt(len(per_photo))
        assert (high[g] - low[g]) / 2 == pytest.approx(half_width, rel=0.15)
        assert low[g] < difference[g] < high[g]
    # An error exactly at the distance counts as within it (as the accuracy metric does).
    exact = paired_difference_band(np.array([25.0, 1.0]), np.array([30.0, 1.0]), np.array([25.0]), resamples=10)
    assert exact[0][0] == pytest.approx(50.0)
    same = paired_difference_band(anchor, anchor, grid, resamples=50)
    assert all(np.all(part == 0) for part in same)
    with pytest.raises(ValueError, match="same photos"):
        paired_difference_band(errors[:10], anchor, grid)


def test_cumulative_error_gets_a_paired_panel_only_for_runs_on_the_same_photos(tmp_path, monkeypatch):
    import matplotlib.figure

    from geovario import report

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(5, 2, 500), rng.lognormal(4.8, 2, 500)
    report.plot_cumulative_error({"InfoNCE": a, "semivariogram": b}, [25, 2500], tmp_path / "paired.png")
    report.plot_cumulative_error({"InfoNCE": a, "other photos": b[:400]}, [25, 2500], tmp_path / "unpaired.png")
    report.plot_cumulative_error({"InfoNCE": a}, [25, 2500], tmp_path / "one.png")
    assert [len(fig.axes) for fig in drawn] == [2, 1, 1]
    below = drawn[0].axes[1]
    assert [line.get_label() for line in below.get_lines() if not line.get_label().startswith("_")] == ["semivariogram − InfoNCE"]
    assert len(below.collections) == 1  # the band


def test_the_error_map_draws_the_coastlines(tmp_path, monkeypatch):
    from geovario import maps, report

    calls = []
    original = maps.draw_coastlines
    monkeypatch.setattr(maps, "draw_coastlines", lambda ax, *a, **k: calls.append(len(ax.get_lines())) or original(ax, *a, **k))
    report.plot_error_map(np.array([[48.85, 2.35], [-33.9, 151.2]]), np.array([3.0, 800.0]), tmp_path / "map.png")
    assert calls == [0] and (tmp_path / "map.png").stat().st_size > 10_000


def test_heatmap_labels_of_places_a_few_km_apart_do_not_overlap(tmp_path, monkeypatch):
    """Five places within 30 km of Paris: each label in its own box (at the default offset all five would coincide)."""
    import matplotlib.figure

    from geovario import maps
    from geovario.confidence import Prediction

    kept = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: kept.append(fig))
    places = [Prediction(48.85 + 0.05 * k, 2.35 + 0.05 * k, 0.3 - 0.05 * k, k) for k in range(5)]
    gallery = np.array([[p.lat, p.lon] for p in places] + [[-33.9, 151.2]])
    drawn = maps.probability_map(gallery, np.array([0.3, 0.25, 0.2, 0.15, 0.1, 0.0]), places, tmp_path / "heat.png")
    assert drawn["labels"] == ["1: 0.30", "2: 0.25", "3: 0.20", "4: 0.15", "5: 0.10"]
    assert len(set(drawn["label_offsets"])) == 5 and drawn["label_offsets"][0] == maps.LABEL_OFFSETS[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(kept[0]).get_renderer()  # the figure was closed: a canvas of its own, same dpi
    boxes = [t.get_window_extent(renderer) for t in kept[0].axes[0].texts]
    assert len(boxes) == 5
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(5) for j in range(i + 1, 5))
