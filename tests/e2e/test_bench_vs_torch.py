"""Smoke test of ``benchmarks/bench_vs_torch.py``, run as the script is run, into temporary
JSONs: the tiny stage-2 case ``motion_test`` (2 timed steps, profiled) and the tiny stage-1 case
``latent_test`` (2 timed steps, both players and both optimisers). Both use the tests' persistent
JAX compilation cache (``--jax-cache``), so only a first run pays the full compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_vs_torch.py")


def _run(tmp_path, case: str, *extra: str) -> dict:
    out = tmp_path / f"{case}.json"
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path / "jax_cache")
    subprocess.run([sys.executable, SCRIPT, "--case", case, "--threads", "1", "--warmup", "1",
                    "--steps", "2", "--jax-cache", cache, "--out", str(out), *extra],
                   check=True, cwd=REPO, timeout=300)
    res = json.loads(out.read_text())
    assert res["settings"]["threads"] == 1 and res["settings"]["jax_compilation_cache"]
    assert res["settings"]["worker_env"]["PJRT_NPROC"] == "1"
    assert res["machine"]["versions"]["jax"] and res["machine"]["versions"]["torch"]
    case_res = res["cases"][case]
    assert case_res["status"] == "ok"
    assert case_res["params"] == case_res["jax"]["params"] == case_res["torch"]["params"] > 0
    for fw in ("jax", "torch"):
        ms = case_res[fw]["step_ms"]
        assert ms["n"] == 2 and 0 < ms["min"] <= ms["median"] <= ms["max"]
        assert len(case_res[fw]["losses"]) == 3  # the first (untimed) step and the 2 timed ones
    assert case_res["torch"]["threads"]["torch.get_num_threads"] == 1
    assert case_res["jax"]["threads"]["PJRT_NPROC"] == "1"
    assert case_res["jax"]["compile_s"] > 0 and case_res["jax"]["xla_gflops_per_step"] > 0
    assert case_res["speedup"] == pytest.approx(
        case_res["torch"]["step_ms"]["median"] / case_res["jax"]["step_ms"]["median"])
    assert case_res["jax_over_torch"] == pytest.approx(1 / case_res["speedup"])
    assert isinstance(case_res["contended"], list)
    return case_res


def test_bench_vs_torch_motion(tmp_path):
    pytest.importorskip("torch")
    case = _run(tmp_path, "motion_test", "--profile", "always", "--profile-reps", "1")
    assert case["batch"] == 8 and case["remat"] is False
    for fw in ("jax", "torch"):
        assert case[fw]["profile"]["components_ms"]["forward_backward"] > 0
    # Same weights, inputs and schedule: the frameworks compute the same losses.
    assert case["loss_step0_rel_diff"] < 1e-5 and case["loss_max_rel_diff"] < 1e-4
    assert case["jax"]["profile"]["top_thunks"] and case["torch"]["profile"]["top_ops_self_cpu"]
    assert "motion_test" in case["profile"]


def test_bench_vs_torch_latent(tmp_path):
    """Stage 1 on the ``test`` config: GAN terms on, so both players and both optimisers run."""
    pytest.importorskip("torch")
    case = _run(tmp_path, "latent_test", "--profile", "never")
    assert case["stage"] == 1 and case["batch"] == 8 and case["discriminator_trained"]
    assert case["config"] == "configs/latent.py:test"
    # Same weights and frames: the same generator loss before any update ...
    assert case["loss_step0_rel_diff"] < 1e-5
    # ... and after the updates (the first has lr = 0, the second moves the weights).
    j = case["jax"]["losses"]
    assert j[1] == pytest.approx(j[0], rel=1e-6) and j[2] != pytest.approx(j[0], rel=1e-6)
    assert case["loss_max_rel_diff"] < 1e-4
    assert "profile" not in case


def test_bench_conv_kernels_smoke(tmp_path):
    """``benchmarks/bench_conv_kernels.py`` on the ``test`` stage-1 config, one timed call per
    kernel: every convolution of the loss's jaxpr is listed and timed in both frameworks."""
    out = tmp_path / "conv.json"
    subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_conv_kernels.py"),
                    "--variant", "test", "--threads", "1", "--reps", "1", "--out", str(out)],
                   check=True, cwd=REPO, timeout=600)
    res = json.loads(out.read_text())
    assert res["variant"] == "test" and res["threads"] == 1
    assert res["convolutions"] == sum(r["count"] for r in res["rows"]) > 10
    for r in res["rows"]:
        assert len(r["x"]) == 4 and len(r["w"]) == 4 and r["x"][3] == r["w"][2]
        for fw in ("jax_ms", "torch_ms"):
            assert all(r[fw][k] > 0 for k in ("fwd", "dx", "dw"))
    for k in ("fwd", "dx", "dw", "all"):
        assert res["torch_over_jax"][k] == pytest.approx(
            res["total_ms"]["torch"][k] / res["total_ms"]["jax"][k])
