"""Grain input pipeline over TFDS ArrayRecord talking-face datasets (SynthTalk, VoxCeleb2, ...).

Per process: seeded shuffle of the split's indices, sharded by JAX process (disjoint shards),
then for each clip a random window of ``num_frames`` frames (only those frames are decoded) with
exactly the aligned audio (640 samples per frame), light augmentation, and batching to the
per-process batch. ``vasa_jax.parallel.global_batch`` turns a batch into global ``jax.Array``s.
The iterator's state is checkpointable (``get_state``/``set_state``, or orbax through
``grain.checkpoint.CheckpointHandler``).

A batch is a dict of NumPy arrays with a leading batch dimension B::

  frames    (B, T, R, R, 3) uint8
  audio     (B, T * 640) float32 in [-1, 1]
  start     (B,) int32, first frame of the window within its clip
  identity  (B,) int32        clip (B,) int32
  and, where the dataset has them (SynthTalk does, VoxCeleb2 does not):
  motion    (B, T, 12) float32     phones (B, T) int32
  emotion   (B,) int32   gaze (B, 2) float32   distance (B,) float32
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import cv2
import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vasa_jax.constants import SAMPLES_PER_FRAME

PER_FRAME_FIELDS = ("motion", "phones")  # sliced with the window when present
CLIP_FIELDS = ("identity", "clip", "emotion", "gaze", "distance")
# Fields whose sign flips under a horizontal mirror: motion columns yaw, roll, tx, gaze_x,
# and the clip's gaze theta.
_MIRRORED_MOTION_COLUMNS = (0, 2, 3, 10)


def default_data_dir() -> str:
    """``$VASA_JAX_DATA_DIR``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return os.environ.get("VASA_JAX_DATA_DIR") or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")


class DatasetNotFoundError(FileNotFoundError):
    """A prepared dataset was not found where the loader was told to look."""


def dataset_dir(dataset: str, config: str, data_dir: str | None = None) -> epath.Path:
    """Directory of the newest prepared version of ``dataset/config`` under ``data_dir``."""
    data_dir = data_dir or default_data_dir()
    root = epath.Path(data_dir) / dataset / config
    versions = sorted((p for p in root.glob("*") if (p / "dataset_info.json").exists()),
                      key=lambda p: tfds.core.Version(p.name) if _is_version(p.name) else
                      tfds.core.Version("0.0.0"))
    if not versions:
        present = sorted(p.name for p in (epath.Path(data_dir) / dataset).glob("*")) if (
            epath.Path(data_dir) / dataset).exists() else []
        hint = (f" Prepared configs there: {', '.join(present)}." if present else "")
        build = (f"vasa-jax data build {dataset} --config {config} --data-dir {data_dir}"
                 if dataset == "synthtalk" else f"vasa-jax data build {dataset} --data-dir {data_dir}")
        raise DatasetNotFoundError(
            f"No prepared dataset '{dataset}/{config}' under {data_dir}.{hint} "
            f"Build it with: {build}  (or point --data-dir / $VASA_JAX_DATA_DIR at it).")
    return versions[-1]


def _is_version(name: str) -> bool:
    try:
        tfds.core.Version(name)
        return True
    except ValueError:
        return False


class _KeepEncoded(tfds.decode.Decoder):
    """Leaves encoded frames as bytes: the window transform decodes only the frames it keeps."""

    def decode_example(self, serialized):
        return serialized

    def decode_example_np(self, serialized):
        return serialized

    def decode_batch_example_np(self, serialized):
        return serialized


def open_source(dataset: str, config: str, split: str, data_dir: str | None = None):
    """Random-access source over a prepared split, frames left encoded.

    Returns ``(source, info)``; ``len(source)`` is the number of clips.
    """
    path = dataset_dir(dataset, config, data_dir)
    builder = tfds.builder_from_directory(path)
    if split.split("[")[0] not in builder.info.splits:
        raise ValueError(f"Split {split!r} is not in {path}; it has "
                         f"{sorted(builder.info.splits)}.")
    source = builder.as_data_source(split, decoders={"frames": _KeepEncoded()})
    return source, builder.info


def decode_frame(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> (R, R, 3) uint8 RGB."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("Could not decode a stored frame (corrupt PNG/JPEG bytes).")
    return img[..., ::-1]


@dataclasses.dataclass(frozen=True)
class ClipWindow(grain.transforms.RandomMap):
    """Pick a window of ``num_frames`` frames, decode them, and cut the aligned audio.

    ``random_start`` False takes the window at frame 0 (evaluation); True draws the start
    uniformly from the clip's valid range with the per-record rng.
    """

    num_frames: int
    random_start: bool = True

    def random_map(self, ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        total = len(ex["frames"])
        if total < self.num_frames:
            raise ValueError(f"Clip has {total} frames but the loader asks for windows of "
                             f"{self.num_frames}; lower num_frames or rebuild with longer clips.")
        start = int(rng.integers(0, total - self.num_frames + 1)) if self.random_start else 0
        stop = start + self.num_frames
        out = {
            "frames": np.stack([decode_frame(b) for b in ex["frames"][start:stop]]),
            "audio": _to_float_audio(ex["audio"][start * SAMPLES_PER_FRAME:stop * SAMPLES_PER_FRAME]),
            "start": np.int32(start),
        }
        for k in PER_FRAME_FIELDS:
            if k in ex:
                out[k] = np.asarray(ex[k][start:stop])
        for k in CLIP_FIELDS:
            if k in ex:
                out[k] = np.asarray(ex[k], np.float32 if k in ("gaze", "distance") else np.int32)
        return out


def _to_float_audio(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    return a.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
    """Horizontal mirror (p = ``flip_prob``) with the ground truth mirrored too, and a small
    per-clip brightness/contrast jitter of relative size ``colour_jitter``."""

    flip_prob: float = 0.5
    colour_jitter: float = 0.1

    def random_map(self, ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        ex = dict(ex)
        if rng.random() < self.flip_prob:
            ex["frames"] = ex["frames"][:, :, ::-1]
            if "motion" in ex:
                m = ex["motion"].copy()
                m[:, _MIRRORED_MOTION_COLUMNS] *= -1.0
                ex["motion"] = m
            if "gaze" in ex:
                ex["gaze"] = ex["gaze"] * np.array([-1.0, 1.0], np.float32)
        if self.colour_jitter > 0:
            gain = 1.0 + rng.uniform(-self.colour_jitter, self.colour_jitter)
            bias = 255.0 * rng.uniform(-self.colour_jitter, self.colour_jitter) * 0.5
            f = ex["frames"].astype(np.float32) * gain + bias
            ex["frames"] = np.clip(np.round(f), 0, 255).astype(np.uint8)
        ex["frames"] = np.ascontiguousarray(ex["frames"])
        return ex


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Everything that determines the stream of batches one process sees."""

    dataset: str = "synthtalk"
    config: str = "res64_small"
    split: str = "train"
    data_dir: str | None = None
    num_frames: int = 60
    batch_size: int = 32  # per process
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever
    random_window: bool = True
    augment: bool = True
    flip_prob: float = 0.5
    colour_jitter: float = 0.1
    drop_remainder: bool = True
    worker_count: int = 0  # grain worker processes; 0 decodes in this process
    worker_buffer_size: int = 2
    shard_index: int | None = None  # default: jax.process_index()
    shard_count: int | None = None  # default: jax.process_count()


def make_loader(cfg: LoaderConfig) -> grain.DataLoader:
    """The grain ``DataLoader`` for ``cfg``; ``iter()`` it for batches (checkpointable)."""
    source, _ = open_source(cfg.dataset, cfg.config, cfg.split, cfg.data_dir)
    shard_index = jax.process_index() if cfg.shard_index is None else cfg.shard_index
    shard_count = jax.process_count() if cfg.shard_count is None else cfg.shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} outside [0, {shard_count}).")
    if len(source) < shard_count:
        raise ValueError(f"Split {cfg.split!r} has {len(source)} clips, fewer than the "
                         f"{shard_count} processes reading it.")
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=grain.sharding.ShardOptions(shard_index, shard_count,
                                                  drop_remainder=cfg.drop_remainder),
        shuffle=cfg.shuffle,
        num_epochs=cfg.num_epochs,
        seed=cfg.seed,
    )
    ops: list[Any] = [ClipWindow(cfg.num_frames, random_start=cfg.random_window)]
    if cfg.augment:
        ops.append(Augment(cfg.flip_prob, cfg.colour_jitter))
    ops.append(grain.transforms.Batch(cfg.batch_size, drop_remainder=cfg.drop_remainder))
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=ops,
        worker_count=cfg.worker_count,
        worker_buffer_size=cfg.worker_buffer_size,
    )
