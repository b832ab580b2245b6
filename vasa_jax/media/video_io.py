"""Writing and reading mp4 files with sound (PyAV: H.264 video + AAC audio, in process).

Writes are atomic: the file is written next to its destination under a temporary name and
renamed into place only when complete, so an interrupted write leaves nothing half-written.
"""

from __future__ import annotations

import os
from fractions import Fraction

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


def write_mp4(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray | None = None, *,
              fps: int = FPS, sample_rate: int = SAMPLE_RATE, crf: int = 20,
              metadata: dict[str, str] | None = None) -> None:
    """Write ``frames`` (N, H, W, 3) uint8 RGB and optional mono ``audio`` (S,) float in [-1, 1]
    as an H.264 + AAC mp4. H and W must be even (H.264 4:2:0). ``metadata``: container tags
    (any keys; read back by ``read_metadata``)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}.")
    n, h, w, _ = frames.shape
    if n == 0 or h % 2 or w % 2:
        raise ValueError(f"Need at least one frame of even height and width, got {frames.shape}.")
    with atomic_path(path, suffix=".mp4") as tmp:
        options = {"movflags": "use_metadata_tags"} if metadata else {}
        with av.open(tmp, mode="w", format="mp4", options=options) as out:
            out.metadata.update(metadata or {})
            vs = out.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.options = {"crf": str(crf), "preset": "medium"}
            ast = None
            if audio is not None:
                ast = out.add_stream("aac", rate=sample_rate)
                ast.layout = "mono"
                ast.bit_rate = 64_000
            encode_video(out, vs, frames)
            if ast is not None:
                encode_audio(out, ast, np.asarray(audio, np.float32)[None], sample_rate)


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
