"""How many seeds does the study need? Measure the noise of the paired difference between the paper's loss and
InfoNCE, split it into its sources, and choose the seeds so that every 95% interval at 25 and 200 km is at most
+-0.5 points (issue 25).

A pilot of ``--seeds`` seeds of the two arms on each dataset (the study's own runs: they are cached in the study's
run folder and reused by the full study) gives, per dataset, test set and threshold, the variance components of
each photo's difference d_si = mu + a_s + b_i + e_si (geovario.lab.study.variance_components): training seed
(a_s), photo (b_i) and residual. The study's bootstrap, which resamples seeds and photos at once, counts the
residual three times, so its interval's predicted half-width with S seeds and N test photos is
1.96 sqrt(var_a / S + var_b / N + 3 var_e / (S N)) (geovario.lab.study.half_width); the spread of the mean over
repeated studies is the same with 1 var_e, shown in brackets. The test photos per world are fixed by the world
(10,000); the script reports the smallest S whose bootstrap intervals meet the target on both datasets' own
test photos, and the cross-dataset figures beside them.

    python benchmarks/study_power.py --study benchmarks/results/study --seeds 4 --jobs 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from geovario.lab.study import ANCHOR, PAPER, PRESETS, SV, Arm, current_commit, half_width, prepare_worlds, run_study, variance_components

TARGET = 0.5
SEED_CHOICES = (4, 6, 8, 10, 12, 14, 16, 20)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("benchmarks/results/study"), help="the study folder (worlds, runs)")
    parser.add_argument("--seeds", type=int, default=4, help="pilot seeds per arm and dataset (default 4)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study-power.md"))
    args = parser.parse_args(argv)
    pilot = args.study / "power"
    pilot.mkdir(parents=True, exist_ok=True)
    for variogram in args.study.glob("variogram-*.json"):  # the study's own fits, so the pilot's runs are the study's
        shutil.copyfile(variogram, pilot / variogram.name)
    worlds = prepare_worlds(args.study, PRESETS, None, print)
    seeds = list(range(args.seeds))
    result = run_study(pilot, worlds, arms=[Arm("losses", ANCHOR, ["loss.name=infonce"], seeds), Arm("losses", PAPER, SV, seeds)],
                       jobs=args.jobs, runs_dir=args.study / "runs")
    for variogram in pilot.glob("variogram-*.json"):
        if not (args.study / variogram.name).is_file():
            shutil.copyfile(variogram, args.study / variogram.name)
    lines = [f"# How many seeds: the noise of the paper's loss against InfoNCE\n",
             f"Command: `python benchmarks/study_power.py --study {args.study} --seeds {args.seeds} --jobs {args.jobs}`, "
             f"at commit {current_commit()}. Pilot: {args.seeds} seeds of InfoNCE and of the paper's loss on each dataset, "
             f"tested on its own test photos and on the other dataset's.\n",
             "Variance components of a photo's paired difference (points²), from a two-way ANOVA over seeds × photos, and the "
             "predicted half-width of the study's 95% bootstrap interval with S seeds at this number of test photos "
             "(in brackets: of the spread over repeated studies):\n",
             "| trained on | tested on | threshold | observed Δ | seed | photo | residual | photos | "
             + " | ".join(f"S={s}" for s in SEED_CHOICES) + " |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(SEED_CHOICES)]
    needed = 0
    for trained_on, by_arm in result["runs"].items():
        for name in ("test", *(n for n in next(iter(by_arm[ANCHOR].values()))["errors_km"] if n.startswith("test:"))):
            for threshold in (25, 200):
                method = np.stack([by_arm[PAPER][s]["errors_km"][name] for s in seeds])
                anchor = np.stack([by_arm[ANCHOR][s]["errors_km"][name] for s in seeds])
                c = variance_components(method, anchor, threshold)
                widths = [half_width(c, s, c["photos"]) for s in SEED_CHOICES]
                spreads = [half_width(c, s, c["photos"], bootstrap=False) for s in SEED_CHOICES]
                if name == "test":
                    meets = [s for s, w in zip(SEED_CHOICES, widths) if w <= TARGET]
                    needed = max(needed, meets[0] if meets else np.inf)
                tested = trained_on if name == "test" else name.split(":", 1)[1]
                lines.append(f"| {trained_on} | {tested} | {threshold} km | {c['mean']:+.2f} | {c['seed']:.3f} | {c['photo']:.3f} | "
                             f"{c['residual']:.1f} | {c['photos']:,} | " + " | ".join(f"{w:.2f} ({r:.2f})" for w, r in zip(widths, spreads)) + " |")
    verdict = (f"\nSeeds needed for bootstrap intervals within ±{TARGET} at 25 and 200 km on both datasets' own test photos: **{needed}**."
               if np.isfinite(needed) else f"\nNo seed count up to {SEED_CHOICES[-1]} meets ±{TARGET} at this number of test photos.")
    lines.append(verdict)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
