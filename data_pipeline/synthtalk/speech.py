"""Speech-like audio from a timed phone sequence (source-filter synthesis).

Vowels: a glottal pulse train (Rosenberg pulses at the speaker's pitch, declining and jittered
over each phrase) through three cascaded formant resonators (F1/F2/F3 per vowel, scaled by the
speaker's vocal tract). Fricatives: band-passed noise. Plosives: a closure (voiced bar for b)
followed by a burst whose band depends on the place of articulation, and aspiration for voiceless
ones. Nasals: voicing through a low nasal formant. Pauses: a faint noise floor.

Each sound class is rendered once over the whole clip and mixed by per-sample weights with short
raised-cosine ramps, so formant transitions are cross-fades and nothing loops over samples in Python.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import signal

from data_pipeline.synthtalk import phones as ph
from vasa_jax.constants import SAMPLE_RATE

# Formants (Hz) of the vowels for an adult male vocal tract (Peterson & Barney-like values).
VOWEL_FORMANTS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0)
# Intrinsic loudness of the vowels (open vowels are louder), relative to /a/.
VOWEL_LEVEL = {"a": 1.0, "o": 0.95, "e": 0.9, "u": 0.8, "i": 0.8}
NASAL_FORMANTS = {"m": (250.0, 1000.0), "n": (250.0, 1500.0)}
# Burst / frication bands (Hz).
NOISE_BANDS = {"f": (1200.0, 6500.0), "s": (3800.0, 7600.0), "p": (400.0, 1600.0),
               "b": (400.0, 1600.0), "t": (3000.0, 6500.0), "k": (1400.0, 3200.0)}
_RAMP = int(0.006 * SAMPLE_RATE)  # 6 ms cross-fade at segment edges


def _resonator(freq: float, bw: float, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Two-pole resonator (b, a) with unit gain at DC-normalised peak."""
    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    a = np.array([1.0, -2 * r * np.cos(theta), r * r])
    b = np.array([1.0 - r])
    return b, a


@functools.lru_cache(maxsize=None)
def _bandpass(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    return signal.butter(2, [lo, hi], btype="bandpass", fs=SAMPLE_RATE)


def _segment_weight(n: int, start: int, stop: int, ramp: int = _RAMP) -> np.ndarray:
    """(n,) weight that is 1 on [start, stop) with raised-cosine edges, 0 elsewhere."""
    w = np.zeros(n)
    start, stop = max(start, 0), min(stop, n)
    if stop <= start:
        return w
    w[start:stop] = 1.0
    r = min(ramp, (stop - start) // 2)
    if r > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)
        w[start:start + r] *= edge
        w[stop - r:stop] *= edge[::-1]
    return w


def accent_envelope(utt: ph.Utterance, num_samples: int) -> np.ndarray:
    """(num_samples,) sum of Gaussian bumps (peak 1, sd 80 ms) 80 ms after each stressed onset.

    Stress raises pitch and loudness here, and triggers head nods in ``motion.py``: the audio cue
    that makes part of the head motion predictable from speech.
    """
    t = np.arange(num_samples) / SAMPLE_RATE
    env = np.zeros(num_samples)
    for s in utt.starts[utt.stressed]:
        a, b = np.searchsorted(t, [s - 0.25, s + 0.4])
        env[a:b] += np.exp(-0.5 * ((t[a:b] - s - 0.08) / 0.08) ** 2)
    return env


def pitch_contour(utt: ph.Utterance, f0: float, num_samples: int,
                  rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) f0 in Hz: per-phrase declination, accents on stressed syllables, jitter."""
    t = np.arange(num_samples) / SAMPLE_RATE
    contour = np.full(num_samples, f0)
    for p in np.unique(utt.phrase[utt.phrase >= 0]):
        sel = utt.phrase == p
        t0, t1 = utt.starts[sel].min(), utt.ends[sel].max()
        m = (t >= t0) & (t < t1)
        frac = (t[m] - t0) / max(t1 - t0, 1e-3)
        contour[m] = f0 * (1.12 - 0.25 * frac)
    contour *= 1.0 + 0.08 * accent_envelope(utt, num_samples)
    # Slow random jitter (a few per cent), smooth on a 30 ms scale.
    knots = rng.normal(0.0, 0.025, int(num_samples / (0.03 * SAMPLE_RATE)) + 2)
    jitter = np.interp(np.arange(num_samples) / (0.03 * SAMPLE_RATE),
                       np.arange(len(knots)), knots)
    return contour * (1.0 + jitter)


def _unit_rms(y: np.ndarray) -> np.ndarray:
    return y / (np.sqrt(np.mean(y * y)) + 1e-12)


def glottal_source(f0: np.ndarray) -> np.ndarray:
    """Rosenberg glottal flow derivative at the per-sample pitch ``f0``; (N,) -> (N,)."""
    phase = np.cumsum(f0) / SAMPLE_RATE
    frac = phase - np.floor(phase)
    open_q = 0.6  # open quotient: rise 2/3, fall 1/3 of the open phase
    tp, tn = open_q * 2 / 3, open_q / 3
    flow = np.where(frac < tp, 0.5 * (1 - np.cos(np.pi * frac / tp)),
                    np.where(frac < tp + tn, np.cos(0.5 * np.pi * (frac - tp) / tn), 0.0))
    return np.diff(flow, prepend=0.0) * 20.0  # lip radiation ~ differentiation


def synthesize(utt: ph.Utterance, f0_mean: float, formant_scale: float, num_samples: int,
               rng: np.random.Generator) -> np.ndarray:
    """Render the utterance as (num_samples,) float32 audio at 16 kHz with peak <= 1."""
    n = num_samples
    source = glottal_source(pitch_contour(utt, f0_mean, n, rng))
    noise = rng.standard_normal(n)
    out = np.zeros(n)

    weights: dict[str, np.ndarray] = {}

    def weight(key: str) -> np.ndarray:
        if key not in weights:
            weights[key] = np.zeros(n)
        return weights[key]

    for pid, st, du, stressed in zip(utt.phones, utt.starts, utt.durations, utt.stressed):
        name = ph.PHONES[pid]
        a, b = int(round(st * SAMPLE_RATE)), int(round((st + du) * SAMPLE_RATE))
        if name in VOWEL_FORMANTS:
            weight(name)[:] += _segment_weight(n, a, b) * VOWEL_LEVEL[name]
        elif name in NASAL_FORMANTS:
            weight(name)[:] += _segment_weight(n, a, b)
        elif name in ("f", "s"):
            weight(name)[:] += _segment_weight(n, a, b) * (1.0 if name == "s" else 0.5)
        elif name in ("p", "b", "t", "k"):
            burst = a + int(0.7 * (b - a))
            weight(name)[:] += _segment_weight(n, burst, burst + int(0.015 * SAMPLE_RATE), 40)
            if name == "b":  # voice bar during the closure
                weight("voicebar")[:] += _segment_weight(n, a, burst)
            else:  # aspiration after the burst
                weight("aspiration")[:] += 0.3 * _segment_weight(
                    n, burst + int(0.01 * SAMPLE_RATE), b, 60)

    # Each class is filtered over the whole clip, normalised to unit RMS, and mixed at its level.
    for key, w in weights.items():
        if key in VOWEL_FORMANTS:
            y = source
            for f, bw in zip(VOWEL_FORMANTS[key], FORMANT_BANDWIDTHS):
                y = signal.lfilter(*_resonator(f * formant_scale, bw), y)
            out += w * _unit_rms(y)
        elif key in NASAL_FORMANTS:
            f1, f2 = NASAL_FORMANTS[key]
            y = signal.lfilter(*_resonator(f1 * formant_scale, 100.0), source)
            y = y + 0.2 * _unit_rms(signal.lfilter(*_resonator(f2 * formant_scale, 200.0), source))
            out += w * _unit_rms(y) * 0.35
        elif key in NOISE_BANDS:
            lo, hi = NOISE_BANDS[key]
            out += w * _unit_rms(signal.lfilter(*_bandpass(lo, hi), noise)) * 0.3
        elif key == "voicebar":
            out += w * _unit_rms(signal.lfilter(*_resonator(150.0, 80.0), source)) * 0.12
        elif key == "aspiration":
            out += w * _unit_rms(signal.lfilter(*_bandpass(800.0, 5000.0), noise)) * 0.3

    out *= 1.0 + 0.35 * accent_envelope(utt, n)
    out += 0.0015 * noise * rng.uniform(0.3, 1.0)  # room tone
    peak = np.max(np.abs(out))
    gain = rng.uniform(0.5, 0.95) / max(peak, 1e-6)
    return (out * gain).astype(np.float32)
