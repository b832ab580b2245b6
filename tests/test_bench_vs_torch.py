"""Smoke test of ``benchmarks/bench_vs_torch.py``: the tiny ``motion_test`` case (2 timed steps,
profiled) and the stage-1 placeholder, run as the script is run, into a temporary JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_vs_torch.py")


def test_bench_vs_torch_writes_json(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "vs_torch.json"
    subprocess.run([sys.executable, SCRIPT, "--case", "motion_test", "--case",
                    "latent_synthtalk64", "--threads", "1", "--warmup", "1", "--steps", "2",
                    "--profile", "always", "--profile-reps", "1", "--out", str(out)],
                   check=True, cwd=REPO, timeout=240)
    res = json.loads(out.read_text())
    assert res["settings"]["threads"] == 1
    assert res["settings"]["worker_env"]["PJRT_NPROC"] == "1"
    assert res["machine"]["versions"]["jax"] and res["machine"]["versions"]["torch"]

    case = res["cases"]["motion_test"]
    assert case["status"] == "ok" and case["batch"] == 8 and case["remat"] is False
    assert case["params"] == case["jax"]["params"] == case["torch"]["params"] > 0
    for fw in ("jax", "torch"):
        ms = case[fw]["step_ms"]
        assert ms["n"] == 2 and 0 < ms["min"] <= ms["median"] <= ms["max"]
        assert len(case[fw]["losses"]) == 3  # the first (untimed) step and the 2 timed ones
        assert case[fw]["profile"]["components_ms"]["forward_backward"] > 0
    assert case["torch"]["threads"]["torch.get_num_threads"] == 1
    assert case["jax"]["threads"]["PJRT_NPROC"] == "1"
    assert case["jax"]["compile_s"] > 0 and case["jax"]["xla_gflops_per_step"] > 0
    assert case["speedup"] == pytest.approx(
        case["torch"]["step_ms"]["median"] / case["jax"]["step_ms"]["median"])
    assert case["jax_over_torch"] == pytest.approx(1 / case["speedup"])
    # Same weights, inputs and schedule: the frameworks compute the same losses.
    assert case["loss_max_rel_diff"] < 1e-4
    assert case["jax"]["profile"]["top_thunks"] and case["torch"]["profile"]["top_ops_self_cpu"]
    assert "motion_test" in case["profile"]
    assert isinstance(case["contended"], list)

    assert res["cases"]["latent_synthtalk64"]["status"] == "not_implemented"
