"""`geovario bench study`: do semivariogram-guided negatives beat InfoNCE? The whole study in one command.

On one simulated world (by default the calibrated default world), at the lab budget of
``geovario.experiments``, it trains and evaluates:

- every loss of the paper and the thesis against InfoNCE (GeoCLIP's recipe), ``seeds`` seeds each: the
  paper's semivariogram weighting, the thesis's penalty, HCL "Weighted" and "Weighted2", and triplet
  with mixed gallery negatives; the thesis's other negative selections (InfoNCE with neighbour
  negatives, triplet with far negatives) with ``gallery_seeds`` seeds, since per-sample gallery
  negatives cost about 6x the time of a step on the queue;
- the paper's ablation: hard negatives up only, false negatives down only, both (the paper), neither;
- the thesis's penalty with the thesis's own range rule beside geovario's effective range;
- the variogram refitted on learned embeddings every epoch, against the frozen fit;
- a sensitivity sweep with ``sweep_seeds`` seeds: theta1 x theta2 at s1 = s2 = 5, and s1 and s2 one
  at a time at the default thresholds (a documented subset of the full 5 x 3 x 5 x 5 grid).

Every run is compared with InfoNCE on the same seed, hence the same data order and initial weights:
the difference in accuracy at each threshold (and in GeoScore) is averaged over the test photos and
seeds, with a 95% confidence interval from a bootstrap that resamples seeds and test photos.

Runs are cached under ``out/runs/<key>`` by a hash of everything that decides them (the world's
fingerprint, the whole training config and the variogram), so a killed study,
or one re-run with more seeds, reuses the runs that finished and computes only the rest; a run cut off
in the middle starts over. A changed world has another fingerprint, so nothing of the old one is reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geovario.atomic import atomic_path, atomic_write_bytes, output_dir, save_figure
from geovario.config import load_config
from geovario.errors import GeovarioError
from geovario.experiments import LAB, LAB_EPOCHS, train_and_evaluate
from geovario.jsonio import write_json
from geovario.metrics import GEOSCORE_MAX, GEOSCORE_SCALE_KM

THRESHOLDS = (1, 25, 200, 750, 2500)
THETA1 = (100.0, 500.0, 1000.0, 2500.0, None)  # None: the variogram's range
THETA2 = (1.0, 25.0, 100.0)
S_VALUES = (0.5, 1.0, 2.0, 5.0, 10.0)
SV = ["loss.name=semivariogram", "negatives.source=queue"]
GALLERY = ["negatives.source=gallery", "negatives.k=64"]  # the configs' 4 x batch = 512 is 8x slower again


@dataclass
class Arm:
    """One configuration of the study, trained with each of ``seeds``."""

    group: str
    name: str
    overrides: list[str]
    seeds: list[int]
    params: dict = field(default_factory=dict)  # for the sweep's tables


def plan(seeds: int = 5, gallery_seeds: int = 2, sweep_seeds: int = 1, steps_per_epoch: int = 390) -> list[Arm]:
    main, few, sweep = list(range(seeds)), list(range(gallery_seeds)), list(range(sweep_seeds))
    arms = [
        Arm("losses", "infonce (GeoCLIP)", ["loss.name=infonce"], main),
        Arm("losses", "semivariogram (paper)", SV, main),
        Arm("losses", "semivariogram penalty (thesis)", SV + ["loss.mode=penalty"], main),
        Arm("losses", "hcl_weighted (thesis Weighted)", ["loss.name=hcl_weighted"], main),
        Arm("losses", "hcl_debiased (thesis Weighted2)", ["loss.name=hcl_debiased"], main),
        Arm("losses", "triplet, mixed gallery negatives (thesis)", ["loss.name=triplet", *GALLERY, "negatives.selection=mixed"], main),
        Arm("losses", "infonce, neighbour negatives (thesis)", ["loss.name=infonce", *GALLERY, "negatives.selection=mixed"], few),
        Arm("losses", "triplet, far gallery negatives (thesis)", ["loss.name=triplet", *GALLERY, "negatives.selection=far"], few),
        Arm("ablation", "hard up only", SV + ["loss.s2=0"], main),
        Arm("ablation", "false down only", SV + ["loss.s1=0"], main),
        Arm("ablation", "neither (s1 = s2 = 0)", SV + ["loss.s1=0", "loss.s2=0"], main),
        Arm("range", "penalty, thesis range rule", SV + ["loss.mode=penalty", "loss.penalty_range=thesis"], main),
        Arm("refit", "paper, variogram refitted every epoch", SV + [f"loss.refit_every={steps_per_epoch}"], main),
    ]
    for theta1 in THETA1:
        for theta2 in THETA2:
            over = SV + [f"loss.theta1_km={'null' if theta1 is None else theta1}", f"loss.theta2_km={theta2}"]
            arms.append(Arm("sweep-theta", f"theta1={_km(theta1)}, theta2={theta2:g}", over, sweep, {"theta1": theta1, "theta2": theta2}))
    for key, other in (("s1", "s2"), ("s2", "s1")):
        for value in S_VALUES:
            over = SV + [f"loss.{key}={value}", f"loss.{other}=5.0"]
            arms.append(Arm(f"sweep-{key}", f"{key}={value:g}, {other}=5", over, sweep, {key: value}))
    return arms


def _km(theta1) -> str:
    return "range" if theta1 is None else f"{theta1:g}"


def world_fingerprint(world: Path) -> str:
    """What identifies a world's data: its truth.json (the config) and its stores' manifests and indexes."""
    digest = hashlib.sha256()
    for part in ("truth.json", "train/manifest.json", "train/index.csv", "test/manifest.json", "test/index.csv"):
        path = world / part
        if not path.is_file():
            raise GeovarioError(f"{world}: not a simulated world ({part} missing); make one with `geovario simulate`")
        digest.update(part.encode() + path.read_bytes())
    return digest.hexdigest()


def run_key(fingerprint: str, overrides: list[str], seed: int, epochs: int, variogram: str) -> str:
    """A hash of the whole training config a run would use, so equal settings share one run however spelled."""
    config = load_config(None, LAB + ["data.train=WORLD", f"train.epochs={epochs}", f"train.seed={seed}", *overrides]).to_dict()
    spec = {"world": fingerprint, "config": config, "variogram": variogram}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cached_run(world: Path, runs: Path, key: str, overrides: list[str], seed: int, epochs: int, variogram: Path, log) -> dict:
    """The run's summary and per-photo errors, trained now or read back from an earlier study."""
    done = runs / key / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        result["errors_km"] = np.load(runs / key / "errors.npy")
        return result
    work = runs / key / "work"
    shutil.rmtree(work, ignore_errors=True)  # a run cut off in the middle starts over
    start = time.perf_counter()
    report = train_and_evaluate(world, work, overrides, epochs, seed, variogram=variogram, progress=False)
    with atomic_path(runs / key / "errors.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, report["errors_km"].astype(np.float64))
    result = {"overrides": overrides, "seed": seed, "accuracy": report["accuracy"], "median_km": report["median_km"],
              "geoscore": report["geoscore"], "seconds": time.perf_counter() - start}
    shutil.rmtree(work, ignore_errors=True)  # checkpoints and the model: the study keeps the errors only
    write_json(done, result)  # written last: its presence marks the run finished
    log(f"  trained in {result['seconds']:.0f} s")
    result["errors_km"] = report["errors_km"]
    return result


def paired_bootstrap(method: np.ndarray, anchor: np.ndarray, rng: np.random.Generator, resamples: int = 2000) -> dict:
    """Differences method - anchor over (seeds, photos) error matrices, with 95% bootstrap intervals.

    Accuracy at each threshold (percentage points) and GeoScore. Each resample draws seeds with
    replacement and test photos with replacement (the same photos for every seed drawn).
    """
    s, n = method.shape
    seeds = rng.integers(0, s, (resamples, s))
    photos = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64) / n  # (R, N) photo weights
    out = {}
    per_photo = {f"acc_{t}km": 100.0 * ((method <= t).astype(float) - (anchor <= t).astype(float)) for t in THRESHOLDS}
    per_photo["geoscore"] = GEOSCORE_MAX * (np.exp(-method / GEOSCORE_SCALE_KM) - np.exp(-anchor / GEOSCORE_SCALE_KM))
    for name, diff in per_photo.items():
        by_seed = diff @ photos.T  # (S, R): each seed's mean difference under each photo resample
        boot = by_seed[seeds, np.arange(resamples)[:, None]].mean(axis=1)
        low, high = np.percentile(boot, [2.5, 97.5])
        out[name] = {"mean": float(diff.mean()), "low": float(low), "high": float(high)}
    return out


def _train_in_worker(threads: int, *args) -> str:
    """One run in a worker process of ``run_study(jobs > 1)``, on ``threads`` cores; returns its key."""
    import torch

    torch.set_num_threads(threads)
    cached_run(*args, log=lambda text: None)
    return args[2]


def _train_in_parallel(tasks: list[tuple], jobs: int, log) -> None:
    """``tasks`` (name, seed, cached_run arguments) in ``jobs`` worker processes, each on its share of the cores.

    Each run writes its result atomically, as in the serial path, and gives the same errors as in-process
    (tests/test_study.py).
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"training {len(tasks)} runs in {jobs} processes of {threads} thread(s) each")
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, threads, *arguments): (name, seed) for name, seed, arguments in tasks}
        for done, future in enumerate(as_completed(futures), 1):
            future.result()  # a failed run fails the study, with its own error
            name, seed = futures[future]
            log(f"  [{done}/{len(tasks)}] finished {name}, seed {seed}")


def run_study(out: str | Path, world: Path | None = None, seeds: int = 5, gallery_seeds: int = 2, sweep_seeds: int = 1,
              epochs: int = LAB_EPOCHS, world_config=None, arms: list[Arm] | None = None, jobs: int = 1) -> dict:
    """Run (or resume) the study into ``out``; writes study.json, study.md and the heat maps.

    ``jobs`` > 1 trains the missing runs in that many processes at once (the cores shared among them).
    """
    from geovario.data.store import FeatureStore
    from geovario.sim import WorldConfig, simulate
    from geovario.variogram import empirical_for_loss, fit_for_loss

    out = Path(out)
    output_dir(out)

    def log(text: str) -> None:
        print(text, flush=True)

    if world is None:
        world = out / "world"
        if not (world / "test").is_dir():
            log(f"simulating the world into {world}")
            simulate(world, world_config or WorldConfig())
    fingerprint = world_fingerprint(world)
    store = FeatureStore(world / "train")
    variogram_path = out / "variogram.json"
    if not variogram_path.is_file():
        features = store.features(dtype=np.float16) if len(store) > 20_000 else store.features()
        fit_for_loss(empirical_for_loss(features, store.gps)).save(variogram_path)
    variogram_text = variogram_path.read_text()
    steps_per_epoch = len(store) // 128
    arms = arms if arms is not None else plan(seeds, gallery_seeds, sweep_seeds, steps_per_epoch)
    anchor = arms[0]
    needed = sorted({s for arm in arms for s in arm.seeds})
    anchor = Arm(anchor.group, anchor.name, anchor.overrides, needed)  # every seed any arm uses
    runs_dir = out / "runs"
    results: dict[str, dict[int, dict]] = {}
    total = sum(len(arm.seeds) for arm in [anchor, *arms[1:]])
    if jobs > 1:
        tasks = {}
        for arm in [anchor, *arms[1:]]:
            for seed in arm.seeds:
                key = run_key(fingerprint, arm.overrides, seed, epochs, variogram_text)
                if key not in tasks and not (runs_dir / key / "result.json").is_file():
                    tasks[key] = (arm.name, seed, (world, runs_dir, key, arm.overrides, seed, epochs, variogram_path))
        if tasks:
            _train_in_parallel(list(tasks.values()), jobs, log)
    count = 0
    for arm in [anchor, *arms[1:]]:
        for seed in arm.seeds:
            count += 1
            key = run_key(fingerprint, arm.overrides, seed, epochs, variogram_text)
            state = "cached" if (runs_dir / key / "result.json").is_file() else "training"
            log(f"[{count}/{total}] {arm.name}, seed {seed}: {state}")
            results.setdefault(arm.name, {})[seed] = cached_run(world, runs_dir, key, arm.overrides, seed, epochs, variogram_path, log)
    summary = summarize(arms, results, anchor.name)
    write_json(out / "study.json", {"world": str(world), "world_fingerprint": fingerprint, "epochs": epochs, "lab": LAB,
                                    "variogram": json.loads(variogram_text), "arms": summary})
    markdown = study_markdown(summary, anchor.name, json.loads(variogram_text))
    atomic_write_bytes(out / "study.md", markdown.encode())
    plot_sweeps(summary, out)
    return {"arms": summary, "markdown": markdown}


def summarize(arms: list[Arm], results: dict, anchor_name: str) -> list[dict]:
    rng = np.random.default_rng(0)
    anchor = results[anchor_name]
    rows = []
    for arm in arms:
        runs = [results[arm.name][s] for s in arm.seeds]
        errors = np.stack([r["errors_km"] for r in runs])
        base = np.stack([anchor[s]["errors_km"] for s in arm.seeds])
        accuracy = {str(t): [r["accuracy"][str(t)] for r in runs] for t in THRESHOLDS}
        rows.append({
            "group": arm.group, "name": arm.name, "overrides": arm.overrides, "seeds": arm.seeds, "params": arm.params,
            "accuracy_mean": {t: float(np.mean(v)) for t, v in accuracy.items()},
            "accuracy_std": {t: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for t, v in accuracy.items()},
            "median_km": float(np.mean([r["median_km"] for r in runs])), "geoscore": float(np.mean([r["geoscore"] for r in runs])),
            "vs_anchor": None if arm.name == anchor_name else paired_bootstrap(errors, base, rng),
        })
    return rows


def _cell(diff: dict, digits: int = 2) -> str:
    mark = " *" if diff["low"] > 0 or diff["high"] < 0 else ""
    return f"{diff['mean']:+.{digits}f} [{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}]{mark}"


def study_markdown(summary: list[dict], anchor_name: str, variogram: dict) -> str:
    lines = ["| Configuration | seeds | " + " | ".join(f"{t} km" for t in THRESHOLDS) + " | Median km | GeoScore |",
             "|---|---:|" + "---:|" * (len(THRESHOLDS) + 2)]
    for row in summary:
        cells = [f"{row['accuracy_mean'][str(t)]:.2f} ± {row['accuracy_std'][str(t)]:.2f}" for t in THRESHOLDS]
        lines.append(f"| {row['name']} | {len(row['seeds'])} | " + " | ".join(cells) + f" | {row['median_km']:.1f} | {row['geoscore']:.0f} |")
    absolute = "\n".join(lines)
    lines = ["| Configuration | seeds | " + " | ".join(f"Δ {t} km" for t in THRESHOLDS[1:]) + " | Δ GeoScore |",
             "|---|---:|" + "---:|" * (len(THRESHOLDS))]
    for row in summary:
        if row["vs_anchor"] is None:
            continue
        diffs = row["vs_anchor"]
        lines.append(f"| {row['name']} | {len(row['seeds'])} | " + " | ".join(_cell(diffs[f'acc_{t}km']) for t in THRESHOLDS[1:])
                     + f" | {_cell(diffs['geoscore'], 1)} |")
    paired = "\n".join(lines)
    return (f"Accuracy in % (d ≤ t), mean ± sample std over seeds.\n\n{absolute}\n\n"
            f"Paired differences against {anchor_name} on the same seeds, in percentage points (GeoScore in points): "
            f"mean [95% bootstrap interval over seeds and test photos]; * marks an interval that excludes 0.\n\n{paired}\n\n"
            f"Variogram (frozen fit on the training features): {variogram['model']}, nugget {variogram['nugget']:.3f}, "
            f"partial sill {variogram['psill']:.3f}, range {variogram['range_km']:.0f} km.\n")


def plot_sweeps(summary: list[dict], out: Path) -> list[Path]:
    """Heat maps of the theta1 x theta2 sweep (difference to the anchor at 25 and 200 km) and the s sweeps."""
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
        written.append(out / "sweep_theta.png")
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
        written.append(out / "sweep_s.png")
        save_figure(fig, written[-1], dpi=120)
        plt.close(fig)
    return written
