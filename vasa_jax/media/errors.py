"""The error raised for bad user inputs (photos, audio files): its message names the cause
and the fix, and the command line prints it without a traceback."""


class InputError(ValueError):
    """A user-supplied file cannot be used; the message says why and what to do."""
