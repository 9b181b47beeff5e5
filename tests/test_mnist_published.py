"""The published gradient-descent computer (arXiv 2509.15324) on the full MNIST test set."""

import json
import subprocess
import sys

import pytest

from tc_hw.evaluation import evaluate_mnist
from tc_hw.model.data.paths import shared_dir
from tc_hw.model.data.thermo_gd import load_published


def test_published_parameters_reproduce_the_paper():
    # paper: 92.0 % / 96.7 %; independent twin: 91.86 +- 0.11 % (1 sample), 91.99 % (10 samples)
    params = load_published()
    one = evaluate_mnist(params, samples=1, seed=3, time_obs=0.2, dt=1e-3, progress=False)
    assert one["n"] == 10000
    assert 0.9120 <= one["top1"] <= 0.9250, one
    ten = evaluate_mnist(params, samples=10, seed=1, time_obs=0.2, dt=1e-3, progress=False)
    assert 0.9150 <= ten["top1"] <= 0.9250, ten
    assert ten["top2"] >= 0.962, ten
    assert ten["heat_per_inference_kT"] > 0


def test_evaluate_command_prints_json():
    path = shared_dir() / "data" / "thermo_gd" / "parameters.dat"
    out = subprocess.run(
        [sys.executable, "-m", "tc_hw.cli", "evaluate", "--params", str(path), "--format", "thermo_gd",
         "--task", "mnist", "--samples", "1", "--seed", "1", "--json"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    result = json.loads(out.stdout)
    assert {"top1", "top2", "samples", "seconds"} <= set(result)
    assert result["samples"] == 1 and 0.91 < result["top1"] < 0.93


def test_evaluate_command_exit_code_for_bad_file(tmp_path):
    bad = tmp_path / "p.h5"
    bad.write_text("nope")
    out = subprocess.run([sys.executable, "-m", "tc_hw.cli", "evaluate", "--params", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "HDF5" in out.stderr
