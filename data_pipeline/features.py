"""TFDS features the talking-face clip datasets share (``synthtalk``, ``voxceleb2``)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from vasa_jax.constants import SAMPLE_RATE, SAMPLES_PER_FRAME


def clip_features(num_frames: int, resolution: int, encoding: str, *, identity_doc: str,
                  clip_doc: str) -> dict[str, tfds.features.FeatureConnector]:
    """``frames`` ((T, R, R, 3) video stored as ``encoding``, png or jpeg), ``audio`` (16-bit
    PCM at ``SAMPLE_RATE``, ``SAMPLES_PER_FRAME`` samples a frame), ``identity`` and ``clip``
    (int32, documented by ``identity_doc`` and ``clip_doc``), in that order."""
    t, r = num_frames, resolution
    return {
        "frames": tfds.features.Video(shape=(t, r, r, 3), encoding_format=encoding),
        "audio": tfds.features.Audio(shape=(t * SAMPLES_PER_FRAME,), dtype=np.int16,
                                     sample_rate=SAMPLE_RATE, file_format=None),
        "identity": tfds.features.Scalar(np.int32, doc=identity_doc),
        "clip": tfds.features.Scalar(np.int32, doc=clip_doc),
    }
