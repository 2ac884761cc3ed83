"""bench/gpu_check.sh, the GPU check that runs once on a lent GPU machine (issue 13), works end to end: its
dry run on CPU at a tiny scale makes the data with the stages, trains, and writes every phase's numbers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

# Heavy (bench/gpu_check.sh end to end in a subprocess): out of the fast lane (README), run by CI.
pytestmark = pytest.mark.slow


ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_measures_every_phase_on_cpu(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--scale", "0.0005", "--epochs", "1",
                             "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    phases = json.loads((out / "gpu_check.json").read_text())["phases"]
    assert list(phases) == ["env", "matmul_probe", "data", "train_NF_bf16", "train_N3M_bf16", "train_N3M_fp32",
                            "amp_agreement"]
    assert not [name for name, phase in phases.items() if "error" in phase or "skipped" in phase]
    assert phases["data"]["splits"]["NF"]["nnz"]["train"] > phases["data"]["splits"]["N3M"]["nnz"]["train"] > 0
    for name in ("train_NF_bf16", "train_N3M_bf16"):
        run = phases[name]
        assert run["users_per_s"] > 0 and run["achieved_tflops"] > 0 and run["evaluation_s"] > 0
        assert 0 < run["test_rmse"] < 4 and len(run["epoch_s"]) == 1
    # CPU runs are float32 whatever amp says: the two N3M runs are the same computation.
    assert phases["amp_agreement"]["prediction_abs_diff_mean"] == 0.0
    assert (out / "gpu_check.log").read_text().count("] train_") == 6  # start and result lines of 3 runs
