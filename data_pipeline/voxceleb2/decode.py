"""One VoxCeleb2 utterance (``.../idXXXXX/<video_id>/NNNNN.mp4``) -> aligned 25 fps clips.

Time alignment (the contract every clip of the ``voxceleb2`` dataset obeys):

* Zero time is the start of the mp4's video stream (the presentation time of its first decoded
  frame, edit lists applied by FFmpeg).
* Output frame ``n`` represents ``[n / 25, (n + 1) / 25)``; it is the source frame whose display
  interval ``[t_i, t_{i+1})`` contains the centre ``(n + 0.5) / 25`` (PyAV frame timestamps; the
  last frame is shown for its own duration). This resamples any frame rate to 25 fps without
  drift. The frame is centre-cropped to a square and resized to the target side (bicubic up,
  area down: ``vasa_jax.media.video_io.resize_frames``).
* Audio is resampled to 16 kHz and averaged over channels (as ``vasa_jax.media.audio``
  does), then shifted by its own start time relative to zero time (AAC encoder priming is
  removed by FFmpeg through the mp4 edit list; checked with an encoded impulse in
  ``tests/test_voxceleb2_builder.py``), so sample ``s`` plays at ``s / 16000`` s.
* Clip ``c`` of length ``L`` is frames ``[c L, (c + 1) L)`` and samples
  ``[640 c L, 640 (c + 1) L)``; a remainder shorter than ``L`` frames is dropped.

A file that cannot be used raises ``SkipVideo(reason, detail, path)``; the builder counts and
logs it and goes on. Reasons: ``unreadable`` (FFmpeg cannot open it, e.g. a file cut short
before its ``moov`` index, which most mp4 writers put at the end), ``truncated`` (opens, but
decoding fails part-way or yields fewer frames or less audio than the container declares:
*partial decodes are skipped whole*, never turned into clips, since the tail of a damaged file
is not trustworthy and a silently shortened utterance would go unnoticed), ``no_video``,
``no_audio`` (no audio stream and no separate ``.m4a``), ``too_short`` (fewer frames than one
clip). Clips refused by the quality filter are counted as ``quality``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

import av
import numpy as np

from vasa_jax.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from vasa_jax.media.video_io import resize_frames

VIDEO_REASONS = ("unreadable", "truncated", "no_video", "no_audio", "too_short")
CLIP_REASONS = ("quality",)
REASONS = VIDEO_REASONS + CLIP_REASONS
# Decoded frames may fall short of the container's declared count by this much before the file
# counts as truncated (decoders may drop a frame at an edit-list boundary).
_FRAME_SLACK = 2
_AUDIO_SLACK_S = 0.1  # same for audio, in seconds


class SkipVideo(Exception):
    """``path`` yields no clips; ``reason`` is one of ``VIDEO_REASONS``, ``detail`` says why."""

    def __init__(self, reason: str, detail: str, path: str = ""):
        assert reason in VIDEO_REASONS, reason
        super().__init__(f"{path}: {detail} ({reason})" if path else f"{detail} ({reason})")
        self.reason, self.detail, self.path = reason, detail, path


def _open(path: str):
    """PyAV container for a local path or any URL ``etils.epath`` opens (gs://, s3://, ...)."""
    if "://" in path:
        from etils import epath

        return av.open(epath.Path(path).open("rb"))
    return av.open(path)


def _ffmpeg_errors():
    return (av.error.FFmpegError, EOFError, UnicodeDecodeError)


def _msg(e: Exception) -> str:
    """An FFmpeg error's message without the file name (the record names the file)."""
    return getattr(e, "strerror", None) or str(e)


class _Audio:
    """Collects decoded audio frames as 16 kHz mono float32 and the first frame's time (s)."""

    def __init__(self, stream):
        self.resampler = av.AudioResampler(format="fltp", layout=stream.layout.name,
                                           rate=SAMPLE_RATE)
        self.chunks: list[np.ndarray] = []
        self.start: float | None = None
        declared = stream.duration
        self.declared_s = (float(declared * stream.time_base)
                           if declared and stream.time_base else None)

    def add(self, frame) -> None:
        if self.start is None:
            self.start = float(frame.time) if frame.time is not None else 0.0
        frame.pts = None  # the resampler counts samples itself
        self.chunks.extend(f.to_ndarray().mean(axis=0) for f in self.resampler.resample(frame))

    def finish(self) -> np.ndarray:
        self.chunks.extend(f.to_ndarray().mean(axis=0) for f in self.resampler.resample(None))
        return (np.concatenate(self.chunks).astype(np.float32) if self.chunks
                else np.zeros(0, np.float32))

    def check_complete(self, samples: int, path: str) -> None:
        got = samples / SAMPLE_RATE
        if self.declared_s is not None and got < self.declared_s - _AUDIO_SLACK_S:
            raise SkipVideo("truncated", f"decoded {got:.2f} s of audio of the "
                                         f"{self.declared_s:.2f} s the container declares",
                            path)


class _Resampler25:
    """Turns decoded frames (in presentation order, with times) into the 25 fps output frames:
    ``push(time, frame)`` / ``finish(end_time)`` yield ``(n, frame)`` for each output frame ``n``
    whose centre ``(n + 0.5) / 25`` falls in the previous frame's display interval."""

    def __init__(self, convert: Callable[[Any], np.ndarray]):
        self.convert = convert
        self.n = 0
        self.prev = None  # (time, av frame)
        self.prev_array = None

    def _emit_until(self, end: float) -> Iterator[tuple[int, np.ndarray]]:
        t_prev, frame = self.prev
        while (self.n + 0.5) / FPS < end:
            if (self.n + 0.5) / FPS >= t_prev:
                if self.prev_array is None:
                    self.prev_array = self.convert(frame)
                yield self.n, self.prev_array
            self.n += 1

    def push(self, t: float, frame) -> Iterator[tuple[int, np.ndarray]]:
        if self.prev is not None:
            if t <= self.prev[0]:  # a repeated (or out-of-order) timestamp: drop the frame
                return
            yield from self._emit_until(t)
        self.prev, self.prev_array = (t, frame), None

    def finish(self, end: float) -> Iterator[tuple[int, np.ndarray]]:
        if self.prev is not None:
            yield from self._emit_until(end)


def _square_resize(frame, size: int) -> np.ndarray:
    """av.VideoFrame -> (size, size, 3) uint8 RGB: centre square crop, then resize."""
    img = frame.to_ndarray(format="rgb24")
    h, w, _ = img.shape
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return resize_frames(img[None, y:y + s, x:x + s], size)[0]


@dataclasses.dataclass
class DecodedClips:
    """The clips of one utterance.

    ``frames``: list of (L, R, R, 3) uint8 arrays, or whatever ``clip_fn`` made of them;
    ``audio``: (num_clips * L * 640,) float32 at 16 kHz, aligned with the clips' frames;
    ``seconds``: decoded video duration; ``num_frames``: 25 fps frames before cutting."""

    frames: list
    audio: np.ndarray
    seconds: float
    num_frames: int


def decode_clips(mp4: str, *, resolution: int, clip_frames: int, m4a: str | None = None,
                 clip_fn: Callable[[np.ndarray], Any] | None = None) -> DecodedClips:
    """Decode ``mp4`` in one pass into whole clips of ``clip_frames`` frames at 25 fps and
    ``resolution`` px with the aligned 16 kHz mono audio (see the module docstring).

    Audio comes from the mp4's first audio stream, else from ``m4a`` (a file with the same
    time origin, as VoxCeleb2's aac tree). ``clip_fn`` is applied to each finished
    (clip_frames, R, R, 3) uint8 clip as soon as it is complete (e.g. JPEG encoding, so only one
    clip of pixels is held at a time). Raises ``SkipVideo`` for unusable files.
    """
    try:
        container = _open(mp4)
    except _ffmpeg_errors() as e:
        raise SkipVideo("unreadable", f"FFmpeg cannot open it ({_msg(e)})", mp4) from None
    except OSError as e:
        raise SkipVideo("unreadable", str(e), mp4) from None
    clip_fn = clip_fn or (lambda x: x)
    with container:
        if not container.streams.video:
            raise SkipVideo("no_video", "no video stream", mp4)
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio else None
        if astream is None and not m4a:
            raise SkipVideo("no_audio", "no audio stream, and no separate .m4a in the aac "
                                        "tree", mp4)
        audio = _Audio(astream) if astream is not None else None
        rate = float(vstream.average_rate or vstream.guessed_rate or FPS)
        declared = int(vstream.frames or 0)
        resampler = _Resampler25(lambda f: _square_resize(f, resolution))
        clips, buf = [], []
        t0, decoded, last = None, 0, None

        def take(items):
            for _, img in items:
                buf.append(img)
                if len(buf) == clip_frames:
                    clips.append(clip_fn(np.stack(buf)))
                    buf.clear()

        streams = (vstream,) if audio is None else (vstream, astream)
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        audio.add(frame)
                        continue
                    t = frame.time if frame.time is not None else decoded / rate
                    if t0 is None:
                        t0 = t
                    take(resampler.push(t - t0, frame))
                    decoded += 1
                    last = frame
        except _ffmpeg_errors() as e:
            raise SkipVideo("truncated", f"decoding failed after {decoded} frames ({_msg(e)})",
                            mp4) from None
        if decoded == 0:
            raise SkipVideo("truncated" if declared else "no_video",
                            "no video frame could be decoded", mp4)
        if declared and decoded < declared - _FRAME_SLACK:
            raise SkipVideo("truncated", f"decoded {decoded} of the {declared} frames the "
                                         f"container declares", mp4)
        last_t = resampler.prev[0]  # the last frame shown, on the video's clock
        duration = (float(last.duration * last.time_base) if last.duration and last.time_base
                    else 1.0 / rate)
        end = last_t + duration
        take(resampler.finish(end))
        num_video = resampler.n
        if audio is not None:
            samples = audio.finish()
            audio.check_complete(len(samples), mp4)
            a_start = audio.start
        else:
            samples, a_start = _decode_m4a(m4a, mp4)
    # Place the audio on the video's clock (zero = the video stream's start).
    shift = int(round(((a_start or 0.0) - t0) * SAMPLE_RATE))
    if shift > 0:
        samples = np.concatenate([np.zeros(shift, np.float32), samples])
    elif shift < 0:
        samples = samples[-shift:]
    if samples.size == 0:
        raise SkipVideo("no_audio", "the audio track decodes to no samples", mp4)
    num_frames = min(num_video, math.ceil(samples.size / SAMPLES_PER_FRAME))
    num_clips = num_frames // clip_frames
    if num_clips == 0:
        raise SkipVideo("too_short", f"{num_frames / FPS:.2f} s, shorter than one clip of "
                                     f"{clip_frames} frames ({clip_frames / FPS:.2f} s)", mp4)
    n_samples = num_clips * clip_frames * SAMPLES_PER_FRAME
    samples = np.pad(samples[:n_samples], (0, max(0, n_samples - samples.size)))
    return DecodedClips(clips[:num_clips], samples, end, num_frames)


def _decode_m4a(m4a: str, mp4: str) -> tuple[np.ndarray, float]:
    """(16 kHz mono samples, start time) of the separate audio file of ``mp4``."""
    try:
        container = _open(m4a)
    except (*_ffmpeg_errors(), OSError) as e:
        raise SkipVideo("no_audio", f"no audio stream, and its separate audio {m4a} "
                                    f"cannot be opened ({_msg(e)})", mp4) from None
    with container:
        if not container.streams.audio:
            raise SkipVideo("no_audio", f"no audio stream, nor has {m4a}", mp4)
        stream = container.streams.audio[0]
        audio = _Audio(stream)
        try:
            for frame in container.decode(stream):
                audio.add(frame)
        except _ffmpeg_errors() as e:
            raise SkipVideo("truncated", f"decoding its separate audio {m4a} failed ({_msg(e)})",
                            mp4) from None
        samples = audio.finish()
        audio.check_complete(len(samples), m4a)
    return samples, audio.start or 0.0
