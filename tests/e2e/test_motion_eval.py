"""Motion metrics and the ``vasa-jax eval motion`` / ``train motion`` commands."""

import json
import os

import numpy as np
import pytest

from vasa_jax import cli
from vasa_jax.eval import motion_metrics as mm


def _track(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.normal(size=n + 20), np.ones(5) / 5, "same")[10:10 + n]
    return x


def test_pearson():
    a = _track()
    assert mm.pearson(a, a) == pytest.approx(1.0)
    assert mm.pearson(a, -2 * a + 1) == pytest.approx(-1.0)
    assert mm.pearson(a, np.zeros_like(a)) == 0.0


@pytest.mark.parametrize("k", [-4, -1, 0, 2, 7])
def test_av_offset_finds_a_delay_of_k_frames(k):
    ref = [_track(seed=s) for s in range(5)]
    gen = [np.roll(r, k) for r in ref]  # generated lags the reference by k frames
    offset, conf, curve = mm.av_offset(gen, ref, max_lag=15)
    assert offset == k and conf > 0.5 and curve.shape == (31,)


def test_av_confidence_drops_for_unrelated_tracks():
    ref = [_track(seed=s) for s in range(10)]
    shuffled = [_track(seed=100 + s) for s in range(10)]
    assert mm.av_offset(shuffled, ref)[1] < 0.3 < mm.av_offset(ref, ref)[1]


def test_delta_p_and_gaze_error():
    pose = np.zeros((10, 3))
    pose[:, 0] = np.arange(10) * 0.01
    assert mm.delta_p(pose) == pytest.approx(0.01 / 3)
    g = np.tile([0.2, -0.1], (30, 1))
    assert mm.gaze_error_degrees(g, np.array([0.2, -0.1])) == pytest.approx(0.0, abs=1e-5)
    assert mm.gaze_error_degrees(g, np.array([0.2 + np.radians(5), -0.1])) == pytest.approx(
        5.0, abs=0.3)


@pytest.mark.slow
def test_train_then_eval_motion_cli(synthtalk_tiny, tmp_path, capsys):
    wd = str(tmp_path / "motion")
    assert cli.main(["train", "motion", "--variant", "test", "--workdir", wd, "--data-dir",
                     synthtalk_tiny, "--set", "train.steps=12"]) == 0
    assert cli.main(["eval", "motion", "--workdir", wd, "--steps", "3", "--cfg-audio", "0,1",
                     "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "Real video (ground truth)" in out and "λA=0" in out and "λA=1" in out
    report = json.load(open(tmp_path / "eval" / "motion_eval.json"))
    rows = report["rows"]
    assert len(rows) == 3 and report["meta"]["checkpoint_step"] == 12
    real = rows["Real video (ground truth)"]
    assert real["jaw_r"] == pytest.approx(1.0) and real["av_offset"] == 0
    assert real["delta_p_ratio"] == pytest.approx(1.0)
    for r in rows.values():
        assert set(r) >= {"jaw_r", "lip_width_r", "av_offset", "delta_p_ratio", "gaze_error_deg"}
    assert os.path.exists(tmp_path / "eval" / "motion_eval.md")


def test_eval_without_checkpoint_names_the_fix(tmp_path, capsys):
    assert cli.main(["eval", "motion", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "No checkpoint" in err and "vasa-jax train motion" in err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["train", "motion", "--variant", "test", "--workdir", str(tmp_path),
                     "--set", "train.stepz=3"]) == 2
    assert "Unknown config field 'train.stepz'" in capsys.readouterr().err
    assert cli.main(["train", "motion", "--variant", "huge", "--workdir", str(tmp_path)]) == 2
    assert "Unknown motion config variant 'huge'" in capsys.readouterr().err
