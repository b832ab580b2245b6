"""What the training tasks and the evaluation read from a dataset: loader configurations of a
stage's view of the data, and whole clips in stored order.

``config`` everywhere is a run config with a ``data`` block (``dataset``, ``config``,
``data_dir``, ``flip``, ``colour_jitter``, ``num_workers``, ...) and a ``seed``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from data_pipeline.loader import LoaderConfig, make_loader, open_source
from data_pipeline.synthtalk.motion import FIELD

# Head pose (yaw, pitch, roll) columns of the 12-d motion track.
POSE_COLUMNS = (FIELD["yaw"], FIELD["pitch"], FIELD["roll"])


def _source(config, split: str):
    d = config.data
    return open_source(d.dataset, d.config, split, d.data_dir or None)


def clip_length(config, split: str) -> int:
    """Frames per stored clip of ``split``."""
    return int(_source(config, split)[1].features["motion"].shape[0])


def window_loader_config(config, *, split: str, num_frames: int, train: bool, batch_size: int,
                         shard_index=None, shard_count=None) -> LoaderConfig:
    """Windows of ``num_frames`` frames with the per-frame tracks only (no pixels, no raw audio:
    audio features come from a clip transform): stage 2 and CAPP. ``train``: shuffled random
    windows forever, mirrored with ``data.flip``; otherwise one pass in stored order."""
    d = config.data
    return LoaderConfig(
        dataset=d.dataset, config=d.config, split=split, data_dir=d.data_dir or None,
        num_frames=num_frames, batch_size=batch_size, seed=config.seed, shuffle=train,
        num_epochs=None if train else 1, random_window=train, frames=False, audio=False,
        augment=train and d.flip, flip_prob=0.5, colour_jitter=0.0, drop_remainder=train,
        cache_clips=d.cache_clips if train else 0,
        worker_count=d.num_workers if train else 0, worker_buffer_size=d.worker_buffer_size,
        shard_index=shard_index, shard_count=shard_count)


def pixel_window_loader_config(config, *, num_frames: int, batch_size: int, audio: bool,
                               seed: int | None = None, augment: bool = True) -> LoaderConfig:
    """Random windows of ``num_frames`` frames with pixels (and the raw audio when ``audio``) of
    ``data.split``, shuffled, forever: the instruments that read frames (the probe: 1 frame;
    SyncNet: a window with room for audio shifts). ``augment``: mirroring (``data.flip``) and
    colour jitter. ``seed`` defaults to ``config.seed``."""
    d = config.data
    return LoaderConfig(
        dataset=d.dataset, config=d.config, split=d.split, data_dir=d.data_dir or None,
        num_frames=num_frames, batch_size=batch_size,
        seed=config.seed if seed is None else seed, shuffle=True, num_epochs=None,
        random_window=True, frames=True, audio=audio, augment=augment,
        flip_prob=0.5 if d.flip else 0.0, colour_jitter=d.colour_jitter, drop_remainder=True,
        cache_clips=d.cache_clips, worker_count=d.num_workers,
        worker_buffer_size=d.worker_buffer_size)


def pair_loader_config(config, *, split: str, train: bool, batch_size: int,
                       shard_index=None, shard_count=None) -> LoaderConfig:
    """Two random frames of a clip (source, driver) with pixels: stage 1. ``train`` adds
    mirroring (``data.flip``), colour jitter and, with ``data.other_clip_driver``, drivers from
    another clip of the same identity."""
    d = config.data
    return LoaderConfig(
        dataset=d.dataset, config=d.config, split=split, data_dir=d.data_dir or None,
        num_frames=2, random_frames=2, batch_size=batch_size, seed=config.seed, shuffle=train,
        num_epochs=None if train else 1, frames=True, audio=False,
        augment=train and d.flip, flip_prob=0.5, colour_jitter=d.colour_jitter if train else 0.0,
        drop_remainder=train, worker_count=d.num_workers if train else 0,
        worker_buffer_size=d.worker_buffer_size, shard_index=shard_index, shard_count=shard_count,
        other_clip_driver=d.other_clip_driver if train else 0.0)


def read_clips(config, split: str, max_clips: int | None = None, *, frames: bool = False,
               audio: bool = False, audio_features: bool = False) -> list[dict[str, Any]]:
    """The first ``max_clips`` (None/0: all) whole clips of ``split`` in stored order, each a
    dict of the loader's fields for one clip: ``motion`` (T, M), ``emotion``, ``identity``, ...;
    when asked, ``frames`` (T, R, R, 3) uint8, ``audio`` (T * 640,) float32 and
    ``audio_features`` (T, A) of ``config.audio``'s frontend. Never augmented."""
    clip_transforms = []
    if audio_features:
        from vasa_jax.motion.audio import AddAudioFeatures, frontend_from_config

        clip_transforms.append(AddAudioFeatures(frontend_from_config(config.audio)))
    source, info = _source(config, split)
    n = len(source) if not max_clips else min(int(max_clips), len(source))
    d = config.data
    cfg = LoaderConfig(
        dataset=d.dataset, config=d.config, split=split, data_dir=d.data_dir or None,
        num_frames=int(info.features["motion"].shape[0]), batch_size=1, seed=config.seed,
        shuffle=False, num_epochs=1, random_window=False, frames=frames,
        audio=audio, augment=False, colour_jitter=0.0,
        drop_remainder=False, shard_index=0, shard_count=1)
    it = iter(make_loader(cfg, clip_transforms=clip_transforms))
    clips = []
    for _ in range(n):
        clip = {k: v[0] for k, v in next(it).items()}
        for k in ("emotion", "identity"):
            if k in clip:
                clip[k] = int(clip[k])
        clips.append(clip)
    return clips


def read_pose_clips(config, split: str, max_clips: int | None = None
                    ) -> list[dict[str, np.ndarray]]:
    """Whole clips of ``split`` in stored order, as CAPP reads them: ``pose`` (T, 3) radians
    (yaw, pitch, roll: ``POSE_COLUMNS`` of the motion track), ``audio_features`` (T, F) of
    ``config.audio``'s frontend, ``identity``. No pixels are decoded."""
    clips = read_clips(config, split, max_clips, audio_features=True)
    return [{"pose": np.asarray(c["motion"][:, POSE_COLUMNS], np.float32),
             "audio_features": np.asarray(c["audio_features"], np.float32),
             "identity": c["identity"]} for c in clips]


def pose_audio_stats(clips: Sequence[dict[str, Any]], center_pose: bool
                     ) -> dict[str, np.ndarray]:
    """Per-angle pose mean/std of ``read_pose_clips`` rows (of the clip-centred pose when
    ``center_pose``), ``pose_diff_std`` (std of the frame differences), and per-feature audio
    mean/std."""
    centred = [{"pose": c["pose"] - (c["pose"].mean(0) if center_pose else 0.0),
                "diff": np.diff(c["pose"], axis=0), "audio": c["audio_features"]} for c in clips]
    stats = clip_stats(centred, {"pose": "pose", "audio": "audio"})
    stats["pose_diff_std"] = mean_std(centred, "diff")[1]
    return stats


def mean_std(clips: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of ``key`` over every frame of ``clips``."""
    x = np.concatenate([np.asarray(c[key]) for c in clips])
    return x.mean(0), x.std(0)


def clip_stats(clips: Sequence[dict[str, Any]], names: Mapping[str, str]
               ) -> dict[str, np.ndarray]:
    """``{name}_mean`` and ``{name}_std`` of the clips' field ``names[name]`` for each name (the
    normalisation statistics a model stores in its non-trained variables)."""
    out = {}
    for name, key in names.items():
        out[f"{name}_mean"], out[f"{name}_std"] = mean_std(clips, key)
    return out
