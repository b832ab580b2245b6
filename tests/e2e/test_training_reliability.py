"""Training loses nothing and hides nothing (issue 20): damaged records are skipped, counted,
logged and limited; a run of non-finite steps stops without saving; a resume with another
config says what changed; an unreadable latest checkpoint (damaged files, a save killed by
SIGKILL) falls back to the previous complete step.

All on the motion ``test`` config with a few steps; one trained workdir (``good_run``) is copied
by the tests that need a checkpoint."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import TINY
from trainer_configs import make_test_config

from configs.motion import get_config
from data_pipeline.loader import (SKIP_REASONS, LoaderConfig, SkippedRecords, TooManyBadRecords,
                                  dataset_dir, make_loader, open_source)
from vasa_jax.checkpoint import Checkpointer, CheckpointMismatch
from vasa_jax.train.motion_task import MotionTask
from vasa_jax.train.trainer import NonFiniteSteps, Trainer, read_metrics

pytestmark = pytest.mark.reliability

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAMAGE = {1: "bad_frame", 3: "short_audio", 5: "bad_record"}  # train record -> what is broken


def _config(data_dir, **over):
    """The motion ``test`` config on one device unless ``over`` sets a mesh or a device count
    (one device compiles several times faster than the 8 simulated ones)."""
    if "mesh_shape" not in over:
        over.setdefault("num_devices", 1)
    return make_test_config(get_config, data_dir, **over)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_identical(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


# -- damaged records ---------------------------------------------------------------------------
def _damage_train_split(data_dir: str, damage: dict[int, str]) -> None:
    """Rewrite records of res64_tiny's train split in place: ``bad_frame`` cuts the first
    frame's PNG to 100 bytes, ``short_audio`` keeps half the audio samples (the stored Example
    no longer fits the declared shape), ``bad_record`` cuts the serialized record in half."""
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
    from tensorflow_datasets.proto import tf_example_pb2

    (path,) = glob.glob(str(dataset_dir("synthtalk", TINY, data_dir) / "*-train.array_record*"))
    reader = ArrayRecordReader(path)
    records = list(reader.read_all())
    reader.close()
    for i, kind in damage.items():
        ex = tf_example_pb2.Example.FromString(records[i])
        feature = ex.features.feature
        if kind == "bad_frame":
            frames = feature["frames"].bytes_list.value
            frames[0] = frames[0][:100]
        elif kind == "short_audio":
            del feature["audio"].int64_list.value[len(feature["audio"].int64_list.value) // 2:]
        records[i] = ex.SerializeToString()
        if kind == "bad_record":
            records[i] = records[i][:len(records[i]) // 2]
    writer = ArrayRecordWriter(path, "group_size:1")
    for r in records:
        writer.write(r)
    writer.close()


@pytest.fixture(scope="module")
def damaged_tiny(synthtalk_tiny, tmp_path_factory) -> str:
    """A copy of the res64_tiny data dir whose train records ``DAMAGE`` are broken."""
    data_dir = str(tmp_path_factory.mktemp("damaged") / "tfds")
    shutil.copytree(synthtalk_tiny, data_dir)
    _damage_train_split(data_dir, DAMAGE)
    return data_dir


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_skips_damaged_records_and_counts_them(synthtalk_tiny, damaged_tiny, workers):
    """One pass in stored order: each damaged position is filled by the next record, the rows
    are the intact clips (equal to the stored ones), and the counts come back per reason, also
    from a grain worker process."""
    source, _ = open_source("synthtalk", TINY, "train", synthtalk_tiny)
    cfg = LoaderConfig(config=TINY, data_dir=damaged_tiny, num_frames=10, batch_size=2,
                       shuffle=False, num_epochs=1, random_window=False, augment=False,
                       worker_count=workers)
    rows, counts = [], np.zeros(len(SKIP_REASONS), int)
    for b in make_loader(cfg):
        counts += b["skipped_records"].sum(0)
        for j in range(len(b["pos"])):
            rows.append((int(b["pos"][j]), (int(b["identity"][j]), int(b["clip"][j])),
                         b["motion"][j]))
    assert dict(zip(SKIP_REASONS, counts.tolist())) == {"bad_record": 1, "bad_frame": 1,
                                                         "short_audio": 1}
    used = [0, 2, 2, 4, 4, 6, 6, 7]  # position p reads record p; 1, 3, 5 take the next one
    assert [p for p, _, _ in rows] == list(range(8))
    for (_, key, motion), record in zip(rows, used):
        stored = source[record]
        assert key == (int(stored["identity"]), int(stored["clip"]))
        np.testing.assert_array_equal(motion, stored["motion"][:10])


def test_too_many_skipped_records_is_a_clear_error(damaged_tiny):
    """The share is judged only after ``judge_after`` records; past the limit the error names the
    dataset, the reasons with their counts and the field to raise."""
    cfg = LoaderConfig(config=TINY, data_dir=damaged_tiny, num_frames=10, batch_size=4,
                       shuffle=False, num_epochs=2, random_window=False, augment=False)
    batches = list(make_loader(cfg))  # 16 rows, 6 records skipped
    lenient = SkippedRecords("synthtalk/res64_tiny", max_fraction=0.5, judge_after=1)
    early = SkippedRecords("synthtalk/res64_tiny", max_fraction=0.01, judge_after=1000)
    strict = SkippedRecords("synthtalk/res64_tiny", max_fraction=0.1, judge_after=10)
    for tally in (lenient, early, strict):
        for b in batches:
            tally.add(dict(b))
    for tally in (lenient, early):
        tally.check(*tally.totals())
    counts, used = strict.totals()
    assert used == 16 and counts.tolist() == [2, 2, 2]
    assert strict.metrics(counts, used)["data/skipped_fraction"] == pytest.approx(6 / 22)
    with pytest.raises(TooManyBadRecords) as err:
        strict.check(counts, used)
    msg = str(err.value)
    for part in ("synthtalk/res64_tiny", "6 of the 22 records", "bad_record 2", "bad_frame 2",
                 "short_audio 2", "data.max_skipped_fraction=0.1"):
        assert part in msg, (part, msg)


def test_training_on_damaged_data_logs_the_skips_and_stops_past_the_limit(damaged_tiny,
                                                                         tmp_path):
    """Real steps on the damaged split: the cumulative counts are in metrics.jsonl (step 1 is
    below ``skip_check_after``), and step 2 stops with TooManyBadRecords."""
    c = _config(damaged_tiny, **{"train.steps": 6, "data.max_skipped_fraction": 0.05,
                                 "data.skip_check_after": 12})
    trainer = Trainer(MotionTask(c), c, str(tmp_path))
    it = iter(trainer.task.train_loader())  # the same stream the trainer reads
    first = next(it)["skipped_records"].sum(0)
    per_step = [first, first + next(it)["skipped_records"].sum(0)]  # cumulative
    with pytest.raises(TooManyBadRecords, match="synthtalk/res64_tiny .*short_audio"):
        trainer.fit()
    rows = {r["step"]: r for r in read_metrics(str(tmp_path)) if "data/skipped_fraction" in r}
    assert sorted(rows) == [1, 2]
    for step, want in zip((1, 2), per_step):
        got = [rows[step][f"data/skipped_{r}"] for r in SKIP_REASONS]
        assert got == want.tolist(), (step, got, want)
    assert rows[1]["data/skipped_short_audio"] >= 1 and rows[1]["data/skipped_bad_record"] >= 1
    assert rows[1]["data/skipped_bad_frame"] == 0  # stage 2 never decodes the pixels


# -- non-finite steps --------------------------------------------------------------------------
class NaNFromStep(MotionTask):
    """Stage 2 whose batches get a NaN in the motion from training step ``bad_from`` on."""

    bad_from = 5

    def device_batch(self, batch):
        out = super().device_batch(batch)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls >= self.bad_from:
            out["motion"][0, 0, 0] = np.nan
        return out


def test_nonfinite_steps_leave_the_state_untouched_and_a_long_run_of_them_stops(
        synthtalk_tiny, tmp_path):
    """Steps 5.. are non-finite, the limit is 3, logs every 5 steps and checkpoints every 2:
    the checkpoint of step 6 (two skipped steps) holds bit for bit the parameters, optimiser
    state and EMA of step 4; the run of skipped steps is noticed at the checkpoint step 8 (no
    host sync per step) and stops there without saving."""
    c = _config(synthtalk_tiny, **{"train.steps": 12, "train.log_every": 5,
                                   "train.checkpoint_every": 2, "train.keep_checkpoints": 10,
                                   "train.max_nonfinite_steps": 3})
    trainer = Trainer(NaNFromStep(c), c, str(tmp_path))
    with pytest.raises(NonFiniteSteps) as err:
        trainer.fit()
    msg = str(err.value)
    for part in ("Stopped at step 8", "4 training steps in a row from step 5",
                 "train.max_nonfinite_steps=3", "those of step 4", "step 6 in"):
        assert part in msg, (part, msg)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 6
    _, before = ckpt.restore(trainer.abstract_state(), step=4)
    _, after = ckpt.restore(trainer.abstract_state(), step=6)
    for name in ("params", "opt_state", "ema", "rest"):
        _assert_identical(getattr(before, name), getattr(after, name))
    assert (int(after.step), int(after.nonfinite)) == (6, 2)
    _assert_identical(before.params, trainer.state.params)  # and nothing moved afterwards
    row = {r["step"]: r for r in read_metrics(str(tmp_path)) if "loss" in r}[5]
    assert row["skipped"] == 1.0 and not np.isfinite(row["loss"])


# -- resuming ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_run(synthtalk_tiny, tmp_path_factory):
    """(workdir, trainer) of 4 steps with checkpoints at steps 2 and 4 and a learning-rate
    decay of fixed length (so extending ``train.steps`` changes nothing else)."""
    c = _config(synthtalk_tiny, **{"train.steps": 4, "train.checkpoint_every": 2,
                                   "optim.decay_steps": 8})
    wd = str(tmp_path_factory.mktemp("good_run"))
    trainer = Trainer(MotionTask(c), c, wd)
    trainer.fit()
    assert Checkpointer(os.path.join(wd, "checkpoints")).manager.all_steps()[-2:] == [2, 4]
    return wd, trainer


def _copy(workdir, tmp_path) -> str:
    out = str(tmp_path / "run")
    shutil.copytree(workdir, out)
    return out


def test_resume_with_other_parameter_shapes_names_them(good_run, synthtalk_tiny, tmp_path):
    wd = _copy(good_run[0], tmp_path)
    c = _config(synthtalk_tiny, **{"train.steps": 4, "train.checkpoint_every": 2,
                                   "optim.decay_steps": 8, "model.width": 48})
    with pytest.raises(CheckpointMismatch) as err:
        Trainer(MotionTask(c), c, wd).fit(allow_config_change=True)  # no flag helps here
    msg = str(err.value)
    assert "checkpoint step 4" in msg and "model.width: 32 -> 48" in msg
    assert ("params/model/audio_in/fc1/kernel: shape (32, 32) in the checkpoint, (32, 48) in "
            "this model") in msg


def test_resume_with_other_training_values_needs_the_flag(good_run, synthtalk_tiny, tmp_path):
    """Another learning rate and batch size stop the resume with the diff; the flag accepts
    them; changed logging/evaluation fields alone are no reason to stop."""
    wd = _copy(good_run[0], tmp_path)
    base = {"train.steps": 4, "train.checkpoint_every": 2, "optim.decay_steps": 8}
    c = _config(synthtalk_tiny, **base, **{"optim.lr": 1e-4, "data.batch_size": 16,
                                           "train.log_every": 3, "train.eval_every": 7})
    trainer = Trainer(MotionTask(c), c, wd)
    with pytest.raises(CheckpointMismatch) as err:
        trainer.fit()
    msg = str(err.value)
    assert "data.batch_size: 8 -> 16" in msg and "optim.lr: 0.003 -> 0.0001" in msg
    assert "log_every" not in msg and "--allow-config-change" in msg
    trainer.fit(allow_config_change=True)  # restores step 4 of 4: nothing left to train
    assert int(trainer.state.step) == 4
    _assert_identical(trainer.state.params, good_run[1].state.params)


def test_extending_a_run_needs_the_flag_only_when_the_decay_follows_its_length(
        good_run, synthtalk_tiny, tmp_path):
    """A larger train.steps alone: with optim.decay_steps=0 (stored config edited to say so)
    the cosine decay would stretch, so the resume stops and says how the rate moves. (With a
    fixed decay length it resumes freely: test_resume_past_a_damaged_step_... does that.)"""
    import json

    wd = _copy(good_run[0], tmp_path)
    for step in ("2", "4"):
        path = os.path.join(wd, "checkpoints", step, "config", "metadata")
        with open(path) as f:
            stored = json.load(f)
        stored["optim"]["decay_steps"] = 0
        with open(path, "w") as f:
            json.dump(stored, f)
    c = _config(synthtalk_tiny, **{"train.steps": 6, "train.checkpoint_every": 2})
    with pytest.raises(CheckpointMismatch) as err:
        Trainer(MotionTask(c), c, wd, prepare=False).fit()
    msg = str(err.value)
    assert "train.steps: 4 -> 6" in msg and "decay_steps: 0 ->" not in msg
    assert "train.steps also sets where the learning-rate decay ends" in msg


def _truncate(pattern: str) -> None:
    paths = glob.glob(pattern, recursive=True)
    assert paths, pattern
    for p in paths:
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) // 2)


DAMAGES = {  # what a bad save or copy leaves in the latest step
    "array data": "state/**/d/*",
    "state metadata": "state/_METADATA",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_unreadable_latest_step_falls_back_to_the_previous_one(good_run, tmp_path, damage,
                                                               caplog):
    wd = _copy(good_run[0], tmp_path)
    _truncate(os.path.join(wd, "checkpoints", "4", DAMAGES[damage]))
    trainer = good_run[1]
    step, state = Checkpointer(os.path.join(wd, "checkpoints")).restore(trainer.abstract_state())
    assert step == 2 and int(state.step) == 2
    assert "Checkpoint step 4 in" in caplog.text and "unreadable" in caplog.text


def test_resume_past_a_damaged_step_sets_it_aside_and_extends_the_run(good_run, synthtalk_tiny,
                                                                      tmp_path, caplog):
    """Step 4's arrays are truncated: the resume (to 6 steps, allowed without the flag since the
    decay length is fixed) warns, restores step 2, moves step 4 aside, saves 4 and 6 anew, and
    continues exactly like the undamaged run."""
    wd = _copy(good_run[0], tmp_path)
    _truncate(os.path.join(wd, "checkpoints", "4", DAMAGES["array data"]))
    c = _config(synthtalk_tiny, **{"train.steps": 6, "train.checkpoint_every": 2,
                                   "optim.decay_steps": 8})
    trainer = Trainer(MotionTask(c), c, wd)
    trainer.fit()
    assert "Checkpoint step 4 in" in caplog.text
    aside = glob.glob(os.path.join(wd, "checkpoints.unreadable", "4.*"))
    assert len(aside) == 1
    assert Checkpointer(os.path.join(wd, "checkpoints")).manager.all_steps()[-2:] == [4, 6]
    losses = {}
    for r in read_metrics(wd):
        if "loss" in r:
            losses.setdefault(r["step"], []).append(r["loss"])
    assert losses[3] == losses[3][:1] * 2 and losses[4] == losses[4][:1] * 2  # replayed alike
    assert 6 in losses


def _env(devices):
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_sigkill_during_an_async_save_resumes_from_the_last_complete_step(synthtalk_tiny,
                                                                          tmp_path):
    """``launch/train.py`` with asynchronous checkpoints every 2 steps is killed (SIGKILL) while
    a save is in progress (its temporary directory exists): the checkpoint directory then holds
    only complete steps plus that temporary directory, and a resume continues from the latest
    complete step and cleans the leftover."""
    wd = tmp_path / "run"
    ckdir = wd / "checkpoints"
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "launch", "train.py"),
         "--config=" + os.path.join(ROOT, "configs", "motion.py") + ":test", f"--workdir={wd}",
         f"--config.data.data_dir={synthtalk_tiny}", "--config.train.steps=100000",
         "--config.train.checkpoint_every=2", "--config.train.async_checkpoints=True",
         "--config.train.log_every=1"], env=_env(2), stdout=log, stderr=subprocess.STDOUT)
    caught, deadline = None, time.time() + 300
    try:
        while caught is None and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            names = [p.name for p in ckdir.iterdir()] if ckdir.exists() else []
            tmp = [n for n in names if ".orbax-checkpoint-tmp" in n]
            if tmp and any(n.isdigit() for n in names):
                os.kill(proc.pid, signal.SIGKILL)
                caught = tmp[0]
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    assert caught, "no save in progress was seen within the time limit"
    last = Checkpointer(ckdir).latest_step()
    assert last is not None and last <= int(caught.split(".")[0])
    c = _config(synthtalk_tiny, **{"train.steps": last + 2, "train.checkpoint_every": 2})
    trainer = Trainer(MotionTask(c), c, str(wd))
    trainer.fit(allow_config_change=True)  # train.steps and async saves differ from the run's
    assert int(trainer.state.step) == last + 2
    steps = [r["step"] for r in read_metrics(str(wd)) if "loss" in r]
    assert steps[-2:] == [last + 1, last + 2]
    assert not [n for n in os.listdir(ckdir) if ".orbax-checkpoint-tmp" in n]


def test_the_cli_flag_carries_the_permission(good_run, synthtalk_tiny, tmp_path, capsys):
    """``vasa-jax train`` reports a changed config as a user error (exit 2, the diff on stderr)
    and resumes with ``--allow-config-change``."""
    from vasa_jax import cli

    wd = _copy(good_run[0], tmp_path)
    same = ["train.steps=4", "train.checkpoint_every=2", "optim.decay_steps=8",
            "train.log_every=1", "train.async_checkpoints=False"]
    args = ["train", "motion", "--variant", "test", "--workdir", wd, "--data-dir",
            synthtalk_tiny, *[a for s in [*same, "optim.lr=1e-4"] for a in ("--set", s)]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.003 -> 0.0001" in err and "--allow-config-change" in err
    assert cli.main([*args, "--allow-config-change"]) == 0
