"""Quality filter hook for the ``voxceleb2`` builder: a registry of blind (no-reference) clip
scorers. A clip whose score is below the config's ``quality_threshold`` is not written and is
counted as skipped with reason ``quality``.

VASA-1 filters its training clips with a blind image-quality score; the network it used is not
available here, so the one scorer shipped is a cheap, honest stand-in:

* ``laplacian_sharpness``: the variance of the Laplacian of the grey-level frame (a classic
  focus/blur measure), averaged over up to 8 evenly spaced frames of the clip. It flags blurry,
  heavily compressed-and-smoothed or flat clips; it knows nothing about faces, noise or
  artefacts, and it depends on the resolution (measure a sample of your clips and pick the
  threshold from the distribution, e.g. its 5th percentile).

Add your own (e.g. a real BIQA network) by registering a function
``(frames (T, R, R, 3) uint8) -> float`` (higher is better)::

    from data_pipeline.voxceleb2 import quality
    quality.SCORERS["my_iqa"] = my_iqa

in a module that the build imports, then build with ``--quality-scorer my_iqa
--quality-threshold X``. With a distributed Beam runner, the workers must import that module too
(e.g. put the registration in an installed package that your pipeline code imports).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Scorer = Callable[[np.ndarray], float]


def laplacian_sharpness(frames: np.ndarray, max_frames: int = 8) -> float:
    """Mean variance of the 3x3 Laplacian of the grey-level image (pixel units, 0-255 scale)
    over up to ``max_frames`` evenly spaced frames of ``frames`` (T, R, R, 3) uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"Expected frames (T, R, R, 3) with T >= 1, got {frames.shape}.")
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round()
                    .astype(int))
    scores = [cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(frames[i]), cv2.COLOR_RGB2GRAY),
                            cv2.CV_64F).var() for i in idx]
    return float(np.mean(scores))


SCORERS: dict[str, Scorer] = {"laplacian_sharpness": laplacian_sharpness}


def get_scorer(name: str) -> Scorer:
    """The registered scorer ``name``; ValueError listing the known ones otherwise."""
    if name not in SCORERS:
        raise ValueError(f"Unknown quality scorer {name!r}; registered: {sorted(SCORERS)}. "
                         f"Register yours in data_pipeline.voxceleb2.quality.SCORERS.")
    return SCORERS[name]
