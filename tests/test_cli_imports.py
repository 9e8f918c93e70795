"""Commands import only what they use: ``--help`` loads neither numpy nor torch, and score, compare and
data check run without torch. Each case runs in a fresh interpreter (this one has torch loaded already)."""

import json
import subprocess
import sys
import textwrap

from PIL import Image

PROBE = textwrap.dedent("""
    import io, contextlib, json, sys
    from geovario.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
        results.append({"argv": argv, "code": code, "out": out.getvalue(),
                        "loaded": sorted(m for m in ("torch", "numpy", "scipy", "pandas") if m in sys.modules)})
    print(json.dumps(results))
""")


def run_in_fresh_interpreter(commands: list[list[str]]) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


HELP = [["--help"], *([name, "--help"] for name in ("predict", "embed-gps", "extract", "variogram", "evaluate", "score", "compare",
                                                      "train", "simulate", "demo", "serve")),
        ["weights", "geoclip", "--help"], ["data", "check", "--help"], ["data", "info", "--help"], ["bench", "study", "--help"]]


def test_help_of_every_command_imports_neither_numpy_nor_torch():
    results = run_in_fresh_interpreter(HELP)
    assert [r["code"] for r in results] == [0] * len(HELP)
    assert results[-1]["loaded"] == [], f"--help imported {results[-1]['loaded']}"
    for result in results:  # argparse formats help= with %, but not description=: a literal "%%" shows as typed
        assert result["out"].startswith("usage: geovario") and "%%" not in result["out"], result["argv"]


def test_score_compare_and_data_check_never_import_torch(tmp_path):
    predictions = tmp_path / "p.csv"
    predictions.write_text("LAT,LON,pred_lat,pred_lon\n48.85,2.35,48.86,2.34\n40.71,-74.0,34.05,-118.24\n35.68,139.69,35.0,135.0\n")
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / name)
    dataset = tmp_path / "train.csv"
    dataset.write_text("IMG_FILE,LAT,LON\na.jpg,48.85,2.35\nb.jpg,40.71,-74.0\n")
    commands = [
        ["score", str(predictions), "--out", str(tmp_path / "a.json")],
        ["score", str(predictions), "--no-admin", "--out", str(tmp_path / "b.json")],
        ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--markdown"],
        ["data", "check", str(dataset)],
        ["data", "check", str(dataset), "--decode"],
    ]
    results = run_in_fresh_interpreter(commands)
    assert [r["code"] for r in results] == [0] * len(commands), results
    assert json.loads((tmp_path / "a.json").read_text())["n"] == 3  # the commands did their work
    assert "torch" not in results[-1]["loaded"], f"imported torch: {results}"


def test_the_data_layer_does_not_import_inference():
    code = ("import pkgutil, importlib, sys, geovario.data as d\n"
            "for m in pkgutil.walk_packages(d.__path__, 'geovario.data.'): importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n in ('geovario.predict', 'geovario.evaluate', 'geovario.retrieval', "
            "'geovario.model', 'geovario.train', 'geovario.backbones')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
