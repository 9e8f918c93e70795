"""The README's "Train your first model in 2 minutes" commands, run exactly as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def first_model_commands() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Train your first model in 2 minutes", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_first_model_commands_run_as_written(tmp_path):
    commands = first_model_commands()
    assert commands.count("geovario ") == 4 and "simulate" in commands and "predict" in commands
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the README runs from the repository root
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", commands], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # The predict line printed the last photos with a place; evaluate's report agrees with the best validation.
    assert "world/test/shards/00000.npy[999]" in done.stdout and "km away" in done.stdout
    report = json.loads((tmp_path / "runs/first/report.json").read_text())
    metrics = pd.read_csv(tmp_path / "runs/first/metrics.csv").dropna(subset=["val_acc_25km"])
    assert report["n"] == 1000
    assert report["accuracy"]["25"] > 10  # it learned: chance within 25 km is far below 1 %
    # best/ was chosen on world/val, not on the test photos: evaluating it there gives the best validation row.
    again = subprocess.run([sys.executable, "-m", "geovario", "evaluate", "--model", "runs/first/best", "--store", "world/val",
                            "--gallery", "world/train", "--out", "runs/first/val.json", "--no-admin"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    on_val = json.loads((tmp_path / "runs/first/val.json").read_text())
    assert on_val["accuracy"]["25"] == pytest.approx(metrics["val_acc_25km"].max(), abs=1e-4)
