"""The watermark key through the writer and ``vasa-jax verify --watermark-key-file``: a video
marked with one key is detected with it and not with another; a bad key file is a clear error."""

import os

import numpy as np
import pytest

from vasa_jax import cli
from vasa_jax.safety import keys
from vasa_jax.safety.publish import verify_video, write_marked_video

pytestmark = pytest.mark.reliability


@pytest.fixture
def marked(tmp_path, monkeypatch):
    monkeypatch.setenv("VASA_JAX_C2PA_DIR", str(tmp_path / "c2pa"))
    monkeypatch.delenv("VASA_JAX_WATERMARK_KEY_FILE", raising=False)
    key_file = tmp_path / "mine.key"
    key = keys.write_key_file(key_file)
    rng = np.random.default_rng(0)
    frames = rng.integers(60, 200, (25, 256, 256, 3)).astype(np.uint8)
    video = write_marked_video(tmp_path / "v.mp4", frames, None, c2pa_on=False,
                               watermark_key=key)
    return video, key_file, key


def test_the_right_key_detects_and_another_does_not(marked, tmp_path, capsys):
    video, key_file, key = marked
    assert verify_video(video, watermark_key=key).watermark.detected
    assert not verify_video(video, watermark_key=keys.random_key()).watermark.detected
    assert cli.main(["verify", video, "--watermark-key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert "watermark: DETECTED" in out and key.fingerprint in out
    other = tmp_path / "other.key"
    keys.write_key_file(other)
    assert cli.main(["verify", video, "--watermark-key-file", str(other)]) == 0
    assert "watermark: not detected" in capsys.readouterr().out
    assert key_file.read_text().strip() not in open(video, "rb").read().decode("latin-1")


def test_a_bad_key_file_is_a_clear_error(marked, tmp_path, capsys):
    video, key_file, _ = marked
    os.chmod(key_file, 0o644)
    assert cli.main(["verify", video, "--watermark-key-file", str(key_file)]) == 2
    assert "chmod 600" in capsys.readouterr().err
    assert cli.main(["verify", video, "--watermark-key-file", str(tmp_path / "none")]) == 2
    assert "vasa-jax: error:" in capsys.readouterr().err
