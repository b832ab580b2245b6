"""Grain input pipeline over TFDS ArrayRecord talking-face datasets (SynthTalk, VoxCeleb2, ...).

The split's clip indices are shuffled with a seed (a new permutation every epoch) and repeated:
one *global* stream. Global batch ``s`` is stream positions ``[s G, (s + 1) G)``; process ``p`` of
``P`` loads the contiguous rows ``[p G/P, (p + 1) G/P)`` of it (disjoint shards), so the global
batch, its row order, and every per-example random draw (keyed by stream position) are the same
for any process count. For each clip: a random window of ``num_frames`` frames (only those frames
are decoded) with exactly the aligned audio (640 samples per frame), light augmentation, then
batching to the per-process batch. ``vasa_jax.parallel.global_batch`` turns a batch into global
``jax.Array``s. A stream can start at any global batch (``make_loader(..., start_batch=s)``),
without reading what comes before: that is how training resumes, on any number of processes and
loader workers, from nothing but the step it stopped at.

A damaged record (one that does not parse, a frame that does not decode, audio shorter than the
clip) does not stop the stream: the example at that position is taken from the next stream
position instead (keeping its own position, so its random draws stay its own), with a warning
naming the record, and the row's ``skipped_records`` counts what was passed over, per reason
(``SKIP_REASONS``). Batches thus keep their size and stay the same for any process or worker
count; the counts reach the trainer inside the batches (also from worker processes), where
``SkippedRecords`` sums them, logs them and stops when their share passes a limit.

A batch is a dict of NumPy arrays with a leading batch dimension B::

  frames    (B, T, R, R, 3) uint8      (unless ``frames=False``)
  audio     (B, T * 640) float32 in [-1, 1]
  start     (B,) int32, first frame of the window within its clip
  pos       (B,) int64, position in the global stream (key for per-example randomness)
  identity  (B,) int32        clip (B,) int32
  and, where the dataset has them:
  motion    (B, T, 12) float32     (SynthTalk's ground truth; VoxCeleb2's face-mesh labels)
  mouth_centre (B, T, 2) float32   (VoxCeleb2; image half-widths)
  phones    (B, T) int32           emotion (B,) int32   gaze (B, 2) float32   distance (B,)
  float32                          (SynthTalk only)
  with ``augment``: mirrored (B,) int8 (1: the example was mirrored); with
  ``other_clip_driver`` > 0: driver_clip (B,) int32 and driver_emotion (B,) int32 (the clip the
  last frame came from, and its emotion) instead of emotion, gaze and distance
  skipped_records (B, len(SKIP_REASONS)) int32: damaged records passed over to fill the row
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import threading
from typing import Any, Sequence

import cv2
import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from vasa_jax.constants import SAMPLES_PER_FRAME
from vasa_jax.media.audio import to_float32

# Per-frame fields sliced with the window when present (``audio_features`` comes from a clip
# transform such as ``vasa_jax.motion.audio.AddAudioFeatures``).
PER_FRAME_FIELDS = ("motion", "mouth_centre", "phones", "audio_features")
CLIP_FIELDS = ("identity", "clip", "emotion", "gaze", "distance")
# Fields whose sign flips under a horizontal mirror: motion columns yaw, roll, tx, gaze_x of
# SynthTalk's 12-column ground-truth track (and of the face-mesh labels in its convention,
# data_pipeline.voxceleb2.face_labels), x of mouth_centre, and the clip's gaze theta.
MIRRORED_MOTION_COLUMNS = (0, 2, 3, 10)
_MIRROR_X = np.array([-1.0, 1.0], np.float32)  # an (x, y) pair under a horizontal mirror
_MIRRORED_MOTION_WIDTH = 12  # the columns above only mean that on SynthTalk's track


def default_data_dir() -> str:
    """``$VASA_JAX_DATA_DIR``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return os.environ.get("VASA_JAX_DATA_DIR") or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")


class DatasetNotFoundError(FileNotFoundError):
    """A prepared dataset was not found where the loader was told to look."""


def dataset_dir(dataset: str, config: str, data_dir: str | None = None) -> epath.Path:
    """Directory of the newest prepared version of ``dataset/config`` under ``data_dir``."""
    data_dir = data_dir or default_data_dir()
    if not config:
        present = sorted(p.name for p in (epath.Path(data_dir) / dataset).glob("*")) if (
            epath.Path(data_dir) / dataset).exists() else []
        hint = f" Prepared configs there: {', '.join(present)}." if present else ""
        raise DatasetNotFoundError(
            f"No config given for dataset '{dataset}' (under {data_dir}).{hint} Set it, e.g. "
            f"--config.data.config=<name printed by the {dataset} build>.")
    root = epath.Path(data_dir) / dataset / config
    versions = sorted((p for p in root.glob("*") if (p / "dataset_info.json").exists()),
                      key=lambda p: tfds.core.Version(p.name) if _is_version(p.name) else
                      tfds.core.Version("0.0.0"))
    if not versions:
        present = sorted(p.name for p in (epath.Path(data_dir) / dataset).glob("*")) if (
            epath.Path(data_dir) / dataset).exists() else []
        hint = (f" Prepared configs there: {', '.join(present)}." if present else "")
        build = (f"vasa-jax data build {dataset} --config {config} --data-dir {data_dir}"
                 if dataset == "synthtalk" else
                 f"vasa-jax data build voxceleb2 --manual-dir YOUR_VOXCELEB2_DOWNLOAD "
                 f"--config {config} --data-dir {data_dir}" if dataset == "voxceleb2" else
                 f"vasa-jax data build {dataset} --data-dir {data_dir}")
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
    decoders = {"frames": _KeepEncoded()} if "frames" in builder.info.features else None
    source = builder.as_data_source(split, decoders=decoders)
    return source, builder.info


# Why a record is skipped: it does not parse (truncated or garbage bytes), one of its frames
# does not decode (corrupt PNG/JPEG), its audio is shorter than its frames.
SKIP_REASONS = ("bad_record", "bad_frame", "short_audio")
_MAX_BAD_IN_A_ROW = 100  # then the dataset, not a record, is broken


class BadRecord(ValueError):
    """A stored record that cannot be used; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_frame(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> (R, R, 3) uint8 RGB; ``BadRecord`` (``bad_frame``) if they do not
    decode."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadRecord("bad_frame", "Could not decode a stored frame (corrupt PNG/JPEG bytes).")
    return img[..., ::-1]


def _read_record(source, index: int) -> dict[str, Any]:
    """``source[index]`` as a dict; ``BadRecord`` if it does not parse."""
    try:
        return dict(source[index])
    except Exception as e:  # noqa: BLE001 -- protobuf, TFDS and I/O errors alike
        raise BadRecord(_parse_failure_reason(source, index),
                        f"record {index} does not parse: {type(e).__name__}: {e}") from e


def _parse_failure_reason(source, index: int) -> str:
    """``short_audio`` when the raw record parses as a tf.Example whose audio holds fewer
    samples than the dataset declares (TFDS then fails to reshape it), else ``bad_record``."""
    try:
        from tensorflow_datasets.proto import tf_example_pb2

        declared = source.dataset_info.features["audio"].shape[0]
        feature = tf_example_pb2.Example.FromString(
            source.data_source[index]).features.feature["audio"]
        stored = len(getattr(feature, feature.WhichOneof("kind")).value)
        return "short_audio" if stored < declared else "bad_record"
    except Exception:  # noqa: BLE001 -- not even that: the record itself is damaged
        return "bad_record"


def _check_audio(ex: dict[str, Any], index: int) -> None:
    """``BadRecord`` (``short_audio``) when the raw audio or the audio features of a clip cover
    fewer frames than its motion/frames (a window near the end would come out short)."""
    frames = next((len(ex[k]) for k in ("motion", "frames") if k in ex), None)
    if frames is None:
        return
    if "audio" in ex and len(ex["audio"]) < frames * SAMPLES_PER_FRAME:
        raise BadRecord("short_audio", f"record {index}: {len(ex['audio'])} audio samples for "
                        f"{frames} frames (needs {frames * SAMPLES_PER_FRAME}).")
    if "audio_features" in ex and len(ex["audio_features"]) < frames:
        raise BadRecord("short_audio", f"record {index}: audio features for "
                        f"{len(ex['audio_features'])} of its {frames} frames.")


def _example_rng(seed: int, pos: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, pos, salt])


@dataclasses.dataclass(frozen=True)
class ReadClip(grain.transforms.Map):
    """Global stream position -> the stored clip at that position of the shuffled order, after
    the whole-clip ``clip_transforms`` (e.g. audio features).

    ``keep`` drops fields the rest of the pipeline will not use (``None`` keeps all). With
    ``cache_size`` > 0 the prepared clips are kept in an LRU cache in each loading process, so
    repeated epochs skip reading, parsing and the clip transforms (for datasets that fit in
    memory once the pixels are dropped).
    """

    source: Any
    order: Any  # MapDataset: stream position -> clip index
    clip_transforms: tuple = ()
    keep: tuple | None = None
    cache_size: int = 0

    def _prepare(self, index: int) -> dict[str, Any]:
        ex = _read_record(self.source, index)
        _check_audio(ex, index)
        for t in self.clip_transforms:
            ex = t(ex)
        _check_audio(ex, index)
        if self.keep is not None:
            ex = {k: v for k, v in ex.items() if k in self.keep}
        return ex

    def map(self, pos: int) -> dict[str, Any]:
        return self.read(pos, pos)

    def read(self, pos: int, at: int) -> dict[str, Any]:
        """The clip at stream position ``at``, labelled as position ``pos`` (``LoadExample``
        fills a damaged record's position from a later one)."""
        index = int(self.order[at])
        if self.cache_size > 0:
            if "_cache" not in self.__dict__:  # per process; reading threads share it
                object.__setattr__(self, "_cache", (collections.OrderedDict(), threading.Lock()))
            cache, lock = self._cache
            with lock:
                ex = cache.get(index)
                if ex is not None:
                    cache.move_to_end(index)
            if ex is None:
                ex = self._prepare(index)
                with lock:
                    cache[index] = ex
                    if len(cache) > self.cache_size:
                        cache.popitem(last=False)
        else:
            ex = self._prepare(index)
        ex = dict(ex)
        ex["pos"] = np.int64(pos)
        return ex

    def __getstate__(self):  # the cache stays in the process that filled it
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)


@dataclasses.dataclass(frozen=True)
class ClipWindow(grain.transforms.Map):
    """Pick a window of ``num_frames`` frames, decode them, and cut the aligned audio.

    ``random_start`` False takes the window at frame 0 (evaluation); True draws the start
    uniformly from the clip's valid range, keyed by (seed, stream position). ``frames`` False
    skips the pixels altogether (motion-only training); ``audio`` False leaves out the raw audio.
    ``random_frames`` > 0 instead picks that many distinct frames anywhere in the clip (in
    random order, keyed like the window; e.g. the source/driver pairs of stage 1), decodes only
    those and returns their indices as ``frame_index``; raw audio is then left out.
    """

    num_frames: int
    random_start: bool = True
    frames: bool = True
    seed: int = 0
    audio: bool = True
    random_frames: int = 0

    def map(self, ex: dict[str, Any]) -> dict[str, Any]:
        total = next((len(ex[k]) for k in ("motion", "frames", "audio_features") if k in ex),
                     len(ex["audio"]) // SAMPLES_PER_FRAME if "audio" in ex else 0)
        if self.random_frames:
            return self._pick_frames(ex, total)
        if total < self.num_frames:
            raise ValueError(f"Clip has {total} frames but the loader asks for windows of "
                             f"{self.num_frames}; lower num_frames or rebuild with longer clips.")
        start = 0
        if self.random_start:
            start = int(_example_rng(self.seed, int(ex["pos"]), 1).integers(
                0, total - self.num_frames + 1))
        stop = start + self.num_frames
        out = {"start": np.int32(start), "pos": ex["pos"]}
        if self.audio:
            out["audio"] = to_float32(
                ex["audio"][start * SAMPLES_PER_FRAME:stop * SAMPLES_PER_FRAME])
        if self.frames:
            out["frames"] = np.stack([decode_frame(b) for b in ex["frames"][start:stop]])
        for k in PER_FRAME_FIELDS:
            if k in ex:
                out[k] = np.asarray(ex[k][start:stop])
        return self._clip_fields(ex, out)

    @staticmethod
    def _clip_fields(ex: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        for k in CLIP_FIELDS:
            if k in ex:
                out[k] = np.asarray(ex[k], np.float32 if k in ("gaze", "distance") else np.int32)
        return out

    def _pick_frames(self, ex: dict[str, Any], total: int) -> dict[str, Any]:
        if total < self.random_frames:
            raise ValueError(f"Clip has {total} frames but {self.random_frames} distinct frames "
                             f"were asked for.")
        idx = _example_rng(self.seed, int(ex["pos"]), 1).choice(
            total, self.random_frames, replace=False)
        out = {"frame_index": idx.astype(np.int32), "pos": ex["pos"]}
        if self.frames:
            out["frames"] = np.stack([decode_frame(ex["frames"][i]) for i in idx])
        for k in PER_FRAME_FIELDS:
            if k in ex:
                out[k] = np.asarray(ex[k])[idx]
        return self._clip_fields(ex, out)


def identity_index(source) -> dict[int, np.ndarray]:
    """identity -> the record indices of its clips in ``source`` (one pass over the records;
    frames stay encoded). Records that do not parse are left out (with a warning): they can
    be no one's driver."""
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i in range(len(source)):
        try:
            groups[int(_read_record(source, i)["identity"])].append(i)
        except BadRecord as e:
            logging.warning("Left a damaged record out of the identity index: %s", e)
    return {k: np.asarray(v, np.int64) for k, v in groups.items()}


@dataclasses.dataclass(frozen=True)
class DriverFromOtherClip(grain.transforms.Map):
    """For frame pairs (``random_frames`` = 2): with probability ``prob`` the second frame (the
    driver) is replaced by a random frame of another clip of the same identity, so a pair can
    differ in head pose, distance, gaze and emotion as much as two recordings of one person do
    (within one clip only the fast motion changes). Draws keyed by (seed, stream position).

    Per-frame fields of the driver row come from the clip it was taken from; ``driver_clip``
    (int32) is that clip's record index and ``driver_emotion`` (int32) that clip's emotion. The
    clip-level emotion/gaze/distance are left out of such batches (they describe only one of
    the two frames). An identity with one clip keeps its same-clip pair."""

    source: Any
    order: Any  # MapDataset: stream position -> record index
    index: Any  # identity -> record indices (``identity_index``)
    prob: float
    seed: int = 0

    def map(self, ex: dict[str, Any]) -> dict[str, Any]:
        emotion = ex.get("emotion")
        ex = {k: v for k, v in ex.items() if k not in ("emotion", "gaze", "distance")}
        record = int(self.order[int(ex["pos"])])
        ex["driver_clip"] = np.int32(record)
        if emotion is not None:
            ex["driver_emotion"] = np.int32(emotion)
        rng = _example_rng(self.seed, int(ex["pos"]), 3)
        others = self.index[int(ex["identity"])]
        others = others[others != record]
        if rng.random() >= self.prob or not len(others):
            return ex
        other_record = int(others[rng.integers(len(others))])
        other = _read_record(self.source, other_record)
        total = len(other["frames"])
        t = int(rng.integers(total))
        frames = np.array(ex["frames"])
        frames[-1] = decode_frame(other["frames"][t])
        ex["frames"] = frames
        for k in PER_FRAME_FIELDS:
            if k in ex and k in other:
                v = np.array(ex[k])
                v[-1] = np.asarray(other[k])[t]
                ex[k] = v
        if "frame_index" in ex:
            fi = np.array(ex["frame_index"])
            fi[-1] = t
            ex["frame_index"] = fi
        ex["driver_clip"] = np.int32(other_record)
        if emotion is not None:
            ex["driver_emotion"] = np.int32(other["emotion"])
        return ex


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.Map):
    """Horizontal mirror (p = ``flip_prob``) with the ground truth mirrored too, and a small
    per-clip brightness/contrast jitter of relative size ``colour_jitter``; random draws keyed
    by (seed, stream position). ``mirrored`` (int8, 1 if mirrored) records the draw.

    Mirroring knows only SynthTalk's 12-column motion track: asking for it (``flip_prob`` > 0)
    on other motion (e.g. the stage-1 latents of the ``latents`` dataset) raises ValueError."""

    flip_prob: float = 0.5
    colour_jitter: float = 0.1
    seed: int = 0

    def map(self, ex: dict[str, Any]) -> dict[str, Any]:
        if (self.flip_prob > 0 and "motion" in ex
                and np.shape(ex["motion"])[-1] != _MIRRORED_MOTION_WIDTH):
            raise ValueError(
                f"Mirror augmentation was requested but the motion has "
                f"{np.shape(ex['motion'])[-1]} columns, not SynthTalk's "
                f"{_MIRRORED_MOTION_WIDTH}: their sign under a mirror is unknown (stage-1 "
                f"latents have no mirrored counterpart). Turn flipping off "
                f"(--config.data.flip=False).")
        rng = _example_rng(self.seed, int(ex["pos"]), 2)
        ex = dict(ex)
        mirror = rng.random() < self.flip_prob
        ex["mirrored"] = np.int8(mirror)
        if mirror:
            if "frames" in ex:
                ex["frames"] = ex["frames"][:, :, ::-1]
            if "motion" in ex:
                m = ex["motion"].copy()
                m[:, MIRRORED_MOTION_COLUMNS] *= -1.0
                ex["motion"] = m
            if "mouth_centre" in ex:  # half-widths about the frame centre
                ex["mouth_centre"] = ex["mouth_centre"] * _MIRROR_X
            if "gaze" in ex:
                ex["gaze"] = ex["gaze"] * _MIRROR_X
        if "frames" in ex:
            if self.colour_jitter > 0:
                gain = 1.0 + rng.uniform(-self.colour_jitter, self.colour_jitter)
                bias = 255.0 * rng.uniform(-self.colour_jitter, self.colour_jitter) * 0.5
                f = ex["frames"].astype(np.float32) * gain + bias
                ex["frames"] = np.clip(np.round(f), 0, 255).astype(np.uint8)
            ex["frames"] = np.ascontiguousarray(ex["frames"])
        return ex


@dataclasses.dataclass(frozen=True)
class LoadExample(grain.transforms.Map):
    """Stream position -> finished example: ``read`` (``ReadClip``) then the per-example
    ``steps`` (window, driver, augmentation). A ``BadRecord`` anywhere (the clip, a frame, the
    driver's clip) passes the record over with a warning and takes the clip of the next stream
    position instead, still keyed by ``pos``; ``skipped_records`` counts the records passed
    over per ``SKIP_REASONS``. Filling the position rather than dropping it keeps every batch
    full and the same for any process or worker count (the price: the clip used instead
    appears twice in that epoch, with different random draws)."""

    read: ReadClip
    steps: tuple = ()

    def map(self, pos: int) -> dict[str, Any]:
        skipped = np.zeros(len(SKIP_REASONS), np.int32)
        for attempt in range(_MAX_BAD_IN_A_ROW):
            at = (int(pos) + attempt) % len(self.read.order)
            try:
                ex = self.read.read(int(pos), at)
                for step in self.steps:
                    ex = step.map(ex)
            except BadRecord as e:
                skipped[SKIP_REASONS.index(e.reason)] += 1
                logging.warning("Skipped a damaged record (%s) at stream position %d: %s",
                                e.reason, at, e)
                continue
            ex["skipped_records"] = skipped
            return ex
        raise RuntimeError(f"{_MAX_BAD_IN_A_ROW} records in a row from stream position {pos} "
                           f"are damaged ({dict(zip(SKIP_REASONS, skipped.tolist()))}): the "
                           f"dataset is broken; rebuild it.")


class TooManyBadRecords(RuntimeError):
    """The share of damaged records passed the configured limit."""


class SkippedRecords:
    """The trainer's tally of the records the loader passed over (the batches'
    ``skipped_records``, summed over every process at each ``totals`` call) and the limit on
    their share: ``check`` raises ``TooManyBadRecords`` when more than ``max_fraction`` of the
    records read were skipped, judged only once ``judge_after`` records were read (one bad
    record early in a run says little). Counts start at 0 when the process starts (a resumed
    run counts anew)."""

    def __init__(self, dataset: str, max_fraction: float, judge_after: int):
        self.dataset, self.max_fraction, self.judge_after = dataset, max_fraction, judge_after
        self.counts = np.zeros(len(SKIP_REASONS), np.int64)
        self.used = 0

    def add(self, batch: dict[str, Any]) -> None:
        """Take this batch's ``skipped_records`` out of it (the tasks never see it)."""
        skipped = batch.pop("skipped_records", None)
        if skipped is not None:
            self.counts += np.asarray(skipped, np.int64).sum(0)
            self.used += len(skipped)

    def totals(self) -> tuple[np.ndarray, int]:
        """(per-reason counts, records used) over all processes (a collective when there are
        several: every process must call it)."""
        mine = np.concatenate([self.counts, [self.used]])
        if jax.process_count() > 1:
            mine = np.asarray(multihost_utils.process_allgather(mine)).sum(0)
        return mine[:-1], int(mine[-1])

    def metrics(self, counts: np.ndarray, used: int) -> dict[str, float]:
        """``data/skipped_<reason>`` (cumulative counts) and ``data/skipped_fraction``."""
        out = {f"data/skipped_{r}": float(c) for r, c in zip(SKIP_REASONS, counts)}
        read = used + int(counts.sum())
        out["data/skipped_fraction"] = float(counts.sum()) / read if read else 0.0
        return out

    def check(self, counts: np.ndarray, used: int) -> None:
        skipped = int(counts.sum())
        read = used + skipped
        if read < self.judge_after or skipped <= self.max_fraction * read:
            return
        reasons = ", ".join(f"{r} {int(c)}" for r, c in zip(SKIP_REASONS, counts) if c)
        raise TooManyBadRecords(
            f"Too many damaged records in {self.dataset}: {skipped} of the {read} records read "
            f"({skipped / read:.1%}) were skipped ({reasons}), more than "
            f"data.max_skipped_fraction={self.max_fraction} allows. The loader's warnings name "
            f"each record. Rebuild or repair the dataset, or raise the limit (e.g. "
            f"--config.data.max_skipped_fraction=0.2) to train on the readable records.")


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
    frames: bool = True  # False: skip the pixels (motion-only training)
    augment: bool = True
    flip_prob: float = 0.5
    colour_jitter: float = 0.1
    drop_remainder: bool = True
    audio: bool = True  # False: leave the raw audio out of the batches
    cache_clips: int = 0  # >0: keep this many prepared clips per loading process (LRU)
    worker_count: int = 0  # grain worker processes; 0 loads in this process (with threads)
    worker_buffer_size: int = 2
    shard_index: int | None = None  # default: jax.process_index()
    shard_count: int | None = None  # default: jax.process_count()
    random_frames: int = 0  # >0: that many random distinct frames per clip instead of a window
    other_clip_driver: float = 0.0  # with random_frames=2: P(driver from another clip, same id)


@dataclasses.dataclass(frozen=True)
class _LocalToGlobal(grain.transforms.Map):
    """Local stream index -> global stream position (contiguous block of each global batch)."""

    local_batch: int
    shard_index: int
    shard_count: int

    def map(self, i: int) -> int:
        step, row = divmod(int(i), self.local_batch)
        return (step * self.shard_count + self.shard_index) * self.local_batch + row


def make_loader(cfg: LoaderConfig, clip_transforms: Sequence[Any] = (), *,
                start_batch: int = 0) -> grain.IterDataset:
    """The grain dataset for ``cfg``; ``iter()`` it for batches.

    ``clip_transforms`` (callables example -> example) run on each whole clip before windowing,
    e.g. ``AddAudioFeatures``, whose per-frame output is then windowed like the motion.
    ``start_batch``: the stream begins at that global batch (the batches before it are never
    read): its ``i``-th batch is batch ``start_batch + i`` of the stream from 0.
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}.")
    source, _ = open_source(cfg.dataset, cfg.config, cfg.split, cfg.data_dir)
    p = jax.process_index() if cfg.shard_index is None else cfg.shard_index
    n_proc = jax.process_count() if cfg.shard_count is None else cfg.shard_count
    if not 0 <= p < n_proc:
        raise ValueError(f"shard_index {p} outside [0, {n_proc}).")
    n = len(source)
    if n == 0:
        raise ValueError(f"Split {cfg.split!r} of {cfg.dataset}/{cfg.config} is empty.")
    order = grain.MapDataset.range(n)
    if cfg.shuffle:
        order = order.shuffle(seed=cfg.seed)
    order = order.repeat(cfg.num_epochs)
    total = len(order)
    global_batch = cfg.batch_size * n_proc
    if cfg.num_epochs is None:
        num_local = sys.maxsize // (2 * n_proc)
    elif cfg.drop_remainder:
        num_local = (total // global_batch) * cfg.batch_size
    else:
        num_local = -(-total // global_batch) * cfg.batch_size
    if num_local == 0:
        raise ValueError(f"Split {cfg.split!r} has {n} clips x {cfg.num_epochs} epochs, fewer "
                         f"than one global batch of {global_batch}; lower the batch size.")
    to_global = _LocalToGlobal(cfg.batch_size, p, n_proc)
    if cfg.num_epochs is None:
        ds = grain.MapDataset.range(num_local).map(to_global)
    else:  # finite: list the positions, without those past the end in a last partial batch
        ds = grain.MapDataset.source(
            [g for g in map(to_global.map, range(num_local)) if g < total])
    keep = None
    if not cfg.frames or not cfg.audio:  # do not hold (or cache) what will not be used
        drop = ({"frames"} if not cfg.frames else set()) | ({"audio"} if not cfg.audio else set())
        keep = tuple(k for k in (*PER_FRAME_FIELDS, *CLIP_FIELDS, "frames", "audio")
                     if k not in drop)
    steps = [ClipWindow(cfg.num_frames, cfg.random_window, cfg.frames, cfg.seed, cfg.audio,
                        cfg.random_frames)]
    if cfg.other_clip_driver > 0:
        if cfg.random_frames != 2:
            raise ValueError("other_clip_driver needs frame pairs (random_frames=2).")
        steps.append(DriverFromOtherClip(source, order, identity_index(source),
                                         cfg.other_clip_driver, cfg.seed))
    if cfg.augment:
        steps.append(Augment(cfg.flip_prob, cfg.colour_jitter, cfg.seed))
    ds = ds.map(LoadExample(ReadClip(source, order, tuple(clip_transforms), keep,
                                     cfg.cache_clips), tuple(steps)))
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    if start_batch:
        ds = ds[start_batch:]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2 if cfg.worker_count == 0 else 1,
                                              prefetch_buffer_size=cfg.worker_buffer_size))
    if cfg.worker_count > 0:
        it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
            num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size))
    return it
