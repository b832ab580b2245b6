"""One SynthTalk clip as a pure function of (seed, identity, clip index), and the splits.

``generate_clip`` returns every field of an example (see ``../shared/SYNTHTALK.md``)::

  frames    (T, R, R, 3) uint8
  audio     (T * 640,) float32, 16 kHz, peak <= 1
  identity  int
  emotion   int (0 neutral, 1 happy, 2 sad, 3 surprised)
  gaze      (2,) float32 main gaze (theta, phi) in radians
  distance  float32 normalised head-to-camera distance in [0, 1]
  motion    (T, 12) float32 (``motion.MOTION_FIELDS``)
  phones    (T,) int32 phone sounding at each frame's centre (``phones.PHONES``)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.synthtalk import motion as motion_lib
from data_pipeline.synthtalk import phones as ph
from data_pipeline.synthtalk import render, speech
from data_pipeline.synthtalk.identity import sample_identity
from vasa_jax.constants import FPS, SAMPLES_PER_FRAME

SPLITS = ("train", "validation", "test")
# Fractions of identities per split; identities are assigned by id, so splits never share people.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass(frozen=True)
class ClipConditions:
    """Per-clip controls: emotion id, main gaze (theta, phi) in radians, distance in [0, 1]."""

    emotion: int
    gaze: np.ndarray
    distance: float


def identity_splits(num_identities: int) -> dict[str, range]:
    """Identity ids of each split: contiguous, disjoint ranges covering ``range(num_identities)``.

    Every split gets at least one identity when ``num_identities >= 3``.
    """
    if num_identities < 3:
        raise ValueError(f"SynthTalk needs at least 3 identities for train/validation/test, "
                         f"got {num_identities}.")
    n_val = max(1, int(round(num_identities * SPLIT_FRACTIONS[1])))
    n_test = max(1, int(round(num_identities * SPLIT_FRACTIONS[2])))
    n_train = num_identities - n_val - n_test
    return {"train": range(0, n_train),
            "validation": range(n_train, n_train + n_val),
            "test": range(n_train + n_val, num_identities)}


def sample_conditions(rng: np.random.Generator) -> ClipConditions:
    return ClipConditions(
        emotion=int(rng.integers(len(motion_lib.EMOTIONS))),
        gaze=np.array([rng.uniform(-0.35, 0.35), rng.uniform(-0.25, 0.25)], np.float32),
        distance=float(rng.uniform(0.0, 1.0)),
    )


@dataclasses.dataclass(frozen=True)
class ClipTracks:
    """Everything about a clip except its pixels."""

    conditions: ClipConditions
    utterance: ph.Utterance
    motion: np.ndarray  # (T, 12) float32
    audio: np.ndarray  # (T * 640,) float32
    phones: np.ndarray  # (T,) int32


def clip_tracks(seed: int, identity_id: int, clip_index: int, num_frames: int) -> ClipTracks:
    """Conditions, utterance, motion, audio and per-frame phones of one clip (deterministic)."""
    person = sample_identity(seed, identity_id)
    rng = np.random.default_rng([seed, identity_id, clip_index, 2])
    cond = sample_conditions(rng)
    utt = ph.sample_utterance(rng, num_frames / FPS + 0.25)
    motion = motion_lib.sample_motion(rng, utt, num_frames, cond.gaze, cond.distance)
    audio = speech.synthesize(utt, person.f0, person.formant_scale,
                              num_frames * SAMPLES_PER_FRAME, rng)
    phones = utt.phone_at(motion_lib.frame_times(num_frames)).astype(np.int32)
    return ClipTracks(cond, utt, motion, audio, phones)


def generate_clip(seed: int, identity_id: int, clip_index: int, num_frames: int,
                  resolution: int) -> dict[str, np.ndarray | int | float]:
    """Generate one clip (all fields above); identical inputs give identical bytes."""
    tracks = clip_tracks(seed, identity_id, clip_index, num_frames)
    cond = tracks.conditions
    frames = render.render_clip(tracks.motion, sample_identity(seed, identity_id).render_params(),
                                render.EMOTION_STYLE[cond.emotion], resolution)
    return {
        "frames": np.array(frames),  # a writable NumPy copy
        "audio": tracks.audio,
        "identity": identity_id,
        "emotion": cond.emotion,
        "gaze": cond.gaze,
        "distance": np.float32(cond.distance),
        "motion": tracks.motion,
        "phones": tracks.phones,
    }
