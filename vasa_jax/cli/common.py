"""What every command module shares: the error a user can fix, and turning library errors into
it."""

from __future__ import annotations

import contextlib


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback (exit code 2)."""


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException], prefix: str = "", suffix: str = ""):
    """Re-raise the exceptions of ``kinds`` as ``UserError(prefix + message + suffix)``."""
    try:
        yield
    except kinds as e:
        raise UserError(f"{prefix}{e}{suffix}") from None


def unwritable_data_dir():
    """A ``PermissionError`` while writing a dataset as a ``UserError`` naming the fix."""
    return user_errors(PermissionError, prefix="Cannot write the dataset: ",
                       suffix=". Choose a writable --data-dir.")
