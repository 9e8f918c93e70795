"""`geovario demo`: the whole method on a simulated world, in minutes on a laptop CPU.

1. Simulate a world (geovario.lab.world). 2. Estimate and plot its semivariogram. 3. Train GeoCLIP's
InfoNCE and the semivariogram-weighted loss on it, same model, seed and schedule. 4. Evaluate both
on the test photos with the train positions as the gallery. 5. Print and save the comparison.
"""

from __future__ import annotations

import time
from pathlib import Path

from geovario.atomic import atomic_write_bytes, output_dir
from geovario.data.store import FeatureStore
from geovario.lab.experiments import LAB_EPOCHS, train_and_evaluate
from geovario.jsonio import write_json
from geovario.report import markdown_table, plot_cumulative_error, plot_error_map
from geovario.lab.world import WorldConfig, simulate
from geovario.variogram import empirical_for_loss, fit_for_loss
from geovario.variogram.plot import plot_variograms


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    output_dir(out)
    # The calibrated world (geovario.lab.world), smaller than the default's 50,000 photos so that it runs in minutes.
    world_config = WorldConfig(n_train=4000, n_val=500, n_test=500, dim=64, seed=seed) if quick else WorldConfig(n_train=20_000, n_val=1000, n_test=2000, dim=128, seed=seed)
    epochs = 3 if quick else LAB_EPOCHS
    start = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {text}", flush=True)

    say(f"1/5 simulating a world: {world_config.n_train:,} train and {world_config.n_test:,} test photos at MP-16 photo positions, "
        f"{world_config.dim}-d features, photos showing from all to none of their place")
    simulate(out / "world", world_config, overwrite=True)  # the demo's own folder: a rerun starts afresh
    say("2/5 estimating the semivariogram of the training features")
    train_store = FeatureStore(out / "world" / "train")
    empirical = empirical_for_loss(train_store.features(), train_store.gps)
    variogram = fit_for_loss(empirical)  # stable model, log-spaced lags, every bin weighted alike
    variogram.save(out / "variogram.json")
    plot_variograms([("simulated world", empirical, variogram)], out / "variogram.png", log_x=True)
    say(f"    {variogram}")
    reports = {}
    for k, (name, overrides) in enumerate((("infonce", ["loss.name=infonce"]), ("semivariogram", ["loss.name=semivariogram"])), 3):
        say(f"{k}/5 training {name} ({epochs} epochs)" if k == 3 else f"    training {name} ({epochs} epochs)")
        reports[name] = train_and_evaluate(out / "world", out / "runs" / name, overrides, epochs, seed,
                                           variogram=out / "variogram.json", progress=progress)
    say("4/5 evaluated both on the test photos, gallery = the training positions")
    plot_cumulative_error({name: r["errors_km"] for name, r in reports.items()}, [1, 25, 200, 750, 2500], out / "cumulative_error.png")
    plot_error_map(reports["semivariogram"]["true_latlon"], reports["semivariogram"]["errors_km"], out / "error_map_semivariogram.png")
    clean = {name: {k: v for k, v in r.items() if k not in ("errors_km", "true_latlon")} for name, r in reports.items()}
    table = markdown_table(list(clean.items()))
    write_json(out / "report.json", {"world": str(out / "world"), "variogram": variogram.to_dict(), "runs": clean})
    atomic_write_bytes(out / "report.md", (table + "\n").encode())
    say("5/5 results (accuracy in %, d <= t):")
    print(table)
    print(f"\nwrote {out / 'report.md'}, report.json, variogram.png, cumulative_error.png, error_map_semivariogram.png")
    return clean
