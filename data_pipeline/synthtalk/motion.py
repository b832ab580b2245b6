"""Per-frame ground-truth motion of a SynthTalk clip: the 12-d ``motion`` track.

Field order (``MOTION_FIELDS``; angles in radians, lengths in image half-widths):

  0 yaw        head turn, positive = the face turns to the image's right
  1 pitch      head nod, positive = the face tilts down
  2 roll       in-plane head tilt, positive = clockwise in the image
  3 tx         head translation, image x (fraction of the half-width)
  4 ty         head translation, image y (down positive)
  5 scale      head size (1 = nominal; follows the clip's distance)
  6 jaw_open   mouth opening, 0 = lips together, 1 = wide open
  7 lip_width  0 = narrow, 1 = spread
  8 lip_round  0 = neutral, 1 = rounded/protruded
  9 blink      0 = eyes open, 1 = eyes closed
 10 gaze_x     horizontal eye direction relative to the head, radians, positive = right
 11 gaze_y     vertical eye direction, radians, positive = down

The mouth follows the phones through a critically damped second-order filter (coarticulation)
and leads the sound by one frame (40 ms). Head pose is a slow, smoothed Ornstein-Uhlenbeck drift plus
nods triggered at stressed-syllable onsets.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from data_pipeline.synthtalk import phones as ph
from vasa_jax.constants import FPS

MOTION_FIELDS = ("yaw", "pitch", "roll", "tx", "ty", "scale", "jaw_open", "lip_width",
                 "lip_round", "blink", "gaze_x", "gaze_y")
MOTION_DIM = len(MOTION_FIELDS)
FIELD = {name: i for i, name in enumerate(MOTION_FIELDS)}
EMOTIONS = ("neutral", "happy", "sad", "surprised")

LIP_LEAD_FRAMES = 1
COARTICULATION_TAU = 0.018  # seconds; time constant of each of the two cascaded lags
NOD_TAU = 0.15  # seconds to the peak of a nod
BLINK_RATE = 1.0 / 3.5  # blinks per second
_MOUTH_DT = 0.001  # mouth filter step (1 kHz)


def frame_times(num_frames: int) -> np.ndarray:
    """Centre time (seconds) of each frame: frame k spans [k/25, (k+1)/25)."""
    return (np.arange(num_frames) + 0.5) / FPS


def _critically_damped(x: np.ndarray, tau: float, dt: float) -> np.ndarray:
    """Filter rows of ``x`` (N, C) with omega^2 / (s + omega)^2, omega = 1/tau, from rest at x[0].

    A critically damped second-order system is two identical first-order lags in cascade.
    """
    alpha = 1.0 - np.exp(-dt / tau)
    b, a = np.array([alpha]), np.array([1.0, alpha - 1.0])
    y = x
    for _ in range(2):
        zi = (1.0 - alpha) * y[:1]  # steady state at the first value
        y, _ = signal.lfilter(b, a, y, axis=0, zi=zi)
    return y


def mouth_track(utt: ph.Utterance, num_frames: int, lead_frames: int = LIP_LEAD_FRAMES
                ) -> np.ndarray:
    """(T, 3) jaw_open, lip_width, lip_round per frame, clipped to [0, 1].

    The visible mouth at frame k is the smoothed articulation at the frame's centre time plus
    ``lead_frames`` frames: the lips lead the sound.
    """
    lead = lead_frames / FPS
    t_end = num_frames / FPS + lead + 0.05
    t = np.arange(0.0, t_end, _MOUTH_DT)
    targets = ph.VISEME_TARGETS[utt.phone_at(t)]
    smooth = _critically_damped(targets, COARTICULATION_TAU, _MOUTH_DT)
    idx = np.round((frame_times(num_frames) + lead) / _MOUTH_DT).astype(int)
    return np.clip(smooth[idx], 0.0, 1.0)


def _ou(rng: np.random.Generator, n: int, std: float, theta: float, smooth: float = 0.12,
        dt: float = 1 / FPS) -> np.ndarray:
    """(n,) stationary Ornstein-Uhlenbeck drift (stationary ``std``, reversion rate ``theta``),
    smoothed by a critically damped filter of time constant ``smooth`` seconds: a raw OU path is
    rough at frame scale, real heads and eyes move smoothly. The path starts ``4 smooth`` early
    so the filter has settled."""
    lead = int(np.ceil(4 * smooth / dt))
    a = np.exp(-theta * dt)
    noise = rng.standard_normal(n + lead) * std * np.sqrt(1 - a * a)
    x = np.empty(n + lead)
    x[0] = rng.standard_normal() * std
    x[1:] = signal.lfilter([1.0], [1.0, -a], noise[1:], zi=[a * x[0]])[0]
    return _critically_damped(x[:, None], smooth, dt)[lead:, 0]


def nod_track(utt: ph.Utterance, num_frames: int, amplitude: float, rng: np.random.Generator
              ) -> np.ndarray:
    """(T,) pitch nods: a gamma-shaped bump peaking ``NOD_TAU`` after each stressed onset."""
    onsets = utt.starts[utt.stressed]
    if onsets.size == 0:
        return np.zeros(num_frames)
    gains = amplitude * rng.uniform(0.6, 1.0, onsets.size)
    dt = frame_times(num_frames)[:, None] - onsets[None, :]
    u = np.maximum(dt, 0.0) / NOD_TAU
    return (gains[None, :] * u * np.exp(1.0 - u)).sum(axis=1)


def blink_track(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """(T,) eyelid closure in [0, 1]: Poisson blinks (about one per 3.5 s), 3-5 frames each."""
    duration = num_frames / FPS
    count = rng.poisson(BLINK_RATE * (duration + 0.2))
    out = np.zeros(num_frames)
    for start in rng.uniform(-0.2, duration, count):
        length = int(rng.integers(3, 6))
        k0 = int(np.floor(start * FPS))
        j = np.arange(length)
        profile = np.sin(np.pi * (j + 0.5) / length)
        profile /= profile.max()
        k = k0 + j
        ok = (k >= 0) & (k < num_frames)
        out[k[ok]] = np.maximum(out[k[ok]], profile[ok])
    return out


def sample_motion(rng: np.random.Generator, utt: ph.Utterance, num_frames: int,
                  gaze: np.ndarray, distance: float) -> np.ndarray:
    """(T, 12) float32 ground-truth motion for one clip (fields in ``MOTION_FIELDS`` order)."""
    amp = rng.uniform(0.3, 1.0)  # this clip's head-motion liveliness
    nod_amp = rng.uniform(0.03, 0.08) * rng.uniform(0.4, 1.0)
    nods = nod_track(utt, num_frames, nod_amp, rng)
    m = np.zeros((num_frames, MOTION_DIM))
    m[:, FIELD["yaw"]] = np.clip(_ou(rng, num_frames, 0.20 * amp, 0.6), -0.6, 0.6)
    m[:, FIELD["pitch"]] = np.clip(_ou(rng, num_frames, 0.07 * amp, 0.8) + nods, -0.35, 0.35)
    m[:, FIELD["roll"]] = np.clip(_ou(rng, num_frames, 0.06 * amp, 0.6), -0.3, 0.3)
    m[:, FIELD["tx"]] = _ou(rng, num_frames, 0.03, 0.4)
    m[:, FIELD["ty"]] = _ou(rng, num_frames, 0.02, 0.4) + 0.3 * nods
    m[:, FIELD["scale"]] = distance_to_scale(distance) * (1.0 + _ou(rng, num_frames, 0.015, 0.5))
    m[:, FIELD["jaw_open"]:FIELD["lip_round"] + 1] = mouth_track(utt, num_frames)
    m[:, FIELD["blink"]] = blink_track(rng, num_frames)
    m[:, FIELD["gaze_x"]] = gaze[0] + _ou(rng, num_frames, 0.025, 2.0, smooth=0.05)
    m[:, FIELD["gaze_y"]] = gaze[1] + _ou(rng, num_frames, 0.02, 2.0, smooth=0.05)
    return m.astype(np.float32)


def distance_to_scale(distance: float | np.ndarray) -> float | np.ndarray:
    """Nominal head scale for a normalised distance in [0, 1] (0 = close, 1 = far)."""
    return 1.2 - 0.4 * distance
