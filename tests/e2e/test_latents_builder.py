"""TFDS builder ``latents``: stage-1 latents + audio features of SynthTalk, read back and trained on."""

import sys

import numpy as np
import pytest

from configs import latent as latent_configs
from configs import motion as motion_configs
from data_pipeline.latents import latents_dataset_builder as lb
from data_pipeline.loader import Augment, DatasetNotFoundError, decode_frame, open_source
from vasa_jax.latent.model import to_unit
from vasa_jax.latent.warp import POSE_FIELDS
from vasa_jax.motion.audio import make_frontend
from vasa_jax.train.motion_task import MotionTask
from vasa_jax.models import restore_model
from vasa_jax.train.trainer import Trainer

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def stage1(stage1_workdir) -> str:
    return stage1_workdir


def _motion_config(data_dir: str, name: str, dyn_dim: int):
    c = motion_configs.get_config("test")
    c.data.dataset, c.data.config, c.data.data_dir = "latents", name, data_dir
    c.data.flip = False
    c.model.motion_dim = 7 + dyn_dim
    c.eval.train_eval_clips = 0
    c.train.steps = 1
    c.train.async_checkpoints = False
    return c


def test_build_read_back_and_train_stage2(stage1, synthtalk_tiny, tmp_path):
    out = str(tmp_path / "tfds")
    audio = dict(motion_configs.get_config("test").audio)  # the stage-2 config's frontend
    name = lb.build_latents("synthtalk", "res64_tiny", stage1, data_dir=out,
                            source_data_dir=synthtalk_tiny, audio=audio)
    assert name.startswith("synthtalk_res64_tiny_")
    again = lb.make_config("synthtalk", "res64_tiny", stage1, source_data_dir=synthtalk_tiny,
                           audio={"name": "mel", "n_mels": 8})  # same settings, other spelling
    assert again.name == name  # deterministic
    default = lb.make_config("synthtalk", "res64_tiny", stage1, source_data_dir=synthtalk_tiny)
    assert default.name != name
    assert default.audio == {"frontend": "mel", "n_mels": 40, "hops_per_frame": 4,
                             "n_fft": 512, "win_length": 400}  # configs/motion.py's default

    run = restore_model(stage1)
    model, step = run.model, run.step
    dyn_dim = model.dyn_dim
    frontend = make_frontend("mel", n_mels=8, hops_per_frame=4)
    for split in SPLITS:
        src, src_info = open_source("synthtalk", "res64_tiny", split, synthtalk_tiny)
        lat, info = open_source("latents", name, split, out)
        assert len(lat) == len(src) == src_info.splits[split].num_examples
        assert info.splits[split].num_examples == len(src)
        # Every clip of the small splits, one of train.
        for i in range(1 if split == "train" else len(src)):
            s, z = src[i], lat[i]
            assert int(z["source_index"]) == i
            frames = np.stack([decode_frame(b) for b in s["frames"]])
            pose, dyn = model.encode_motion(to_unit(frames))
            assert z["motion"].shape == (len(frames), 7 + dyn_dim)
            assert z["motion"].dtype == np.float32
            np.testing.assert_allclose(z["motion"], np.concatenate([pose, dyn], -1), atol=1e-5)
            np.testing.assert_allclose(z["audio_features"], frontend(s["audio"]), atol=1e-6)
            np.testing.assert_array_equal(z["audio"], s["audio"])
            assert z["audio"].dtype == np.int16
            for k in ("identity", "clip", "emotion", "distance"):
                assert z[k] == s[k], k
            np.testing.assert_array_equal(z["gaze"], s["gaze"])
    md = info.metadata
    assert md["stage1_step"] == step == 2 and md["dyn_dim"] == dyn_dim
    assert md["motion_fields"][:7] == list(POSE_FIELDS) and md["motion_fields"][7] == "dyn_0"
    assert len(md["motion_fields"]) == 7 + dyn_dim and md["source_config"] == "res64_tiny"
    assert md["audio"] == {**audio, "n_fft": 512, "win_length": 400}
    assert md["audio_dim"] == 32

    # One stage-2 step on the latents; an empty dataset config names the flag to set.
    c = _motion_config(out, name, dyn_dim)
    result = Trainer(MotionTask(c), c, str(tmp_path / "motion")).fit()
    assert np.isfinite(result["loss"])
    wrong = _motion_config(out, name, dyn_dim + 1)  # motion width off by one: named, with the fix
    with pytest.raises(ValueError, match=rf"motion width .* is {7 + dyn_dim} .* says "
                                         rf"{8 + dyn_dim}; set model\.motion_dim={7 + dyn_dim}"):
        MotionTask(wrong).prepare()
    c.data.config = ""
    with pytest.raises(DatasetNotFoundError, match=name + r".*--config\.data\.config="):
        MotionTask(c).prepare()


def test_beam_build_equals_the_generator_build(stage1, synthtalk_tiny, tmp_path):
    pytest.importorskip("apache_beam")
    names, sources = {}, {}
    for mode in ("plain", "beam"):
        d = str(tmp_path / mode)
        names[mode] = lb.build_latents("synthtalk", "res64_tiny", stage1, data_dir=d,
                                       source_data_dir=synthtalk_tiny, use_beam=mode == "beam")
        sources[mode] = open_source("latents", names[mode], "train", d)[0]
    assert names["plain"] == names["beam"]
    assert len(sources["beam"]) == len(sources["plain"]) == 8
    for i in range(len(sources["plain"])):
        a, b = sources["plain"][i], sources["beam"][i]
        assert int(b["source_index"]) == i
        for k in ("motion", "audio_features", "audio"):
            np.testing.assert_array_equal(a[k], b[k])


def test_clear_errors(stage1, synthtalk_tiny, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"vasa-jax train latent --workdir"):
        lb.build_latents("synthtalk", "res64_tiny", str(tmp_path / "no_run"),
                         data_dir=str(tmp_path / "out"), source_data_dir=synthtalk_tiny)
    with pytest.raises(DatasetNotFoundError, match=r"vasa-jax data build synthtalk"):
        lb.make_config("synthtalk", "res64_small", stage1, source_data_dir=synthtalk_tiny)
    # A 32 px source for the 64 px model: both sizes and the fix are named.
    from data_pipeline.synthtalk.synthtalk_dataset_builder import Synthtalk, make_config
    cfg = make_config(32, "tiny", num_frames=2)
    Synthtalk(config=cfg, data_dir=str(tmp_path / "s32"), workers=1).download_and_prepare()
    with pytest.raises(ValueError, match=r"32x32 frames .* takes 64x64.*64 px source"):
        lb.make_config("synthtalk", cfg.name, stage1, source_data_dir=str(tmp_path / "s32"))
    with pytest.raises(ValueError, match="made at run time"):
        lb.Latents(config="synthtalk_res64_tiny_00000000")
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'vasa-jax\[beam\]'"):
        lb.Latents(source_dataset="synthtalk", source_config="res64_tiny",
                   stage1_workdir=stage1, source_data_dir=synthtalk_tiny, use_beam=True)


def test_augment_refuses_to_mirror_latents_and_audio_features_are_kept():
    ex = {"motion": np.zeros((4, 13), np.float32), "pos": np.int64(0)}
    with pytest.raises(ValueError, match="flip=False"):
        Augment(flip_prob=0.5).map(ex)
    assert Augment(flip_prob=0.0, colour_jitter=0.0).map(ex)["motion"].shape == (4, 13)
    from vasa_jax.motion.audio import AddAudioFeatures

    stored = np.ones((2, 3), np.float32)
    ex = {"audio": np.zeros(1280, np.int16), "audio_features": stored}
    assert AddAudioFeatures(make_frontend("mel"))(ex)["audio_features"] is stored


def test_synthtalk_latents_config():
    c = motion_configs.get_config("synthtalk_latents")
    assert (c.data.dataset, c.data.config, c.data.flip) == ("latents", "", False)
    assert c.model.motion_dim == 7 + latent_configs.get_config("synthtalk64").model.dyn_dim
    assert c.eval.train_eval_clips == 0 and c.model.audio_dim == 160


@pytest.mark.parametrize("motion, latent", [("quickstart_latents", "quickstart"),
                                            ("test_latents", "test")])
def test_latents_variants_match_their_stage1(motion, latent):
    c = motion_configs.get_config(motion)
    assert (c.data.dataset, c.data.flip) == ("latents", False)
    assert c.model.motion_dim == 7 + latent_configs.get_config(latent).model.dyn_dim
