"""mp4 writing with sound, read back; atomic writes."""

import os

import numpy as np
import pytest

from vasa_jax.atomic import atomic_path
from vasa_jax.media.video_io import read_mp4, write_mp4


def test_roundtrip_video_and_audio(tmp_path):
    t = np.arange(40)
    frames = np.zeros((40, 64, 96, 3), np.uint8)
    frames[..., 0] = (t * 6)[:, None, None]  # a red ramp over time
    audio = 0.5 * np.sin(2 * np.pi * 440 * np.arange(40 * 640) / 16000).astype(np.float32)
    path = tmp_path / "a.mp4"
    write_mp4(path, frames, audio)
    got, got_audio, fps, rate = read_mp4(path)
    assert got.shape == frames.shape and fps == 25 and rate == 16000
    assert np.abs(got[..., 0].mean(axis=(1, 2)) - t * 6).max() < 8
    assert got_audio is not None and len(got_audio) >= len(audio)
    spectrum = np.abs(np.fft.rfft(got_audio[:16000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 5  # the tone survives AAC
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)


def test_bad_frames_write_nothing(tmp_path):
    path = tmp_path / "b.mp4"
    with pytest.raises(ValueError, match="even height and width"):
        write_mp4(path, np.zeros((3, 63, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(path, np.zeros((3, 64, 64, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "c.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        open(tmp, "wb").write(b"done")
    assert target.read_bytes() == b"done" and list(tmp_path.iterdir()) == [target]
