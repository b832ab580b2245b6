"""Audio frontends: 16 kHz speech -> one feature vector per 25 fps video frame.

Every frontend takes (S,) or (B, S) audio (float32 in [-1, 1], or 16-bit PCM) with S a multiple
of 640 and returns (T, D) or
(B, T, D) with T = S / 640, where row k describes exactly samples [640 k, 640 (k + 1)) (plus the
analysis window's overlap). ``make_frontend(name)`` builds one by name; ``mel`` is the default and
works offline. New frontends (wav2vec2) register in ``FRONTENDS``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from vasa_jax.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from vasa_jax.media.audio import to_float32


class AudioFrontend(Protocol):
    name: str

    @property
    def dim(self) -> int:
        """Features per video frame."""

    @property
    def context_frames(self) -> int:
        """Frames of audio on each side that a frame's features depend on (streaming reads
        this much beyond a window before computing it)."""

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """(S,) or (B, S) float32 -> (T, D) or (B, T, D) float32, T = S // 640."""


def _check_audio(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] (16-bit PCM is rescaled) whose length is whole frames."""
    audio = to_float32(audio)
    if audio.shape[-1] % SAMPLES_PER_FRAME:
        raise ValueError(f"Audio length {audio.shape[-1]} is not a multiple of "
                         f"{SAMPLES_PER_FRAME} samples (one 25 fps frame at 16 kHz).")
    return audio


@dataclasses.dataclass(frozen=True)
class MelFrontend:
    """Log-mel features (librosa): ``hops_per_frame`` 10-ms hops of ``n_mels`` bands per frame,
    concatenated, so a frame's vector keeps the sub-frame timing of the sound."""

    n_mels: int = 40
    hops_per_frame: int = 4
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    name: str = "mel"

    @property
    def dim(self) -> int:
        return self.n_mels * self.hops_per_frame

    @property
    def context_frames(self) -> int:
        return -(-(self.n_fft // 2) // SAMPLES_PER_FRAME)  # centred STFT: n_fft / 2 each side

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        import librosa

        audio = _check_audio(audio)
        hop = SAMPLES_PER_FRAME // self.hops_per_frame
        t = audio.shape[-1] // SAMPLES_PER_FRAME
        mel = librosa.feature.melspectrogram(
            y=audio, sr=SAMPLE_RATE, n_fft=self.n_fft, hop_length=hop, win_length=self.win_length,
            n_mels=self.n_mels, fmin=50.0, fmax=SAMPLE_RATE / 2, center=True, power=2.0)
        logmel = np.log(mel + 1e-6)[..., : t * self.hops_per_frame]  # (..., n_mels, hops)
        logmel = np.swapaxes(logmel, -1, -2)  # (..., T * hops, n_mels)
        return logmel.reshape(*audio.shape[:-1], t, self.dim).astype(np.float32)


FRONTENDS: dict[str, Any] = {"mel": MelFrontend}


def features_for_frames(frontend: AudioFrontend, audio: np.ndarray, start: int, stop: int
                        ) -> np.ndarray:
    """Rows [start, stop) of ``frontend(audio)`` (audio (S,) zero-padded to whole frames),
    computed from the samples of frames [start - c, stop + c) only (c = the frontend's
    ``context_frames``; zeros beyond the signal's ends, as the whole-signal call pads). This is
    how streaming computes a window's features as soon as its audio (plus c frames) is in.
    -> (stop - start, D) float32."""
    audio = to_float32(audio)
    c = frontend.context_frames
    lo, hi = (start - c) * SAMPLES_PER_FRAME, (stop + c) * SAMPLES_PER_FRAME
    piece = audio[max(lo, 0):min(hi, audio.shape[-1])]
    piece = np.pad(piece, (max(lo, 0) - lo, hi - lo - (max(lo, 0) - lo) - piece.shape[-1]))
    return frontend(piece)[c:c + stop - start]


def make_frontend(name: str = "mel", **kwargs) -> AudioFrontend:
    if name not in FRONTENDS:
        raise ValueError(f"Unknown audio frontend {name!r}; available: {sorted(FRONTENDS)}.")
    return FRONTENDS[name](**kwargs)


@dataclasses.dataclass(frozen=True)
class AddAudioFeatures:
    """Loader transform: example['audio'] (S,) -> example['audio_features'] (T, D).

    An example that already has ``audio_features`` is returned unchanged (the ``latents``
    dataset stores them, computed by the frontend named in its metadata)."""

    frontend: Any

    def __call__(self, ex: dict) -> dict:
        if "audio_features" in ex:
            return ex
        ex = dict(ex)
        ex["audio_features"] = self.frontend(ex["audio"])
        return ex
