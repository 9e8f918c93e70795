"""The study: paired bootstrap intervals, and a killed or repeated study reuses the runs that finished."""

import json

import numpy as np
import pytest

from geovario.cli import main
from geovario.sim import WorldConfig, simulate
from geovario.study import SV, Arm, paired_bootstrap, plan, run_study


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


def test_plan_covers_the_study():
    arms = plan(seeds=5, gallery_seeds=2, sweep_seeds=1)
    names = [a.name for a in arms]
    assert names[0] == "infonce (GeoCLIP)" and len(set(names)) == len(names)
    assert {a.group for a in arms} == {"losses", "ablation", "range", "refit", "sweep-theta", "sweep-s1", "sweep-s2"}
    assert sum(a.group == "sweep-theta" for a in arms) == 15 and sum(a.group.startswith("sweep-s") for a in arms) == 10
    assert all(len(a.seeds) == 5 for a in arms if a.group in ("ablation", "range", "refit"))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    world = tmp_path_factory.mktemp("study") / "world"
    simulate(world, WorldConfig(n_train=640, n_test=80, dim=16, locatability_a=2.0, locatability_b=1.0))
    return world


ARMS = [Arm("losses", "infonce (GeoCLIP)", ["loss.name=infonce"], [0, 1]),
        Arm("losses", "semivariogram (paper)", SV, [0, 1]),
        Arm("sweep-theta", "theta1=range, theta2=25", SV + ["loss.theta1_km=null", "loss.theta2_km=25.0"], [0],
            {"theta1": None, "theta2": 25.0})]


def test_a_rerun_reuses_finished_runs_and_trains_only_what_is_missing(tmp_path, tiny_world, capsys):
    first = run_study(tmp_path / "s", tiny_world, epochs=1, arms=ARMS)
    log = capsys.readouterr().out
    # The sweep point is the paper's settings spelled out: it shares the paper's seed-0 run.
    assert log.count(": training") == 4 and log.count(": cached") == 1
    runs = sorted((tmp_path / "s" / "runs").glob("*/result.json"))
    assert len(runs) == 4 and not list((tmp_path / "s" / "runs").glob("*/work"))  # no checkpoints left behind
    rows = {row["name"]: row for row in first["arms"]}
    assert rows["semivariogram (paper)"]["vs_anchor"]["acc_25km"]["low"] <= rows["semivariogram (paper)"]["vs_anchor"]["acc_25km"]["high"]
    assert (tmp_path / "s" / "study.md").is_file() and (tmp_path / "s" / "sweep_theta.png").read_bytes()[:4] == b"\x89PNG"

    # Killed after some runs: one result is missing. A rerun trains that one only, and agrees with the first study.
    killed = max(runs, key=lambda p: p.stat().st_mtime)
    killed.unlink()
    second = run_study(tmp_path / "s", tiny_world, epochs=1, arms=ARMS)
    log = capsys.readouterr().out
    assert log.count(": training") == 1 and log.count(": cached") == 4
    assert json.dumps(second["arms"]) == json.dumps(first["arms"])

    # More seeds later: only the new seed trains.
    more = [Arm(a.group, a.name, a.overrides, [*a.seeds, 2] if a.group == "losses" else a.seeds, a.params) for a in ARMS]
    run_study(tmp_path / "s", tiny_world, epochs=1, arms=more)
    assert capsys.readouterr().out.count(": training") == 2


def test_parallel_jobs_train_the_same_runs_as_one_process(tmp_path, tiny_world, capsys):
    serial = run_study(tmp_path / "serial", tiny_world, epochs=1, arms=ARMS)
    parallel = run_study(tmp_path / "parallel", tiny_world, epochs=1, arms=ARMS, jobs=2)
    log = capsys.readouterr().out
    assert "training 4 runs in 2 processes" in log and log.count("] finished ") == 4
    keys = {p.parent.name for p in (tmp_path / "parallel" / "runs").glob("*/result.json")}
    assert keys == {p.parent.name for p in (tmp_path / "serial" / "runs").glob("*/result.json")} and len(keys) == 4
    for key in keys:  # each run trained in a worker gives the same per-photo errors as in-process
        np.testing.assert_allclose(np.load(tmp_path / "parallel" / "runs" / key / "errors.npy"),
                                   np.load(tmp_path / "serial" / "runs" / key / "errors.npy"), rtol=1e-6)
    assert [row["accuracy_mean"] for row in parallel["arms"]] == [row["accuracy_mean"] for row in serial["arms"]]


def test_a_changed_world_reuses_nothing(tmp_path, tiny_world, capsys):
    run_study(tmp_path / "s", tiny_world, epochs=1, arms=ARMS[:1])
    other = tmp_path / "other"
    simulate(other, WorldConfig(n_train=640, n_test=80, dim=16, seed=1))
    run_study(tmp_path / "s2", other, epochs=1, arms=ARMS[:1])
    capsys.readouterr()
    (tmp_path / "s2" / "runs").rename(tmp_path / "s2" / "old-runs")
    (tmp_path / "s" / "runs").rename(tmp_path / "s2" / "runs")  # the first world's finished runs, offered to the second
    run_study(tmp_path / "s2", other, epochs=1, arms=ARMS[:1])
    assert capsys.readouterr().out.count(": training") == 2


def test_study_command_refuses_more_paired_seeds_than_the_anchor_has(tmp_path, capsys):
    assert main(["bench", "study", "--out", str(tmp_path / "s"), "--seeds", "2", "--sweep-seeds", "3"]) == 1
    assert "must not exceed --seeds" in capsys.readouterr().err
