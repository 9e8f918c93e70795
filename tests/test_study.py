"""The study: paired bootstrap intervals, and a killed or repeated study reuses the runs that finished."""

import json
import re
import shutil

import numpy as np
import pytest

from geovario.cli import main
from geovario.errors import GeovarioError
from geovario.lab.experiments import LAB_VERSION
from geovario.lab.study import (ANCHOR, HAVERSINE, PAPER, SV, WEIGHTED_NEG, Arm, Datasets, changed_settings,
                                chosen_on_validation, current_commit, half_width, paired_bootstrap, plan, run_key, run_study,
                                training_stage, variance_components, world_fingerprint)
from geovario.lab.world import preset, simulate


def test_paired_bootstrap_on_known_differences():
    rng = np.random.default_rng(0)
    # Method always within 1 km, anchor always 3,000 km off: +100 points at every threshold, no spread.
    exact = paired_bootstrap(np.zeros((3, 200)), np.full((3, 200), 3000.0), rng)
    assert exact["acc_25km"] == {"mean": 100.0, "low": 100.0, "high": 100.0}
    assert exact["geoscore"]["mean"] == pytest.approx(5000 * (1 - np.exp(-3000 / 1492.7)))
    # Independent photos: the method is right at 25 km with probability 0.6, the anchor with 0.5. The
    # interval must hold the true +10 points and have the width the binomial variance predicts.
    seeds, photos = 5, 4000
    method = np.where(rng.random((seeds, photos)) < 0.6, 10.0, 100.0)
    anchor = np.where(rng.random((seeds, photos)) < 0.5, 10.0, 100.0)
    diff = paired_bootstrap(method, anchor, rng)["acc_25km"]
    assert diff["low"] < 10.0 < diff["high"]
    assert diff["mean"] == pytest.approx(100 * ((method <= 25).mean() - (anchor <= 25).mean()))
    sd = 100 * np.sqrt(0.6 * 0.4 + 0.5 * 0.5)  # of one photo's difference
    expected_half_width = 1.96 * sd / np.sqrt(photos)  # photos resampled once for all seeds: ~ the one-seed width
    assert (diff["high"] - diff["low"]) / 2 == pytest.approx(expected_half_width, rel=0.35)


def test_paired_differences_count_an_error_at_a_threshold_as_within_it_as_evaluate_does():
    """Errors of exactly 1, 25, 200, 750 and 2,500 km are within those thresholds, as metrics.threshold_accuracy
    (what `geovario evaluate` reports) counts them; the anchor is twice as far and 1 m more. GeoScore differences
    are those of metrics.geoscore."""
    from geovario.metrics import geoscore, threshold_accuracy

    method = np.array([[1.0, 25.0, 200.0, 750.0, 2500.0]])
    anchor = 2 * method + 0.001
    diff = paired_bootstrap(method, anchor, np.random.default_rng(0), resamples=10)
    ours, theirs = threshold_accuracy(method[0]), threshold_accuracy(anchor[0])
    assert {k: diff[f"acc_{k}km"]["mean"] for k in ours} == pytest.approx({k: ours[k] - theirs[k] for k in ours})
    assert [diff[f"acc_{t}km"]["mean"] for t in (1, 25, 200, 750, 2500)] == pytest.approx([20.0] * 5)
    assert diff["geoscore"]["mean"] == pytest.approx(geoscore(method[0]) - geoscore(anchor[0]), rel=1e-12)
    swapped = paired_bootstrap(anchor, method, np.random.default_rng(0), resamples=10)  # now the anchor sits on them
    assert [swapped[f"acc_{t}km"]["mean"] for t in (1, 25, 200, 750, 2500)] == pytest.approx([-20.0] * 5)


def test_the_bootstrap_interval_holds_the_central_95_percent():
    """One photo and 60 seeds: resampling seeds, the mean GeoScore difference is close to normal with sd = the seeds'
    sd / sqrt(60), so the 2.5th and 97.5th percentiles lie 1.96 sd from the mean (the 5th would lie 1.64 sd away)."""
    rng = np.random.default_rng(7)
    method, anchor = rng.uniform(0, 3000, (60, 1)), np.zeros((60, 1))
    diff = paired_bootstrap(method, anchor, rng, resamples=20_000)["geoscore"]
    per_seed = 5000 * (np.exp(-method[:, 0] / 1492.7) - 1)
    sd = per_seed.std() / np.sqrt(60)
    assert diff["mean"] == pytest.approx(per_seed.mean(), rel=1e-9)
    assert (diff["high"] - diff["mean"]) / sd == pytest.approx(1.96, abs=0.1)
    assert (diff["mean"] - diff["low"]) / sd == pytest.approx(1.96, abs=0.1)


def test_plan_covers_the_study():
    arms = plan(seeds=10, other_seeds=3, gallery_seeds=2, sweep_seeds=1)
    names = [a.name for a in arms]
    assert names[:2] == [ANCHOR, PAPER] and len(set(names)) == len(names)
    assert {a.group for a in arms} == {"losses", "beyond", "noise", "ablation", "range", "refit", "sweep-theta", "sweep-s1", "sweep-s2"}
    assert sum(a.group == "sweep-theta" for a in arms) == 15 and sum(a.group.startswith("sweep-s") for a in arms) == 10
    seeds = {a.name: len(a.seeds) for a in arms}
    assert seeds[ANCHOR] == seeds[PAPER] == 10 and seeds["hcl_weighted (thesis Weighted)"] == 3
    assert seeds["triplet, far gallery negatives (thesis)"] == 2 and seeds["theta1=100, theta2=1"] == 1
    assert all(len(a.seeds) == 3 for a in arms if a.group in ("ablation", "range", "refit", "noise"))
    assert [len(a.seeds) for a in arms if a.group == "beyond"] == [10, 10, 10]  # powered as the paper's loss (issue 26)
    thesis = [a for a in arms if "get_penalty" in a.name or "weighted_neg" in a.name or a.name.startswith("ssl")]
    assert len(thesis) == 6 and all(len(a.seeds) == 3 for a in thesis)


@pytest.fixture(scope="module")
def tiny_worlds(tmp_path_factory):
    """The two datasets on one Earth, small enough that a run trains in a second."""
    root = tmp_path_factory.mktemp("study")
    sizes = dict(n_train=640, n_val=80, n_test=80, dim=16)
    simulate(root / "mp16", preset("mp16", locatability_a=2.0, locatability_b=1.0, **sizes), progress=False)
    simulate(root / "osv5m", preset("osv5m", **sizes), progress=False)
    return {"mp16": root / "mp16", "osv5m": root / "osv5m"}


ARMS = [Arm("losses", ANCHOR, ["loss.name=infonce"], [0, 1]),
        Arm("losses", PAPER, SV, [0, 1]),
        Arm("sweep-theta", "theta1=range, theta2=25", SV + ["loss.theta1_km=null", "loss.theta2_km=25.0"], [0],
            {"theta1": None, "theta2": 25.0})]


def test_a_rerun_reuses_finished_runs_and_a_retrained_run_gives_identical_numbers(tmp_path, tiny_worlds, capsys):
    first = run_study(tmp_path / "s", tiny_worlds, epochs=1, arms=ARMS)
    log = capsys.readouterr().out
    # Per dataset: InfoNCE and the paper on seeds 0 and 1; the sweep point is the paper's settings spelled out, so it
    # shares the paper's seed-0 run.
    assert "8 runs, 0 cached" in log and log.count(": training") == 8
    trained = re.findall(r"\[(\d)/8\] (.+) on (\w+), seed (\d): training", log)  # arm by arm, seed by seed across the datasets
    assert trained == [(str(count), arm, dataset, seed) for count, (arm, seed, dataset) in
                       enumerate(((a, s, d) for a in (ANCHOR, PAPER) for s in "01" for d in ("mp16", "osv5m")), 1)]
    runs = sorted((tmp_path / "s" / "runs").glob("*/result.json"))
    assert len(runs) == 8 and not list((tmp_path / "s" / "runs").glob("*/work"))  # no checkpoints left behind
    sets = first["results"]["osv5m"]
    assert set(sets) == {"val", "test", "test:mp16"} and set(first["results"]["mp16"]) == {"val", "test", "test:osv5m"}
    paper = next(row for row in sets["test"] if row["name"] == PAPER)
    assert paper["vs_anchor"]["acc_25km"]["low"] <= paper["vs_anchor"]["acc_25km"]["mean"] <= paper["vs_anchor"]["acc_25km"]["high"]
    for name in ("study.md", "study.json"):
        assert (tmp_path / "s" / name).is_file()
    for name in ("sweep_theta-mp16.png", "differences-osv5m.png", "beyond-paper-mp16.png"):
        assert (tmp_path / "s" / name).read_bytes()[:4] == b"\x89PNG"

    # Killed after some runs, or a run deleted to check it: a rerun retrains that one only, to identical numbers.
    victim = max(runs, key=lambda p: p.stat().st_mtime).parent
    errors_before = dict(np.load(victim / "errors.npz"))
    shutil.rmtree(victim)
    second = run_study(tmp_path / "s", tiny_worlds, epochs=1, arms=ARMS)
    log = capsys.readouterr().out
    assert log.count(": training") == 1 and log.count(": cached") == 7
    errors_after = dict(np.load(victim / "errors.npz"))
    assert errors_after.keys() == errors_before.keys()
    for name in errors_before:
        np.testing.assert_array_equal(errors_after[name], errors_before[name])
    assert json.dumps(second["results"]) == json.dumps(first["results"])

    # More seeds later: only the new seed trains, for each dataset.
    more = [Arm(a.group, a.name, a.overrides, [*a.seeds, 2] if a.group == "losses" else a.seeds, a.params) for a in ARMS]
    run_study(tmp_path / "s", tiny_worlds, epochs=1, arms=more)
    assert capsys.readouterr().out.count(": training") == 4


def test_study_json_records_every_seed_its_commit_and_the_worlds(tmp_path, tiny_worlds):
    result = run_study(tmp_path / "s", tiny_worlds, epochs=1, arms=ARMS[:2])
    record = json.loads((tmp_path / "s" / "study.json").read_text())
    assert record["commit"] == current_commit() and record["run_commits"] == [current_commit()]
    assert record["lab_version"] == LAB_VERSION
    for name, world in tiny_worlds.items():
        assert record["worlds"][name]["fingerprint"] == world_fingerprint(world)
        assert record["worlds"][name]["config"]["dataset"] == name
    row = next(r for r in record["results"]["mp16"]["test:osv5m"] if r["name"] == PAPER)
    assert [s["seed"] for s in row["per_seed"]] == [0, 1]
    for entry in row["per_seed"]:  # each seed's figures are those of its run, on the other dataset's test photos
        key = run_key(Datasets.open(tiny_worlds), "mp16", SV, entry["seed"], 1, (tmp_path / "s" / "variogram-mp16.json").read_text())
        run = json.loads((tmp_path / "s" / "runs" / key / "result.json").read_text())
        assert entry["accuracy"] == run["sets"]["test:osv5m"]["accuracy"] and entry["geoscore"] == run["sets"]["test:osv5m"]["geoscore"]
        errors = np.load(tmp_path / "s" / "runs" / key / "errors.npz")["test:osv5m"]
        assert len(errors) == 80 and entry["accuracy"]["200"] == pytest.approx(100 * np.mean(errors <= 200))
        assert len(entry["epoch_loss"]) == 1
    assert row["accuracy_mean"]["25"] == pytest.approx(np.mean([s["accuracy"]["25"] for s in row["per_seed"]]))
    assert result["record"] == record


def test_parallel_jobs_train_the_same_runs_as_one_process(tmp_path, tiny_worlds, capsys):
    serial = run_study(tmp_path / "serial", tiny_worlds, epochs=1, arms=ARMS[:2])
    parallel = run_study(tmp_path / "parallel", tiny_worlds, epochs=1, arms=ARMS[:2], jobs=2)
    log = capsys.readouterr().out
    assert "training 8 runs in 2 processes" in log
    assert sorted(int(n) for n in re.findall(r"\[(\d+)/8\] finished ", log)) == list(range(1, 9))
    keys = {p.parent.name for p in (tmp_path / "parallel" / "runs").glob("*/result.json")}
    assert keys == {p.parent.name for p in (tmp_path / "serial" / "runs").glob("*/result.json")} and len(keys) == 8
    for key in keys:  # each run trained in a worker gives the same per-photo errors as in-process
        a, b = np.load(tmp_path / "parallel" / "runs" / key / "errors.npz"), np.load(tmp_path / "serial" / "runs" / key / "errors.npz")
        for name in a.files:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-6)
    assert json.dumps(parallel["results"]) == json.dumps(serial["results"])
    # A run that fails in its worker fails the study, with the run's own error, and leaves no result behind.
    bad = Arm("losses", "a batch larger than the dataset", ["loss.name=infonce", "train.batch_size=1000"], [0])  # 640 photos
    capsys.readouterr()
    with pytest.raises(GeovarioError, match="batch"):
        run_study(tmp_path / "failing", tiny_worlds, epochs=1, arms=[ARMS[0], bad], jobs=2)
    assert len(list((tmp_path / "failing" / "runs").glob("*/result.json"))) == 4  # the anchor's runs finished
    assert "finished a batch larger" not in capsys.readouterr().out  # and the failed one is not logged as finished
    run_study(tmp_path / "parallel", tiny_worlds, epochs=1, arms=ARMS[:2], jobs=2)  # all cached: no worker starts
    assert "8 runs, 8 cached" in (log := capsys.readouterr().out) and "processes" not in log
    (tmp_path / "a-file").write_text("")
    with pytest.raises(GeovarioError, match="a-file"):  # an output folder that cannot be made: refused before training
        run_study(tmp_path / "a-file" / "study", tiny_worlds, epochs=1, arms=ARMS[:1])


def test_a_changed_world_reuses_nothing_and_worlds_on_two_earths_are_refused(tmp_path, tiny_worlds, capsys):
    run_study(tmp_path / "s", tiny_worlds, epochs=1, arms=ARMS[:1])
    other = tmp_path / "other-mp16"
    simulate(other, preset("mp16", n_train=640, n_val=80, n_test=60, dim=16), progress=False)  # fewer test photos
    changed = {"mp16": other, "osv5m": tiny_worlds["osv5m"]}
    shutil.copytree(tmp_path / "s" / "runs", tmp_path / "s2" / "runs")  # the first worlds' finished runs, offered
    capsys.readouterr()
    run_study(tmp_path / "s2", changed, epochs=1, arms=ARMS[:1])
    assert capsys.readouterr().out.count(": training") == 4  # osv5m's runs are tested on mp16's test photos too
    elsewhere = tmp_path / "elsewhere"
    simulate(elsewhere, preset("osv5m", n_train=640, n_val=80, n_test=80, dim=16, seed=1), progress=False)
    with pytest.raises(GeovarioError, match="drawn on one Earth"):
        run_study(tmp_path / "s3", {"mp16": tiny_worlds["mp16"], "osv5m": elsewhere}, epochs=1, arms=ARMS[:1])


def test_variance_components_predict_the_spread_of_repeated_studies():
    """The ANOVA components of one (seeds x photos) study predict the 95% half-width that 300 repeated studies
    show, for the design measured and for one with more seeds and photos. The studies are drawn with a known
    seed effect (a training seed moves the method's accuracy by N(0, 2) points), a photo effect (some photos
    favour the method) and independent noise."""
    rng = np.random.default_rng(0)

    def study(seeds, photos, photo_bias):
        seed_shift = rng.normal(0, 0.02, (seeds, 1))
        p_method = np.clip(0.5 + seed_shift + photo_bias[:photos], 0, 1)
        method = np.where(rng.random((seeds, photos)) < p_method, 10.0, 100.0)
        anchor = np.where(rng.random((seeds, photos)) < 0.5, 10.0, 100.0)
        return method, anchor

    components = variance_components(*study(8, 3000, rng.normal(0, 0.1, 3000)), threshold=25)
    assert components["seed"] > 0 and components["photo"] > 0 and components["residual"] > 0
    for seeds, photos in ((8, 3000), (20, 6000)):
        means = []
        for _ in range(300):
            method, anchor = study(seeds, photos, rng.normal(0, 0.1, photos))
            means.append(100 * ((method <= 25).mean() - (anchor <= 25).mean()))
        observed = 1.96 * np.std(means)
        assert half_width(components, seeds, photos, bootstrap=False) == pytest.approx(observed, rel=0.25)
    # The study's own bootstrap interval is wider (the residual counted three times): the prediction follows it.
    for seeds, photos in ((8, 3000), (4, 6000)):
        method, anchor = study(seeds, photos, rng.normal(0, 0.1, photos))
        own = variance_components(method, anchor, 25)
        interval = paired_bootstrap(method, anchor, rng)["acc_25km"]
        assert half_width(own, seeds, photos) == pytest.approx((interval["high"] - interval["low"]) / 2, rel=0.15)
        assert half_width(own, seeds, photos) > 1.3 * half_width(own, seeds, photos, bootstrap=False)
    with pytest.raises(GeovarioError, match="two seeds"):
        variance_components(np.zeros((1, 5)), np.zeros((1, 5)), 25)


DIFFERENCES = [  # per (seed, photo): +100 the method alone within 25 km, -100 the anchor alone, 0 both or neither
    [[100, 100, 100, 0, 100], [0, 100, 0, 0, -100], [-100, 0, -100, -100, 0], [100, 100, 0, 100, 100]],  # seeds differ
    [[100, -100, 100, -100, 0], [100, -100, 100, -100, 100], [100, -100, 0, -100, 0]],  # photos differ
    [[100, 0, -100, 100], [0, 100, 100, -100], [100, 100, 0, -100]],  # every seed's mean alike: no seed variance left
    [[100, 100, 100, -100, 100, 100], [0, -100, 0, 0, -100, 0]],  # two seeds, the fewest that separate seed from residual
]


@pytest.mark.parametrize("case", range(len(DIFFERENCES)))
def test_variance_components_are_the_two_way_anova_of_a_least_squares_fit(case):
    """The residual mean square from a least-squares fit of seed and photo effects (dummy variables), the effects'
    mean squares from their sums of squares, and each variance component (EMS_seed = resid + photos * seed,
    EMS_photo = resid + seeds * photo), negative estimates clipped to 0. Errors of exactly 25 km count as within."""
    d = np.array(DIFFERENCES[case], dtype=float)
    method = np.where(d > 0, 25.0, np.where(d < 0, 25.5, 10.0))
    anchor = np.where(d > 0, 25.5, np.where(d < 0, 25.0, 10.0))
    s, n = d.shape
    seed_of, photo_of = np.repeat(np.arange(s), n), np.tile(np.arange(n), s)
    design = np.column_stack([np.ones(s * n), *(seed_of == k for k in range(1, s)), *(photo_of == k for k in range(1, n))])
    fitted = design @ np.linalg.lstsq(design, d.ravel(), rcond=None)[0]
    ms_error = ((d.ravel() - fitted) ** 2).sum() / ((s - 1) * (n - 1))
    ms_seed = sum(n * (row.mean() - d.mean()) ** 2 for row in d) / (s - 1)
    ms_photo = sum(s * (column.mean() - d.mean()) ** 2 for column in d.T) / (n - 1)
    got = variance_components(method, anchor, 25)
    assert got == pytest.approx({"seed": max(0.0, (ms_seed - ms_error) / n), "photo": max(0.0, (ms_photo - ms_error) / s),
                                 "residual": ms_error, "mean": d.mean(), "seeds": s, "photos": n}, rel=1e-12, abs=1e-9)
    assert (got["seed"] == 0.0) == (case == 2) and got["residual"] > 0  # the clip is reached in case 2 alone


def test_the_sweep_point_is_chosen_on_validation_photos():
    def row(name, val_gain):
        diff = {"mean": val_gain, "low": val_gain - 1, "high": val_gain + 1}
        return {"group": "sweep-theta", "name": name, "vs_anchor": {"acc_25km": diff}}

    rows = [{"group": "losses", "name": ANCHOR, "vs_anchor": None}, row("a", 0.5), row("b", 1.5), row("c", -2.0), row("d", 1.5)]
    assert chosen_on_validation(rows) == "b"  # the best validation gain; ties keep the first
    assert chosen_on_validation(rows[:1]) is None


def test_study_command_refuses_more_paired_seeds_than_the_anchor_has(tmp_path, capsys):
    assert main(["bench", "study", "--out", str(tmp_path / "s"), "--seeds", "2", "--sweep-seeds", "3"]) == 1
    assert "must not exceed --seeds" in capsys.readouterr().err
    assert main(["bench", "study", "--out", str(tmp_path / "s"), "--world", "osv6m=x"]) == 1
    assert "expected PRESET=DIR" in capsys.readouterr().err
    assert main(["bench", "study", "--out", str(tmp_path / "s"), "--presets", "mp16", "--world", "osv5m=x"]) == 1
    assert "one world per preset" in capsys.readouterr().err


def test_verdicts_compare_each_claim_with_the_sign_of_its_interval():
    """Hand-made runs: on OSV5M the paper is right on every photo where InfoNCE is 100 km off (so it beats it at 25
    km, and ties at 200 km); Weighted is far worse; with GPS noise the final training loss is lower on every seed."""
    from geovario.lab.study import NO_NOISE, WEIGHTED, verdicts

    seeds = [0, 1, 2]
    rng = np.random.default_rng(0)
    anchor_errors = np.where(rng.random(400) < 0.5, 10.0, 100.0)

    def run(errors, losses=(2.0, 1.5, 1.0)):
        return {"errors_km": {"test": errors, "test:mp16": errors}, "epoch_loss": list(losses)}

    runs = {"osv5m": {ANCHOR: {s: run(anchor_errors) for s in seeds},
                      PAPER: {s: run(np.full(400, 10.0)) for s in seeds},
                      WEIGHTED: {s: run(np.full(400, 3000.0)) for s in seeds}},
            "mp16": {ANCHOR: {s: run(anchor_errors, (2.0, 1.5, 1.0 - 0.1 * s)) for s in seeds},  # the final epoch is the third
                     NO_NOISE: {s: run(anchor_errors, (2.0, 1.5, 1.5)) for s in seeds}}}
    rows = {(r["claim"], r["tested_on"]): r for r in verdicts(runs)}
    paper_25 = rows[("the paper's loss beats GeoCLIP at 25 km on OSV5M (+1.7)", "test")]
    assert paper_25["agreement"] == "agrees" and paper_25["lab"] == "better" and paper_25["seeds"] == 3
    assert paper_25["difference"]["mean"] == pytest.approx(100 * np.mean(anchor_errors > 25))
    paper_200 = rows[("… and at 200 km (+2.0)", "test")]  # both within 200 km everywhere: no difference
    assert paper_200["difference"] == {"mean": 0.0, "low": 0.0, "high": 0.0} and paper_200["agreement"] == "cannot tell"
    weighted_1km = rows[("Weighted beats GeoCLIP at 1 km, trained on OSV5M, tested on im2gps3k", "test:mp16")]
    assert weighted_1km["agreement"] == "cannot tell"  # nobody is within 1 km
    weighted_2500 = rows[("… and at 2,500 km", "test:mp16")]
    assert weighted_2500["agreement"] == "disagrees" and weighted_2500["lab"] == "worse"
    assert rows[("… but loses on OSV5M's own test set (25 km)", "test")]["agreement"] == "agrees"
    final = rows[("GPS noise gives a lower final training loss", "test")]
    assert final["difference"]["mean"] == pytest.approx(np.mean([1.0 - 0.1 * s - 1.5 for s in seeds]))
    assert final["agreement"] == "agrees" and final["lab"] == "better"  # a lower loss reads as better
    first = rows[("… and faster convergence (loss after the first epoch)", "test")]
    assert first["difference"]["mean"] == 0.0 and first["agreement"] == "cannot tell"
    assert not any(r["method"] == "hcl_debiased (thesis Weighted2)" for r in rows.values())  # arms not run are left out
    # A small gain whose interval still excludes 0 (the paper right on 4 more photos of 400: +1 point) agrees.
    small = np.where(np.arange(400) < 4, 10.0, anchor_errors)
    small_runs = {"osv5m": {ANCHOR: {s: run(np.where(np.arange(400) < 4, 100.0, anchor_errors)) for s in seeds},
                            PAPER: {s: run(small) for s in seeds}}}
    small_25 = next(r for r in verdicts(small_runs) if r["measure"] == "acc_25km" and r["method"] == PAPER)
    assert 0 < small_25["difference"]["low"] < 1 and small_25["agreement"] == "agrees"


def test_a_study_under_way_is_summarised_on_its_finished_runs_without_training(tmp_path, tiny_worlds, capsys):
    full = run_study(tmp_path / "s", tiny_worlds, epochs=1, arms=ARMS[:2])
    text = (tmp_path / "s" / "variogram-osv5m.json").read_text()
    key = run_key(Datasets.open(tiny_worlds), "osv5m", SV, 1, 1, text)
    shutil.rmtree(tmp_path / "s" / "runs" / key)  # the paper's seed 1 on osv5m has not finished
    capsys.readouterr()
    partial = run_study(tmp_path / "s", tiny_worlds, epochs=1, arms=ARMS[:2], cached_only=True)
    assert ": training" not in capsys.readouterr().out and not (tmp_path / "s" / "runs" / key).exists()
    assert (partial["record"]["runs_finished"], partial["record"]["runs_planned"]) == (7, 8)
    assert "A study under way" in partial["markdown"] and "7 of its 8 runs" in partial["markdown"]
    paper = next(r for r in partial["results"]["osv5m"]["test"] if r["name"] == PAPER)
    assert paper["seeds"] == [0] and [s["seed"] for s in paper["per_seed"]] == [0]
    before = next(r for r in full["results"]["osv5m"]["test"] if r["name"] == PAPER)
    assert paper["per_seed"][0] == before["per_seed"][0]  # seed 0 is the same run
    assert partial["results"]["mp16"] == full["results"]["mp16"]  # mp16's runs all finished
    for folder in (tmp_path / "s" / "runs").iterdir():
        if "loss.name=infonce" in (folder / "result.json").read_text() and '"test:mp16"' in (folder / "result.json").read_text():
            shutil.rmtree(folder)  # no InfoNCE run on osv5m has finished: nothing to pair with
    with pytest.raises(GeovarioError, match="no finished run of infonce"):
        run_study(tmp_path / "s", tiny_worlds, epochs=1, arms=ARMS[:2], cached_only=True)
    with pytest.raises(GeovarioError, match="no finished run on mp16 .* nothing to summarise"):  # a study never started
        run_study(tmp_path / "empty", tiny_worlds, epochs=1, arms=ARMS[:2], cached_only=True)
    assert not list((tmp_path / "empty").glob("variogram-*.json"))  # and nothing fitted for it


def test_a_runs_key_holds_its_changed_settings_so_a_new_option_at_its_default_keeps_old_keys(tiny_worlds):
    defaults = {"loss": {"name": "infonce", "s1": 5.0, "new_option": 1.0}, "train": {"seed": 0}}
    assert changed_settings({"loss": {"name": "infonce", "s1": 5.0, "new_option": 1.0}, "train": {"seed": 3}}, defaults) == {"train": {"seed": 3}}
    assert changed_settings({"loss": {"name": "ssl", "s1": 5.0, "new_option": 2.0}, "train": {"seed": 0}}, defaults) == {
        "loss": {"name": "ssl", "new_option": 2.0}}
    datasets, text = Datasets.open(tiny_worlds), "{}"
    key = lambda overrides: run_key(datasets, "mp16", overrides, 0, 1, text)  # noqa: E731
    assert key(["loss.name=infonce"]) == key([]) == key(["loss.tau_km=75.0"])  # the defaults, however spelled
    assert len({key([]), key(["loss.tau_km=50"]), key(["data.view_noise=0.3"]), run_key(datasets, "mp16", [], 1, 1, text)}) == 4


# The arms issue 26 added while their runs train: benchmarks/results/study/study.json is rewritten once they finish,
# and then this set is empty.
NOT_YET_IN_THE_RECORD: set[str] = set()  # arms of plan() the committed record may lack (a study under way)


def test_the_committed_study_record_is_a_run_of_this_plan():
    """benchmarks/results/study/study.json records each arm's settings and seeds; they must be plan()'s, or the
    committed results (and the README's reading of them) describe another study: a changed grid value, seed count
    or override is caught here, not at the next full study."""
    from conftest import REPO

    record = json.loads((REPO / "benchmarks" / "results" / "study" / "study.json").read_text())
    committed = {(a["group"], a["name"], tuple(a["overrides"]), tuple(a["seeds"])) for a in record["results"]["mp16"]["val"]}
    planned = {(a.group, a.name, tuple(a.overrides), tuple(a.seeds)) for a in plan()}
    assert committed <= planned, sorted(committed - planned)
    assert {arm[1] for arm in planned - committed} == NOT_YET_IN_THE_RECORD
    for dataset in record["results"].values():  # every dataset and evaluation set holds the same arms
        assert all({(a["name"], tuple(a["seeds"])) for a in arms} == {(c[1], c[3]) for c in committed} for arms in dataset.values())


def test_the_commit_a_result_records_names_uncommitted_edits_and_only_those(tmp_path):
    """A result file records the commit it ran at: the sha of HEAD, with "+changes" once a tracked file differs
    from it (an untracked file, such as a run cache, is no change to the code), and "unknown" outside git."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert current_commit(tmp_path) == "unknown"
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert len(head) == 40 and current_commit(tmp_path) == head
    (tmp_path / "runs.json").write_text("{}")
    assert current_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert current_commit(tmp_path) == head + "+changes"


def test_the_slow_arms_and_the_sweep_train_after_the_powered_comparison():
    stages = {arm.name: training_stage(arm) for arm in plan()}
    assert stages[ANCHOR] == stages[PAPER] == stages[HAVERSINE] == stages[WEIGHTED_NEG] == 0  # the thesis's neighbourhood: no gallery
    assert stages["triplet, far gallery negatives (thesis)"] == stages["infonce, neighbour negatives (thesis)"] == 1
    assert stages["theta1=100, theta2=1"] == stages["s1=10, s2=5"] == 2
    assert sorted(stages.values()).count(1) == 3


def test_missing_worlds_are_simulated_once_into_the_study_folder(tmp_path):
    from geovario.lab.study import prepare_worlds

    sizes = dict(n_train=300, n_val=40, n_test=40, dim=8)
    configs = {"mp16": preset("mp16", **sizes), "osv5m": preset("osv5m", **sizes)}
    said = []
    worlds = prepare_worlds(tmp_path, ("mp16", "osv5m"), configs, said.append)
    assert worlds == {name: tmp_path / "worlds" / name for name in ("mp16", "osv5m")} and len(said) == 2
    assert json.loads((worlds["osv5m"] / "truth.json").read_text())["config"]["n_train"] == 300
    assert prepare_worlds(tmp_path, ("mp16", "osv5m"), configs, said.append) == worlds and len(said) == 2  # found, not redone


def test_a_worker_trains_its_run_on_the_threads_it_is_given(tmp_path, tiny_worlds):
    """What each process of run_study(jobs > 1) does, here in-process: set torch's threads, train, return the key."""
    import torch

    from geovario.data.store import FeatureStore
    from geovario.lab.study import _train_in_worker
    from geovario.train.build import store_variogram

    variogram = tmp_path / "variogram.json"
    store_variogram(FeatureStore(tiny_worlds["mp16"] / "train")).save(variogram)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        key = _train_in_worker(1, tiny_worlds["mp16"], {"test": tiny_worlds["mp16"] / "test"}, tmp_path / "runs", "k1",
                               ["loss.name=infonce"], 0, 1, variogram)
        assert key == "k1" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "runs" / "k1" / "result.json").read_text())["seed"] == 0


def test_half_widths_on_a_hand_case():
    """seed 4, photo 9, residual 16 points^2 over 2 seeds and 3 photos: the spread of the mean has variance
    4/2 + 9/3 + 16/6; the bootstrap counts the residual three times (4/2 + 9/3 + 48/6 = 13)."""
    components = {"seed": 4.0, "photo": 9.0, "residual": 16.0}
    assert half_width(components, 2, 3) == pytest.approx(1.96 * np.sqrt(13.0), rel=1e-12)
    assert half_width(components, 2, 3, bootstrap=False) == pytest.approx(1.96 * np.sqrt(5 + 16 / 6), rel=1e-12)


@pytest.mark.parametrize(("cores", "processes", "each"), [(2, 2, 1), (2, 3, 1), (7, 2, 3), (16, 1, 16)])
def test_parallel_jobs_share_the_cores_this_process_may_use(monkeypatch, cores, processes, each):
    from geovario import machine

    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 64)  # the machine's count is not this process's share
    assert machine.cores_per_process(processes) == each
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert machine.cores_per_process() == each


def synthetic_runs(rng, arms, photos=400):
    """Finished runs as cached_run returns them, for each arm and seed: errors drawn per arm, figures from them."""
    from geovario.metrics import distance_summary, geoscore

    runs = {}
    for k, arm in enumerate(arms):
        runs[arm.name] = {}
        for seed in arm.seeds:
            errors = {name: rng.exponential(300 + 40 * k, photos) for name in ("val", "test", "test:osv5m")}
            sets = {name: {"accuracy": distance_summary(e)["accuracy"], "median_km": float(np.median(e)), "geoscore": geoscore(e)}
                    for name, e in errors.items()}
            runs[arm.name][seed] = {"errors_km": errors, "sets": sets, "commit": "c0ffee", "epoch_loss": [2.0, 1.5]}
    return runs


def test_a_summary_pairs_every_loss_with_infonce_and_the_paper_and_prints_it():
    from geovario.lab.study import _cell, study_markdown, summarize
    from geovario.metrics import threshold_accuracy

    arms = [Arm("losses", ANCHOR, [], [0, 1]), Arm("losses", PAPER, [], [0, 1]), Arm("beyond", HAVERSINE, [], [0, 1]),
            Arm("losses", "hcl_weighted (thesis Weighted)", [], [1]), Arm("ablation", "hard up only", [], [0, 1]),
            Arm("sweep-theta", "theta1=100, theta2=1", [], [0], {"theta1": 100.0, "theta2": 1.0}),
            Arm("sweep-theta", "theta1=1000, theta2=1", [], [1], {"theta1": 1000.0, "theta2": 1.0}),
            Arm("sweep-theta", "theta1=500, theta2=1", [], [7], {"theta1": 500.0, "theta2": 1.0})]  # no seed shared
    runs = synthetic_runs(np.random.default_rng(0), arms)
    summary = summarize(arms, runs, ANCHOR)
    rows = {row["name"]: row for row in summary["test"]}
    for arm in arms:
        row, accuracies = rows[arm.name], [runs[arm.name][s]["sets"]["test"]["accuracy"]["25"] for s in arm.seeds]
        assert row["accuracy_mean"]["25"] == pytest.approx(np.mean(accuracies))
        assert row["accuracy_std"]["25"] == (pytest.approx(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0)
    assert rows[ANCHOR]["accuracy_std"]["25"] > 0 and rows["hcl_weighted (thesis Weighted)"]["accuracy_std"]["25"] == 0.0
    # Paired differences on the seeds both arms have, as threshold_accuracy gives them per run.
    def gain(name, base, seeds, t="25"):
        return np.mean([threshold_accuracy(runs[name][s]["errors_km"]["test"])[t] - threshold_accuracy(runs[base][s]["errors_km"]["test"])[t]
                        for s in seeds])
    assert rows["hcl_weighted (thesis Weighted)"]["vs_anchor"]["acc_25km"]["mean"] == pytest.approx(gain("hcl_weighted (thesis Weighted)", ANCHOR, [1]))
    assert rows[HAVERSINE]["vs_paper"]["acc_25km"]["mean"] == pytest.approx(gain(HAVERSINE, PAPER, [0, 1]))
    assert rows[ANCHOR]["vs_anchor"] is None and rows["theta1=500, theta2=1"]["vs_anchor"] is None
    have_paper = {name for name, row in rows.items() if row["vs_paper"] is not None}
    assert have_paper == {HAVERSINE, "hcl_weighted (thesis Weighted)"}  # every other loss; not the ablation or the sweep
    # The markdown: both tables, the beyond-paper arm in the table against the paper's loss, the study under way.
    record = {"commit": "c0ffee", "run_commits": ["c0ffee"], "lab_version": 2, "epochs": 5, "runs_finished": 11, "runs_planned": 12,
              "verdicts": [], "results": {"mp16": summary},
              "worlds": {"mp16": {"fingerprint": "f" * 64, "variogram": {"model": "stable", "nugget": 0.1, "psill": 0.2, "range_km": 900.0}}}}
    text = study_markdown(record)
    assert "**A study under way**: 11 of its 12 runs" in text and "among the 2 sweep points with finished runs" in text
    assert "## Trained on mp16\n\nWorld fingerprint ffffffffffffffff. Variogram (frozen fit on the training features): stable, " \
           "nugget 0.100, partial sill 0.200, range 900 km." in text
    assert "### Tested on mp16 (its own test photos)" in text and "### Tested on osv5m (the other dataset)" in text
    assert "## What the paper" not in text and "under way" not in study_markdown(record | {"runs_finished": 12})
    verdict = {"finding": "1", "claim": "a claim", "source": "paper", "trained_on": "mp16", "tested_on": "test:osv5m",
               "measure": "acc_25km", "difference": {"mean": 1.0, "low": 0.5, "high": 1.5}, "seeds": 2, "lab": "better",
               "agreement": "agrees"}
    assert ("## What the paper and the thesis report, and what the lab finds\n\n| # |" in study_markdown(record | {"verdicts": [verdict]})
            and "| 1 | a claim (paper) | mp16 → osv5m | +1.00 [+0.50, +1.50] * pts, 2 | better | agrees |" in study_markdown(record | {"verdicts": [verdict]}))
    against_paper = text.split("Paired differences against semivariogram (paper)")[1].split("###")[0]
    assert f"| {HAVERSINE} | 2 | {_cell(rows[HAVERSINE]['vs_paper']['acc_1km'])} |" in against_paper
    assert "hard up only" not in against_paper
    tables = markdown_tables(text)
    assert len(tables) == 2 * 3  # accuracy, against InfoNCE, against the paper; on each test set (validation is for choosing)
    for table in tables:  # a well-formed table: a header, its separator, at least one row, as many cells in each
        assert len(table) >= 3 and set(table[1].replace("|", "").replace(":", "")) == {"-"}
        assert len({line.count("|") for line in table}) == 1
    accuracy = tables[0]
    anchor = rows[ANCHOR]
    assert (f"| {ANCHOR} | 2 | " + " | ".join(f"{anchor['accuracy_mean'][str(t)]:.2f} ± {anchor['accuracy_std'][str(t)]:.2f}"
                                                for t in (1, 25, 200, 750, 2500))
            + f" | {anchor['median_km']:.1f} | {anchor['geoscore']:.0f} |") in accuracy
    assert len(accuracy) == 2 + len(arms)


def test_a_table_of_differences_is_printed_with_one_row_and_left_out_with_none():
    from geovario.lab.study import _tables, summarize

    arms = [Arm("losses", ANCHOR, [], [0]), Arm("losses", PAPER, [], [0]), Arm("beyond", HAVERSINE, [], [0])]
    runs = synthetic_runs(np.random.default_rng(1), arms)
    one = _tables(summarize(arms, runs, ANCHOR)["test"], ANCHOR)
    assert "against semivariogram (paper)" in one and len(markdown_tables(one)) == 3 and len(markdown_tables(one)[2]) == 3
    none = _tables(summarize(arms[:2], runs, ANCHOR)["test"], ANCHOR)
    assert "against semivariogram (paper)" not in none and len(markdown_tables(none)) == 2


def markdown_tables(text: str) -> list[list[str]]:
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_a_training_loss_difference_over_seeds():
    """The paired difference of the loss at one epoch: its mean, and a bootstrap over seeds whose 95 % interval holds
    an outlying first seed's pull (resampling draws every seed) and lies 1.96 sd from a normal mean."""
    from geovario.lab.study import _loss_difference

    def runs(losses):
        return {seed: {"epoch_loss": [9.0, value]} for seed, value in enumerate(losses)}

    rng = np.random.default_rng(0)
    outlier = _loss_difference(runs([100.0] + [0.0] * 19), runs([0.0] * 20), list(range(20)), 1, rng)
    assert outlier["mean"] == pytest.approx(5.0) and outlier["low"] == 0.0 and outlier["high"] >= 10.0
    values = rng.normal(0, 1, 400)
    spread = _loss_difference(runs(list(values)), runs([0.0] * 400), list(range(400)), 1, rng)
    sd = values.std() / np.sqrt(400)
    assert spread["mean"] == pytest.approx(values.mean())
    assert (spread["mean"] - spread["low"]) / sd == pytest.approx(1.96, abs=0.12)  # the 5th percentile would be 1.64 sd away
    assert (spread["high"] - spread["mean"]) / sd == pytest.approx(1.96, abs=0.12)


def test_an_interval_is_marked_when_it_excludes_zero():
    from geovario.lab.study import _cell

    assert _cell({"mean": 1.0, "low": 0.0, "high": 2.0}) == "+1.00 [+0.00, +2.00]"  # touching 0 does not exclude it
    assert _cell({"mean": 1.0, "low": 0.01, "high": 2.0}) == "+1.00 [+0.01, +2.00] *"
    assert _cell({"mean": -1.0, "low": -2.0, "high": -0.001}, 3) == "-1.000 [-2.000, -0.001] *"
    assert _cell({"mean": -1.0, "low": -2.0, "high": 0.0}) == "-1.00 [-2.00, +0.00]"


def test_the_sweep_point_chosen_on_validation_skips_points_without_a_shared_seed():
    from geovario.lab.study import chosen_on_validation

    rows = [{"group": "losses", "name": PAPER, "vs_anchor": {"acc_25km": {"mean": 9.0}}},
            {"group": "sweep-s1", "name": "a", "vs_anchor": {"acc_25km": {"mean": 1.0}}},
            {"group": "sweep-s1", "name": "b", "vs_anchor": None},
            {"group": "sweep-s2", "name": "c", "vs_anchor": {"acc_25km": {"mean": 2.0}}},
            {"group": "sweep-s2", "name": "d", "vs_anchor": {"acc_25km": {"mean": 2.0}}}]
    assert chosen_on_validation(rows) == "c"  # the best, the first of equals; never a loss arm, never one without pairs
    assert chosen_on_validation(rows[:1]) is None


def test_a_study_under_way_pairs_each_arm_on_the_seeds_the_anchor_has_finished():
    from geovario.lab.study import _finished_seeds

    arms = [Arm("losses", ANCHOR, [], [0, 1, 2, 3]), Arm("losses", PAPER, [], [0, 1, 2]), Arm("losses", "other", [], [0, 1]),
            Arm("losses", "only seed 1", [], [1])]
    done = {ANCHOR: {0, 2, 3}, PAPER: {0, 1, 2}, "other": {0, 1}, "only seed 1": {1}}
    kept = _finished_seeds(arms, lambda arm, seed: seed in done[arm.name])
    assert [(a.name, a.seeds) for a in kept] == [(ANCHOR, [0, 2, 3]), (PAPER, [0, 2]), ("other", [0])]  # "only seed 1": none left
