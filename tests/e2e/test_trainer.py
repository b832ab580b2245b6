"""The shared trainer on the stage-2 task: learning, sharding on an 8-device mesh, equality across
mesh shapes and process counts, exact resume, SIGTERM, the non-finite guard, mesh-changing
restore, and a killed peer."""

import json
import os
import shutil
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
    """The motion ``test`` config on one device unless ``over`` sets a mesh or a device count
    (one device compiles several times faster than the 8 simulated ones)."""
    if "mesh_shape" not in over:
        over.setdefault("num_devices", 1)
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


def _restored(workdir, config):
    """(step, train state) of the last checkpoint of ``workdir``, restored as a whole."""
    t = Trainer(MotionTask(config), config, str(workdir) + "_restored")
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    step, state = ckpt.restore(t.abstract_state())
    ckpt.close()
    return step, state


def _final_state(workdir, config):
    """(step, every leaf of the train state as numpy: params, optimiser state and EMA) of the
    last checkpoint of ``workdir``."""
    step, state = _restored(workdir, config)
    return step, [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.mark.reliability
def test_resume_continues_exactly_like_the_uninterrupted_run(synthtalk_tiny, tmp_path):
    """Interrupted at step 4 (async checkpoints) and resumed: losses, parameters, optimiser
    state and EMA equal the uninterrupted run's, bit for bit (the resumed loader starts at the
    restored step; ``test_loader`` checks that stream against the uninterrupted one)."""
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
    step_a, state_a = _final_state(tmp_path / "full", full)
    step_b, state_b = _final_state(tmp_path / "split", full)
    assert step_a == step_b == 8 and len(state_a) == len(state_b)
    for x, y in zip(state_a, state_b):
        np.testing.assert_array_equal(x, y)


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
    # Onto another device count (2 of the 8): the same parameter values again.
    c3 = _config(synthtalk_tiny, num_devices=2)
    two = Trainer(MotionTask(c3), c3, str(tmp_path / "two"))
    step, state = Checkpointer(tmp_path / "checkpoints").restore(two.abstract_state())
    assert step == 3 and jax.tree.leaves(state.params)[0].sharding.mesh.size == 2
    for x, y in zip(_params(a), [np.asarray(v) for v in jax.tree.leaves(state.params)]):
        np.testing.assert_array_equal(x, y)
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


def _wait_for_step(proc, workdir, step: int, timeout: float = 300) -> None:
    """Wait until the running job ``proc`` has logged ``step`` in ``workdir``; fail with its
    output if it ends first."""
    metrics, deadline = workdir / "metrics.jsonl", time.time() + timeout
    while not (metrics.exists() and f'"step": {step},' in metrics.read_text()):
        if proc.poll() is not None:
            out = [x.decode() if isinstance(x, bytes) else x for x in proc.communicate() if x]
            raise AssertionError("the job ended before step %d:\n%s" % (step, "".join(out)[-3000:]))
        assert time.time() < deadline, f"step {step} not logged within {timeout} s"
        time.sleep(0.2)


@pytest.mark.reliability
@pytest.mark.slow
def test_sigterm_leaves_a_restorable_checkpoint(synthtalk_tiny, tmp_path):
    wd = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(wd, synthtalk_tiny, "--config.train.steps=100000",
                                       "--config.train.checkpoint_every=1000000",
                                       "--config.train.log_every=1"),
                            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for_step(proc, wd, 5)
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


def _multihost(workdir, data_dir, *extra, devices=2, launcher=(), timeout=600, **popen):
    """``launch/local_multihost.py`` (options ``launcher``): 2 processes x ``devices`` CPU
    devices (gloo) training the motion ``test`` config into ``workdir``; a finished run, or with
    ``popen`` (``subprocess.Popen``'s keywords) a running one."""
    cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multihost.py"),
           "--num_processes=2", f"--devices_per_process={devices}", *launcher, "--",
           *_train_cmd(workdir, data_dir, *extra)[2:]]
    if popen:
        return subprocess.Popen(cmd, env=_env(devices), **popen)
    run = subprocess.run(cmd, env=_env(devices), capture_output=True, text=True, timeout=timeout)
    logs = [os.path.join(workdir, "logs", f"process_{i}.log") for i in range(2)]
    assert run.returncode == 0, run.stderr[-3000:] + "".join(
        open(f).read()[-3000:] for f in logs if os.path.exists(f))
    return run


STEPS = 16


def _two_process_run(checkpoint_every):
    """The launch/train.py flags of the 2-process runs below (they differ only in this)."""
    return (f"--config.train.steps={STEPS}", "--config.train.log_every=1",
            f"--config.train.checkpoint_every={checkpoint_every}")


@pytest.fixture(scope="module")
def two_process_run(synthtalk_tiny, tmp_path_factory):
    """The workdir of 16 steps in 2 processes x 2 devices, checkpoints at steps 8 and 16."""
    wd = tmp_path_factory.mktemp("two_processes") / "run"
    _multihost(wd, synthtalk_tiny, *_two_process_run(8))
    return wd


@pytest.mark.slow
def test_two_processes_match_one_process(synthtalk_tiny, two_process_run, tmp_path):
    """2 processes x 2 CPU devices (gloo) give the losses of 1 process x 4 devices."""
    c = _config(synthtalk_tiny, num_devices=4, **{"train.steps": STEPS})
    Trainer(MotionTask(c), c, str(tmp_path / "one")).fit()
    a, b = _losses(str(two_process_run)), _losses(str(tmp_path / "one"))
    assert sorted(a) == list(range(1, STEPS + 1))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5 * max(1.0, abs(b[s])), (s, a[s], b[s])


@pytest.mark.reliability
@pytest.mark.slow
def test_sigterm_in_two_processes_then_resume_is_bit_exact(synthtalk_tiny, two_process_run,
                                                           tmp_path):
    """SIGTERM to one process of two: both save the same step and exit 143; the job resumed
    in 2 processes ends with the state of the uninterrupted run (``two_process_run``): losses,
    parameters, optimiser state and EMA bit for bit."""
    wd = tmp_path / "run"
    launcher = _multihost(wd, synthtalk_tiny, *_two_process_run(1000000),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(launcher, wd, 2)
    peer = subprocess.run(["pgrep", "-f", f"workdir={wd} .*process_id=1"], capture_output=True,
                          text=True).stdout.split()
    assert len(peer) == 1
    os.kill(int(peer[0]), signal.SIGTERM)
    _, err = launcher.communicate(timeout=300)
    logs = [(wd / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    assert "process 0 exited with code 143" in err and "process 1 exited with code 143" in err, err
    stopped = Checkpointer(wd / "checkpoints").latest_step()
    assert stopped is not None and 2 <= stopped < STEPS, (stopped, err)
    for log in logs:
        assert f"SIGTERM: saved checkpoint at step {stopped}" in log, log[-3000:]
    _multihost(wd, synthtalk_tiny, *_two_process_run(8))
    a, b = _losses(str(two_process_run)), _losses(str(wd))
    assert sorted(b) == list(range(1, STEPS + 1))
    for s in range(stopped + 1, STEPS + 1):
        assert a[s] == b[s], (s, a[s], b[s])
    c = _config(synthtalk_tiny)
    step_a, state_a = _final_state(two_process_run, c)
    step_b, state_b = _final_state(wd, c)
    assert step_a == step_b == STEPS
    for x, y in zip(state_a, state_b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.reliability
@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(synthtalk_tiny, two_process_run,
                                                         tmp_path):
    """Step 8 of the 2-process run, resumed by 1 process x 4 devices to step 16: the same data
    (the loader starts at the step, whatever the process count) and so the losses and final
    parameters of the 2-process run (to float tolerance: other collectives)."""
    wd = tmp_path / "one"
    shutil.copytree(two_process_run / "checkpoints" / "8", wd / "checkpoints" / "8")
    c = _config(synthtalk_tiny, num_devices=4, **{"train.steps": STEPS})
    one = Trainer(MotionTask(c), c, str(wd))
    one.fit()
    a, b = _losses(str(two_process_run)), _losses(str(wd))
    assert sorted(b) == list(range(9, STEPS + 1))
    for s in b:
        assert abs(a[s] - b[s]) <= 1e-5 * max(1.0, abs(a[s])), (s, a[s], b[s])
    step, state = _restored(two_process_run, c)
    assert step == STEPS
    for x, y in zip(jax.tree.leaves(one.state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


# A process of a 2-process job fails at step 3 -> (its index, the signal that fails it, what the
# surviving process's log says: one of these).
PEER_FAILURES = {
    "killed peer": (1, signal.SIGKILL, ("another task died", "stopped sending heartbeats")),
    "killed coordinator": (0, signal.SIGKILL, ("Failed to send RPC to coordination service",
                                               "another task died")),
    "hung peer": (1, signal.SIGSTOP, ("stopped sending heartbeats",)),
}


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.parametrize("failure", sorted(PEER_FAILURES))
def test_a_failed_process_ends_the_job_with_a_clear_error(failure, synthtalk_tiny, tmp_path):
    """Killed, or stopped (a hang, as the others see it): the surviving process ends itself
    with the coordination service's error soon after the 5 s heartbeat timeout, never waiting
    for the launcher; the launcher names the failed process and kills a hung one after
    ``--grace``. Bounded: the whole job is over within a minute of the failure."""
    victim, sig, expected = PEER_FAILURES[failure]
    wd = tmp_path / "mh"
    launcher = _multihost(wd, synthtalk_tiny, "--config.train.steps=100000",
                          "--config.train.log_every=1", "--config.train.checkpoint_every=1000000",
                          devices=1, launcher=("--heartbeat_timeout=5", "--grace=20"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(launcher, wd, 3)
    pid = subprocess.run(["pgrep", "-f", f"workdir={wd} .*process_id={victim}"],
                         capture_output=True, text=True).stdout.split()
    assert len(pid) == 1
    failed = time.time()
    os.kill(int(pid[0]), sig)
    _, err = launcher.communicate(timeout=180)
    elapsed = time.time() - failed
    assert launcher.returncode == 1, err
    survivor = 1 - victim
    # It stopped itself (an error exit, or JAX's abort on the service's error), not the launcher.
    assert f"process {survivor} " in err and f"process {survivor} was killed by SIGKILL" not in err
    log = (wd / "logs" / f"process_{survivor}.log").read_text()
    assert any(e in log for e in expected), log[-3000:]
    if sig == signal.SIGKILL:
        assert f"process {victim} was killed by SIGKILL" in err, err
    assert elapsed < 60, elapsed


@pytest.mark.reliability
def test_sigterm_on_a_checkpoint_step_saves_once_and_stops(synthtalk_tiny, tmp_path):
    """SIGTERM arriving at a step that was just checkpointed stops cleanly (no second save of
    the same step), and the run resumed from there ends with the uninterrupted run's state (the
    one-process preemption path; two processes: ``test_sigterm_in_two_processes_...``)."""
    from vasa_jax.train.trainer import Preempted

    class SigtermAtStep2(MotionTask):
        def evaluate(self, model, step):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return {}

    c = _config(synthtalk_tiny, **{"train.steps": 10, "train.checkpoint_every": 2,
                                   "train.eval_every": 1})
    with pytest.raises(Preempted) as stop:
        Trainer(SigtermAtStep2(c), c, str(tmp_path / "run")).fit()
    assert stop.value.step == 2
    assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 2
    c.train.eval_every = 0  # a resume-free field: the state does not depend on it
    Trainer(MotionTask(c), c, str(tmp_path / "run")).fit()
    Trainer(MotionTask(c), c, str(tmp_path / "full")).fit()
    step_a, state_a = _final_state(tmp_path / "full", c)
    step_b, state_b = _final_state(tmp_path / "run", c)
    assert step_a == step_b == 10
    for x, y in zip(state_a, state_b):
        np.testing.assert_array_equal(x, y)
