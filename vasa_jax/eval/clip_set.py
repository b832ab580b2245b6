"""Clip sets: the directories ``vasa-jax eval --generated DIR --real DIR`` compares.

A clip set is a directory of ``NAME.mp4`` files (video with a speech track; any frame rate,
sample rate and channel count: frames are resampled to 25 fps by nearest frame, audio to 16 kHz
mono) and optional ``NAME.json`` sidecars. A generated clip and the real clip it was made from
share ``NAME`` (its first frame was the photo, its audio the speech). Sidecar keys, all optional:

  identity   int              which person (SynthTalk)
  emotion    int              emotion class (SynthTalk's ``EMOTIONS``): the target on a generated
                              clip, the truth on a real one
  gaze       [theta, phi]     main gaze direction in radians (target / truth)
  distance   float            normalised head-to-camera distance (target / truth)
  motion     [[12 floats]]    per-frame ground-truth track (SynthTalk's ``MOTION_FIELDS``), real
                              clips only
  generation {...}            how a generated clip was made (checkpoints, controls, seed)

``export_synthtalk`` writes a SynthTalk split as such a directory (the "Real video" row);
``generate_set`` makes a generated set from a real one with a ``TalkingFacePipeline``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from vasa_jax.constants import FPS, SAMPLES_PER_FRAME
from vasa_jax.media.errors import InputError
from vasa_jax.atomic import atomic_path
from vasa_jax.media.video_io import write_mp4

EVAL_CRF = 10  # near-lossless H.264, so the codec barely moves the metrics


@dataclasses.dataclass
class Clip:
    """frames (T, H, W, 3) uint8 at 25 fps; audio (T * 640,) float32 at 16 kHz, trimmed or
    zero-padded to the frames; meta: the sidecar (``{}`` without one)."""

    name: str
    frames: np.ndarray
    audio: np.ndarray
    meta: dict[str, Any]

    @property
    def motion(self) -> np.ndarray | None:
        m = self.meta.get("motion")
        return None if m is None else np.asarray(m, np.float32)


def write_clip(out_dir: str, name: str, frames: np.ndarray, audio: np.ndarray,
               meta: Mapping[str, Any] | None = None, *, generated: bool = False) -> str:
    """Write ``NAME.mp4`` (+ ``NAME.json``) atomically. Generated clips carry the watermark and
    a C2PA manifest like every output of ``vasa-jax generate``."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.mp4")
    if generated:
        from vasa_jax.safety.publish import write_marked_video

        write_marked_video(path, frames, audio, crf=EVAL_CRF,
                           generation=dict((meta or {}).get("generation", {}), clip=name))
    else:
        write_mp4(path, frames, audio, crf=EVAL_CRF)
    if meta:
        with atomic_path(os.path.join(out_dir, f"{name}.json")) as tmp:
            with open(tmp, "w") as f:
                json.dump(dict(meta), f)
    return path


def _to_25fps(frames: np.ndarray, fps: float) -> np.ndarray:
    if abs(fps - FPS) < 1e-3:
        return frames
    n = int(np.floor(len(frames) * FPS / fps))
    idx = np.minimum(np.round(np.arange(n) * fps / FPS).astype(int), len(frames) - 1)
    return frames[idx]


def read_clip(path: str) -> Clip:
    """One clip: its mp4 (and sidecar). Raises ``InputError`` naming the file and the fix."""
    import av

    from vasa_jax.media.audio import decode_audio

    name = os.path.splitext(os.path.basename(path))[0]
    try:
        with av.open(path) as inp:
            if not inp.streams.video:
                raise InputError(f"{path} has no video stream; a clip set holds talking-face "
                                 "videos with their speech.")
            fps = float(inp.streams.video[0].average_rate or FPS)
            frames = np.stack([f.to_ndarray(format="rgb24") for f in inp.decode(video=0)])
    except (av.error.FFmpegError, ValueError) as e:
        raise InputError(f"Cannot read {path} ({e}); re-encode it as H.264 mp4 or remove it from "
                         "the clip set.") from None
    frames = _to_25fps(frames, fps)
    try:
        audio = decode_audio(path)
    except InputError as e:
        raise InputError(f"{path}: {e} The lip-sync and audio-pose columns need each clip's "
                         "speech track.") from None
    n = len(frames) * SAMPLES_PER_FRAME
    audio = np.pad(audio[:n], (0, max(0, n - len(audio)))).astype(np.float32)
    meta: dict[str, Any] = {}
    side = os.path.splitext(path)[0] + ".json"
    if os.path.exists(side):
        try:
            with open(side) as f:
                meta = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{side} is not valid JSON ({e}); fix or delete it.") from None
    return Clip(name, frames, audio, meta)


def list_clips(directory: str) -> list[str]:
    """The mp4 paths of a clip set, sorted by name; errors name the problem and the fix."""
    if not os.path.isdir(directory):
        raise InputError(f"Clip set {directory!r} does not exist. Give a directory of NAME.mp4 "
                         "files (e.g. made by `vasa-jax eval export-synthtalk --out DIR`).")
    paths = sorted(glob.glob(os.path.join(directory, "*.mp4")))
    if not paths:
        raise InputError(f"Clip set {directory!r} has no .mp4 files. Put NAME.mp4 videos with "
                         "their speech there (generated and real clips share NAME).")
    return paths


def read_clip_set(directory: str, names: Sequence[str] | None = None,
                  max_clips: int | None = None) -> list[Clip]:
    """The clips of ``directory`` (only ``names`` if given; a missing one is an error)."""
    paths = list_clips(directory)
    if names is not None:
        by_name = {os.path.splitext(os.path.basename(p))[0]: p for p in paths}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(f"{directory} lacks {len(missing)} clip(s) of the real set, e.g. "
                             f"{missing[0]}.mp4; generate one clip per real clip, with its name.")
        paths = [by_name[n] for n in names]
    if max_clips:
        paths = paths[:max_clips]
    return [read_clip(p) for p in paths]


def export_synthtalk(out_dir: str, *, dataset_config: str = "res64_small",
                     data_dir: str | None = None, split: str = "test",
                     max_clips: int | None = None) -> list[str]:
    """Write ``split`` of a SynthTalk dataset as a clip set (mp4 + ground-truth sidecar per clip,
    named ``id<identity>_c<index>``); returns the names. Existing files are overwritten."""
    from data_pipeline.loader import decode_frame, open_source
    from vasa_jax.media.audio import to_float32

    source, _ = open_source("synthtalk", dataset_config, split, data_dir)
    n = len(source) if not max_clips else min(int(max_clips), len(source))
    names = []
    for i in range(n):
        ex = source[i]
        name = f"id{int(ex['identity']):05d}_c{i:04d}"
        frames = np.stack([decode_frame(b) for b in ex["frames"]])
        meta = {"identity": int(ex["identity"]), "emotion": int(ex["emotion"]),
                "gaze": np.asarray(ex["gaze"], float).tolist(),
                "distance": float(ex["distance"]),
                "motion": np.asarray(ex["motion"], float).round(5).tolist(),
                "dataset": f"synthtalk/{dataset_config}/{split}"}
        write_clip(out_dir, name, frames, to_float32(ex["audio"]), meta)
        names.append(name)
    return names


def generate_set(pipe, real: Sequence[Clip], out_dir: str, *, cfg: Mapping[str, float],
                 steps: int = 50, seed: int = 0, use_targets: bool = True,
                 info: Mapping[str, Any] | None = None, progress=None) -> list[str]:
    """For each real clip: its first frame is the photo, its speech the audio, and (with
    ``use_targets``) its gaze, distance and emotion the controls. Writes ``NAME.mp4`` + sidecar
    (the targets, and how it was made) into ``out_dir``; returns the paths."""
    from vasa_jax.pipeline import Controls

    paths = []
    for k, clip in enumerate(real):
        m = clip.meta if use_targets else {}
        controls = Controls(
            gaze=tuple(m["gaze"]) if "gaze" in m else None,
            distance=m.get("distance"), emotion=m.get("emotion"),
            cfg=tuple(sorted(cfg.items())), steps=steps, seed=seed + k)
        source = pipe.prepare_source(clip.frames[0], detect=False)
        out = pipe.generate(source, clip.audio, controls)
        meta = {key: m[key] for key in ("identity", "emotion", "gaze", "distance") if key in m}
        meta["generation"] = dict(info or {}, cfg=dict(cfg), steps=steps, seed=seed + k,
                                  reference=clip.name)
        paths.append(write_clip(out_dir, clip.name, out.frames[:len(clip.frames)],
                                clip.audio, meta, generated=True))
        if progress:
            progress(k + 1, len(real))
    return paths
