"""Audio sample formats."""

from __future__ import annotations

import numpy as np


def to_float32(audio: np.ndarray) -> np.ndarray:
    """Audio as float32 in [-1, 1]: 16-bit PCM is divided by 32768, floats are cast."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    return audio.astype(np.float32)
