"""A fake VoxCeleb2 download for tests and benchmarks: real H.264 + AAC mp4 files in the
official layout, made from SynthTalk clips with PyAV.

The sources deliberately differ from the builder's targets (e.g. 30 fps, 80 x 80 px, 22.05 kHz
stereo AAC), so frame-rate resampling, resizing and audio resampling all run. ``extras`` adds
the awkward cases a real download has:

* ``dev/mp4/<id0>/TRUNCATED00/00001.mp4`` cut to half its bytes (index at the front, data
  missing: opens, then fails part-way) -> skipped as ``truncated``;
* ``dev/mp4/<id0>/UNREADABLE0/00001.mp4`` not an mp4 at all -> ``unreadable``;
* ``dev/mp4/<id1>/SEPARATEM4A/00001.mp4`` with no audio stream, its audio in
  ``dev/aac/<id1>/SEPARATEM4A/00001.m4a`` -> normal clips;
* ``dev/mp4/<id1>/IMPULSEVID0/00001.mp4``: one white frame and an audio click, both at the
  centre of 25 fps output frame ``clip_frames + 10`` (frame 10 of clip 1), speech turned
  down;
* ``dev/mp4/<idN>/BLURRYVIDEO/00001.mp4``: heavily blurred frames (for the quality filter);
* ``dev/mp4/<idN>/SHORTVIDEO0/00001.mp4``: shorter than one clip -> ``too_short``.
"""

from __future__ import annotations

import dataclasses
import math
import os

import av
import numpy as np

from vasa_jax.constants import FPS, SAMPLE_RATE
from vasa_jax.media.video_io import encode_audio, encode_video

TRUNCATED = "TRUNCATED00"
UNREADABLE = "UNREADABLE0"
SEPARATE_M4A = "SEPARATEM4A"
IMPULSE = "IMPULSEVID0"
BLURRY = "BLURRYVIDEO"
SHORT = "SHORTVIDEO0"


@dataclasses.dataclass
class FakeTree:
    """What ``write_fake_tree`` wrote and what a build with ``clip_frames`` should give.

    ``clips``: identity dir -> number of clips its files should give (skipped files give 0);
    ``skipped``: path relative to the root -> expected skip reason; ``impulse``: the impulse
    file's rel path, its clip, the frame within that clip and the 16 kHz sample (within the
    clip) of the click; ``blurry``: rel path of the blurred file."""

    root: str
    dev: list[str]
    test: list[str]
    clips: dict[str, int]
    skipped: dict[str, str]
    impulse: dict
    blurry: str
    num_files: int
    clip_frames: int


def expected_frames(num_source_frames: int, fps: float) -> int:
    """25 fps output frames of a source of ``num_source_frames`` at ``fps`` (centre rule)."""
    end = num_source_frames / fps
    return max(0, math.ceil(end * FPS - 0.5))


def write_av(path: str, frames: np.ndarray | None, audio: np.ndarray | None, *, fps: int,
             audio_rate: int, faststart: bool = False, fmt: str = "mp4") -> None:
    """Write H.264 ``frames`` (N, H, W, 3) uint8 at ``fps`` and/or AAC ``audio`` (C, S) float32
    (C = 1 or 2) at ``audio_rate`` to ``path`` (mp4, or m4a with ``fmt="ipod"``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", format=fmt, options=options) as out:
        vs = None
        if frames is not None:
            vs = out.add_stream("libx264", rate=fps)
            vs.height, vs.width = frames.shape[1:3]
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": "18", "preset": "veryfast"}
        ast = None
        if audio is not None:
            layout = "stereo" if audio.shape[0] == 2 else "mono"
            ast = out.add_stream("aac", rate=audio_rate)
            ast.layout = layout
        if vs is not None:
            encode_video(out, vs, frames)
        if ast is not None:
            encode_audio(out, ast, audio, audio_rate)


def _source(clip: dict, seconds: float, fps: int, audio_rate: int, channels: int, shift: int):
    """SynthTalk clip (25 fps, 16 kHz) -> (frames at ``fps``, (C, S) audio at ``audio_rate``),
    starting ``shift`` frames into the clip."""
    rendered = clip["frames"][shift:]
    n_src = int(round(seconds * fps))
    idx = np.minimum((np.arange(n_src) * FPS / fps + 1e-9).astype(int), len(rendered) - 1)
    frames = rendered[idx]
    speech = clip["audio"][shift * SAMPLE_RATE // FPS:]
    n_audio = int(round(seconds * audio_rate))
    t = np.arange(n_audio) / audio_rate
    mono = np.interp(t, np.arange(len(speech)) / SAMPLE_RATE, speech, right=0.0) * 0.5
    audio = np.stack([mono, 0.8 * mono][:channels]).astype(np.float32)
    return frames, audio


def write_fake_tree(root: str, *, dev_identities: int = 4, test_identities: int = 1,
                    videos_per_identity: int = 1, utterances_per_video: int = 2,
                    seconds: float = 2.3, fps: int = 30, size: int = 80,
                    audio_rate: int = 22050, channels: int = 2, clip_frames: int = 25,
                    extras: bool = True, seed: int = 0) -> FakeTree:
    """Write the fake download under ``root`` (see the module docstring); returns what a
    build with ``clip_frames`` frames per clip should find."""
    from data_pipeline.synthtalk.generate import generate_clip

    if size % 2:
        raise ValueError(f"size must be even (H.264 4:2:0), got {size}.")
    dev = [f"id{10100 + i:05d}" for i in range(dev_identities)]
    test = [f"id{10200 + i:05d}" for i in range(test_identities)]
    n_render = int(math.ceil(max(seconds, 2.4 * clip_frames / FPS) * FPS)) + 8
    clips: dict[str, int] = {}
    skipped: dict[str, str] = {}
    per_file = expected_frames(int(round(seconds * fps)), fps) // clip_frames
    num_files = 0
    renders = {}
    for k, ident in enumerate(dev + test):
        part = "dev" if ident in dev else "test"
        clip = renders[ident] = generate_clip(seed, k, 0, n_render, size)
        for v in range(videos_per_identity):
            for u in range(utterances_per_video):
                frames, audio = _source(clip, seconds, fps, audio_rate, channels, shift=u + v)
                write_av(f"{root}/{part}/mp4/{ident}/video{k:03d}_{v:02d}/{u + 1:05d}.mp4",
                         frames, audio, fps=fps, audio_rate=audio_rate)
                num_files += 1
        clips[ident] = per_file * videos_per_identity * utterances_per_video
    impulse = {}
    blurry = ""
    if extras:
        if dev_identities < 2:
            raise ValueError("extras need at least 2 dev identities.")
        d0, d1, dn = dev[0], dev[1], dev[-1]
        # Truncated: the index up front (faststart), half the data gone.
        frames, audio = _source(renders[d0], seconds, fps, audio_rate, channels, 0)
        rel = f"dev/mp4/{d0}/{TRUNCATED}/00001.mp4"
        write_av(f"{root}/{rel}", frames, audio, fps=fps, audio_rate=audio_rate,
                 faststart=True)
        with open(f"{root}/{rel}", "rb") as f:
            data = f.read()
        with open(f"{root}/{rel}", "wb") as f:
            f.write(data[:len(data) // 2])
        skipped[rel] = "truncated"
        rel = f"dev/mp4/{d0}/{UNREADABLE}/00001.mp4"
        os.makedirs(os.path.dirname(f"{root}/{rel}"), exist_ok=True)
        with open(f"{root}/{rel}", "wb") as f:
            f.write(b"this is not an mp4 file\n" * 40)
        skipped[rel] = "unreadable"
        # Video without audio; the audio in the aac tree.
        frames, audio = _source(renders[d1], seconds, fps, audio_rate, channels, 1)
        write_av(f"{root}/dev/mp4/{d1}/{SEPARATE_M4A}/00001.mp4", frames, None, fps=fps,
                 audio_rate=audio_rate)
        write_av(f"{root}/dev/aac/{d1}/{SEPARATE_M4A}/00001.m4a", None, audio, fps=fps,
                 audio_rate=audio_rate, fmt="ipod")
        clips[d1] += per_file
        # Impulse: white frame + click at the centre of output frame clip_frames + 10.
        k = clip_frames + min(10, clip_frames - 1)
        imp_seconds = max(seconds, (2 * clip_frames + 2) / FPS)
        frames, audio = _source(renders[d1], imp_seconds, fps, audio_rate, channels, 2)
        audio *= 0.05
        t_mark = (k + 0.5) / FPS
        j = int(math.floor(t_mark * fps))
        frames = frames.copy()
        frames[j] = 255
        s = int(round(t_mark * audio_rate))
        audio[:, s:s + max(1, audio_rate // 2000)] = 0.9
        rel = f"dev/mp4/{d1}/{IMPULSE}/00001.mp4"
        write_av(f"{root}/{rel}", frames, audio, fps=fps, audio_rate=audio_rate)
        clips[d1] += expected_frames(len(frames), fps) // clip_frames
        impulse = {"path": rel, "identity": int(d1[2:]), "clip": k // clip_frames,
                   "frame": k % clip_frames,
                   "sample": int(round(t_mark * SAMPLE_RATE)) - (k // clip_frames) * clip_frames
                   * SAMPLE_RATE // FPS}
        # Blurry: the same speech, frames smeared (quality filter).
        import cv2

        frames, audio = _source(renders[dn], seconds, fps, audio_rate, channels, 3)
        frames = np.stack([cv2.GaussianBlur(f, (0, 0), size / 10) for f in frames])
        blurry = f"dev/mp4/{dn}/{BLURRY}/00001.mp4"
        write_av(f"{root}/{blurry}", frames, audio, fps=fps, audio_rate=audio_rate)
        clips[dn] += per_file
        # Too short for one clip.
        short = 0.6 * clip_frames / FPS
        frames, audio = _source(renders[dn], short, fps, audio_rate, channels, 0)
        rel = f"dev/mp4/{dn}/{SHORT}/00001.mp4"
        write_av(f"{root}/{rel}", frames, audio, fps=fps, audio_rate=audio_rate)
        skipped[rel] = "too_short"
        num_files += 6
    return FakeTree(root=root, dev=dev, test=test, clips=clips, skipped=skipped,
                    impulse=impulse, blurry=blurry, num_files=num_files,
                    clip_frames=clip_frames)
