"""benchmarks/gpu_check.py, the first GPU hour's script: its FLOP count against the issue's own estimate, its peak
table, and (slow) the whole script at its CPU size, so that it runs when a GPU is lent."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402


def test_one_step_at_geoclips_shape_is_about_260_gflop():
    """Issue 28's estimate: each step encodes 4,608 locations through three 512-1024-1024-1024 branches, about 260
    GFLOP forward and backward; the count adds the image head and the logits."""
    assert gpu_check.step_flops(512, 4096) == pytest.approx(260e9, rel=0.05)
    # Twice the batch and queue: twice the encoders' rows, four times the logits; between 2x and 2.2x in all.
    assert 2.0 < gpu_check.step_flops(1024, 8192) / gpu_check.step_flops(512, 4096) < 2.2


def test_the_peak_of_a_device_is_found_by_its_name():
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0 and gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and gpu_check.peak_tflops("Tesla T4") is None


@pytest.mark.slow
def test_the_cpu_sized_check_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads(out.read_text())
    checks = [row["check"] for row in table["rows"]]
    assert len(checks) == 7 and "DDP, torchrun --nproc_per_node 1" in checks[4] and checks[5].startswith("decode only [anchor]")
    assert all(row.get("samples_per_s", row.get("images_per_s", 0)) > 0 for row in table["rows"])
    assert table["rows"][0]["vs_anchor"] == 1.0 and table["rows"][5]["vs_anchor"] == 1.0
    first = table["rows"][0]
    assert first["tflops"] == pytest.approx(gpu_check.step_flops(64, 256) * first["samples_per_s"] / 64 / 1e12)
    assert "geovario GPU check on" in done.stdout and "semivariogram, batch 64, bf16" in done.stdout
