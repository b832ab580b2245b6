"""Metrics on motion tracks (generated vs ground truth), as in VASA-1's evaluation where the
ground truth is available (SynthTalk): lip-sync correlation, audio-visual offset and confidence,
pose variation ΔP, and gaze error.

All functions take per-clip arrays (T, ...) or lists of them; clips may differ in length.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def lagged_correlations(gen: np.ndarray, ref: np.ndarray, max_lag: int) -> np.ndarray:
    """corr(gen[k], ref[k - lag]) for lag in [-max_lag, max_lag]; (2 max_lag + 1,).

    A positive peak lag means the generated track lags (comes after) the reference."""
    out = np.zeros(2 * max_lag + 1)
    n = len(gen)
    for j, lag in enumerate(range(-max_lag, max_lag + 1)):
        if lag >= 0:
            a, b = gen[lag:], ref[:n - lag]
        else:
            a, b = gen[:n + lag], ref[-lag:]
        out[j] = pearson(a, b) if len(a) > 2 else 0.0
    return out


def av_offset(gen_tracks: Sequence[np.ndarray], ref_tracks: Sequence[np.ndarray],
              max_lag: int = 15) -> tuple[int, float, np.ndarray]:
    """Audio-visual offset in frames (lag of the peak of the clip-averaged cross-correlation,
    0 = in sync) and the confidence (peak minus median over lags), SyncNet-style.

    Returns (offset, confidence, averaged correlation per lag)."""
    curves = [lagged_correlations(np.asarray(g), np.asarray(r), max_lag)
              for g, r in zip(gen_tracks, ref_tracks)]
    mean = np.mean(curves, axis=0)
    peak = int(np.argmax(mean))
    return peak - max_lag, float(mean[peak] - np.median(mean)), mean


def delta_p(motion_pose: np.ndarray) -> float:
    """ΔP: mean absolute frame-to-frame change of (yaw, pitch, roll); (T, 3) -> radians/frame."""
    return float(np.abs(np.diff(np.asarray(motion_pose), axis=0)).mean())


def gaze_error_degrees(gen_gaze: np.ndarray, target: np.ndarray) -> float:
    """Angle in degrees between the clip's mean generated gaze (gaze_x, gaze_y) and the target
    (theta, phi), both read as yaw/pitch of a unit direction."""
    def unit(g):
        th, ph = g[..., 0], g[..., 1]
        return np.stack([np.sin(th) * np.cos(ph), np.sin(ph), np.cos(th) * np.cos(ph)], -1)

    u, v = unit(np.asarray(gen_gaze, np.float64).mean(axis=0)), unit(np.asarray(target, np.float64))
    return float(np.degrees(np.arccos(np.clip((u * v).sum(), -1.0, 1.0))))
