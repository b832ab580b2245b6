"""Audio sample formats and reading speech files (any container/codec PyAV decodes, any rate
and channel count) as 16 kHz mono float32."""

from __future__ import annotations

import os

import numpy as np

from vasa_jax.constants import SAMPLE_RATE
from vasa_jax.media.errors import InputError

SILENCE_PEAK = 1e-3  # a track whose peak stays below this (-60 dBFS) carries no speech


def to_float32(audio: np.ndarray) -> np.ndarray:
    """Audio as float32 in [-1, 1]: 16-bit PCM is divided by 32768, floats are cast."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    return audio.astype(np.float32)


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of ``path`` (wav, mp3, m4a/aac, flac, ogg, mp4, ...),
    resampled to ``sample_rate`` and averaged over channels: (S,) float32. Raises InputError for a
    missing, unreadable or audio-less file."""
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"Audio file {path!r} does not exist; pass a speech recording "
                         f"(wav, mp3, m4a, flac).")
    chunks = []
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise InputError(f"{path!r} has no audio stream; pass a speech recording.")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name,
                                          rate=sample_rate)
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler count samples itself
                chunks.extend(f.to_ndarray().mean(axis=0) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().mean(axis=0) for f in resampler.resample(None))
    except InputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"Audio file {path!r} is corrupt or not in a format FFmpeg decodes "
                         f"({e}); re-export it as wav, mp3, m4a or flac.") from None
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def check_offline_length(num_samples: int, max_seconds: float | None, what: str = "The audio"
                         ) -> None:
    """InputError if ``num_samples`` at 16 kHz last longer than ``max_seconds`` (None: no
    limit), the offline generation limit (streaming has none)."""
    seconds = num_samples / SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:
        raise InputError(f"{what} is {seconds:.1f} s long, over the offline limit of "
                         f"{max_seconds:.0f} s; cut it, raise --max-seconds, or use streaming "
                         f"generation (no length limit).")


def load_speech(path: str | os.PathLike, *, max_seconds: float | None = None) -> np.ndarray:
    """``decode_audio`` plus the checks generation needs: not empty, not silence only, and (when
    ``max_seconds`` is given, as offline generation does) not longer than that."""
    audio = decode_audio(path)
    path = os.fspath(path)
    if audio.size == 0:
        raise InputError(f"Audio file {path!r} contains no samples; pass a non-empty recording.")
    peak = float(np.abs(audio).max())
    if not np.isfinite(peak):
        raise InputError(f"Audio file {path!r} decodes to non-finite samples; re-export it.")
    if peak < SILENCE_PEAK:
        raise InputError(f"Audio file {path!r} is silent (peak {20 * np.log10(peak + 1e-12):.0f}"
                         f" dBFS); pass a recording with speech.")
    check_offline_length(audio.size, max_seconds, f"Audio file {path!r}")
    return np.clip(audio, -1.0, 1.0)
