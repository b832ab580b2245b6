"""Generate encoded SynthTalk examples in worker processes, in a deterministic order.

Workers are spawned (not forked: JAX is multithreaded), each compiles the renderer once, and
results come back in submission order, so the output does not depend on the worker count.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Iterable, Iterator

import cv2
import numpy as np

from data_pipeline.synthtalk.generate import generate_clip

ENCODINGS = ("png", "jpeg")
_JPEG_QUALITY = 95


def encode_frames(frames: np.ndarray, encoding: str) -> list[bytes]:
    """(T, R, R, 3) uint8 RGB -> one PNG or JPEG byte string per frame."""
    if encoding not in ENCODINGS:
        raise ValueError(f"Unknown frame encoding {encoding!r}; use one of {ENCODINGS}.")
    ext, params = (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]) if encoding == "png" else (
        ".jpg", [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    out = []
    for f in frames:
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(f[..., ::-1]), params)
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode a {f.shape} frame as {encoding}.")
        out.append(buf.tobytes())
    return out


def encoded_example(seed: int, identity: int, clip: int, num_frames: int, resolution: int,
                    encoding: str) -> dict:
    """A TFDS-ready example: frames encoded, audio as int16 PCM, everything else as generated."""
    ex = generate_clip(seed, identity, clip, num_frames, resolution)
    ex["frames"] = encode_frames(ex["frames"], encoding)
    ex["audio"] = np.round(ex["audio"] * 32767.0).astype(np.int16)
    ex["clip"] = clip
    return ex


def _encoded_example_star(args):
    return encoded_example(*args)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def generate_encoded(jobs: Iterable[tuple[int, int]], *, seed: int, num_frames: int,
                     resolution: int, encoding: str, workers: int) -> Iterator[dict]:
    """Yield ``encoded_example`` for each (identity, clip) in ``jobs``, in order.

    ``workers <= 1`` generates in this process; otherwise a spawned process pool does, with a
    bounded number of clips in flight.
    """
    args = [(seed, i, c, num_frames, resolution, encoding) for i, c in jobs]
    if workers <= 1:
        yield from map(_encoded_example_star, args)
        return
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending = []
        it = iter(args)
        for a in it:
            pending.append(pool.submit(_encoded_example_star, a))
            if len(pending) >= 4 * workers:
                break
        while pending:
            yield pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_encoded_example_star, nxt))
