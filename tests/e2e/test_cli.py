"""The ``vasa-jax`` command: data build, data show, and clear errors."""

import os
import subprocess
import sys

import av
import cv2
import pytest

from vasa_jax import cli
from vasa_jax.media.video_io import read_mp4


def test_build_then_show_writes_sheet_and_mp4_with_sound(tmp_path, capsys):
    data_dir = str(tmp_path / "data")
    assert cli.main(["data", "build", "synthtalk", "--size", "tiny", "--resolution", "32",
                     "--num-frames", "12", "--data-dir", data_dir, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "Built 12 clips" in out
    name = "res32_i6_c2_t12_s0_png"
    assert cli.main(["data", "build", "synthtalk", "--size", "tiny", "--resolution", "32",
                     "--num-frames", "12", "--data-dir", data_dir]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert cli.main(["data", "show", "--config", name, "--data-dir", data_dir, "--split", "train",
                     "--num-clips", "3", "--out", str(tmp_path / "show")]) == 0
    png = tmp_path / "show" / f"synthtalk_{name}_train_contact_sheet.png"
    mp4 = tmp_path / "show" / f"synthtalk_{name}_train_clips.mp4"
    sheet = cv2.imread(str(png))
    assert sheet is not None and sheet.shape[0] > 3 * 64
    frames, audio, fps, rate = read_mp4(mp4)
    assert frames.shape == (36, 256, 256, 3) and fps == 25 and rate == 16000
    assert abs(len(audio) - 36 * 640) <= 2048  # AAC pads to whole 1024-sample frames
    with av.open(str(mp4)) as f:
        assert f.streams.video[0].codec_context.name == "h264"
        assert f.streams.audio and f.streams.audio[0].codec_context.name == "aac"
        assert abs(float(f.duration / av.time_base) - 36 / 25) < 0.2
    assert not [p for p in os.listdir(tmp_path / "show") if p.startswith(".tmp-")]


def test_unknown_config_is_a_clear_error(capsys):
    assert cli.main(["data", "build", "synthtalk", "--config", "res65_huge"]) == 2
    err = capsys.readouterr().err
    assert "Unknown SynthTalk config 'res65_huge'" in err and "res64_small" in err


def test_conflicting_and_invalid_options_are_clear_errors(capsys):
    assert cli.main(["data", "build", "synthtalk", "--config", "res64_tiny", "--size", "small"]) == 2
    assert "either --config or --resolution/--size" in capsys.readouterr().err
    assert cli.main(["data", "build", "synthtalk", "--resolution", "63"]) == 2
    assert "even" in capsys.readouterr().err
    assert cli.main(["data", "build", "synthtalk", "--num-identities", "2", "--size", "tiny"]) == 2
    assert "at least 3 identities" in capsys.readouterr().err


def test_show_without_dataset_names_the_fix(tmp_path, capsys):
    assert cli.main(["data", "show", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "No prepared dataset 'synthtalk/res64_small'" in err
    assert "vasa-jax data build synthtalk --config res64_small" in err
    assert not (tmp_path / "show").exists()


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "vasa-jax")
    if not os.path.exists(exe):
        pytest.skip("package not installed in this interpreter's environment")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "quickstart" in r.stdout


def test_overrides_parse_like_config_flags_and_name_the_close_field(tmp_path, capsys):
    from ml_collections import ConfigDict

    from vasa_jax.train.run import ConfigError, apply_overrides, load_config

    c = load_config("latent", "test", data_dir="/d", overrides=[
        "train.steps=7", "optim.lr=1e-3", "model.pixel_warp=True", "model.g3d_channels=(4,8)",
        "data.config=res64_tiny"])
    assert (c.train.steps, c.optim.lr, c.model.pixel_warp) == (7, 1e-3, True)
    assert c.model.g3d_channels == (4, 8) and (c.data.config, c.data.data_dir) == (
        "res64_tiny", "/d")
    with pytest.raises(ConfigError, match="'trian.steps'; did you mean 'train.steps'"):
        load_config("latent", "test", overrides=["trian.steps=3"])
    with pytest.raises(ConfigError, match="train.steps=abc"):
        load_config("latent", "test", overrides=["train.steps=abc"])
    settings = apply_overrides(ConfigDict(), ["frontend=wav2vec2", "layer=9", "checkpoint=/a/b",
                                              "mix_layers=True"], new_fields=True).to_dict()
    assert settings == {"frontend": "wav2vec2", "layer": 9, "checkpoint": "/a/b",
                        "mix_layers": True}
    assert cli.main(["train", "latent", "--variant", "test", "--workdir", str(tmp_path),
                     "--set", "model.pixel_wrap=1"]) == 2
    err = capsys.readouterr().err
    assert "Unknown config field 'model.pixel_warp'" not in err
    assert "Unknown config field 'model.pixel_wrap'" in err and "'model.pixel_warp'" in err
    assert list(tmp_path.iterdir()) == []
