"""Errors a user can fix, and the one place that turns them into a clear one-line message.

Every expected failure (bad config value, broken data file, checkpoint of another model, ...)
raises a subclass of :class:`UserError` with a message that names the culprit (file, key, value)
and what was expected. Entry scripts wrap their ``main`` in :func:`run_cli`, which prints
``error: <message>`` on stderr and exits with status 2 -- no traceback for expected errors.
"""
import sys

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "run_cli"]


class UserError(Exception):
    """A failure caused by input the user can fix; printed as one line, exit status 2."""


class ConfigError(UserError):
    """An unknown key, a value of the wrong type or outside its range."""


class DataError(UserError):
    """A missing, empty, truncated or mislabelled dataset file or folder."""


class CheckpointError(UserError):
    """A checkpoint that is unreadable, unsafe, or does not fit the model."""


def run_cli(main, argv=None):
    """Run ``main(argv)``; turn :class:`UserError` into ``error: ...`` and exit status 2."""
    try:
        rc = main(argv)
    except UserError as exc:
        msg = " ".join(str(exc).split("\n"))
        print(f"error: {msg}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(rc or 0)
