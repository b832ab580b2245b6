"""The secret keys behind the safety marks, and the private folder that holds them.

The watermark key. Whoever holds it can detect the invisible watermark, and could also use it to
strip the mark or to stamp it on other videos. So it is a secret of whoever generates the
videos, like the C2PA signing key. ``watermark_key`` resolves it in this order:

1. an explicit key file (``vasa-jax generate|verify --watermark-key-file FILE``);
2. the file named by the environment variable ``VASA_JAX_WATERMARK_KEY_FILE``;
3. ``watermark.key`` in the private folder ``private_dir()`` (``$VASA_JAX_C2PA_DIR``, else
   ``~/.config/vasa_jax/c2pa``: the folder of the C2PA development certificate). It is created
   on first use from 32 random bytes (``secrets``), mode 0600 in a 0700 folder.

A key file holds the key as hex digits (64 for a generated key, at least 32), whitespace
around them ignored. Only its owner may read or write it. A key file that group or others can
read or write is refused in cases 1 and 2. In case 3 (our own folder) the file is made private
again, and so is the folder, with a logged warning. To mark on one machine and verify on another,
copy the key file (keep it at mode 0600) and name it with ``--watermark-key-file`` or the
environment variable. ``write_key_file`` makes a new one.

The key never appears in manifests, container tags, logs, reprs or error messages.
``WatermarkKey.fingerprint`` is 16 hex digits of a domain-separated SHA-256 of the key, and it
names the key where a name helps (a verify report, the manifest's generation facts).

``PUBLIC_TEST_KEY`` is a published constant for tests and benchmarks ONLY. A mark made with it
proves nothing, because anyone can detect, strip or forge it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

PRIVATE_DIR_ENV = "VASA_JAX_C2PA_DIR"
DEFAULT_PRIVATE_DIR = "~/.config/vasa_jax/c2pa"
KEY_FILE_ENV = "VASA_JAX_WATERMARK_KEY_FILE"
WATERMARK_KEY_FILE = "watermark.key"
KEY_BYTES = 32  # a generated key
MIN_KEY_BYTES = 16  # the shortest key accepted (128 bits)

_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO  # 0o077
_FINGERPRINT_DOMAIN = b"vasa_jax watermark key fingerprint\x00"

log = logging.getLogger(__name__)


class KeyFileError(ValueError):
    """A key file is missing, unreadable, malformed or open to others. The message names the
    file and the fix, never the key."""


@dataclasses.dataclass(frozen=True, repr=False)
class WatermarkKey:
    """A watermark key: ``secret`` (at least 16 bytes) and ``source``, which says where it came
    from (a file path or a description, never the key). Its repr and str show only the
    ``fingerprint`` and ``source``. Two keys are equal when their secrets are."""

    secret: bytes
    source: str = dataclasses.field(default="given in code", compare=False)

    def __post_init__(self):
        if not isinstance(self.secret, bytes):
            raise ValueError(f"A watermark key's secret must be bytes, got "
                             f"{type(self.secret).__name__}.")
        if len(self.secret) < MIN_KEY_BYTES:
            raise ValueError(f"A watermark key needs at least {MIN_KEY_BYTES} bytes, got "
                             f"{len(self.secret)}.")

    @property
    def fingerprint(self) -> str:
        """16 hex digits that name the key without revealing it."""
        return hashlib.sha256(_FINGERPRINT_DOMAIN + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"WatermarkKey(fingerprint={self.fingerprint!r}, source={self.source!r})"

    __str__ = __repr__


PUBLIC_TEST_KEY = WatermarkKey(b"vasa_jax PUBLIC TEST KEY - not a secret, tests only",
                               source="PUBLIC_TEST_KEY (published in the source code)")


def random_key() -> WatermarkKey:
    """A fresh random key held in memory only (e.g. for a benchmark's wrong keys)."""
    return WatermarkKey(secrets.token_bytes(KEY_BYTES), source="random, in memory")


def private_dir(directory: str | os.PathLike | None = None) -> Path:
    """The private folder: ``directory``, else ``$VASA_JAX_C2PA_DIR``, else
    ``~/.config/vasa_jax/c2pa``. Not created here (see ``ensure_private_dir``)."""
    return Path(directory or os.environ.get(PRIVATE_DIR_ENV) or DEFAULT_PRIVATE_DIR).expanduser()


def ensure_private_dir(directory: str | os.PathLike | None = None) -> Path:
    """``private_dir(directory)``, created with mode 0700 if missing. If group or others have
    any access to it, it is set back to 0700 and a warning is logged."""
    path = private_dir(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(path)
    return path


def make_private(path: str | os.PathLike) -> bool:
    """Take away group and others' access to ``path``, a folder (0700) or file (0600) of ours,
    if they have any. Logs a warning naming it. Returns whether anything changed."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & _OPEN_TO_OTHERS:
        return False
    private = 0o700 if os.path.isdir(path) else 0o600
    os.chmod(path, private)
    log.warning("%s was open to group or others (mode %04o); made it private again "
                "(chmod %o).", os.fspath(path), mode, private)
    return True


def open_permissions(path: str | os.PathLike, what: str) -> str | None:
    """None if only the owner can access ``path``. Otherwise an error message that names the
    file, its mode and the fix. ``what`` says what the file holds, e.g. "C2PA signing key"."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & _OPEN_TO_OTHERS:
        return None
    return (f"{os.fspath(path)} is open to group or others (mode {mode:04o}), but a {what} "
            f"must be private to you. Fix: chmod 600 {os.fspath(path)}")


def read_key_file(path: str | os.PathLike, *, origin: str | None = None) -> WatermarkKey:
    """The key in the file at ``path``, which must be private to its owner and hold hex
    digits. Raises KeyFileError naming the file (and ``origin``, where its name came from)."""
    path = os.fspath(path)
    named = f"{path} (from {origin})" if origin else path
    try:
        problem = open_permissions(path, "watermark key file")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise KeyFileError(f"Watermark key file {named} does not exist. Give the key file "
                           f"the videos were marked with, or make a new one: python -c "
                           f"\"from vasa_jax.safety.keys import write_key_file; "
                           f"write_key_file({path!r})\"") from None
    except OSError as e:
        raise KeyFileError(f"Cannot read watermark key file {named}: {e.strerror}.") from None
    if problem:
        raise KeyFileError(problem)
    try:
        secret = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        secret = None
    if secret is None or len(secret) < MIN_KEY_BYTES:
        raise KeyFileError(f"{named} is not a watermark key file: it should "
                           f"hold one key as at least {2 * MIN_KEY_BYTES} hex digits (a "
                           f"generated key has {2 * KEY_BYTES}).")
    return WatermarkKey(secret, source=path)


def write_key_file(path: str | os.PathLike) -> WatermarkKey:
    """Write a new random key to ``path`` (mode 0600) and return it. An existing file is
    never overwritten: that raises KeyFileError."""
    if not _create_key_file(Path(path)):
        raise KeyFileError(f"{os.fspath(path)} already exists; a key file is never "
                           f"overwritten (marks made with its key would become undetectable).")
    return read_key_file(path)


def watermark_key(path: str | os.PathLike | None = None, *, create: bool = True,
                  directory: str | os.PathLike | None = None) -> WatermarkKey:
    """This user's watermark key. The first of these that applies:

    ``path`` (e.g. ``--watermark-key-file``), else ``$VASA_JAX_WATERMARK_KEY_FILE``, else
    ``watermark.key`` in the private folder (``private_dir(directory)``). That file is created
    on first use if ``create``, as ``generate`` does. ``verify`` passes ``create=False``: then a
    missing key is a KeyFileError, because a fresh key could not detect anything.
    Raises KeyFileError (a ValueError) naming the file and the fix.
    """
    if path is not None and os.fspath(path) != "":
        return read_key_file(path)
    env = os.environ.get(KEY_FILE_ENV)
    if env:
        return read_key_file(env, origin=f"${KEY_FILE_ENV}")
    folder = private_dir(directory)
    file = folder / WATERMARK_KEY_FILE
    if create:
        ensure_private_dir(folder)
        _create_key_file(file)
    elif not file.exists():
        raise KeyFileError(f"No watermark key: {file} does not exist, and no key file was "
                           f"given (--watermark-key-file, ${KEY_FILE_ENV}). Give the key file "
                           f"of the machine that marked the video.")
    else:
        make_private(folder)
    make_private(file)
    return read_key_file(file)


def _create_key_file(path: Path) -> bool:
    """Create ``path`` holding a new random key (mode 0600) unless it exists. Returns whether
    it was created. The file appears whole or not at all. When two processes race, both end up
    with the same key, because the file is hard-linked into place and never replaced."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-key-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.remove(tmp)
