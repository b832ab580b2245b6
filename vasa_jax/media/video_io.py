"""Writing and reading mp4 files with sound (PyAV: H.264 video + AAC audio, in process).

``write_mp4`` is atomic: the file is written next to its destination under a temporary name and
renamed into place only when complete, so an interrupted write leaves nothing half-written.
``Mp4Writer`` appends frames and sound piece by piece (for videos too long to hold in memory);
its callers wrap it in ``atomic_path`` the same way.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Callable

import av
import numpy as np

from vasa_jax.atomic import atomic_path
from vasa_jax.constants import FPS, SAMPLE_RATE


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size * W / H, 3) (bicubic up, area-averaged down)."""
    import cv2

    n, h, w, _ = frames.shape
    if h == size:
        return frames
    width = int(round(size * w / h))
    interp = cv2.INTER_CUBIC if size > h else cv2.INTER_AREA
    return np.stack([cv2.resize(f, (width, size), interpolation=interp) for f in frames])


def encode_video(out: av.container.OutputContainer, stream: av.VideoStream,
                 frames: np.ndarray) -> None:
    """Encode ``frames`` (N, H, W, 3) uint8 RGB on the video ``stream`` of ``out`` and flush the
    encoder, muxing every packet."""
    for f in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def encode_audio(out: av.container.OutputContainer, stream: av.AudioStream, audio: np.ndarray,
                 sample_rate: int, chunk: int = 1024) -> None:
    """Encode planar ``audio`` (C, S) float (clipped to [-1, 1]) at ``sample_rate`` on the audio
    ``stream`` of ``out`` (its layout has C channels) in ``chunk``-sample frames, and flush the
    encoder, muxing every packet."""
    a = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
    for i in range(0, a.shape[1], chunk):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(a[:, i:i + chunk]), format="fltp",
                                        layout=stream.layout.name)
        af.sample_rate, af.pts, af.time_base = sample_rate, i, Fraction(1, sample_rate)
        for packet in stream.encode(af):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


class Mp4Writer:
    """An H.264 (+ AAC) mp4 written piece by piece, so a long video never sits in memory:
    ``write(frames, audio)`` appends (N, H, W, 3) uint8 RGB frames and mono (S,) float audio in
    [-1, 1] (either may be None; pieces of any length), ``close()`` flushes the encoders.

    Writes ``path`` directly: wrap it in ``atomic_path`` for a file that appears whole or not
    at all. ``width``, ``height``: even (H.264 4:2:0). ``audio``: whether there is a sound
    track. ``transform``: applied to each piece of frames before encoding (e.g. the
    watermark). ``metadata``: container tags (any keys; read back by ``read_metadata``)."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, *, audio: bool = True,
                 fps: int = FPS, sample_rate: int = SAMPLE_RATE, crf: int = 20,
                 metadata: dict[str, str] | None = None,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"H.264 needs an even, positive width and height, got "
                             f"{width}x{height}.")
        self.width, self.height, self.sample_rate = width, height, sample_rate
        self.frames_written, self.samples_written = 0, 0
        self._transform = transform
        options = {"movflags": "use_metadata_tags"} if metadata else {}
        self._out = av.open(os.fspath(path), mode="w", format="mp4", options=options)
        self._out.metadata.update(metadata or {})
        self._video = self._out.add_stream("libx264", rate=fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(crf), "preset": "medium"}
        self._audio = None
        if audio:
            self._audio = self._out.add_stream("aac", rate=sample_rate)
            self._audio.layout = "mono"
            self._audio.bit_rate = 64_000

    def write(self, frames: np.ndarray | None = None, audio: np.ndarray | None = None) -> None:
        """Append ``frames`` (N, H, W, 3) uint8 and/or ``audio`` (S,) float (the muxer
        interleaves them by time)."""
        if frames is not None and len(frames):
            frames = np.asarray(frames)
            if frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
                raise ValueError(f"frames must be (N, {self.height}, {self.width}, 3) uint8, "
                                 f"got {frames.shape} {frames.dtype}.")
            if self._transform is not None:
                frames = self._transform(frames)
            for f in frames:
                self._mux(self._video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            self.frames_written += len(frames)
        if audio is not None and len(audio):
            if self._audio is None:
                raise ValueError("This writer has no sound track (audio=False).")
            a = np.clip(np.asarray(audio, np.float32).reshape(1, -1), -1.0, 1.0)
            af = av.AudioFrame.from_ndarray(a, format="fltp", layout="mono")
            af.sample_rate, af.pts = self.sample_rate, self.samples_written
            af.time_base = Fraction(1, self.sample_rate)
            self._mux(self._audio.encode(af))
            self.samples_written += a.shape[1]

    def _mux(self, packets) -> None:
        for packet in packets:
            self._out.mux(packet)

    def close(self) -> None:
        """Flush the encoders and finish the file (at least one frame must have been written)."""
        try:
            if not self.frames_written:
                raise ValueError("An mp4 needs at least one frame; none was written.")
            self._mux(self._video.encode())
            if self._audio is not None:
                self._mux(self._audio.encode())
        finally:
            self._out.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:  # the file is abandoned: release it without flushing
            self._out.close()


def write_mp4(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray | None = None, *,
              fps: int = FPS, sample_rate: int = SAMPLE_RATE, crf: int = 20,
              metadata: dict[str, str] | None = None) -> None:
    """Write ``frames`` (N, H, W, 3) uint8 RGB and optional mono ``audio`` (S,) float in [-1, 1]
    as an H.264 + AAC mp4, atomically. H and W must be even (H.264 4:2:0). ``metadata``:
    container tags (any keys; read back by ``read_metadata``)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}.")
    n, h, w, _ = frames.shape
    if n == 0 or h % 2 or w % 2:
        raise ValueError(f"Need at least one frame of even height and width, got {frames.shape}.")
    with atomic_path(path, suffix=".mp4") as tmp:
        with Mp4Writer(tmp, w, h, audio=audio is not None, fps=fps, sample_rate=sample_rate,
                       crf=crf, metadata=metadata) as out:
            out.write(frames, audio)


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, float, int | None]:
    """Read an mp4: (frames (N, H, W, 3) uint8, mono audio (S,) float32 or None, fps, rate)."""
    with av.open(os.fspath(path)) as inp:
        vstreams = inp.streams.video
        if not vstreams:
            raise ValueError(f"{path} has no video stream.")
        fps = float(vstreams[0].average_rate or FPS)
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    audio, rate = None, None
    with av.open(os.fspath(path)) as inp:
        if inp.streams.audio:
            rate = inp.streams.audio[0].rate
            chunks = [f.to_ndarray().astype(np.float32) for f in inp.decode(audio=0)]
            if chunks:
                audio = np.concatenate([c.mean(axis=0) if c.ndim == 2 else c for c in chunks])
    return np.stack(frames), audio, fps, rate


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The container tags of a media file."""
    with av.open(os.fspath(path)) as inp:
        return dict(inp.metadata)
