"""The shared trainer on the stage-2 task: learning, sharding on an 8-device mesh, equality across
mesh shapes and process counts, exact resume, SIGTERM, the non-finite guard, mesh-changing
restore, and a killed peer."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from trainer_configs import make_test_config

from configs.motion import get_config
from vasa_jax.checkpoint import Checkpointer
from vasa_jax.train.motion_task import MotionTask
from vasa_jax.train.trainer import Trainer, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "motion_test_param_shardings.json")


def _config(data_dir, **over):
    return make_test_config(get_config, data_dir, **over)


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def _params(trainer):
    return [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]


def test_training_lowers_the_loss(synthtalk_tiny, tmp_path):
    c = _config(synthtalk_tiny, **{"train.steps": 60, "optim.decay_steps": 60})
    Trainer(MotionTask(c), c, str(tmp_path)).fit()
    loss = _losses(str(tmp_path))
    first = np.mean([loss[s] for s in range(1, 6)])
    last = np.mean([loss[s] for s in range(56, 61)])
    assert last < 0.6 * first, (first, last)


def test_hooks_get_the_gathered_ema_model_and_finish_runs_once(synthtalk_tiny, tmp_path):
    """evaluate / images at their intervals and finish once at the end, on process 0, each
    handed the host model with the EMA weights (gathered once per step)."""
    from flax import nnx

    calls, finished = [], {}

    class Recording(MotionTask):
        def evaluate(self, model, step):
            calls.append(("evaluate", step, type(model).__name__))
            return {"marker": float(step)}

        def images(self, model, step):
            calls.append(("images", step, type(model).__name__))
            return {}

        def finish(self, model, workdir, step):
            calls.append(("finish", step, workdir))
            finished["state"] = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]

    c = _config(synthtalk_tiny, **{"train.steps": 4, "train.eval_every": 2,
                                   "train.image_every": 4})
    trainer = Trainer(Recording(c), c, str(tmp_path))
    result = trainer.fit()
    assert calls == [("evaluate", 2, "MotionDiT"), ("evaluate", 4, "MotionDiT"),
                     ("images", 4, "MotionDiT"), ("finish", 4, str(tmp_path))]
    assert result["eval/marker"] == 4.0
    ema = [np.asarray(x) for x in jax.tree.leaves(nnx.state(trainer.host_model()))]
    raw = [np.asarray(x) for x in jax.tree.leaves(nnx.state(trainer.host_model(ema=False)))]
    assert all(np.array_equal(a, b) for a, b in zip(finished["state"], ema))
    assert not all(np.array_equal(a, b) for a, b in zip(finished["state"], raw))


def test_sharded_params_match_the_committed_table_and_the_one_device_loss(synthtalk_tiny, tmp_path):
    """fsdp=4 x tensor=2 on 8 devices: parameter shardings as committed, and the same losses as
    one device (within 1e-5)."""
    sharded = Trainer(MotionTask(c := _config(synthtalk_tiny, mesh_shape=(1, 4, 2))), c,
                      str(tmp_path / "a"))
    table = sharded.param_shardings_table()
    if os.environ.get("VASA_JAX_UPDATE_GOLDEN"):
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
    with open(GOLDEN) as f:
        assert table == json.load(f)
    assert "P('fsdp', 'tensor')" in table.values() and "P('tensor', 'fsdp')" in table.values()
    c1 = _config(synthtalk_tiny, mesh_shape=(1, 1, 1), num_devices=1)
    single = Trainer(MotionTask(c1), c1, str(tmp_path / "b"))
    assert single.mesh.size == 1 and sharded.mesh.size == 8
    data_a, data_b = iter(sharded.task.train_loader()), iter(single.task.train_loader())
    for _ in range(3):
        la = float(sharded.train_step(next(data_a))["loss"])
        lb = float(single.train_step(next(data_b))["loss"])
        assert abs(la - lb) <= 1e-5 * max(1.0, abs(lb)), (la, lb)


def _final_state_and_next_batch(workdir, config):
    """The last checkpoint of ``workdir`` restored as a whole: (every leaf of the state, with
    params, optimiser state and EMA, as numpy; the next batch of its restored data iterator)."""
    t = Trainer(MotionTask(config), config, str(workdir) + "_restored")
    data = iter(t.task.train_loader())
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    step, state = ckpt.restore(t.abstract_state(), data)
    ckpt.close()
    return step, [np.asarray(x) for x in jax.tree.leaves(state)], next(data)


@pytest.mark.reliability
def test_resume_continues_exactly_like_the_uninterrupted_run(synthtalk_tiny, tmp_path):
    """Interrupted at step 4 (async checkpoints) and resumed: losses, parameters, optimiser
    state, EMA and the data iterator equal the uninterrupted run's, bit for bit."""
    full = _config(synthtalk_tiny, **{"train.steps": 8, "train.checkpoint_every": 4,
                                      "optim.decay_steps": 8, "train.async_checkpoints": True})
    Trainer(MotionTask(full), full, str(tmp_path / "full")).fit()
    first = _config(synthtalk_tiny, **{"train.steps": 4, "train.checkpoint_every": 4,
                                       "optim.decay_steps": 8, "train.async_checkpoints": True})
    Trainer(MotionTask(first), first, str(tmp_path / "split")).fit()
    resumed = Trainer(MotionTask(full), full, str(tmp_path / "split"))
    resumed.fit()
    a, b = _losses(str(tmp_path / "full")), _losses(str(tmp_path / "split"))
    assert sorted(b) == list(range(1, 9))
    for s in range(5, 9):
        assert a[s] == b[s], (s, a[s], b[s])
    step_a, state_a, batch_a = _final_state_and_next_batch(tmp_path / "full", full)
    step_b, state_b, batch_b = _final_state_and_next_batch(tmp_path / "split", full)
    assert step_a == step_b == 8 and len(state_a) == len(state_b)
    for x, y in zip(state_a, state_b):
        np.testing.assert_array_equal(x, y)
    assert batch_a.keys() == batch_b.keys()
    for k in batch_a:
        np.testing.assert_array_equal(batch_a[k], batch_b[k])


@pytest.mark.reliability
def test_nan_batch_is_skipped_and_counted(synthtalk_tiny, tmp_path):
    c = _config(synthtalk_tiny)
    tr = Trainer(MotionTask(c), c, str(tmp_path))
    data = iter(tr.task.train_loader())
    tr.train_step(next(data))
    before = _params(tr)
    bad = dict(next(data))
    bad["motion"] = bad["motion"].copy()
    bad["motion"][0, 3, 2] = np.nan
    m = tr.train_step(bad)
    assert float(m["skipped"]) == 1.0 and float(m["nonfinite_total"]) == 1.0
    for x, y in zip(before, _params(tr)):
        np.testing.assert_array_equal(x, y)
    m = tr.train_step(next(data))
    assert float(m["skipped"]) == 0.0 and float(m["nonfinite_total"]) == 1.0
    assert np.isfinite(float(m["loss"]))
    assert int(tr.state.step) == 3


@pytest.mark.reliability
def test_restore_onto_another_mesh(synthtalk_tiny, tmp_path):
    c = _config(synthtalk_tiny, mesh_shape=(1, 4, 2), **{"train.steps": 3})
    a = Trainer(MotionTask(c), c, str(tmp_path))
    a.fit()
    c2 = _config(synthtalk_tiny, mesh_shape=(2, 2, 2))
    b = Trainer(MotionTask(c2), c2, str(tmp_path / "other"))
    step, state = Checkpointer(tmp_path / "checkpoints").restore(b.abstract_state())
    assert step == 3
    b.state = state
    for x, y in zip(_params(a), _params(b)):
        np.testing.assert_array_equal(x, y)
    leaf = jax.tree.leaves(b.state.params)[0]
    assert leaf.sharding.mesh.shape == b.mesh.shape
    # The next step agrees on both meshes.
    da = iter(a.task.train_loader())
    batch = next(da)
    la, lb = float(a.train_step(batch)["loss"]), float(b.train_step(batch)["loss"])
    assert abs(la - lb) <= 1e-5 * max(1.0, abs(la))


def _train_cmd(workdir, data_dir, *extra):
    return [sys.executable, os.path.join(ROOT, "launch", "train.py"),
            "--config=" + os.path.join(ROOT, "configs", "motion.py") + ":test",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *extra]


def _env(devices):
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.reliability
@pytest.mark.slow
def test_sigterm_leaves_a_restorable_checkpoint(synthtalk_tiny, tmp_path):
    wd = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(wd, synthtalk_tiny, "--config.train.steps=100000",
                                       "--config.train.checkpoint_every=1000000",
                                       "--config.train.log_every=1"),
                            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = wd / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and '"step": 5,' in metrics.read_text()):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 143, out[-3000:]
    assert "SIGTERM: saved checkpoint" in out
    ckpt = Checkpointer(wd / "checkpoints")
    step = ckpt.latest_step()
    assert step is not None and step >= 5
    c = _config(synthtalk_tiny)
    tr = Trainer(MotionTask(c), c, str(tmp_path / "fresh"))
    restored, state = ckpt.restore(tr.abstract_state())
    assert restored == step and int(state.step) == step


@pytest.mark.slow
def test_two_processes_match_one_process(synthtalk_tiny, tmp_path):
    """2 processes x 2 CPU devices (gloo) give the losses of 1 process x 4 devices."""
    steps = ["--config.train.steps=6", "--config.train.log_every=1"]
    mh = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "local_multihost.py"),
         "--num_processes=2", "--devices_per_process=2", "--",
         *_train_cmd(tmp_path / "mh", synthtalk_tiny, *steps)[2:]],
        env=_env(2), capture_output=True, text=True, timeout=600)
    assert mh.returncode == 0, mh.stderr[-3000:] + open(tmp_path / "mh" / "logs" / "process_1.log").read()[-3000:]
    c = _config(synthtalk_tiny, num_devices=4, **{"train.steps": 6})
    Trainer(MotionTask(c), c, str(tmp_path / "one")).fit()
    a, b = _losses(str(tmp_path / "mh")), _losses(str(tmp_path / "one"))
    assert sorted(a) == list(range(1, 7))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5 * max(1.0, abs(b[s])), (s, a[s], b[s])


@pytest.mark.reliability
@pytest.mark.slow
def test_a_killed_peer_fails_the_job_with_a_clear_error(synthtalk_tiny, tmp_path):
    wd = tmp_path / "mh"
    launcher = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "launch", "local_multihost.py"),
         "--num_processes=2", "--devices_per_process=1", "--heartbeat_timeout=5", "--grace=120",
         "--", *_train_cmd(wd, synthtalk_tiny, "--config.train.steps=100000",
                           "--config.train.log_every=1",
                           "--config.train.checkpoint_every=1000000")[2:]],
        env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = wd / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and '"step": 3,' in metrics.read_text()):
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        time.sleep(0.5)
    peer = subprocess.run(["pgrep", "-f", f"workdir={wd} .*process_id=1"], capture_output=True,
                          text=True).stdout.split()
    assert len(peer) == 1
    killed = time.time()
    os.kill(int(peer[0]), signal.SIGKILL)
    _, err = launcher.communicate(timeout=180)
    elapsed = time.time() - killed
    assert launcher.returncode == 1
    assert "process 1 was killed by SIGKILL" in err
    log0 = (wd / "logs" / "process_0.log").read_text()
    assert "another task died" in log0 or "stopped sending heartbeats" in log0
    assert elapsed < 60  # process 0 gave up on its own, well before the launcher's grace


@pytest.mark.reliability
def test_sigterm_on_a_checkpoint_step_saves_once_and_stops(synthtalk_tiny, tmp_path):
    """SIGTERM arriving at a step that was just checkpointed stops cleanly (no second save of
    the same step)."""
    from vasa_jax.train.trainer import Preempted

    class SigtermAtStep2(MotionTask):
        def evaluate(self, model, step):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return {}

    c = _config(synthtalk_tiny, **{"train.steps": 10, "train.checkpoint_every": 2,
                                   "train.eval_every": 1})
    with pytest.raises(Preempted) as stop:
        Trainer(SigtermAtStep2(c), c, str(tmp_path)).fit()
    assert stop.value.step == 2
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 2
