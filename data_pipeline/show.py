"""Look at and listen to a prepared dataset: a contact sheet PNG and an mp4 with sound.

The contact sheet has one row per clip: a label (identity, emotion, gaze, distance), evenly spaced
frames captioned with the phone sounding and the ground-truth jaw opening, and a strip chart of
the clip's jaw_open (red), blink (blue) and pitch (green) tracks. The mp4 plays the clips one after
another, enlarged, each with its own audio.
"""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from data_pipeline.loader import decode_frame, open_source
from data_pipeline.synthtalk.motion import EMOTIONS
from vasa_jax.media.audio import to_float32
from vasa_jax.atomic import atomic_path
from vasa_jax.media.video_io import write_mp4

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def load_clips(dataset: str, config: str, split: str, data_dir: str | None, num_clips: int,
               seed: int = 0) -> tuple[list[dict], dict]:
    """``num_clips`` fully decoded clips of a split, chosen with ``seed``; also the metadata."""
    source, info = open_source(dataset, config, split, data_dir)
    n = len(source)
    if n == 0:
        raise ValueError(f"Split {split!r} of {dataset}/{config} is empty.")
    idx = np.random.default_rng(seed).choice(n, size=min(num_clips, n), replace=False)
    clips = []
    for i in sorted(idx.tolist()):
        ex = dict(source[i])
        ex["frames"] = np.stack([decode_frame(b) for b in ex["frames"]])
        ex["audio"] = to_float32(ex["audio"])
        clips.append(ex)
    return clips, dict(info.metadata or {})


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.35,
          colour=(20, 20, 20)) -> None:
    cv2.putText(img, s, org, _FONT, scale, colour, 1, cv2.LINE_AA)


def _strip_chart(motion: np.ndarray, width: int, height: int, marks: Sequence[int],
                 fields: dict[str, int]) -> np.ndarray:
    img = np.full((height, width, 3), 250, np.uint8)
    t = len(motion)
    xs = np.linspace(0, width - 1, t).astype(np.int32)
    for name, colour, lo, hi in (("jaw_open", (220, 40, 40), 0.0, 1.0),
                                 ("blink", (40, 60, 220), 0.0, 1.0),
                                 ("pitch", (30, 160, 60), -0.3, 0.3)):
        if name not in fields:
            continue
        v = np.clip((motion[:, fields[name]] - lo) / (hi - lo), 0, 1)
        ys = (height - 2 - v * (height - 4)).astype(np.int32)
        cv2.polylines(img, [np.stack([xs, ys], 1)], False, colour, 1, cv2.LINE_AA)
    for k in marks:
        img[:, xs[min(k, t - 1)]] = (img[:, xs[min(k, t - 1)]] * 0.6).astype(np.uint8)
    return img


def contact_sheet(clips: list[dict], metadata: dict, frames_per_clip: int = 10,
                  zoom: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 image: one annotated row per clip."""
    phones = metadata.get("phones")
    fields = {n: i for i, n in enumerate(metadata.get("motion_fields", []))}
    rows = []
    for ex in clips:
        frames = ex["frames"]
        t, r = frames.shape[0], frames.shape[1] * zoom
        ks = np.linspace(0, t - 1, frames_per_clip).round().astype(int)
        label = np.full((r + 34, 150, 3), 255, np.uint8)
        _text(label, f"id {int(ex.get('identity', -1))} clip {int(ex.get('clip', -1))}", (4, 14))
        if "emotion" in ex:
            _text(label, EMOTIONS[int(ex["emotion"])], (4, 30))
        if "gaze" in ex:
            g = np.degrees(np.asarray(ex["gaze"]))
            _text(label, f"gaze {g[0]:+.0f},{g[1]:+.0f} deg", (4, 46))
        if "distance" in ex:
            _text(label, f"distance {float(ex['distance']):.2f}", (4, 62))
        tiles = []
        for k in ks:
            tile = np.full((r + 34, r + 4, 3), 255, np.uint8)
            tile[:r, 2:r + 2] = cv2.resize(frames[k], (r, r), interpolation=cv2.INTER_NEAREST)
            cap = f"{k}"
            if phones is not None and "phones" in ex:
                cap += f" /{phones[int(ex['phones'][k])]}/"
            _text(tile, cap, (3, r + 13))
            if "motion" in ex and "jaw_open" in fields:
                _text(tile, f"jaw {ex['motion'][k, fields['jaw_open']]:.2f}", (3, r + 27))
            tiles.append(tile)
        row = np.concatenate([label] + tiles, axis=1)
        if "motion" in ex:
            row = np.concatenate([row, _strip_chart(ex["motion"], row.shape[1], 40, ks, fields)], 0)
        rows.append(np.pad(row, ((0, 6), (0, 0), (0, 0)), constant_values=200))
    width = max(x.shape[1] for x in rows)
    rows = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)), constant_values=255) for x in rows]
    legend = np.full((22, width, 3), 255, np.uint8)
    _text(legend, "strip chart: jaw_open (red), blink (blue), pitch (green); grey = frames shown",
          (4, 15), 0.4)
    return np.concatenate([legend] + rows, axis=0)


def showreel(clips: list[dict], size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The clips one after another at ``size`` px with a caption: (frames, audio)."""
    frames, audio = [], []
    for ex in clips:
        cap = f"id {int(ex.get('identity', -1))}"
        if "emotion" in ex:
            cap += f" {EMOTIONS[int(ex['emotion'])]}"
        for f in ex["frames"]:
            big = cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC)
            _text(big, cap, (6, 16), 0.45, (255, 255, 255))
            frames.append(big)
        audio.append(ex["audio"])
    return np.stack(frames), np.concatenate(audio)


def show(dataset: str, config: str, split: str, data_dir: str | None, out_dir: str,
         num_clips: int = 6, seed: int = 0) -> tuple[str, str]:
    """Write ``contact_sheet.png`` and ``clips.mp4`` into ``out_dir``; returns their paths."""
    clips, meta = load_clips(dataset, config, split, data_dir, num_clips, seed)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"{dataset}_{config}_{split}_contact_sheet.png")
    mp4 = os.path.join(out_dir, f"{dataset}_{config}_{split}_clips.mp4")
    sheet = contact_sheet(clips, meta)
    with atomic_path(png) as tmp:
        if not cv2.imwrite(tmp, sheet[..., ::-1]):
            raise OSError(f"Could not write {png}.")
    frames, audio = showreel(clips)
    write_mp4(mp4, frames, audio)
    return png, mp4
