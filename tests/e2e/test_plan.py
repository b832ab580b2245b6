"""Ahead-of-time plans (``vasa-jax plan``): both stages' real train steps and the generation
window compiled for a TPU topology on this CPU machine (libtpu), with positive memory and FLOP
figures, an oversized batch reported as not fitting, and the batch a task describes equal to
the batch its loader makes."""

import json

import numpy as np
import pytest

from vasa_jax import cli
from vasa_jax.plan.chips import PlanError, parse_slice, tpu_compiles
from vasa_jax.plan.train_plan import collective_bytes, plan_config
from vasa_jax.train.run import load_config

pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is part of the dev install")


def test_slice_names():
    chip, topology, chips = parse_slice("v5p-128")
    assert (chip.generation, topology, chips) == ("v5p", "v5p:4x4x4", 64)
    assert parse_slice("v5e-16")[1:] == ("v5e:4x4", 16)
    assert parse_slice("v5e:2x4")[1:] == ("v5e:2x4", 8)
    for bad, words in (("v9-8", "Unknown TPU slice"), ("v5e-12", "No standard v5e slice"),
                       ("v5p:2x2", "3 dimensions")):
        with pytest.raises(PlanError, match=words):
            parse_slice(bad)


def test_tpu_compiles_keep_out_of_the_persistent_cache():
    """TPU executables cannot be read back from the persistent cache by this machine's CPU
    client, so plans compile with it off, and put it back as it was, also after an error."""
    import jax

    was = jax.config.jax_enable_compilation_cache
    with tpu_compiles():
        assert jax.config.jax_enable_compilation_cache is False
    with pytest.raises(RuntimeError), tpu_compiles():
        raise RuntimeError("an overflow")
    assert jax.config.jax_enable_compilation_cache == was


def test_collective_bytes_reads_the_optimised_hlo():
    hlo = ("  %all-reduce.1 = f32[128,256]{1,0} all-reduce(f32[128,256]{1,0} %p), "
           "replica_groups={{0,1}}\n"
           "  %all-reduce.2 = (f32[]{:T(128)}, /*index=1*/f32[4,8]{1,0:T(8,128)S(1)}) "
           "all-reduce(f32[] %a, f32[4,8] %b)\n"
           "  %ags = (bf16[8,64]{1,0}, bf16[32,64]{1,0}) all-gather-start(bf16[8,64]{1,0} %x)\n"
           "  %agd = bf16[32,64]{1,0} all-gather-done((bf16[8,64], bf16[32,64]) %ags)\n")
    assert collective_bytes(hlo) == {"all-reduce": 128 * 256 * 4 + 4 + 32 * 4,
                                     "all-gather": 32 * 64 * 2}


@pytest.mark.parametrize("stage", ["motion", "latent"])
def test_the_test_configs_compile_for_a_v5e_2x2(stage):
    r = plan_config(load_config(stage, "test"), "v5e:2x2", batch=8)
    assert r["fits"] and r["devices"] == 4 and r["per_device_batch"] == 2
    for key in ("argument_bytes", "temp_bytes", "peak_bytes", "flops_per_device",
                "projected_step_seconds"):
        assert r[key] > 0, (key, r[key])
    assert r["peak_bytes"] < r["hbm_capacity_bytes"]
    assert r["collective_bytes_per_device"].get("all-reduce", 0) > 0  # the gradient reduction


def test_an_oversized_batch_does_not_fit_and_says_why():
    r = plan_config(load_config("latent", "test"), "v5e:2x2", batch=4 * 2048)
    assert r["fits"] is False
    assert r["temp_bytes"] > r["hbm_available_bytes"] > 0
    assert "activations dominate" in r["advice"] and "--batch max" in r["advice"]


def test_plan_command_prints_and_writes_the_largest_batch(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = cli.main(["plan", "--config", "configs/motion.py:test", "--topology", "v5e:2x2",
                     "--mesh", "1,-1,1", "--batch", "max", "--max-batch", "64", "--json",
                     str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "fits: yes" in text and "projected:" in text and "MFU" in text
    r = json.loads(out.read_text())
    assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert r["fits"] and r["global_batch"] % 4 == 0 and r["per_device_batch"] >= 2
    assert any(s["fits"] for s in r["searched"]) and r["limited_by"]


def test_plan_command_errors_name_the_fix(capsys):
    assert cli.main(["plan", "--config", "configs/motion.py:test", "--topology", "v5e-12"]) == 2
    assert "No standard v5e slice" in capsys.readouterr().err
    assert cli.main(["plan", "--config", "configs/motion.py:test", "--topology", "v5e:2x2",
                     "--batch", "6"]) == 2
    assert "use a multiple of 4" in capsys.readouterr().err


def test_the_generation_window_compiles_for_one_chip():
    from vasa_jax.plan.sample_plan import plan_sampler

    r = plan_sampler("v5e-1", latent_variant="test", motion_variant="test", steps=2,
                     decode_batch=2)
    assert r["fits"] and r["flops_loop_bodies_once"] > 0 and 0 < r["peak_bytes"]
    w = load_config("motion", "test").model.window
    assert r["window"] == w
    # The projection is built from the loop bodies compiled alone: 2 denoising calls and
    # ceil(W / 2) decode calls, each costing something.
    p = r["projection"]
    assert p["denoise_calls"] == 2 and p["decode_calls"] == -(-w // 2)
    assert p["denoise_call_flops"] > 0 and p["decode_call_flops"] > 0
    assert p["window_flops"] == 2 * p["denoise_call_flops"] + p["decode_calls"] * p[
        "decode_call_flops"]
    assert p["frames_per_second"] == pytest.approx(w / p["window_seconds"])
    assert p["stream_first_frame_seconds"] > w / 25


@pytest.mark.parametrize("stage", ["motion", "latent"])
def test_batch_spec_matches_the_loader(stage, synthtalk_tiny):
    """What the plan compiles for is what training feeds: ``batch_spec`` equals the shapes and
    dtypes of ``device_batch`` on a real SynthTalk batch."""
    from vasa_jax.train.tasks import make_task

    c = load_config(stage, "test")
    c.data.data_dir = synthtalk_tiny
    c.data.num_workers = 0
    task = make_task(c)
    batch = task.device_batch(next(iter(task.train_loader())))
    spec = task.batch_spec(c.data.batch_size)
    assert sorted(batch) == sorted(spec)
    for k, v in batch.items():
        assert (np.shape(v), np.asarray(v).dtype) == (spec[k].shape, spec[k].dtype), k
