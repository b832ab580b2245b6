"""Clip sets and the paper-style table: export, reading (and its errors), the lip-sync and
chance columns, and ``vasa-jax eval --generated --real`` end to end."""

import json
import math
import os

import numpy as np
import pytest

from vasa_jax import cli
from vasa_jax.eval import clip_set as cs
from vasa_jax.eval import table
from vasa_jax.media.errors import InputError
from vasa_jax.media.video_io import write_mp4


@pytest.fixture(scope="module")
def real_set(synthtalk_tiny, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("real"))
    names = cs.export_synthtalk(out, dataset_config="res64_tiny", data_dir=synthtalk_tiny,
                                split="test")
    return out, names


def test_export_then_read_round_trips_frames_audio_and_truth(real_set, synthtalk_tiny):
    from data_pipeline.loader import decode_frame, open_source

    out, names = real_set
    source, _ = open_source("synthtalk", "res64_tiny", "test", synthtalk_tiny)
    assert len(names) == len(source) == 2
    clips = cs.read_clip_set(out)
    assert [c.name for c in clips] == names
    for c, i in zip(clips, range(len(source))):
        ex = source[i]
        truth = np.stack([decode_frame(b) for b in ex["frames"]])
        assert c.frames.shape == truth.shape == (25, 64, 64, 3)
        assert np.abs(c.frames.astype(int) - truth).mean() < 3.0  # near-lossless H.264
        assert c.audio.shape == (25 * 640,) and c.audio.dtype == np.float32
        assert np.corrcoef(c.audio, ex["audio"].astype(np.float32))[0, 1] > 0.95
        assert c.motion.shape == (25, 12)
        np.testing.assert_allclose(c.motion, ex["motion"], atol=1e-4)
        assert c.meta["emotion"] == int(ex["emotion"]) and len(c.meta["gaze"]) == 2


def test_clip_set_errors_name_the_file_and_the_fix(tmp_path, real_set):
    with pytest.raises(InputError, match="does not exist"):
        cs.read_clip_set(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .mp4 files"):
        cs.read_clip_set(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.mp4").write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="a.mp4"):
        cs.read_clip_set(str(bad))
    mute = tmp_path / "mute"
    mute.mkdir()
    write_mp4(str(mute / "m.mp4"), np.zeros((5, 16, 16, 3), np.uint8))
    with pytest.raises(InputError, match="speech track"):
        cs.read_clip_set(str(mute))
    out, names = real_set
    broken = tmp_path / "json"
    broken.mkdir()
    write_mp4(str(broken / "j.mp4"), np.zeros((5, 16, 16, 3), np.uint8), np.zeros(3200))
    (broken / "j.json").write_text("{oops")
    with pytest.raises(InputError, match="j.json"):
        cs.read_clip_set(str(broken))
    with pytest.raises(InputError, match=f"{names[0]}.mp4"):
        cs.read_clip_set(str(broken), names=names)


def test_other_frame_rates_are_resampled_to_25_fps(tmp_path):
    frames = np.zeros((50, 16, 16, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(50)[:, None, None] * 5  # frame index in the red channel
    write_mp4(str(tmp_path / "v.mp4"), frames, np.zeros(32000), fps=50)
    (clip,) = cs.read_clip_set(str(tmp_path))
    assert len(clip.frames) == 25 and clip.audio.shape == (25 * 640,)
    red = clip.frames[:, 8, 8, 0].astype(float) / 5
    np.testing.assert_allclose(red, np.arange(0, 50, 2), atol=1.5)


def _readings_with_mouth(clips, delay):
    """Readings whose mouth track is the ground-truth jaw of the clip shown ``delay`` frames
    late (what a perfect instrument would read off a delayed video)."""
    out = []
    for c in clips:
        jaw = c.motion[:, table.JAW]
        late = np.concatenate([np.full(delay, jaw[0]), jaw[:len(jaw) - delay]])
        out.append(table.ClipReading(c.name, pose=c.motion[:, table.POSE], mouth=late,
                                     motion=c.motion))
    return out


@pytest.mark.parametrize("delay", [0, 2, 5])
def test_delaying_the_video_by_k_frames_moves_the_av_offset_by_k(delay, tmp_path):
    rng = np.random.default_rng(0)
    clips = []
    for i in range(4):  # SynthTalk-like mouth tracks: smoothed random phones, 75 frames
        jaw = np.convolve(rng.random(90), np.ones(4) / 4, "same")[:75]
        motion = np.zeros((75, 12), np.float32)
        motion[:, table.JAW] = jaw
        clips.append(cs.Clip(f"c{i}", np.zeros((75, 8, 8, 3), np.uint8), np.zeros(48000),
                             {"motion": motion.tolist()}))
    row = table.summarise(_readings_with_mouth(clips, delay), clips, clips)
    assert row["av_offset"] == delay
    assert row["av_confidence"] > 0.5


def test_shuffled_audio_moves_every_clip_speech_and_the_lip_truth_with_it(real_set):
    out, _ = real_set
    clips = cs.read_clip_set(out)
    more = clips + [cs.Clip(f"x{i}", c.frames, c.audio[::-1].copy(), dict(c.meta))
                    for i, c in enumerate(clips)]
    shuffled = table.shuffled_audio(more, seed=3)
    for orig, s in zip(more, shuffled):
        assert s.meta[table.AUDIO_OF] != orig.name
        assert not np.array_equal(s.audio, orig.audio)
        np.testing.assert_array_equal(s.frames, orig.frames)
    assert sorted(s.meta[table.AUDIO_OF] for s in shuffled) == sorted(c.name for c in more)
    with pytest.raises(ValueError, match="two clips"):
        table.shuffled_audio(more[:1])


def test_markdown_leaves_out_empty_columns_and_json_has_no_nan(tmp_path):
    rows = {"Real video": dict({k: math.nan for k, _, _ in table.COLUMNS}, jaw_r=0.9,
                               num_clips=2.0),
            "ours": dict({k: math.nan for k, _, _ in table.COLUMNS}, jaw_r=0.1, num_clips=2.0)}
    md = table.markdown_table(rows)
    assert "jaw r" in md and "FVD" not in md and "| ours | 0.100 | 2 |" in md
    res = {k: table.SetResult(v, []) for k, v in rows.items()}
    paths = table.write_report(res, str(tmp_path), meta={"title": "t"}, accuracies={},
                               plots=False)
    data = json.load(open(paths["json"]))
    assert data["rows"]["ours"]["fvd"] is None and data["rows"]["ours"]["jaw_r"] == 0.1


def _with_heldout(run, tmp_path, kind):
    """A copy of a session-trained instrument workdir with its held-out file written."""
    import shutil

    from vasa_jax.train.heldout import write_heldout

    src, config, _ = run
    wd = str(tmp_path / kind)
    shutil.copytree(src, wd)
    write_heldout(wd, config)
    return wd


@pytest.mark.slow
def test_eval_cli_generates_a_set_and_writes_the_table(real_set, generation_workdirs, probe_run,
                                                       syncnet_run, capp_run, tmp_path):
    real_dir, names = real_set
    latent_wd, motion_wd = generation_workdirs
    gen = str(tmp_path / "gen")
    assert cli.main(["eval", "generate-set", "--latent-workdir", latent_wd, "--motion-workdir",
                     motion_wd, "--real", real_dir, "--out", gen, "--steps", "2"]) == 0
    assert sorted(os.listdir(gen)) == sorted([f"{n}.mp4" for n in names] +
                                             [f"{n}.json" for n in names])
    meta = json.load(open(os.path.join(gen, f"{names[0]}.json")))
    assert meta["generation"]["reference"] == names[0] and meta["generation"]["steps"] == 2
    probe_wd, syncnet_wd, capp_wd = (_with_heldout(r, tmp_path, k) for r, k in
                                     ((probe_run, "probe"), (syncnet_run, "syncnet"),
                                      (capp_run, "capp")))

    out = str(tmp_path / "eval")
    code = cli.main(["eval", "--generated", f"ours={gen}", "--real", real_dir, "--probe",
                     probe_wd, "--syncnet", syncnet_wd, "--capp", capp_wd, "--no-fvd",
                     "--shuffled-row", "--out", out])
    assert code == 0
    data = json.load(open(os.path.join(out, "eval.json")))
    rows = data["rows"]
    assert list(rows) == ["Real video", "Real video, audio shuffled (chance)", "ours"]
    for row in rows.values():
        for key in ("lse_c", "lse_d", "av_offset", "jaw_r", "capp", "delta_p",
                    "emotion_accuracy", "identity_lpips"):
            assert row[key] is not None and np.isfinite(row[key]), key
    real, chance = rows["Real video"], rows["Real video, audio shuffled (chance)"]
    assert real["delta_p_ratio"] == 1.0
    # The chance row shows the real frames: frame-only readings are the real row's, while the
    # lips are now compared with the truth of the other clip's speech.
    for key in ("delta_p", "emotion_accuracy", "identity_lpips"):
        assert chance[key] == real[key], key
    assert chance["jaw_r"] < real["jaw_r"]
    assert set(data["instruments"]) == {"probe", "syncnet", "capp"}
    for name in ("eval.md", "eval_mouth_tracks.png", "eval_bars.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    # A generated set that lacks a real clip is refused before anything is measured.
    os.remove(os.path.join(gen, f"{names[1]}.mp4"))
    assert cli.main(["eval", "--generated", gen, "--real", real_dir, "--no-fvd",
                     "--out", str(tmp_path / "eval2")]) == 2
    assert not os.path.exists(tmp_path / "eval2")
