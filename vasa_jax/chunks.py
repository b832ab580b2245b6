"""Running a compiled function over any number of examples on the host, in chunks whose sizes
are few (so few shapes get compiled): at most ``chunk_size`` rows, the last chunk zero-padded to
a power of two. For functions that treat every row on its own (padding changes nothing)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def padded_size(n: int, chunk_size: int) -> int:
    """The row count a chunk of ``n`` rows is padded to: the next power of two, at most
    ``chunk_size``."""
    return min(chunk_size, 1 << max(n - 1, 0).bit_length())


def map_chunks(fn: Callable[..., Any], *arrays: np.ndarray, chunk_size: int) -> Any | None:
    """``fn(*chunks)`` over the leading axis of ``arrays`` (all of the same length n) in chunks;
    ``fn`` returns an array or a tuple of arrays with the chunk's rows first. Returns the
    outputs as NumPy, concatenated and trimmed to n rows (a tuple if ``fn`` returns one), or
    None when n is 0."""
    n = len(arrays[0])
    outs: list = []
    for i in range(0, n, chunk_size):
        chunk = [np.asarray(a[i:i + chunk_size]) for a in arrays]
        k = len(chunk[0])
        size = padded_size(k, chunk_size)
        if size > k:
            chunk = [np.concatenate([c, np.zeros((size - k,) + c.shape[1:], c.dtype)])
                     for c in chunk]
        out = jax.device_get(fn(*chunk))
        outs.append([np.asarray(o)[:k] for o in (out if isinstance(out, tuple) else (out,))])
    if not outs:
        return None
    joined = tuple(np.concatenate(parts) for parts in zip(*outs))
    return joined if len(joined) > 1 else joined[0]
