"""Audio sample formats and reading speech files (any container/codec PyAV decodes, any rate
and channel count) as 16 kHz mono float32.

A speech file is checked in the order that costs least: the container's header (it exists, has
an audio stream, and its stated duration is within the offline limit) before any sample is
decoded; then the samples (not empty, finite, not silence). ``iter_audio`` decodes piece by
piece, so a long file can be checked or streamed without holding it whole.
"""

from __future__ import annotations

import os
from typing import Iterator

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


def _corrupt(path: str, e: Exception) -> InputError:
    return InputError(f"Audio file {path!r} is corrupt or not in a format FFmpeg decodes ({e}); "
                      f"re-export it as wav, mp3, m4a or flac.")


def _open_audio(path: str):
    """(container, its first audio stream) of an existing file, or InputError naming the fix."""
    import av

    if not os.path.isfile(path):
        raise InputError(f"Audio file {path!r} does not exist; pass a speech recording "
                         f"(wav, mp3, m4a, flac).")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise _corrupt(path, e) from None
    if not container.streams.audio:
        container.close()
        raise InputError(f"{path!r} has no audio stream; pass a speech recording.")
    return container, container.streams.audio[0]


def audio_seconds(path: str | os.PathLike) -> float | None:
    """The duration the container's header states (nothing is decoded), None if it states
    none. InputError for a missing file, one FFmpeg cannot open, or one without audio."""
    path = os.fspath(path)
    container, stream = _open_audio(path)
    with container:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return container.duration / 1e6 if container.duration else None


def iter_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, *,
               max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """Decode the first audio stream of ``path`` (wav, mp3, m4a/aac, flac, ogg, mp4, ...) piece
    by piece, resampled to ``sample_rate`` and averaged over channels: float32 (n,) pieces.

    Raises InputError for a missing, unreadable or audio-less file, and (with ``max_seconds``)
    as soon as the decoded audio runs past that limit, whatever the header said."""
    import av

    path = os.fspath(path)
    container, stream = _open_audio(path)
    total, limit = 0, None if max_seconds is None else int(max_seconds * sample_rate)
    with container:
        try:
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name,
                                          rate=sample_rate)
            frames = container.decode(stream)
            while True:
                frame = next(frames, None)
                if frame is not None:
                    frame.pts = None  # let the resampler count samples itself
                for f in resampler.resample(frame):
                    piece = f.to_ndarray().mean(axis=0).astype(np.float32)
                    total += piece.size
                    if limit is not None and total > limit:
                        check_offline_length(total * SAMPLE_RATE // sample_rate, max_seconds,
                                             f"Audio file {path!r} (decoded so far)")
                    yield piece
                if frame is None:
                    break
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
            raise _corrupt(path, e) from None


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole of ``iter_audio(path, sample_rate)``: (S,) float32."""
    chunks = list(iter_audio(path, sample_rate))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def check_offline_length(num_samples: int, max_seconds: float | None, what: str = "The audio"
                         ) -> None:
    """InputError if ``num_samples`` at 16 kHz last longer than ``max_seconds`` (None: no
    limit), the offline generation limit (streaming has none)."""
    check_seconds(num_samples / SAMPLE_RATE, max_seconds, what)


def check_seconds(seconds: float, max_seconds: float | None, what: str = "The audio") -> None:
    """``check_offline_length`` for a duration in seconds."""
    if max_seconds is not None and seconds > max_seconds:
        raise InputError(f"{what} is {seconds:.1f} s long, over the offline limit of "
                         f"{max_seconds:.0f} s; cut it, raise --max-seconds, or use streaming "
                         f"generation (--stream, no length limit).")


def _check_samples(path: str, num_samples: int, peak: float) -> None:
    """The checks on decoded speech: some samples, finite, not silence only."""
    if num_samples == 0:
        raise InputError(f"Audio file {path!r} contains no samples; pass a non-empty recording.")
    if not np.isfinite(peak):
        raise InputError(f"Audio file {path!r} decodes to non-finite samples; re-export it.")
    if peak < SILENCE_PEAK:
        raise InputError(f"Audio file {path!r} is silent (peak {20 * np.log10(peak + 1e-12):.0f}"
                         f" dBFS); pass a recording with speech.")


def check_speech(path: str | os.PathLike, *, max_seconds: float | None = None) -> int:
    """Everything ``load_speech`` checks, holding one decoded piece at a time (for streaming a
    file of any length): the header's duration against ``max_seconds`` first, then every
    sample. Returns the number of 16 kHz samples."""
    path = os.fspath(path)
    check_seconds(audio_seconds(path) or 0.0, max_seconds, f"Audio file {path!r}")
    n, peak = 0, 0.0
    for piece in iter_audio(path, max_seconds=max_seconds):
        n += piece.size
        peak = max(peak, float(np.abs(piece).max())) if piece.size else peak
    _check_samples(path, n, peak)
    return n


def load_speech(path: str | os.PathLike, *, max_seconds: float | None = None) -> np.ndarray:
    """Speech as (S,) 16 kHz mono float32 in [-1, 1], after the checks generation needs: (when
    ``max_seconds`` is given, as offline generation does) not longer than that, from the
    header before decoding and again while decoding; not empty; not silence only."""
    path = os.fspath(path)
    check_seconds(audio_seconds(path) or 0.0, max_seconds, f"Audio file {path!r}")
    chunks = list(iter_audio(path, max_seconds=max_seconds))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    _check_samples(path, audio.size, float(np.abs(audio).max()) if audio.size else 0.0)
    return np.clip(audio, -1.0, 1.0)
