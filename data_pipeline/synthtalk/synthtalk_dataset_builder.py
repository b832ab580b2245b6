"""TFDS builder ``synthtalk``: procedurally generated talking faces with exact ground truth.

Configs are named ``res{R}_{size}`` for R in (64, 128, 256) and size in (tiny, small, large);
``SynthtalkConfig`` builds any other combination. Splits are identity-disjoint (80/10/10 % of
identities by id). Frames are stored encoded (PNG at 64 px, JPEG q95 above) and audio as 16-bit
PCM; ``data_pipeline.loader`` decodes both. Stored in ArrayRecord by default.

Build from the command line with ``vasa-jax data build synthtalk --config res64_small``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline.features import clip_features
from data_pipeline.synthtalk import generate, parallel
from data_pipeline.synthtalk.motion import EMOTIONS, MOTION_DIM, MOTION_FIELDS
from data_pipeline.synthtalk.phones import PHONES
from vasa_jax.constants import FPS, SAMPLE_RATE

SIZES = {  # name: (identities, clips per identity, frames per clip)
    "tiny": (6, 2, 25),
    "small": (100, 10, 75),
    "large": (1000, 10, 75),
}
RESOLUTIONS = (64, 128, 256)


@dataclasses.dataclass(kw_only=True)
class SynthtalkConfig(tfds.core.BuilderConfig):
    """Resolution, size, clip length, seed and frame encoding of one SynthTalk variant."""

    resolution: int = 64
    num_identities: int = 100
    clips_per_identity: int = 10
    num_frames: int = 75
    seed: int = 0
    encoding: str = "png"

    def __post_init__(self):
        if self.resolution < 16 or self.resolution % 2:
            raise ValueError(f"SynthTalk resolution must be even and >= 16, got {self.resolution}.")
        if self.num_frames < 1 or self.clips_per_identity < 1:
            raise ValueError("SynthTalk needs at least one frame and one clip per identity.")
        if self.encoding not in parallel.ENCODINGS:
            raise ValueError(f"Unknown frame encoding {self.encoding!r}; use one of "
                             f"{parallel.ENCODINGS}.")
        generate.identity_splits(self.num_identities)  # validates the identity count


def make_config(resolution: int, size: str = "small", **overrides) -> SynthtalkConfig:
    """A named config ``res{R}_{size}``; any override makes a custom, distinctly named config."""
    if size not in SIZES:
        raise ValueError(f"Unknown SynthTalk size {size!r}; use one of {sorted(SIZES)}.")
    n_id, n_clip, n_frames = SIZES[size]
    fields = dict(resolution=resolution, num_identities=n_id, clips_per_identity=n_clip,
                  num_frames=n_frames, seed=0, encoding="png" if resolution <= 64 else "jpeg")
    name = f"res{resolution}_{size}"
    changed = {k: v for k, v in overrides.items() if v is not None and fields.get(k) != v}
    fields.update(changed)
    if changed:
        name = (f"res{fields['resolution']}_i{fields['num_identities']}"
                f"_c{fields['clips_per_identity']}_t{fields['num_frames']}"
                f"_s{fields['seed']}_{fields['encoding']}")
    n = fields["num_identities"] * fields["clips_per_identity"]
    return SynthtalkConfig(
        name=name,
        description=(f"{n} clips of {fields['num_frames']} frames at {fields['resolution']} px "
                     f"({fields['num_identities']} identities), seed {fields['seed']}."),
        **fields)


class Synthtalk(tfds.core.GeneratorBasedBuilder):
    """SynthTalk: synthetic talking-face clips with audio and per-frame ground truth."""

    name = "synthtalk"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [make_config(r, s) for r in RESOLUTIONS for s in SIZES]
    DEFAULT_CONFIG_NAME = "res64_small"

    def __init__(self, *, workers: int = 0, file_format=None, **kwargs):
        """``workers``: generator processes (0: one per available core; any count gives the
        same bytes). ``file_format`` defaults to ArrayRecord (random access for grain)."""
        super().__init__(file_format=file_format or "array_record", **kwargs)
        self._workers = workers or parallel.default_workers()

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        t = c.num_frames
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                **clip_features(t, c.resolution, c.encoding, identity_doc="synthetic person id",
                                clip_doc="clip index within the identity"),
                "emotion": tfds.features.ClassLabel(names=EMOTIONS),
                "gaze": tfds.features.Tensor(shape=(2,), dtype=np.float32,
                                             doc="main gaze (theta, phi), radians"),
                "distance": tfds.features.Scalar(np.float32, doc="normalised distance in [0, 1]"),
                "motion": tfds.features.Tensor(shape=(t, MOTION_DIM), dtype=np.float32,
                                               doc="per frame: " + ", ".join(MOTION_FIELDS)),
                "phones": tfds.features.Tensor(shape=(t,), dtype=np.int32,
                                               doc="phone per frame: " + " ".join(PHONES)),
            }),
            supervised_keys=None,
            homepage="https://github.com/vasa-jax/vasa_jax",
            metadata=tfds.core.MetadataDict(fps=FPS, sample_rate=SAMPLE_RATE,
                                            motion_fields=list(MOTION_FIELDS),
                                            phones=list(PHONES), seed=c.seed),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is generated
        return {split: self._generate_examples(ids)
                for split, ids in generate.identity_splits(self.builder_config.num_identities).items()}

    def _generate_examples(self, identities: range):
        c = self.builder_config
        jobs = [(i, k) for i in identities for k in range(c.clips_per_identity)]
        examples = parallel.generate_encoded(
            jobs, seed=c.seed, num_frames=c.num_frames, resolution=c.resolution,
            encoding=c.encoding, workers=self._workers)
        for (identity, clip), ex in zip(jobs, examples):
            yield f"{identity:06d}_{clip:04d}", ex
