"""Progress when the output is a log file: lines with step, loss, rate and ETA instead of a hidden bar."""

import io
import os
import subprocess
import sys

import pytest

from geovario.errors import GeovarioError
from geovario.progress import LineProgress
from test_train import stores  # noqa: F401  (the fixture)


def test_line_progress_prints_rate_eta_and_postfix():
    stream = io.StringIO()
    with LineProgress(10, "train", "step", every_s=0, stream=stream) as bar:
        for _ in range(4):
            bar.update(1)
            bar.set_postfix(loss="1.2345")
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 5  # one per update (every_s = 0), and the final one on close
    assert lines[0].startswith("train: 1/10 step (10%), ") and "step/s, ETA 0:00:" in lines[0]
    assert lines[-1].startswith("train: 4/10 step (40%)") and lines[-1].endswith("loss 1.2345")
    quiet = io.StringIO()
    with LineProgress(10, "x", every_s=3600, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue().count("\n") == 1  # only the final line within the interval


def test_train_into_a_log_file_prints_progress_lines(tmp_path, stores):  # noqa: F811 (pytest fixture)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: logged\ndata: {{train: {stores[0]}}}\nmodel: {{queue_size: 64, embed_dim: 16, hidden_dim: 32, rff_dim: 16}}\n"
                      "train: {batch_size: 16, epochs: 2, log_every: 5}\n")
    log = tmp_path / "train.log"
    with open(log, "w") as out:  # not a terminal, as under SLURM or nohup
        done = subprocess.run([sys.executable, "-m", "geovario", "train", "--config", str(config), "--out", str(tmp_path / "run")],
                              stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "GEOVARIO_PROGRESS_EVERY_S": "0"})
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    lines = [line for line in text.splitlines() if line.startswith("logged: ")]
    assert len(lines) >= 40 and lines[-1].startswith("logged: 40/40 step (100%)")
    assert "ETA" in lines[0] and "loss " in lines[-1] and "\r" not in text  # plain lines, no bar redraws


def test_a_bad_progress_interval_is_one_line_naming_the_variable(tmp_path, monkeypatch, stores):  # noqa: F811
    for bad in ("abc", "-5", "nan"):
        monkeypatch.setenv("GEOVARIO_PROGRESS_EVERY_S", bad)
        with pytest.raises(GeovarioError, match=f"GEOVARIO_PROGRESS_EVERY_S: expected seconds .* got '{bad}'"):
            LineProgress(10, "train")
    monkeypatch.setenv("GEOVARIO_PROGRESS_EVERY_S", "2.5")
    assert LineProgress(10, "train").every_s == 2.5
    monkeypatch.delenv("GEOVARIO_PROGRESS_EVERY_S")
    assert LineProgress(10, "train").every_s == 30.0
    # Through the command, into a log: one line and exit 1, no traceback.
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "geoclip_baseline.yaml")
    done = subprocess.run([sys.executable, "-m", "geovario", "train", "--config", config, "--out", str(tmp_path / "run"),
                           "--set", f"data.train={stores[0]}", "--set", "data.val=null",
                           "--set", "train.batch_size=16", "--set", "model.queue_size=64", "--set", "train.max_steps=2"],
                          capture_output=True, text=True, env={**os.environ, "GEOVARIO_PROGRESS_EVERY_S": "abc"}, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("geovario: error: GEOVARIO_PROGRESS_EVERY_S: expected seconds between "
                                                    "progress lines (0 or more), got 'abc'")
