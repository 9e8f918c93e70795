"""`geovario bench losses`: every loss configuration x seed on one simulated world, mean +- std.

Includes the ablation the paper's reviewers would ask for: hard-negative up-weighting only,
false-negative suppression only, both (the paper), and neither (s1 = s2 = 0, i.e. plain InfoNCE
through the same code path).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from geovario.atomic import atomic_write_bytes, output_dir
from geovario.errors import GeovarioError
from geovario.lab.experiments import LAB_EPOCHS, train_and_evaluate
from geovario.jsonio import write_json
from geovario.lab.world import WorldConfig, simulate
from geovario.train.build import store_variogram

QUEUE_SV = ["loss.name=semivariogram", "negatives.source=queue"]
DEFAULT_RUNS = {
    "infonce (GeoCLIP)": ["loss.name=infonce"],
    "semivariogram: hard up + false down (paper)": QUEUE_SV,
    "semivariogram: hard up only": QUEUE_SV + ["loss.s2=0"],
    "semivariogram: false down only": QUEUE_SV + ["loss.s1=0"],
    "semivariogram: neither (s1 = s2 = 0)": QUEUE_SV + ["loss.s1=0", "loss.s2=0"],
    "semivariogram: penalty (thesis)": QUEUE_SV + ["loss.mode=penalty"],
    "hcl_weighted (thesis Weighted)": ["loss.name=hcl_weighted"],
    "hcl_debiased (thesis Weighted2)": ["loss.name=hcl_debiased"],
    "infonce, neighbour negatives (thesis)": ["loss.name=infonce", "negatives.source=gallery", "negatives.selection=mixed", "negatives.k=64"],
    "triplet, mixed negatives (thesis)": ["loss.name=triplet", "negatives.source=gallery", "negatives.selection=mixed", "negatives.k=64"],
}
SWEEP_KEYS = {"theta1": "loss.theta1_km", "theta2": "loss.theta2_km", "s1": "loss.s1", "s2": "loss.s2", "mask": "loss.mask_km"}
METRICS = [("1 km", lambda r: r["accuracy"]["1"]), ("25 km", lambda r: r["accuracy"]["25"]), ("200 km", lambda r: r["accuracy"]["200"]),
           ("750 km", lambda r: r["accuracy"]["750"]), ("2500 km", lambda r: r["accuracy"]["2500"]),
           ("Median km", lambda r: r["median_km"]), ("GeoScore", lambda r: r["geoscore"])]


def config_runs(paths: list[Path]) -> dict[str, list[str]]:
    """The loss and negatives sections of YAML configs, as overrides on the benchmark's model and schedule."""
    import yaml

    runs = {}
    for path in paths:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise GeovarioError(f"{path}: cannot read config ({e})") from None
        overrides = []
        for section in ("loss", "negatives"):
            for key, value in (values.get(section) or {}).items():
                if key in ("variogram",):
                    continue
                overrides.append(f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
        runs[values.get("name", Path(path).stem)] = overrides
    return runs


def sweep_runs(specs: list[str]) -> dict[str, list[str]]:
    """``theta1=100,500 s1=0.1,1`` -> one semivariogram run per combination."""
    axes = []
    for spec in specs:
        key, _, values = spec.partition("=")
        if key not in SWEEP_KEYS or not values:
            raise GeovarioError(f"--sweep {spec!r}: expected KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}")
        try:
            axes.append([(key, float(v)) for v in values.split(",")])
        except ValueError:
            raise GeovarioError(f"--sweep {spec!r}: values must be numbers") from None
    return {"semivariogram: " + ", ".join(f"{k}={v:g}" for k, v in combo): QUEUE_SV + [f"{SWEEP_KEYS[k]}={v}" for k, v in combo]
            for combo in itertools.product(*axes)}


def bench_losses(out: str | Path, runs: dict[str, list[str]], seeds: int = 3, world: Path | None = None,
                 world_config: WorldConfig | None = None, epochs: int = LAB_EPOCHS, progress: bool = False,
                 keep_checkpoints: bool = False) -> dict:
    out = Path(out)
    output_dir(out)
    if world is None:
        world = out / "world"
        if not (world / "train").is_dir():
            print(f"simulating the world into {world}", flush=True)
            simulate(world, world_config or WorldConfig())
    from geovario.data.store import FeatureStore

    store = FeatureStore(world / "train")
    variogram = store_variogram(store)
    variogram.save(out / "variogram.json")
    results: dict[str, list[dict]] = {}
    for name, overrides in runs.items():
        for seed in range(seeds):
            print(f"{name}, seed {seed}", flush=True)
            report = train_and_evaluate(world, out / "runs" / f"{_slug(name)}-seed{seed}", overrides, epochs, seed,
                                        variogram=out / "variogram.json", progress=progress, keep_checkpoints=keep_checkpoints)
            results.setdefault(name, []).append({k: v for k, v in report.items() if k not in ("errors_km", "true_latlon")})
    table = summary_table(results)
    write_json(out / "losses.json", {"world": str(world), "seeds": seeds, "epochs": epochs, "variogram": variogram.to_dict(),
                                     "runs": {name: {"overrides": runs[name], "reports": reports} for name, reports in results.items()}})
    atomic_write_bytes(out / "losses.md", (table + "\n").encode())
    return {"table": table, "results": results}


def summary_table(results: dict[str, list[dict]]) -> str:
    head = ["Configuration", *(m for m, _ in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(METRICS)) + "|"]
    for name, reports in results.items():
        cells = []
        for label, get in METRICS:
            values = np.array([get(r) for r in reports], dtype=float)
            digits = 0 if label == "GeoScore" else 1 if label == "Median km" else 2
            cells.append(f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:60]
