"""The SynthTalk probe: model shapes, real training on res64_tiny, held-out metrics, loading."""

import json
import math
import os

import numpy as np
import pytest
from flax import nnx
from instrument_runs import copied_run

from data_pipeline.synthtalk.motion import MOTION_FIELDS
from vasa_jax.instruments import probe as sp
from vasa_jax.instruments.load import load_probe
from vasa_jax.train.heldout import write_heldout


def test_probe_shapes_on_uint8_and_float_frames():
    probe = sp.ProbeNetwork((8, 16, 16, 16), head=16, rngs=nnx.Rngs(0))
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    motion, logits = probe(frames)
    assert motion.shape == (2, 12) and logits.shape == (2, 4)
    assert motion.dtype == np.float32 and np.all(np.isfinite(motion))
    # uint8 [0, 255] and float [-1, 1] are the same image.
    again, _ = probe(frames.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_allclose(motion, again, atol=1e-5)
    probe.set_stats(np.arange(12.0), np.full(12, 2.0))
    phys, _ = probe.predict_motion(frames)
    np.testing.assert_allclose(phys, motion * 2.0 + np.arange(12.0), atol=1e-5)
    assert probe(np.zeros((1, 32, 32, 3), np.uint8))[0].shape == (1, 12)  # any R % 16 == 0
    with pytest.raises(ValueError, match="divisible by 16"):
        probe(np.zeros((1, 40, 40, 3), np.uint8))


def test_load_probe_without_a_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/probe.py:synthtalk64"):
        load_probe(str(tmp_path / "nothing"))


def test_pearson_is_nan_for_a_constant_ground_truth():
    assert math.isnan(sp.pearson_or_nan(np.arange(5.0), np.ones(5)))
    assert sp.pearson_or_nan(np.arange(5.0), 2 * np.arange(5.0)) == pytest.approx(1.0)


def test_train_then_heldout_then_load(probe_run, tmp_path):
    wd, c, rows = copied_run(probe_run, tmp_path, "probe",
                             {"eval/jaw_open_r", "eval/yaw_r", "eval/emotion_accuracy"})
    losses = [r["loss"] for r in rows]
    assert len(losses) == c.train.steps
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.85 * first, (first, last)

    # Without the held-out json the probe refuses to load (its accuracy must be reported).
    with pytest.raises(FileNotFoundError, match="write_heldout"):
        load_probe(wd)
    metrics = write_heldout(wd, c)
    assert metrics["num_frames"] == 2 * 25 and metrics["split"] == "test"
    with open(os.path.join(wd, sp.HELDOUT_FILE)) as f:
        json.load(f)  # valid JSON (NaN written as null)

    probe = load_probe(wd)
    keys = ({f"r/{f}" for f in MOTION_FIELDS} | {f"mae/{f}" for f in MOTION_FIELDS}
            | {"emotion_accuracy", "num_frames"})
    assert keys <= set(probe.heldout)
    assert probe.heldout["num_frames"] == metrics["num_frames"]
    frames = np.random.default_rng(1).integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)
    out = probe.predict(frames)  # more than one chunk, the last one padded
    assert out["motion"].shape == (300, 12) and out["motion"].dtype == np.float32
    assert out["emotion"].shape == (300,) and np.issubdtype(out["emotion"].dtype, np.integer)
    assert out["emotion_probs"].shape == (300, 4) and out["emotion_probs"].dtype == np.float32
    np.testing.assert_allclose(out["emotion_probs"].sum(-1), 1.0, atol=1e-5)
    small = probe.predict(frames[:3])
    np.testing.assert_allclose(small["motion"], out["motion"][:3], atol=1e-4)
    assert probe.predict(frames[:6].reshape(2, 3, 64, 64, 3))["motion"].shape == (2, 3, 12)
