"""TFDS builder ``voxceleb2`` over a fake download of real mp4s (H.264 + AAC, written with PyAV
from SynthTalk clips at 30 fps, 80 px, 22.05 kHz stereo): the standard TFDS builder test, skipped
files counted and reported, Beam DirectRunner == plain build, the grain loader's frame/audio
alignment (an impulse at frame k lands in samples [640 k, 640 (k + 1))), and the CLI."""

import atexit
import functools
import json
import math
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline.loader import LoaderConfig, make_loader, open_source
from data_pipeline.voxceleb2 import decode, fake_tree, quality
from data_pipeline.voxceleb2 import voxceleb2_dataset_builder as vb

CONFIG = vb.make_config(32, 25, validation_fraction=0.25)  # 4 dev identities -> 1 for validation
BEAM_FLAGS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


@functools.lru_cache(maxsize=None)
def _tree() -> fake_tree.FakeTree:
    """The fake download, written once per test process."""
    root = tempfile.mkdtemp(prefix="voxceleb2_fake_")
    atexit.register(shutil.rmtree, root, True)
    return fake_tree.write_fake_tree(root, clip_frames=CONFIG.clip_frames)


def _expected_splits(tree: fake_tree.FakeTree) -> dict[str, int]:
    val = set(vb.validation_identities(tree.dev, CONFIG.validation_fraction))
    return {"train": sum(tree.clips[i] for i in tree.dev if i not in val),
            "validation": sum(tree.clips[i] for i in val),
            "test": sum(tree.clips[i] for i in tree.test)}


def _check_summary(summary: dict, tree: fake_tree.FakeTree) -> None:
    """Every skipped file is counted under its reason and named in the report."""
    want = {r: sum(1 for v in tree.skipped.values() if v == r) for r in decode.VIDEO_REASONS}
    assert summary["skipped_videos"] == want
    named = {f["path"]: reason for reason, files in summary["skipped_files"].items()
             for f in files}
    assert named == tree.skipped
    assert summary["videos"] == tree.num_files
    assert summary["splits"] == _expected_splits(tree)
    assert summary["videos_with_clips"] == tree.num_files - len(tree.skipped)


class Voxceleb2BuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = vb.Voxceleb2
    BUILDER_CONFIG_NAMES_TO_TEST = [CONFIG]
    SKIP_CHECKSUMS = True

    @classmethod
    def setUpClass(cls):
        tree = _tree()
        cls.EXAMPLE_DIR = tree.root  # the dummy data: the fake download as the manual dir
        cls.SPLITS = _expected_splits(tree)
        super().setUpClass()

    def _make_builder(self, config=None):
        # as_dataset (tf.data) reads TFRecord only; the loader's ArrayRecord path is below.
        return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                                  file_format="tfrecord")

    def _download_and_prepare_as_dataset(self, builder):
        super()._download_and_prepare_as_dataset(builder)
        _check_summary(builder.summary, _tree())
        stored = vb.read_build_report(builder.data_dir)
        self.assertEqual(stored["skipped_videos"], builder.summary["skipped_videos"])
        self.assertEqual(builder.info.metadata["build"]["clips_written"],
                         sum(self.SPLITS.values()))
        self.assertEqual(builder.info.metadata["validation_identities"], [_tree().dev[2]])


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{"plain"|"beam": (data_dir, dataset dir, summary)} of ArrayRecord builds."""
    from apache_beam.options.pipeline_options import PipelineOptions

    tree = _tree()
    data_dir = str(tmp_path_factory.mktemp("plain"))
    out = {"plain": (data_dir, *vb.build_voxceleb2(tree.root, CONFIG, data_dir=data_dir))}
    assert out["plain"][2]["beam"] is False
    # Beam through TFDS's own switch (as `tfds build --beam_pipeline_options` sets it): a
    # download config with Beam options turns the builder to Beam.
    data_dir = str(tmp_path_factory.mktemp("beam"))
    builder = vb.Voxceleb2(config=CONFIG, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=tree.root, beam_options=PipelineOptions(flags=BEAM_FLAGS)))
    assert builder.summary["beam"] is True
    out["beam"] = (data_dir, builder.data_dir, builder.summary)
    return out


def _by_key(data_dir: str, split: str) -> dict:
    source, _ = open_source("voxceleb2", CONFIG.name, split, data_dir)
    out = {}
    for i in range(len(source)):
        ex = source[i]
        key = (int(ex["identity"]), ex["video_id"], int(ex["utterance"]), int(ex["clip"]))
        assert key not in out
        out[key] = ex
    return out


def test_beam_build_equals_plain_build(builds):
    tree = _tree()
    for mode in ("plain", "beam"):
        _check_summary(builds[mode][2], tree)
    for split, n in _expected_splits(tree).items():
        plain, beam = _by_key(builds["plain"][0], split), _by_key(builds["beam"][0], split)
        assert len(plain) == n and plain.keys() == beam.keys()
        for key, a in plain.items():
            b = beam[key]
            assert a.keys() == b.keys() == {"frames", "audio", "identity", "clip", "video_id",
                                            "utterance", "motion", "mouth_centre"}
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{key} {k}")
    assert builds["beam"][2]["hours_of_video"] == pytest.approx(
        builds["plain"][2]["hours_of_video"])
    # The mp4 without audio got its sound from the separate m4a.
    separate = [ex for key, ex in _by_key(builds["plain"][0], "train").items()
                if key[1] == fake_tree.SEPARATE_M4A.encode()]
    assert len(separate) == 2
    for ex in separate:
        assert np.sqrt(np.mean(ex["audio"].astype(np.float64) ** 2)) > 300  # speech, not zeros


def test_loader_yields_aligned_frames_and_audio(builds):
    tree = _tree()
    imp = tree.impulse
    data_dir = builds["plain"][0]
    source, _ = open_source("voxceleb2", CONFIG.name, "train", data_dir)
    record = [i for i in range(len(source)) if source[i]["video_id"] == fake_tree.IMPULSE.encode()
              and int(source[i]["clip"]) == imp["clip"]]
    assert len(record) == 1 and int(source[record[0]]["identity"]) == imp["identity"]
    common = dict(dataset="voxceleb2", config=CONFIG.name, split="train", data_dir=data_dir,
                  batch_size=2, shuffle=False, num_epochs=1, augment=False,
                  drop_remainder=False)
    for num_frames, random_window in ((25, False), (16, True)):
        loader = make_loader(LoaderConfig(num_frames=num_frames, random_window=random_window,
                                          **common))
        rows = 0
        for batch in loader:
            assert batch["frames"].shape[1:] == (num_frames, 32, 32, 3)
            assert batch["audio"].shape[1:] == (num_frames * 640,)
            assert batch["frames"].dtype == np.uint8 and batch["audio"].dtype == np.float32
            assert {"identity", "clip", "start", "pos"} <= batch.keys()
            for b in np.flatnonzero(batch["pos"] == record[0]):  # unshuffled: pos = record
                rows += 1
                assert batch["identity"][b] == imp["identity"]
                assert batch["clip"][b] == imp["clip"]
                start = int(batch["start"][b])
                k = imp["frame"] - start  # the white frame within the window
                assert 0 <= k < num_frames, "pick a window length that keeps the impulse"
                brightness = batch["frames"][b].reshape(num_frames, -1).mean(axis=1)
                assert int(np.argmax(brightness)) == k and brightness[k] > 240
                assert brightness[np.arange(num_frames) != k].max() < 200
                peak = int(np.argmax(np.abs(batch["audio"][b])))
                assert 640 * k <= peak < 640 * (k + 1), (peak, k)
                assert abs(peak - (imp["sample"] - 640 * start)) <= 8
        assert rows == 1
    # Audio-only batches (no pixels): the window length comes from the audio.
    batch = next(iter(make_loader(LoaderConfig(num_frames=20, frames=False, **common))))
    assert "frames" not in batch and batch["audio"].shape == (2, 20 * 640)


def test_face_mesh_labels_are_stored_and_loaded(voxceleb2_labelled, tmp_path):
    """A build from 128 px sources stores per-frame face-mesh ``motion`` (SynthTalk's 12
    fields; NaN where unmeasured) and ``mouth_centre``; the loader windows both and mirrors them
    with the frames; a ``_nolabels`` config stores neither."""
    manual_dir, data_dir, name = voxceleb2_labelled
    source, _ = open_source("voxceleb2", name, "train", data_dir)
    ex = source[0]
    motion, centre = np.asarray(ex["motion"]), np.asarray(ex["mouth_centre"])
    assert motion.shape == (25, 12) and centre.shape == (25, 2)
    found = np.isfinite(motion[:, 0])
    assert found.mean() > 0.8  # mediapipe finds the rendered face
    assert np.isnan(motion[:, 8]).all()  # lip_round is not measured
    assert (np.abs(motion[found, :3]) < 0.6).all()  # yaw, pitch, roll in radians
    assert (0.6 < motion[found, 5]).all() and (motion[found, 5] < 1.6).all()  # scale
    assert (np.abs(centre[found]) < 1).all() and (centre[found, 1] > 0).all()  # lower half
    common = dict(dataset="voxceleb2", config=name, split="train", data_dir=data_dir,
                  batch_size=1, shuffle=False, num_epochs=1, drop_remainder=False,
                  num_frames=25, random_window=False)
    plain = next(iter(make_loader(LoaderConfig(augment=False, **common))))
    np.testing.assert_array_equal(plain["motion"][0], motion)
    np.testing.assert_array_equal(plain["mouth_centre"][0], centre)
    flipped = next(iter(make_loader(LoaderConfig(augment=True, flip_prob=1.0, **common))))
    assert flipped["mirrored"][0] == 1
    np.testing.assert_allclose(flipped["mouth_centre"][0], centre * [-1, 1])
    np.testing.assert_allclose(flipped["motion"][0, :, [0, 1, 3]], motion[:, [0, 1, 3]].T *
                               np.array([[-1], [1], [-1]]))
    bare = vb.make_config(64, 25, validation_fraction=0.5, face_labels=False)
    vb.build_voxceleb2(manual_dir, bare, data_dir=str(tmp_path))
    ex = open_source("voxceleb2", bare.name, "train", str(tmp_path))[0][0]
    assert "motion" not in ex and "mouth_centre" not in ex


@pytest.mark.parametrize("fps", [20, 30])
def test_frame_rate_resampling_picks_the_frame_shown_at_each_centre(tmp_path, fps):
    n_src = 2 * fps  # 2 s; source frame j has brightness 4 j
    frames = np.repeat((4 * np.arange(n_src, dtype=np.uint8))[:, None, None, None], 48, 1)
    frames = np.ascontiguousarray(np.broadcast_to(frames, (n_src, 48, 64, 3)))
    audio = np.zeros((1, 2 * 44100), np.float32)
    path = str(tmp_path / "src.mp4")
    fake_tree.write_av(path, frames, audio, fps=fps, audio_rate=44100)
    out = decode.decode_clips(path, resolution=16, clip_frames=10)
    assert out.num_frames == 50 and len(out.frames) == 5 and out.audio.shape == (5 * 6400,)
    got = np.concatenate(out.frames)[:, 8, 8, 0].astype(int)
    want = 4 * np.floor((np.arange(50) + 0.5) / 25 * fps).astype(int)
    assert np.abs(got - want).max() <= 2, (got, want)


def test_missing_empty_or_misshapen_manual_dir_prints_the_layout(tmp_path):
    for d in (tmp_path / "absent", tmp_path / "empty", tmp_path / "wrong"):
        if d.name != "absent":
            d.mkdir()
        if d.name == "wrong":
            (d / "vox2_dev_mp4_partaa").write_bytes(b"zip")
        with pytest.raises(vb.ManualDirError) as e:
            vb.build_voxceleb2(str(d), CONFIG, data_dir=str(tmp_path / "out"))
        msg = str(e.value)
        assert str(d) in msg and "dev/mp4/idXXXXX/<video_id>/NNNNN.mp4" in msg
        assert "test/mp4/idXXXXX" in msg and "--manual-dir" in msg
    assert not (tmp_path / "out").exists()
    from data_pipeline.loader import DatasetNotFoundError, dataset_dir

    with pytest.raises(DatasetNotFoundError, match=r"vasa-jax data build voxceleb2 "
                                                   r"--manual-dir \S+ --config res256"):
        dataset_dir("voxceleb2", "res256", str(tmp_path))


def test_validation_identities_are_deterministic_and_never_all():
    ids = [f"id{i:05d}" for i in range(1, 101)]
    val = vb.validation_identities(ids, 0.05)
    assert len(val) == 5 and val == vb.validation_identities(list(ids), 0.05)
    assert vb.validation_identities(ids[:2], 0.02) == [ids[1]]
    assert vb.validation_identities(ids[:1], 0.5) == [] and vb.validation_identities(ids, 0) == []
    assert len(vb.validation_identities(ids[:3], 0.99)) == 2
    splits = vb.identity_splits({"dev": ids, "test": ["id09999"]}, 0.05)
    assert set(splits["train"]) | set(splits["validation"]) == set(ids)
    assert not set(splits["train"]) & set(splits["validation"]) and splits["test"] == ["id09999"]


def test_configs_and_names():
    assert {c.name for c in vb.Voxceleb2.BUILDER_CONFIGS} == {"res256", "res512"}
    for c in vb.Voxceleb2.BUILDER_CONFIGS:
        assert c.clip_frames == 75 and c.quality_scorer == ""
    assert vb.make_config(256, face_labels=False).name == "res256_nolabels"
    for c in (CONFIG, vb.make_config(64, 25), vb.make_config(256, face_labels=False),
              vb.make_config(64, 25, validation_fraction=0.5, face_labels=False),
              vb.make_config(256, quality_scorer="laplacian_sharpness", quality_threshold=40)):
        assert vb.config_from_name(c.name) == c
    with pytest.raises(ValueError, match="registered"):
        vb.make_config(256, quality_scorer="no_such_scorer")
    with pytest.raises(ValueError, match="needs a quality scorer"):
        vb.make_config(256, quality_threshold=3.0)
    with pytest.raises(ValueError, match="not a voxceleb2 config"):
        vb.config_from_name("res64_small")


def test_laplacian_sharpness_separates_sharp_from_blurred():
    import cv2

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 4) for f in sharp])
    assert quality.laplacian_sharpness(sharp) > 20 * quality.laplacian_sharpness(blurred)
    assert quality.get_scorer("laplacian_sharpness") is quality.laplacian_sharpness


def test_cli_build_prints_progress_and_summary_and_applies_quality_filter(tmp_path, capsys):
    from vasa_jax import cli

    tree = _tree()
    data_dir = str(tmp_path / "data")
    args = ["data", "build", "voxceleb2", "--manual-dir", tree.root, "--resolution", "32",
            "--clip-frames", "25", "--validation-fraction", "0.25",
            "--quality-scorer", "laplacian_sharpness", "--quality-threshold", "50",
            "--data-dir", data_dir]
    assert cli.main(args + ["--progress-every", "0"]) == 0
    out = capsys.readouterr().out
    blurred = math.floor(2.3 * 25 - 0.5 + 1) // 25  # the blurred file's clips
    total = sum(_expected_splits(tree).values()) - blurred
    # One progress line per file here; the first file of train is the truncated one.
    assert "  [train] 1 files, 0 clips, 1 files skipped, 0.00 h decoded" in out
    assert (f"  [test] {tree.num_files} files, {total} clips, {len(tree.skipped)} files "
            f"skipped") in out
    assert f"Clips written: {total}" in out
    assert "truncated 1" in out and "unreadable 1" in out and "too_short 1" in out
    assert f"quality: {tree.blurry}  {blurred} clip(s)" in out
    for path in tree.skipped:
        assert path in out
    name = "res32_t25_val25_q-laplacian_sharpness-50"
    report = json.loads(open(f"{data_dir}/voxceleb2/{name}/1.1.0/build_report.json").read())
    assert report["skipped_clips"] == {"quality": blurred}
    assert cli.main(args) == 0  # prepared: reused, the stored summary printed again
    assert "already prepared" in capsys.readouterr().out

    assert cli.main(["data", "build", "voxceleb2", "--manual-dir", str(tmp_path / "nope"),
                     "--data-dir", data_dir]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "dev/mp4/idXXXXX/<video_id>/NNNNN.mp4" in err
