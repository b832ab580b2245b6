"""MFCC features exactly as the original SyncNet evaluation computes them (NumPy).

syncnet_python (and Wav2Lip's LSE-C / LSE-D scripts built on it) read the 16 kHz mono track as
16-bit PCM integers and call ``python_speech_features.mfcc`` with its defaults:

- 25 ms frames (400 samples) every 10 ms (160 samples): 100 MFCC frames per second, so 4 per
  25 fps video frame and 20 (0.2 s) per 5-frame SyncNet window; a signal of ``n`` samples gives
  ``1 + ceil((n - 400) / 160)`` frames (zero-padded at the end), i.e. ``4 T - 1`` for ``T``
  video frames of 640 samples;
- pre-emphasis 0.97 over the whole signal, a rectangular window, |rfft(512)|^2 / 512;
- 26 triangular mel filters over 0..8 kHz (bin edges ``floor(513 * mel2hz(m) / 16000)``);
- log filterbank energies -> orthonormal DCT-II -> 13 cepstra -> sinusoidal lifter (L = 22);
- c0 replaced by the log of the frame's total power.

Because the original reads int16 samples, float audio in [-1, 1] must be scaled by 32768 first
(``INT16_SCALE``) to get the same numbers (only c0 depends on the scale).
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16_000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms: 100 frames per second
NFFT = 512
NUM_FILTERS = 26
NUM_CEPS = 13
LIFTER = 22
PREEMPH = 0.97
MFCC_PER_VIDEO_FRAME = 4  # 100 Hz / 25 fps
INT16_SCALE = 32768.0


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(num_filters: int = NUM_FILTERS, nfft: int = NFFT,
                   sample_rate: int = SAMPLE_RATE, low_hz: float = 0.0,
                   high_hz: float | None = None) -> np.ndarray:
    """Triangular mel filters on FFT bins: (num_filters, nfft // 2 + 1) float64."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    mels = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), num_filters + 2)
    edges = np.floor((nfft + 1) * mel_to_hz(mels) / sample_rate)
    bins = np.arange(nfft // 2 + 1, dtype=np.float64)[None, :]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = np.where((bins >= lo) & (bins < mid), (bins - lo) / np.maximum(mid - lo, 1e-12), 0.0)
    fall = np.where((bins >= mid) & (bins < hi), (hi - bins) / np.maximum(hi - mid, 1e-12), 0.0)
    return rise + fall


def _dct2_ortho(n: int, k: int) -> np.ndarray:
    """(n, k) matrix of the orthonormal DCT-II's first k basis vectors."""
    i = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(k, dtype=np.float64)[None, :]
    m = np.cos(np.pi * j * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    m[:, 0] *= 1.0 / math.sqrt(2.0)
    return m


def num_mfcc_frames(num_samples: int) -> int:
    """MFCC frames for a signal of ``num_samples`` samples (at least one)."""
    if num_samples <= WIN_LENGTH:
        return 1
    return 1 + math.ceil((num_samples - WIN_LENGTH) / HOP_LENGTH)


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """signal (..., n) samples (in the int16 range for SyncNet's numbers) -> (..., F, 13)
    float64, F = ``num_mfcc_frames(n)``: ``python_speech_features.mfcc(signal, 16000)`` for
    every leading index."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"SyncNet MFCCs are defined at {SAMPLE_RATE} Hz; got {sample_rate} Hz. "
                         f"Resample the audio first (vasa_jax.media.audio).")
    x = np.asarray(signal, np.float64)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"Expected audio samples (..., n) with n > 0; got {x.shape}.")
    n = x.shape[-1]
    x = np.concatenate([x[..., :1], x[..., 1:] - PREEMPH * x[..., :-1]], axis=-1)
    frames = num_mfcc_frames(n)
    pad = (frames - 1) * HOP_LENGTH + WIN_LENGTH - n
    x = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,))], axis=-1)
    idx = np.arange(WIN_LENGTH)[None, :] + HOP_LENGTH * np.arange(frames)[:, None]
    power = np.square(np.abs(np.fft.rfft(x[..., idx], NFFT))) / NFFT  # (..., F, 257)
    eps = np.finfo(np.float64).eps
    energy = power.sum(-1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ mel_filterbank().T
    feat = np.log(np.where(feat == 0, eps, feat))
    ceps = feat @ _dct2_ortho(NUM_FILTERS, NUM_CEPS)
    lift = 1.0 + (LIFTER / 2.0) * np.sin(np.pi * np.arange(NUM_CEPS) / LIFTER)
    ceps = ceps * lift
    ceps[..., 0] = np.log(energy)
    return ceps


def syncnet_mfcc(audio: np.ndarray, audio_scale: float = INT16_SCALE) -> np.ndarray:
    """Float audio (..., n) in [-1, 1] at 16 kHz -> MFCCs (..., 13, F) float32, the layout
    SyncNet's audio branch reads (cepstra on rows, time on columns), computed on
    ``audio * audio_scale`` (default: the int16 range the original reads)."""
    feats = mfcc(np.asarray(audio, np.float64) * audio_scale)
    return np.swapaxes(feats, -1, -2).astype(np.float32)


def mfcc_patches(mfccs: np.ndarray, starts, length: int = 20) -> np.ndarray:
    """MFCCs (13, F) and video-frame indices ``starts`` (n,) -> patches (n, 13, length) taken at
    MFCC columns ``[4 s, 4 s + length)`` (zero columns past the end)."""
    starts = np.asarray(starts, np.int64)
    cols = MFCC_PER_VIDEO_FRAME * starts[:, None] + np.arange(length)[None, :]
    padded = np.concatenate(
        [mfccs, np.zeros((mfccs.shape[0], max(0, int(cols.max(initial=0)) + 1 - mfccs.shape[1])),
                         mfccs.dtype)], axis=1)
    return np.moveaxis(padded[:, cols], 0, 1)
