"""User inputs: photos (reading, face detection, framing) and speech files, and the clear
error each bad input gives; the output video written piece by piece."""

import os

import numpy as np
import pytest
import skimage.data
from PIL import Image

from data_pipeline.synthtalk.generate import generate_clip
from vasa_jax.media.audio import decode_audio, load_speech
from vasa_jax.media.errors import InputError
from vasa_jax.media.face_crop import SYNTHTALK_FRAMING, crop_face, detect_faces
from vasa_jax.media.image_io import load_image


def _wav(path, audio, rate):
    import av

    with av.open(str(path), "w", format="wav") as out:
        s = out.add_stream("pcm_s16le", rate=rate)
        s.layout = "stereo" if audio.ndim == 2 else "mono"
        frame = av.AudioFrame.from_ndarray(
            np.round(np.atleast_2d(audio).T * 32767).astype(np.int16).reshape(1, -1),  # interleaved
            format="s16", layout=s.layout)
        frame.sample_rate = rate
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)


# -- photos ------------------------------------------------------------------------------------
def test_image_modes_and_errors(tmp_path):
    rgb = skimage.data.astronaut()
    for mode in ("RGB", "L", "RGBA", "P", "CMYK"):
        path = tmp_path / f"a_{mode}.png" if mode != "CMYK" else tmp_path / "a.jpg"
        Image.fromarray(rgb).convert(mode).save(path)
        out = load_image(path)
        assert out.shape == rgb.shape and out.dtype == np.uint8
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(InputError, match="not an image"):
        load_image(tmp_path / "noise.png")
    good = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_image(tmp_path / "cut.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "depth.png")
    with pytest.raises(InputError, match="mode"):
        load_image(tmp_path / "depth.png")


def test_face_detection_on_a_real_photo_and_synthtalk():
    boxes = detect_faces(skimage.data.astronaut())
    assert len(boxes) == 1
    b = boxes[0]
    assert 150 < b.center[0] < 260 and 90 < b.center[1] < 190 and 70 < b.width < 130
    # A SynthTalk frame of a held-out identity is found and re-cropped close to its own framing.
    frame = generate_clip(0, 900, 0, 1, 256)["frames"][0]
    crop, box = crop_face(frame, 256)
    assert abs(box.width / 256 - SYNTHTALK_FRAMING.width) < 0.1
    assert np.abs(crop.astype(float) - frame).mean() < 30
    # The cascade fallback finds the astronaut too.
    (c,) = detect_faces(skimage.data.astronaut(), backend="cascade")
    assert abs(c.center[0] - b.center[0]) < 25 and abs(c.center[1] - b.center[1]) < 25


def test_face_errors_name_the_cause_and_fix():
    with pytest.raises(InputError, match="No face"):
        crop_face(skimage.data.coffee(), 64)
    a = skimage.data.astronaut()[:300, 100:400]
    two = np.concatenate([a, a], axis=1)
    with pytest.raises(InputError, match="Found 2 faces.*--face-index"):
        crop_face(two, 64)
    left, box_l = crop_face(two, 64, face_index=0)
    right, box_r = crop_face(two, 64, face_index=1)
    assert box_l.center[0] < 300 < box_r.center[0]
    assert np.abs(left.astype(float) - right).mean() < 15  # the same face
    with pytest.raises(InputError, match="out of range"):
        crop_face(two, 64, face_index=2)
    small = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((192, 192)))
    with pytest.raises(InputError, match="too small"):
        crop_face(small, 256)


# -- speech ------------------------------------------------------------------------------------
def test_any_rate_and_channels_become_16k_mono(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    _wav(tmp_path / "stereo.wav", np.stack([tone, tone]), 44100)
    audio = decode_audio(tmp_path / "stereo.wav")
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) <= 64
    spectrum = np.abs(np.fft.rfft(audio[1000:15000]))
    peak_hz = np.argmax(spectrum) * 16000 / len(audio[1000:15000])
    assert abs(peak_hz - 440) < 5 and 0.4 < np.abs(audio).max() < 0.6
    # Compressed formats: mp3 (48 kHz stereo), m4a (AAC), flac; codec delay pads a little.
    import av

    for name, codec, rate in (("s.mp3", "libmp3lame", 48000), ("s.m4a", "aac", 44100),
                              ("s.flac", "flac", 22050)):
        with av.open(str(tmp_path / name), "w") as out:
            s = out.add_stream(codec, rate=rate)
            s.layout = "stereo"
            x = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32) * 0.5
            frame = av.AudioFrame.from_ndarray(np.stack([x, x]), format="fltp", layout="stereo")
            frame.sample_rate = rate
            for p in list(s.encode(frame)) + list(s.encode()):
                out.mux(p)
        got = decode_audio(tmp_path / name)
        assert abs(len(got) - 16000) < 2048, name
        assert 0.4 < np.abs(got[2000:14000]).max() < 0.6, name


def test_speech_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_speech(tmp_path / "none.wav")
    (tmp_path / "junk.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(InputError, match="corrupt|no audio"):
        load_speech(tmp_path / "junk.mp3")
    _wav(tmp_path / "silent.wav", np.zeros(16000), 16000)
    with pytest.raises(InputError, match="silent"):
        load_speech(tmp_path / "silent.wav")
    import wave

    with wave.open(str(tmp_path / "empty.wav"), "wb") as f:  # a valid header, no samples
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
    with pytest.raises(InputError, match="no samples|corrupt"):
        load_speech(tmp_path / "empty.wav")
    _wav(tmp_path / "long.wav", 0.1 * np.ones(16000 * 3), 16000)
    with pytest.raises(InputError, match="offline limit"):
        load_speech(tmp_path / "long.wav", max_seconds=2)
    assert len(load_speech(tmp_path / "long.wav")) == 48000
    from vasa_jax.media.video_io import write_mp4

    write_mp4(tmp_path / "mute.mp4", np.zeros((5, 16, 16, 3), np.uint8))
    with pytest.raises(InputError, match="no audio stream"):
        load_speech(tmp_path / "mute.mp4")


def test_tilted_head_is_levelled_before_cropping():
    import cv2

    from vasa_jax.media.face_crop import crop_to_framing

    photo = skimage.data.astronaut()
    upright, box = crop_face(photo, 128)
    assert box.eyes is not None and abs(box.roll_degrees) < 10
    m = cv2.getRotationMatrix2D(box.center, -20, 1.0)  # tilt the head 20 degrees
    tilted = cv2.warpAffine(photo, m, photo.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
    levelled, tilted_box = crop_face(tilted, 128)
    assert abs(tilted_box.roll_degrees - box.roll_degrees + 20) < 6  # the detector sees it
    plain = crop_to_framing(tilted, tilted_box, 128)  # the same crop without levelling
    err = lambda x: np.abs(x.astype(float) - upright).mean()  # noqa: E731
    assert err(levelled) < 0.6 * err(plain)


def test_decoding_stops_at_the_offline_limit(tmp_path):
    """The header states the duration without decoding; ``iter_audio`` (the backstop for
    containers whose header states none) refuses as soon as the decoded audio passes
    ``max_seconds``, without decoding the rest."""
    from vasa_jax.media.audio import audio_seconds, check_speech, iter_audio

    _wav(tmp_path / "three.wav", 0.1 * np.ones(16000 * 3), 16000)
    assert abs(audio_seconds(tmp_path / "three.wav") - 3.0) < 1e-3
    assert check_speech(tmp_path / "three.wav") == 48000
    pieces = iter_audio(tmp_path / "three.wav", max_seconds=1)
    with pytest.raises(InputError, match=r"decoded so far\) is 1\.\d s long, over the offline"):
        for _ in pieces:
            pass


# -- writing -----------------------------------------------------------------------------------
def test_a_video_written_in_pieces_equals_one_written_at_once(tmp_path, monkeypatch):
    """``marked_video_writer`` (what streaming generation writes through, window by window)
    gives the frames and sound of ``write_marked_video`` given everything at once: the
    watermark is per frame and H.264 is deterministic."""
    from vasa_jax.media.video_io import read_mp4
    from vasa_jax.safety.publish import marked_video_writer, write_marked_video

    monkeypatch.setenv("VASA_JAX_C2PA_DIR", str(tmp_path / "keys"))
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (1, 64, 64, 3), np.uint8), 37, axis=0)
    frames[:, 20:40, 20:40] = np.arange(37, dtype=np.uint8)[:, None, None, None] * 6
    audio = (0.3 * np.sin(np.arange(37 * 640 - 100) / 7)).astype(np.float32)
    write_marked_video(tmp_path / "whole.mp4", frames, audio, c2pa_on=False)
    with marked_video_writer(tmp_path / "pieces.mp4", 64, 64, c2pa_on=False) as w:
        for s in range(0, 37, 16):
            w.write(frames[s:s + 16], audio[s * 640:(s + 16) * 640])
    whole, pieces = read_mp4(tmp_path / "whole.mp4"), read_mp4(tmp_path / "pieces.mp4")
    np.testing.assert_array_equal(whole[0], pieces[0])
    assert len(whole[1]) == len(pieces[1]) and np.abs(whole[1] - pieces[1]).max() < 1e-3
    with pytest.raises(RuntimeError):  # an error mid-way leaves nothing behind
        with marked_video_writer(tmp_path / "broken.mp4", 64, 64, c2pa_on=False) as w:
            w.write(frames[:16], audio[:16 * 640])
            raise RuntimeError("interrupted")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".mp4")
                and p not in ("whole.mp4", "pieces.mp4")]
