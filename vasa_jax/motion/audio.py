"""Audio frontends: 16 kHz speech -> one feature vector per 25 fps video frame.

Every frontend takes (S,) or (B, S) audio (float32 in [-1, 1], or 16-bit PCM) with S a multiple
of 640 and returns (T, D) or
(B, T, D) with T = S / 640, where row k describes exactly samples [640 k, 640 (k + 1)) (plus the
analysis window's overlap). ``make_frontend(name)`` builds one by name: ``mel`` (the default,
no weights) or ``wav2vec2`` (hidden states of a wav2vec 2.0 checkpoint converted with
``vasa-jax convert wav2vec2``). New frontends register in ``FRONTENDS``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
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


# wav2vec 2.0's feature encoder: 320-sample stride (50 Hz), 400-sample receptive field. Padding
# the signal with 80 samples gives exactly two feature frames per 640-sample video frame, and
# frame k's pair covers samples [640 k, 640 k + 720).
_W2V_STRIDE, _W2V_TAIL = 320, 80


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Frontend:
    """wav2vec 2.0 hidden states at 25 fps (the paper's audio features, VASA-1 §3.2).

    ``checkpoint``: directory written by ``vasa-jax convert wav2vec2`` (an orbax checkpoint and
    its config; no PyTorch needed). The model's 50 Hz hidden states are averaged in pairs, so
    row k describes samples [640 k, 640 k + 720) (the 80-sample tail is the last feature's
    receptive field).

    ``layer``: which of the L + 1 hidden states (0: the transformer's input, L: its output;
    negative counts from the end). ``mix_layers``: every hidden state instead, concatenated per
    frame ((L + 1) * D features, layer-major); the motion model learns a softmax-weighted mix of
    them (``MotionDiT(audio_layers=L + 1)``).

    Long audio is processed in chunks of ``chunk_frames`` frames, each seen with
    ``context_frames`` extra frames on both sides (shifted inward at the signal's ends, so every
    chunk has the same shape: one compiled program, memory bounded by the chunk). Audio of at
    most ``chunk_frames + 2 * context_frames`` frames is processed in one call. The utterance
    normalisation of the checkpoint's feature extractor (zero mean, unit variance) applies per
    call, over the whole audio passed in.

    ``dtype``: compute dtype ("float32"; "bfloat16" on accelerators).
    """

    checkpoint: str = ""
    layer: int = -1
    mix_layers: bool = False
    chunk_frames: int = 500  # 20 s
    context_frames: int = 25  # 1 s each side of a chunk (also what streaming reads ahead)
    dtype: str = "float32"
    name: str = "wav2vec2"

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError(
                "The wav2vec2 audio frontend needs a converted checkpoint: run "
                "`vasa-jax convert wav2vec2 --hf-dir <HF model dir> --out <dir>` and pass "
                "checkpoint=<dir> (config: --config.audio.checkpoint=<dir>).")
        if "://" not in self.checkpoint:  # one spelling per directory (cache keys, dataset names)
            object.__setattr__(self, "checkpoint",
                               os.path.abspath(os.path.expanduser(self.checkpoint)))
        if self.chunk_frames < 1 or self.context_frames < 0:
            raise ValueError(f"chunk_frames must be >= 1 and context_frames >= 0; got "
                             f"{self.chunk_frames} and {self.context_frames}.")
        layers = self._runner().num_layers
        if not self.mix_layers and not -layers <= self.layer < layers:
            raise ValueError(f"layer={self.layer} but {self.checkpoint} has {layers} hidden states "
                             f"(0..{layers - 1}, or negative from the end).")

    def _runner(self) -> "_Wav2Vec2Runner":
        return _wav2vec2_runner(self.checkpoint, self.dtype)

    @property
    def num_layers_out(self) -> int:
        """Hidden states per frame in the output: L + 1 with ``mix_layers``, else 1."""
        return self._runner().num_layers if self.mix_layers else 1

    @property
    def dim(self) -> int:
        return self._runner().hidden_size * self.num_layers_out

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = _check_audio(audio)
        x = audio if audio.ndim == 2 else audio[None]
        t = x.shape[-1] // SAMPLES_PER_FRAME
        runner = self._runner()
        if runner.normalize:  # the HF feature extractor's per-utterance normalisation
            from vasa_jax.motion.wav2vec2 import normalize_audio

            x = np.asarray(normalize_audio(x))
        x = np.pad(x, ((0, 0), (0, _W2V_TAIL))).astype(np.float32)
        span = self.chunk_frames + 2 * self.context_frames
        select = None if self.mix_layers else self.layer
        if t <= span:
            out = runner(x, select)
        else:
            pieces = []
            for a in range(0, t, self.chunk_frames):
                b = min(a + self.chunk_frames, t)
                s = min(max(a - self.context_frames, 0), t - span)
                feats = runner(x[:, s * SAMPLES_PER_FRAME:(s + span) * SAMPLES_PER_FRAME
                                 + _W2V_TAIL], select)
                pieces.append(feats[:, a - s:b - s])
            out = np.concatenate(pieces, axis=1)
        return out if audio.ndim == 2 else out[0]


class _Wav2Vec2Runner:
    """A converted wav2vec 2.0 model behind one jitted function per (input shape, layer choice):
    (B, 640 T + 80) float32 -> (B, T, D) (one hidden state) or (B, T, (L + 1) D) (all)."""

    def __init__(self, checkpoint: str, dtype: str):
        import jax
        from flax import nnx

        from vasa_jax.interop.wav2vec2 import load_converted

        config, model, preprocessor = load_converted(checkpoint, dtype=dtype)
        self.num_layers = config.num_hidden_layers + 1
        self.hidden_size = config.hidden_size
        self.normalize = bool(preprocessor.get("do_normalize", True))
        graphdef, state = nnx.split(model)

        def features(state, x, select):
            states = nnx.merge(graphdef, state)(x)
            h = jax.numpy.stack(states, axis=2) if select is None else states[select][:, :, None]
            b, f, l, d = h.shape  # f = 2 T: average the two 50 Hz frames of each video frame
            h = h.reshape(b, f // 2, 2, l, d).mean(axis=2).astype(jax.numpy.float32)
            return h.reshape(b, f // 2, l * d)

        self._state = state
        self._features = jax.jit(features, static_argnums=2)

    def __call__(self, x: np.ndarray, select: int | None) -> np.ndarray:
        return np.asarray(self._features(self._state, x, select))


_RUNNERS: dict[tuple[str, str], _Wav2Vec2Runner] = {}
_RUNNERS_LOCK = threading.Lock()  # loader threads may build frontends at the same time


def _wav2vec2_runner(checkpoint: str, dtype: str) -> _Wav2Vec2Runner:
    """One loaded model per (checkpoint, dtype) per process, shared by every frontend object."""
    key = (checkpoint, dtype)
    with _RUNNERS_LOCK:
        if key not in _RUNNERS:
            _RUNNERS[key] = _Wav2Vec2Runner(checkpoint, dtype)
        return _RUNNERS[key]


FRONTENDS: dict[str, Any] = {"mel": MelFrontend, "wav2vec2": Wav2Vec2Frontend}


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


def frontend_from_config(audio_config) -> AudioFrontend:
    """The frontend a config's ``audio`` block names: ``{"frontend": name, field: value, ...}``
    (a ConfigDict, a dict, or a sorted tuple of its items); ``mel`` when no name is given."""
    a = dict(audio_config or {})
    return make_frontend(a.pop("frontend", None) or "mel", **a)


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
