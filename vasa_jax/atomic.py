"""Writing files whole or not at all: a temporary file beside the target, renamed over it only
when the write succeeded, so a reader (or a run killed mid-write) never sees half a file.

For local paths. Dataset reports written to any filesystem etils knows (gs://...) use
``epath``'s own rename (``data_pipeline/voxceleb2/report.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "", mode: int | None = None
                ) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same folder, created if missing; same extension
    unless ``suffix``); on success it is renamed to ``path``, otherwise removed.

    ``mode``: the final file's permission bits (e.g. 0o600 for a private key; the temporary
    file is 0600 from the start, so no other user can read it mid-write); default: what the
    umask gives an ordinary new file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix or os.path.splitext(path)[1],
                               dir=directory)
    os.close(fd)
    try:
        yield tmp
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> str:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path, mode=mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return os.fspath(path)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> str:
    """``json.dump(obj)`` (indent 2 unless given) to ``path`` atomically, with a final newline;
    returns the path."""
    dump_kwargs.setdefault("indent", 2)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, **dump_kwargs)
            f.write("\n")
    return os.fspath(path)


def nan_to_none(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN floats (e.g. an undefined correlation) -> None, which JSON can hold."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def none_to_nan(metrics: dict[str, Any]) -> dict[str, Any]:
    """``nan_to_none``'s inverse."""
    return {k: (math.nan if v is None else v) for k, v in metrics.items()}


def write_json_nan(path: str | os.PathLike, metrics: dict[str, Any]) -> str:
    """A flat dict of metrics to JSON atomically, NaN as null (strict JSON); returns the path."""
    return write_json(path, nan_to_none(metrics), indent=1, allow_nan=False)


def read_json_nan(path: str | os.PathLike) -> dict[str, Any]:
    """``write_json_nan``'s file back, null as NaN."""
    with open(path) as f:
        return none_to_nan(json.load(f))
