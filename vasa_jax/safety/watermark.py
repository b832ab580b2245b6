"""An invisible watermark for generated frames that survives H.264 and downscaling.

Scheme. A secret ``key`` (``vasa_jax.safety.keys.WatermarkKey``; see ``keys.watermark_key``)
gives a ``GRID`` x ``GRID`` pattern of +-1 (its bits from SHAKE-256 of the key, so patterns of
different keys are independent), one value per cell of a grid laid over the whole frame (so it
stretches with the frame and does not depend on its size).
``embed`` upsamples it bilinearly to the frame (band-limited: nothing finer than a cell, 4 px at
256 px) and adds it to every channel, i.e. to luminance only, with an amplitude set by local
texture: ``FLOOR`` grey levels on flat skin and backgrounds, up to ``CEILING`` where fine texture
masks it. Smooth shading and edges do not count as texture, so neither gets a halo of noise.

Detection. ``detect`` averages each frame's luminance over the grid's cells (any frame size
works, so a downscaled copy too), removes the picture with a 3x3 high-pass, divides by the local
residual level (so strong edges do not dominate), and correlates with the key's pattern. For an
unmarked clip and a random key the score is a sum of independent +-1 terms with unit-norm
weights, so ``P(score >= t) <= exp(-t^2 / 2)`` (Hoeffding) whatever the frames are; about a
standard normal in practice. ``THRESHOLD = 5`` makes a false positive on one frame or one clip
at most 3.7e-6 (about 3e-7 for a normal). Frames of a clip are pooled before correlating, which
keeps that bound however alike the frames are, while the (static) mark adds up. The same
bound holds for a marked clip checked with a wrong key, whose pattern is independent of the
right one (measured in benchmarks/bench_watermark.py, ``wrong_keys``).

Keys. ``embed`` and ``detect`` take ``key=``, the user's secret from ``keys.watermark_key()``.
``keys.PUBLIC_TEST_KEY`` is for tests only. Without a key (``key=None``, kept for callers that
do not pass one yet) they use ``keys.watermark_key()``, the private key of this user (created on
first use), and never a public one.

Shapes: frames are (N, H, W, 3) or (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import cv2
import numpy as np

from vasa_jax.safety.keys import WatermarkKey, watermark_key

GRID = 64  # pattern cells per side: 4 px per cell at 256 px, 1 px in a 0.5x copy of 128 px
FLOOR = 0.5  # amplitude (grey levels) on flat areas
TEXTURE_GAIN = 2.0  # extra amplitude per grey level of local high-frequency texture
CEILING = 3.0  # largest amplitude (grey levels)
THRESHOLD = 5.0  # score above which a frame or clip is called watermarked

MIN_EMBED_SIDE = 32
MIN_DETECT_SIDE = 16
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601, as H.264's yuv420p uses
_EPS = 0.5  # grey levels added to the local residual level before dividing by it
_PATTERN_DOMAIN = f"vasa_jax watermark pattern v1, grid {GRID}".encode() + b"\x00"


@dataclasses.dataclass(frozen=True)
class Detection:
    """Result of ``detect``: ``score`` is z-score-like (about N(0, 1) without the mark, or
    with a wrong key); ``key_fingerprint`` names the key it was checked with (not the key)."""

    detected: bool
    score: float
    threshold: float
    num_frames: int
    key_fingerprint: str = ""


def _as_frames(frames, min_side: int, what: str) -> np.ndarray:
    """``frames`` as (N, H, W, 3) uint8, or a ValueError naming what is wrong and the fix."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"{what} needs uint8 RGB frames (0..255), got dtype {frames.dtype}; "
                         f"convert with np.clip(np.rint(x), 0, 255).astype(np.uint8) "
                         f"(scale [0, 1] floats by 255 first).")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{what} needs frames of shape (N, H, W, 3) or (H, W, 3) with N >= 1, "
                         f"got {frames.shape}; drop alpha or add colour channels first.")
    if min(frames.shape[1:3]) < min_side:
        raise ValueError(f"{what} needs frames of at least {min_side}x{min_side} pixels, "
                         f"got {frames.shape[2]}x{frames.shape[1]} (W x H).")
    return frames


def _check_key(key: WatermarkKey | None) -> WatermarkKey:
    """``key``, or this user's key (``keys.watermark_key()``) if None. The error never shows
    the value."""
    if key is None:
        return watermark_key()
    if not isinstance(key, WatermarkKey):
        raise ValueError(f"key must be a vasa_jax.safety.keys.WatermarkKey (your key: "
                         f"keys.watermark_key()), got {type(key).__name__}.")
    return key


@functools.lru_cache(maxsize=32)
def _pattern(secret: bytes) -> np.ndarray:
    """(GRID, GRID) float32 of independent, equally likely +-1 (read-only): the bits of
    SHAKE-256 of the key."""
    digest = hashlib.shake_256(_PATTERN_DOMAIN + secret).digest(GRID * GRID // 8)
    bits = np.unpackbits(np.frombuffer(digest, np.uint8)).reshape(GRID, GRID)
    pattern = (2.0 * bits - 1.0).astype(np.float32)
    pattern.flags.writeable = False
    return pattern


@functools.lru_cache(maxsize=32)
def _mark(secret: bytes, height: int, width: int) -> np.ndarray:
    """(H, W) float32 unit-RMS mark: the key's pattern upsampled bilinearly."""
    mark = cv2.resize(_pattern(secret), (width, height), interpolation=cv2.INTER_LINEAR)
    mark /= np.sqrt(np.mean(mark * mark))
    mark.flags.writeable = False
    return mark


def _luma(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 luminance."""
    return frame.astype(np.float32) @ _LUMA


def _amplitude(luma: np.ndarray) -> np.ndarray:
    """(H, W) float32 amplitude in grey levels from local high-frequency texture.

    Texture is the RMS over 5x5 of luminance minus its 3x3 mean (smooth shading gives ~0), then
    eroded over 3x3 so that flat pixels next to an edge stay at ``FLOOR``.
    """
    detail = luma - cv2.blur(luma, (3, 3))
    texture = np.sqrt(np.maximum(cv2.blur(detail * detail, (5, 5)), 0.0))
    texture = cv2.erode(texture, np.ones((3, 3), np.uint8))
    return np.minimum(FLOOR + TEXTURE_GAIN * texture, CEILING)


def embed(frames: np.ndarray, *, key: WatermarkKey | None = None,
          strength: float = 1.0) -> np.ndarray:
    """Watermark ``frames`` (N, H, W, 3) or (H, W, 3) uint8 RGB, H, W >= 32, with ``key``
    (None: this user's key, ``keys.watermark_key()``).

    Returns a new uint8 array of the same shape. ``strength`` scales the amplitude (1 gives
    about 46 dB PSNR on SynthTalk faces and 40 dB on photos).
    """
    key = _check_key(key)
    if not strength > 0:
        raise ValueError(f"strength must be > 0, got {strength!r}.")
    single = np.ndim(frames) == 3
    frames = _as_frames(frames, MIN_EMBED_SIDE, "embed")
    _, height, width, _ = frames.shape
    mark = _mark(key.secret, height, width)
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        delta = (strength * mark) * _amplitude(_luma(frame))
        out[i] = np.clip(np.rint(frame + delta[..., None]), 0, 255)
    return out[0] if single else out


def _cell_residual(luma: np.ndarray) -> np.ndarray:
    """(GRID, GRID) unit-norm residual of the cell-averaged luminance (zeros if flat).

    Cell means minus their 3x3 mean, divided by the local RMS of that residual plus ``_EPS``.
    """
    cells = cv2.resize(luma, (GRID, GRID), interpolation=cv2.INTER_AREA)
    residual = cells - cv2.blur(cells, (3, 3))
    level = np.sqrt(np.maximum(cv2.blur(residual * residual, (3, 3)), 0.0)) + _EPS
    residual /= level
    norm = np.linalg.norm(residual)
    return residual / norm if norm > 0 else residual


def detect(frames: np.ndarray, *, key: WatermarkKey | None = None,
           threshold: float = THRESHOLD) -> Detection:
    """Look for the mark of ``key`` (None: this user's key, ``keys.watermark_key()``) in one
    frame (H, W, 3) or a clip (N, H, W, 3) uint8 RGB of any size (H, W >= 16), e.g. after
    H.264 and resizing. Frames smaller than ``GRID`` pixels cannot hold the pattern's cells,
    so a 0.5x copy of a 64 px video gives a chance score.

    The frames' unit-norm cell residuals are summed and correlated with the pattern, divided
    by the norm of the sum.
    """
    key = _check_key(key)
    frames = _as_frames(frames, MIN_DETECT_SIDE, "detect")
    pooled = np.zeros((GRID, GRID), np.float32)
    for frame in frames:
        pooled += _cell_residual(_luma(frame))
    norm = float(np.linalg.norm(pooled))
    score = float(np.sum(pooled * _pattern(key.secret))) / norm if norm > 0 else 0.0
    return Detection(detected=bool(score > threshold), score=score, threshold=float(threshold),
                     num_frames=len(frames), key_fingerprint=key.fingerprint)
