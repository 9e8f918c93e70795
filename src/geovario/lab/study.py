"""`geovario bench study`: do semivariogram-guided negatives beat InfoNCE? The whole study in one command.

On the lab's two datasets drawn on one simulated Earth (``mp16``, Flickr-like, and ``osv5m``, street view;
geovario.lab.world), at the lab budget of ``geovario.lab.experiments``, it trains on each dataset and
evaluates every run on that dataset's validation and test photos and on the other dataset's test photos
(the thesis trained on OSV5M and tested on im2gps3k):

- InfoNCE (GeoCLIP's recipe) and the paper's semivariogram weighting, ``seeds`` seeds each: the comparison
  the study is powered for (benchmarks/results/study-power.md says how many seeds and test photos);
- with as many seeds, other ways to use spatial structure: PIGEON's haversine label smoothing, variogram
  soft positives, and the paper's hard negatives with soft positives in place of its false-negative half;
- the thesis's other losses (its penalties get_penalty to get_penalty5, HCL "Weighted" and "Weighted2",
  weighted_neg, ssl, triplet with mixed gallery negatives), InfoNCE without GPS noise, the paper's ablation (hard negatives up only, false negatives down
  only, neither), the thesis's range rule and a variogram refitted every epoch: ``other_seeds`` seeds;
- the thesis's other negative selections (InfoNCE with neighbour negatives, triplet with far negatives),
  ``gallery_seeds`` seeds, since per-sample gallery negatives cost about 6x the time of a step on the queue;
- a sensitivity sweep with ``sweep_seeds`` seeds: theta1 x theta2 at s1 = s2 = 5, and s1 and s2 one at a
  time at the default thresholds. Its "best" point is chosen on the validation photos, never on test.

Every run is compared with InfoNCE on the same seed, hence the same data order and initial weights:
the difference in accuracy at each threshold (and in GeoScore) is averaged over the test photos and
seeds, with a 95% confidence interval from a bootstrap that resamples seeds and test photos.

Runs are cached under ``runs/<key>`` by a hash of everything that decides them (the worlds' fingerprints,
the training config's settings that differ from the defaults, the variogram and ``LAB_VERSION``), so a killed study, or one re-run with more
seeds, reuses the runs that finished and computes only the rest; a run cut off in the middle starts over.
Each finished run is a small folder (its figures, the commit it ran at, and its per-photo errors), meant to
be committed, so that a study longer than a working day resumes on another machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geovario.atomic import atomic_path, atomic_write_bytes, output_dir
from geovario.config import Config, load_config
from geovario.errors import GeovarioError
from geovario.jsonio import write_json
from geovario.lab.experiments import LAB, LAB_BATCH_SIZE, LAB_EPOCHS, LAB_VERSION, train_and_evaluate
from geovario.lab.study_design import (GALLERY_SEEDS, OTHER_SEEDS, POWER_SEEDS, PRESETS, S_VALUES, SWEEP_SEEDS, THETA1, THETA2,
                                       THRESHOLDS)
from geovario.metrics import GEOSCORE_MAX, GEOSCORE_SCALE_KM

SV = ["loss.name=semivariogram", "negatives.source=queue"]
GALLERY = ["negatives.source=gallery", "negatives.k=64"]  # the configs' 4 x batch = 512 is 8x slower again
ANCHOR, PAPER = "infonce (GeoCLIP)", "semivariogram (paper)"
HAVERSINE, SOFT, HARD_SOFT = "haversine smoothing (PIGEON)", "variogram soft positives", "hard negatives + soft positives (geovario)"
WEIGHTED_NEG, SSL = "hcl_weighted, neighbourhood negatives (thesis weighted_neg)", "ssl: two views + SimSiam (thesis)"
# The simulated world stores no augmented views: the ssl arm's two views are each photo's features plus noise of 0.3
# times their norm (two views at cosine about 1 / (1 + 0.3^2) = 0.92; an assumption, not measured on CLIP crops).
SSL_VIEW_NOISE = 0.3


@dataclass
class Arm:
    """One configuration of the study, trained with each of ``seeds``."""

    group: str
    name: str
    overrides: list[str]
    seeds: list[int]
    params: dict = field(default_factory=dict)  # for the sweep's tables


def plan(seeds: int = POWER_SEEDS, other_seeds: int = OTHER_SEEDS, gallery_seeds: int = GALLERY_SEEDS, sweep_seeds: int = SWEEP_SEEDS,
         train_rows: int | None = None) -> list[Arm]:
    """Every arm of the study; ``train_rows``, the training set's size (default: the presets' worlds'), sets the refit
    arm's cadence to once an epoch."""
    from geovario.lab.world import preset

    steps_per_epoch = (preset("mp16").n_train if train_rows is None else train_rows) // LAB_BATCH_SIZE
    power, other, few, sweep = (list(range(n)) for n in (seeds, other_seeds, gallery_seeds, sweep_seeds))
    arms = [
        Arm("losses", ANCHOR, ["loss.name=infonce"], power),
        Arm("losses", PAPER, SV, power),
        # beyond the paper (issue 26): other ways to use spatial structure, powered as the paper's loss
        Arm("beyond", HAVERSINE, ["loss.name=haversine_smoothing"], power),
        Arm("beyond", SOFT, SV + ["loss.mode=soft_positives", "loss.s1=0"], power),
        Arm("beyond", HARD_SOFT, SV + ["loss.mode=soft_positives"], power),
        Arm("losses", "semivariogram penalty (thesis)", SV + ["loss.mode=penalty"], other),
        Arm("losses", "hcl_weighted (thesis Weighted)", ["loss.name=hcl_weighted"], other),
        Arm("losses", "hcl_debiased (thesis Weighted2)", ["loss.name=hcl_debiased"], other),
        Arm("losses", "triplet, mixed gallery negatives (thesis)", ["loss.name=triplet", *GALLERY, "negatives.selection=mixed"], other),
        Arm("losses", "infonce, neighbour negatives (thesis)", ["loss.name=infonce", *GALLERY, "negatives.selection=mixed"], few),
        Arm("losses", "triplet, far gallery negatives (thesis)", ["loss.name=triplet", *GALLERY, "negatives.selection=far"], few),
        # the thesis's other strategies and SemivarioPenalty variants, each by its own rule
        *[Arm("losses", f"semivariogram {function} (thesis)", SV + [f"loss.mode={mode}", "loss.penalty_range=thesis"], other)
          for mode, function in (("logit_abs", "get_penalty"), ("beta_abs", "get_penalty2"), ("logit_excess", "get_penalty3"),
                                 ("beta_excess", "get_penalty4"))],
        Arm("losses", WEIGHTED_NEG, ["loss.name=hcl_weighted", "negatives.source=neighbourhood"], other),
        Arm("losses", SSL, ["loss.name=ssl", f"data.view_noise={SSL_VIEW_NOISE}"], other),
        Arm("noise", "infonce, no GPS noise", ["loss.name=infonce", "negatives.batch_noise_m=0", "negatives.queue_noise_m=0"], other),
        Arm("ablation", "hard up only", SV + ["loss.s2=0"], other),
        Arm("ablation", "false down only", SV + ["loss.s1=0"], other),
        Arm("ablation", "neither (s1 = s2 = 0)", SV + ["loss.s1=0", "loss.s2=0"], other),
        Arm("range", "penalty, thesis range rule", SV + ["loss.mode=penalty", "loss.penalty_range=thesis"], other),
        Arm("refit", "paper, variogram refitted every epoch", SV + [f"loss.refit_every={steps_per_epoch}"], other),
    ]
    for theta1 in THETA1:
        for theta2 in THETA2:
            over = SV + [f"loss.theta1_km={'null' if theta1 is None else theta1}", f"loss.theta2_km={theta2}"]
            arms.append(Arm("sweep-theta", f"theta1={_km(theta1)}, theta2={theta2:g}", over, sweep, {"theta1": theta1, "theta2": theta2}))
    for key, other_key in (("s1", "s2"), ("s2", "s1")):
        for value in S_VALUES:
            over = SV + [f"loss.{key}={value}", f"loss.{other_key}=5.0"]
            arms.append(Arm(f"sweep-{key}", f"{key}={value:g}, {other_key}=5", over, sweep, {key: value}))
    return arms


def training_stage(arm: Arm) -> int:
    """When an arm trains: 0 with the powered comparison, 1 for the slow gallery-negative arms (about 6x slower a
    step), 2 for the sweep, last."""
    if arm.group.startswith("sweep"):
        return 2
    return 1 if "negatives.source=gallery" in arm.overrides else 0


def _km(theta1) -> str:
    return "range" if theta1 is None else f"{theta1:g}"


def world_fingerprint(world: Path) -> str:
    """What identifies a world's data: its truth.json (the config) and its stores' manifests and indexes."""
    digest = hashlib.sha256()
    for part in ("truth.json", *(f"{split}/{name}" for split in ("train", "val", "test") for name in ("manifest.json", "index.csv"))):
        path = world / part
        if not path.is_file():
            raise GeovarioError(f"{world}: not a simulated world ({part} missing); make one with `geovario simulate`")
        digest.update(part.encode() + path.read_bytes())
    return digest.hexdigest()


def current_commit(repo: Path | None = None) -> str:
    """The git commit the code runs at, with "+changes" when the work tree differs from it; "unknown" outside git."""
    where = repo or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


@dataclass
class Datasets:
    """The study's worlds, one per preset, drawn on one Earth; what each run trains on and is tested on."""

    worlds: dict[str, Path]  # preset -> world folder
    fingerprints: dict[str, str]

    @classmethod
    def open(cls, worlds: dict[str, Path]) -> "Datasets":
        earths = {name: json.loads((Path(w) / "truth.json").read_text()).get("earth") for name, w in worlds.items()
                  if (Path(w) / "truth.json").is_file()}
        fingerprints = {name: world_fingerprint(Path(w)) for name, w in worlds.items()}
        if len({json.dumps(e, sort_keys=True) for e in earths.values()}) > 1 or None in earths.values():
            raise GeovarioError("the study's worlds must be drawn on one Earth (truth.json's \"earth\" equal): "
                                + "; ".join(f"{name}: {earths.get(name)}" for name in worlds))
        return cls({name: Path(w) for name, w in worlds.items()}, fingerprints)

    def eval_stores(self, trained_on: str) -> dict[str, Path]:
        """Validation and test photos of the training dataset, then each other dataset's test photos."""
        stores = {"val": self.worlds[trained_on] / "val", "test": self.worlds[trained_on] / "test"}
        return stores | {f"test:{other}": self.worlds[other] / "test" for other in self.worlds if other != trained_on}


def run_key(datasets: Datasets, trained_on: str, overrides: list[str], seed: int, epochs: int, variogram: str) -> str:
    """A hash of the training config a run would use, so equal settings share one run however spelled.

    The config enters as its settings that differ from the defaults: a new option, at its default, leaves
    the finished runs' keys (and so the committed cache) valid. A changed default is a change to the code
    that can move a run's numbers, as any other: raise ``LAB_VERSION``.
    """
    config = load_config(None, LAB + ["data.train=WORLD", f"train.epochs={epochs}", f"train.seed={seed}", *overrides]).to_dict()
    spec = {"world": datasets.fingerprints[trained_on], "tested_on": {name: datasets.fingerprints[name] for name in datasets.worlds},
            "config": changed_settings(config, Config().to_dict()), "variogram": variogram, "lab_version": LAB_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def changed_settings(config: dict, defaults: dict) -> dict:
    """The entries of a nested ``config`` dict that differ from ``defaults`` (sections kept only where changed)."""
    out = {}
    for key, value in config.items():
        default = defaults.get(key, object())
        if isinstance(value, dict) and isinstance(default, dict):
            inner = changed_settings(value, default)
            if inner:
                out[key] = inner
        elif value != default:
            out[key] = value
    return out


FIGURES = ("accuracy", "median_km", "mean_km", "geoscore")  # of each evaluation set, kept per run


def cached_run(world: Path, eval_stores: dict[str, Path], runs: Path, key: str, overrides: list[str], seed: int, epochs: int,
               variogram: Path, log) -> dict:
    """The run's figures and per-photo errors on each evaluation set, trained now or read back from the cache."""
    done = runs / key / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        with np.load(runs / key / "errors.npz") as errors:
            result["errors_km"] = {name: errors[name] for name in errors.files}
        return result
    work = runs / key / "work"
    shutil.rmtree(work, ignore_errors=True)  # a run cut off in the middle starts over
    start = time.perf_counter()
    report = train_and_evaluate(world, work, overrides, epochs, seed, variogram=variogram, progress=False, eval_stores=eval_stores)
    errors = {name: r["errors_km"].astype(np.float64) for name, r in report["sets"].items()}
    with atomic_path(runs / key / "errors.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **errors)
    result = {"overrides": overrides, "seed": seed, "epochs": epochs, "commit": current_commit(),
              "sets": {name: {k: r[k] for k in FIGURES} for name, r in report["sets"].items()},
              "epoch_loss": report["epoch_loss"], "seconds": time.perf_counter() - start}
    shutil.rmtree(work, ignore_errors=True)  # checkpoints and the model: the study keeps figures and errors only
    write_json(done, result)  # written last: its presence marks the run finished
    log(f"  trained in {result['seconds']:.0f} s")
    result["errors_km"] = errors
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


def variance_components(method: np.ndarray, anchor: np.ndarray, threshold: float) -> dict:
    """Where the noise of a paired accuracy difference at ``threshold`` comes from, from (seeds, photos) errors.

    A two-way random-effects model of each photo's difference d_si = mu + a_s + b_i + e_si (in points):
    seed-to-seed variance of a_s (training noise), photo variance of b_i (photos on which one loss is
    consistently better) and the residual e_si (a photo flipping between right and wrong from one seed to
    the next), from the ANOVA mean squares.
    """
    d = 100.0 * ((method <= threshold).astype(float) - (anchor <= threshold).astype(float))
    s, n = d.shape
    if s < 2:
        raise GeovarioError("variance components need at least two seeds")
    seed_means, photo_means = d.mean(axis=1), d.mean(axis=0)
    residual = d - seed_means[:, None] - photo_means[None, :] + d.mean()
    ms_error = float((residual**2).sum() / ((s - 1) * (n - 1)))
    ms_seed, ms_photo = n * float(seed_means.var(ddof=1)), s * float(photo_means.var(ddof=1))
    return {"seed": max(0.0, (ms_seed - ms_error) / n), "photo": max(0.0, (ms_photo - ms_error) / s), "residual": ms_error,
            "mean": float(d.mean()), "seeds": s, "photos": n}


# The paired bootstrap resamples seeds and photos at once (the "pigeonhole" bootstrap, Owen 2007, Ann. Appl. Stat.
# 1(2)). It counts the residual three times: in each seed's mean, in the photos' means, and again in how a photo
# resample moves each seed's mean differently. Its intervals are therefore wider than the spread of repeated
# studies, most where the residual dominates, as it does here (benchmarks/results/study-power.md).
BOOTSTRAP_RESIDUAL_COUNT = 3


def half_width(components: dict, seeds: int, photos: int, bootstrap: bool = True) -> float:
    """Predicted 95% half-width (points) of a paired difference with ``seeds`` seeds and ``photos`` test photos:
    of the study's bootstrap interval, or (``bootstrap=False``) of the spread of the mean over repeated studies."""
    count = BOOTSTRAP_RESIDUAL_COUNT if bootstrap else 1
    variance = components["seed"] / seeds + components["photo"] / photos + count * components["residual"] / (seeds * photos)
    return float(1.96 * np.sqrt(variance))


def _train_in_worker(threads: int, *args) -> str:
    """One run in a worker process of ``run_study(jobs > 1)``, on ``threads`` cores; returns its key."""
    import torch

    torch.set_num_threads(threads)
    cached_run(*args, log=lambda text: None)
    return args[3]


def _train_in_parallel(tasks: list[tuple], jobs: int, log) -> None:
    """``tasks`` (name, seed, cached_run arguments) in ``jobs`` worker processes, each on its share of the cores.

    Each run writes its result atomically, as in the serial path, and gives the same errors as in-process
    (tests/test_study.py).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from geovario.machine import cores_per_process

    threads = cores_per_process(jobs)
    log(f"training {len(tasks)} runs in {jobs} processes of {threads} thread(s) each")
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, threads, *arguments): (name, seed) for name, seed, arguments in tasks}
        for done, future in enumerate(as_completed(futures), 1):
            future.result()  # a failed run fails the study, with its own error
            name, seed = futures[future]
            log(f"  [{done}/{len(tasks)}] finished {name}, seed {seed}")


def prepare_worlds(out: Path, presets: tuple[str, ...], world_configs: dict | None, log) -> dict[str, Path]:
    """``out/worlds/<preset>``, simulated where missing, all on the default Earth (or on ``world_configs``' own)."""
    from geovario.lab.world import preset, simulate

    worlds = {}
    for name in presets:
        worlds[name] = out / "worlds" / name
        if not (worlds[name] / "test").is_dir():
            log(f"simulating the {name} dataset into {worlds[name]}")
            simulate(worlds[name], (world_configs or {}).get(name) or preset(name), progress=False)
    return worlds


def run_study(out: str | Path, worlds: dict[str, Path] | None = None, seeds: int = POWER_SEEDS, other_seeds: int = OTHER_SEEDS,
              gallery_seeds: int = GALLERY_SEEDS, sweep_seeds: int = SWEEP_SEEDS, epochs: int = LAB_EPOCHS,
              world_configs: dict | None = None, arms: list[Arm] | None = None, jobs: int = 1, runs_dir: Path | None = None, presets: tuple[str, ...] = PRESETS, cached_only: bool = False) -> dict:
    """Run (or resume) the study into ``out``; writes study.json, study.md and the plots.

    ``worlds`` maps each preset to a world from ``geovario simulate`` (default: simulate them into
    ``out/worlds``); they must share one Earth. ``runs_dir`` is the run cache (default ``out/runs``).
    ``jobs`` > 1 trains the missing runs in that many processes at once (the cores shared among them).
    ``cached_only`` trains nothing and summarises the finished runs (a study still under way).
    Returns the summary, study.md's text, study.json's record and ``runs``: per dataset, arm and seed, each
    run's figures and per-photo errors.
    """
    from geovario.data.store import FeatureStore
    from geovario.train.build import store_variogram

    out = Path(out)
    output_dir(out)

    def log(text: str) -> None:
        print(text, flush=True)

    datasets = Datasets.open(worlds or prepare_worlds(out, presets, world_configs, log))
    runs_dir = Path(runs_dir) if runs_dir is not None else out / "runs"
    variograms, plans = {}, {}
    keys = {}  # (dataset, arm name, seed) -> run key; arms that share settings share a run
    tasks, order = {}, {}  # run key -> (label, seed, cached_run arguments), and the order it trains in
    for trained_on, world in datasets.worlds.items():
        store = FeatureStore(world / "train")
        variograms[trained_on] = out / f"variogram-{trained_on}.json"
        if not variograms[trained_on].is_file():
            if cached_only:  # nothing has run here: there is nothing to summarise, and nothing to fit for
                raise GeovarioError(f"no finished run on {trained_on} in {runs_dir} ({variograms[trained_on].name} missing): "
                                    "nothing to summarise")
            store_variogram(store).save(variograms[trained_on])
        text = variograms[trained_on].read_text()
        chosen = arms if arms is not None else plan(seeds, other_seeds, gallery_seeds, sweep_seeds, len(store))
        anchor = Arm(chosen[0].group, chosen[0].name, chosen[0].overrides, sorted({s for arm in chosen for s in arm.seeds}))
        plans[trained_on] = [anchor, *chosen[1:]]  # the anchor trains every seed any arm uses
        for index, arm in enumerate(plans[trained_on]):
            for seed in arm.seeds:
                key = keys[(trained_on, arm.name, seed)] = run_key(datasets, trained_on, arm.overrides, seed, epochs, text)
                tasks.setdefault(key, (f"{arm.name} on {trained_on}", seed, (world, datasets.eval_stores(trained_on), runs_dir, key,
                                                                             arm.overrides, seed, epochs, variograms[trained_on])))
                # Arm by arm and seed by seed across the datasets, in stages: a study cut short has the powered
                # comparison on every dataset first.
                order.setdefault(key, (training_stage(arm), index, seed))
    finished = {key for key in tasks if (runs_dir / key / "result.json").is_file()}
    log(f"{len(tasks)} runs, {len(finished)} cached")
    planned = len(tasks)
    if cached_only:
        plans = {trained_on: _finished_seeds(arms_here, lambda arm, seed: keys[(trained_on, arm.name, seed)] in finished)
                 for trained_on, arms_here in plans.items()}
        for trained_on, arms_here in plans.items():
            if not arms_here[0].seeds:
                raise GeovarioError(f"no finished run of {arms_here[0].name} on {trained_on} in {runs_dir}: nothing to summarise")
        tasks = {key: task for key, task in tasks.items() if key in finished}
    elif jobs > 1 and len(finished) < len(tasks):
        _train_in_parallel([tasks[key] for key in sorted(tasks, key=order.get) if key not in finished], jobs, log)
    results = {}
    for count, key in enumerate(sorted(tasks, key=order.get), 1):
        name, seed, arguments = tasks[key]
        log(f"[{count}/{len(tasks)}] {name}, seed {seed}: {'cached' if (runs_dir / key / 'result.json').is_file() else 'training'}")
        results[key] = cached_run(*arguments, log=log)
    summary, runs = {}, {}
    for trained_on, arms_here in plans.items():
        runs[trained_on] = {arm.name: {seed: results[keys[(trained_on, arm.name, seed)]] for seed in arm.seeds} for arm in arms_here}
        summary[trained_on] = summarize(arms_here, runs[trained_on], arms_here[0].name)
    commits = sorted({r["commit"] for r in results.values()})
    record = {"commit": current_commit(), "runs_finished": len(tasks), "runs_planned": planned, "run_commits": commits,
              "lab_version": LAB_VERSION, "epochs": epochs, "lab": LAB,
              "worlds": {name: {"path": str(w), "fingerprint": datasets.fingerprints[name],
                                "config": json.loads((w / "truth.json").read_text())["config"],
                                "variogram": json.loads(variograms[name].read_text())} for name, w in datasets.worlds.items()},
              "verdicts": verdicts(runs), "results": summary}
    write_json(out / "study.json", record)
    markdown = study_markdown(record)
    atomic_write_bytes(out / "study.md", markdown.encode())
    from geovario.lab.study_plots import plot_differences, plot_sweeps

    plot_sweeps(summary, out)
    plot_differences(summary, out)
    plot_differences(summary, out, ("beyond",), "beyond-paper", also=(PAPER,))
    return {"results": summary, "markdown": markdown, "record": record, "runs": runs}


def _finished_seeds(arms: list[Arm], finished) -> list[Arm]:
    """For a study under way: each arm on its finished seeds that the anchor (the first arm) has too; arms with none
    are left out."""
    anchor_seeds = {s for s in arms[0].seeds if finished(arms[0], s)}
    kept = [Arm(a.group, a.name, a.overrides, [s for s in a.seeds if finished(a, s) and s in anchor_seeds], a.params) for a in arms]
    return [kept[0]] + [arm for arm in kept[1:] if arm.seeds]


def summarize(arms: list[Arm], by_arm: dict[str, dict[int, dict]], anchor_name: str) -> dict[str, list[dict]]:
    """Per evaluation set, one row per arm: every seed's figures, their mean and std, and the paired differences
    against the anchor (and against the paper's loss, for the other losses) on the same seeds."""
    rng = np.random.default_rng(0)
    sets = list(next(iter(by_arm[anchor_name].values()))["sets"])
    out = {}
    for name in sets:
        rows = []
        for arm in arms:
            runs = [by_arm[arm.name][s] for s in arm.seeds]
            errors = np.stack([r["errors_km"][name] for r in runs])
            accuracy = {str(t): [r["sets"][name]["accuracy"][str(t)] for r in runs] for t in THRESHOLDS}
            row = {"group": arm.group, "name": arm.name, "overrides": arm.overrides, "seeds": arm.seeds, "params": arm.params,
                   "per_seed": [{"seed": s, "commit": r["commit"], **r["sets"][name], "epoch_loss": r["epoch_loss"]}
                                for s, r in zip(arm.seeds, runs)],
                   "accuracy_mean": {t: float(np.mean(v)) for t, v in accuracy.items()},
                   "accuracy_std": {t: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for t, v in accuracy.items()},
                   "median_km": float(np.mean([r["sets"][name]["median_km"] for r in runs])),
                   "geoscore": float(np.mean([r["sets"][name]["geoscore"] for r in runs]))}
            def paired(other: str) -> dict | None:
                """On the seeds both arms have (all of them, once a study is complete)."""
                both = [i for i, s in enumerate(arm.seeds) if s in by_arm[other]]
                base = [by_arm[other][arm.seeds[i]]["errors_km"][name] for i in both]
                return paired_bootstrap(errors[both], np.stack(base), rng) if both else None

            row["vs_anchor"] = paired(anchor_name) if arm.name != anchor_name else None
            # Every other loss, the thesis's and those beyond the paper, against the paper's loss too.
            row["vs_paper"] = (paired(PAPER) if arm.group in ("losses", "beyond") and arm.name not in (anchor_name, PAPER) and PAPER in by_arm
                               else None)
            rows.append(row)
        out[name] = rows
    return out


def chosen_on_validation(rows_val: list[dict], group_prefix: str = "sweep") -> str | None:
    """The sweep point with the best mean validation difference against InfoNCE at 25 km (ties: the first)."""
    sweep = [row for row in rows_val if row["group"].startswith(group_prefix) and row["vs_anchor"]]
    return max(sweep, key=lambda row: row["vs_anchor"]["acc_25km"]["mean"])["name"] if sweep else None


def _cell(diff: dict, digits: int = 2) -> str:
    mark = " *" if diff["low"] > 0 or diff["high"] < 0 else ""
    return f"{diff['mean']:+.{digits}f} [{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}]{mark}"


def _tables(rows: list[dict], anchor_name: str) -> str:
    lines = ["| Configuration | seeds | " + " | ".join(f"{t} km" for t in THRESHOLDS) + " | Median km | GeoScore |",
             "|---|---:|" + "---:|" * (len(THRESHOLDS) + 2)]
    for row in rows:
        cells = [f"{row['accuracy_mean'][str(t)]:.2f} ± {row['accuracy_std'][str(t)]:.2f}" for t in THRESHOLDS]
        lines.append(f"| {row['name']} | {len(row['seeds'])} | " + " | ".join(cells) + f" | {row['median_km']:.1f} | {row['geoscore']:.0f} |")
    text = "Accuracy in % (d ≤ t), mean ± sample std over seeds.\n\n" + "\n".join(lines)
    for key, against in (("vs_anchor", anchor_name), ("vs_paper", PAPER)):
        lines = ["| Configuration | seeds | " + " | ".join(f"Δ {t} km" for t in THRESHOLDS) + " | Δ GeoScore |",
                 "|---|---:|" + "---:|" * (len(THRESHOLDS) + 1)]
        lines += [f"| {row['name']} | {len(row['seeds'])} | " + " | ".join(_cell(row[key][f'acc_{t}km']) for t in THRESHOLDS)
                  + f" | {_cell(row[key]['geoscore'], 1)} |" for row in rows if row[key] is not None]
        if len(lines) > 2:
            text += (f"\n\nPaired differences against {against} on the same seeds, in percentage points (GeoScore in points): "
                     f"mean [95% bootstrap interval over seeds and test photos]; * marks an interval that excludes 0.\n\n" + "\n".join(lines))
    return text


def study_markdown(record: dict) -> str:
    """study.md: per training dataset, its own test photos and the other datasets' ones."""
    parts = [f"Commit of this summary: {record['commit']}; runs trained at: {', '.join(record['run_commits'])}; "
             f"lab version {record['lab_version']}, {record['epochs']} epochs per run."]
    if record["runs_finished"] < record["runs_planned"]:
        parts.append(f"**A study under way**: {record['runs_finished']} of its {record['runs_planned']} runs have finished; each arm is "
                     "summarised on its finished seeds, and paired with InfoNCE and the paper's loss on the seeds they share.")
    if record.get("verdicts"):
        parts.append("## What the paper and the thesis report, and what the lab finds\n\n" + verdict_markdown(record["verdicts"]))
    for trained_on, sets in record["results"].items():
        world = record["worlds"][trained_on]
        variogram = world["variogram"]
        parts.append(f"## Trained on {trained_on}\n\nWorld fingerprint {world['fingerprint'][:16]}. Variogram (frozen fit on the "
                     f"training features): {variogram['model']}, nugget {variogram['nugget']:.3f}, partial sill {variogram['psill']:.3f}, "
                     f"range {variogram['range_km']:.0f} km.")
        anchor_name = next(row["name"] for row in sets["test"] if row["vs_anchor"] is None)
        chosen = chosen_on_validation(sets["val"]) if "val" in sets else None
        if chosen:
            row = next(r for r in sets["test"] if r["name"] == chosen)
            points = sum(r["group"].startswith("sweep") and r["vs_anchor"] is not None for r in sets["val"])
            parts.append(f"Sweep point chosen on the validation photos (best Δ at 25 km, among the {points} sweep points with "
                         f"finished runs): {chosen}; on test: "
                         f"{_cell(row['vs_anchor']['acc_25km'])} at 25 km, {_cell(row['vs_anchor']['acc_200km'])} at 200 km.")
        for name, rows in sets.items():
            if name == "val":
                continue
            tested = trained_on if name == "test" else name.split(":", 1)[1]
            parts.append(f"### Tested on {tested} ({'its own test photos' if name == 'test' else 'the other dataset'})\n\n"
                         + _tables(rows, anchor_name))
    return "\n\n".join(parts) + "\n"


# What the paper and the thesis work log report, each checked in the lab. (claim, source, trained on, tested on,
# method arm, baseline arm, measure, the claimed sign: +1 better, -1 worse, 0 no figure given).
WEIGHTED, WEIGHTED2 = "hcl_weighted (thesis Weighted)", "hcl_debiased (thesis Weighted2)"
TRIPLET_MIXED, TRIPLET_FAR = "triplet, mixed gallery negatives (thesis)", "triplet, far gallery negatives (thesis)"
NEIGHBOURS, PENALTY, NO_NOISE = "infonce, neighbour negatives (thesis)", "semivariogram penalty (thesis)", "infonce, no GPS noise"
FINDINGS = [
    ("1", "the paper's loss beats GeoCLIP at 25 km on OSV5M (+1.7)", "paper", "osv5m", "test", PAPER, ANCHOR, "acc_25km", 1),
    ("1", "… and at 200 km (+2.0)", "paper", "osv5m", "test", PAPER, ANCHOR, "acc_200km", 1),
    ("2", "the thesis's final penalty against GeoCLIP, 25 km (no figure in the work log)", "thesis code", "osv5m", "test", PENALTY, ANCHOR, "acc_25km", 0),
    ("2", "… 200 km", "thesis code", "osv5m", "test", PENALTY, ANCHOR, "acc_200km", 0),
    ("3", "Weighted beats GeoCLIP at 1 km, trained on OSV5M, tested on im2gps3k", "work log 15.01.2025", "osv5m", "test:mp16", WEIGHTED, ANCHOR, "acc_1km", 1),
    ("3", "… and at 2,500 km", "work log 15.01.2025", "osv5m", "test:mp16", WEIGHTED, ANCHOR, "acc_2500km", 1),
    ("3", "… but loses on OSV5M's own test set (25 km)", "work log 15.01.2025", "osv5m", "test", WEIGHTED, ANCHOR, "acc_25km", -1),
    ("3", "Weighted trained on MP-16 beats GeoCLIP at 2,500 km", "work log 15.01.2025", "mp16", "test", WEIGHTED, ANCHOR, "acc_2500km", 1),
    ("4", "Weighted2 is worse than GeoCLIP (OSV5M → im2gps3k, 25 km)", "work log 15.01.2025", "osv5m", "test:mp16", WEIGHTED2, ANCHOR, "acc_25km", -1),
    ("4", "… and worse than Weighted (25 km)", "work log 15.01.2025", "osv5m", "test:mp16", WEIGHTED2, WEIGHTED, "acc_25km", -1),
    ("5", "triplet with near + far negatives beats far-only at 1 km", "work log 12.2024", "mp16", "test", TRIPLET_MIXED, TRIPLET_FAR, "acc_1km", 1),
    ("5", "… but stays behind GeoCLIP (25 km)", "work log 12.2024", "mp16", "test", TRIPLET_MIXED, ANCHOR, "acc_25km", -1),
    ("6", "InfoNCE with 64 near/far negatives is worse than GeoCLIP on im2gps3k (25 km)", "work log 17.12.2024", "mp16", "test", NEIGHBOURS, ANCHOR, "acc_25km", -1),
    ("8", "to-do: semivariogram logits, get_penalty, against GeoCLIP (25 km)", "work log 28.01.2025", "osv5m", "test",
     "semivariogram get_penalty (thesis)", ANCHOR, "acc_25km", 0),
    ("8", "… get_penalty3", "work log 28.01.2025", "osv5m", "test", "semivariogram get_penalty3 (thesis)", ANCHOR, "acc_25km", 0),
    ("9", "to-do: the semivariogram as Weighted's beta, get_penalty2, against Weighted (25 km)", "work log 28.01.2025", "osv5m",
     "test", "semivariogram get_penalty2 (thesis)", WEIGHTED, "acc_25km", 0),
    ("9", "… get_penalty4", "work log 28.01.2025", "osv5m", "test", "semivariogram get_penalty4 (thesis)", WEIGHTED, "acc_25km", 0),
    ("10", "to-do: get_negatives favours 1 km; combined with Weighted (weighted_neg) against Weighted, 1 km",
     "work log 28.01.2025", "osv5m", "test:mp16", WEIGHTED_NEG, WEIGHTED, "acc_1km", 0),
    ("10", "… weighted_neg against GeoCLIP, 1 km", "work log 28.01.2025", "osv5m", "test:mp16", WEIGHTED_NEG, ANCHOR, "acc_1km", 0),
    ("11", "to-do: self-supervised (ssl) against GeoCLIP (25 km)", "work log 28.01.2025", "osv5m", "test", SSL, ANCHOR, "acc_25km", 0),
    ("7", "GPS noise gives a lower final training loss", "work log 11.2024", "mp16", "test", ANCHOR, NO_NOISE, "final_loss", -1),
    ("7", "… and faster convergence (loss after the first epoch)", "work log 11.2024", "mp16", "test", ANCHOR, NO_NOISE, "first_loss", -1),
]


def _loss_difference(method: dict, base: dict, seeds: list[int], epoch: int, rng: np.random.Generator) -> dict:
    """Mean paired difference of the training loss at ``epoch`` over seeds, with a 95% bootstrap interval over seeds."""
    diff = np.array([method[s]["epoch_loss"][epoch] - base[s]["epoch_loss"][epoch] for s in seeds])
    boot = diff[rng.integers(0, len(diff), (2000, len(diff)))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high)}


def verdicts(runs: dict) -> list[dict]:
    """Each finding of FINDINGS measured in the lab: the paired difference on the seeds both arms have, and whether
    its 95% interval agrees with the claimed sign, contradicts it, or cannot tell."""
    rng = np.random.default_rng(0)
    rows = []
    for number, claim, source, trained_on, tested_on, method, base, measure, sign in FINDINGS:
        arms = runs.get(trained_on, {})
        if method not in arms or base not in arms:
            continue
        seeds = sorted(set(arms[method]) & set(arms[base]))
        if measure.endswith("_loss"):
            diff = _loss_difference(arms[method], arms[base], seeds, -1 if measure == "final_loss" else 0, rng)
        else:
            stack = lambda arm: np.stack([arms[arm][s]["errors_km"][tested_on] for s in seeds])  # noqa: E731
            diff = paired_bootstrap(stack(method), stack(base), rng)[measure]
        decided = 1 if diff["low"] > 0 else -1 if diff["high"] < 0 else 0
        lab = "no difference" if decided == 0 else ("better" if (decided > 0) != measure.endswith("_loss") else "worse")
        agreement = ("—" if sign == 0 else "agrees" if decided == sign else "cannot tell" if decided == 0 else "disagrees")
        rows.append({"finding": number, "claim": claim, "source": source, "trained_on": trained_on, "tested_on": tested_on,
                     "method": method, "baseline": base, "measure": measure, "seeds": len(seeds), "difference": diff,
                     "lab": lab, "agreement": agreement})
    return rows


def verdict_markdown(rows: list[dict]) -> str:
    lines = ["| # | Finding (source) | Trained on → tested on | Lab: Δ [95% interval], seeds | Lab says | Agreement |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        tested = row["trained_on"] if row["tested_on"] == "test" else row["tested_on"].split(":", 1)[1]
        unit = " (loss)" if row["measure"].endswith("_loss") else " pts"
        lines.append(f"| {row['finding']} | {row['claim']} ({row['source']}) | {row['trained_on']} → {tested} | "
                     f"{_cell(row['difference'], 3 if unit == ' (loss)' else 2)}{unit}, {row['seeds']} | {row['lab']} | {row['agreement']} |")
    return "\n".join(lines)
