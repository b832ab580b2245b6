"""Pixel measurements on SynthTalk frames that need no learned probe (test helpers).

The mouth is located from the ground-truth pose with the renderer's own projection, then the
opening is measured on pixels: the count of pixels much darker than the surrounding skin.
"""

import numpy as np

from data_pipeline.synthtalk import render
from data_pipeline.synthtalk.motion import FIELD

LUMA = np.array([0.299, 0.587, 0.114])


def dark_mouth_pixels(frames: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """(T,) number of pixels in the mouth box darker than half the local skin luma."""
    res = frames.shape[1]
    luma = (frames.astype(np.float32) / 255.0) @ LUMA
    centres = render.mouth_centre_pixels(motion, res)
    out = np.zeros(len(frames), np.int64)
    for k, (cx, cy) in enumerate(centres):
        unit = motion[k, FIELD["scale"]] * render.HEAD_UNIT * res / 2  # pixels per head unit
        x0, y0 = int(round(cx)), int(round(cy))
        # The opening reaches ~0.16 head units above the mouth centre; the nostrils sit >= 0.21
        # above it, so the box stops at 0.14 upwards.
        hw, up, hh = int(np.ceil(0.2 * unit)), int(0.14 * unit), int(np.ceil(0.17 * unit))
        box = luma[k, y0 - up:y0 + hh + 1, x0 - hw:x0 + hw + 1]
        around = luma[k, max(y0 - 2 * hh, 0):y0 + 2 * hh + 1, max(x0 - 2 * hw, 0):x0 + 2 * hw + 1]
        out[k] = int((box < 0.5 * np.percentile(around, 75)).sum())
    return out
