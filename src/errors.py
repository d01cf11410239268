"""Errors a user can fix, and the one place that turns them into a clear one-line message.

Every expected failure (bad config value, broken data file, checkpoint of another model, ...)
raises a subclass of :class:`UserError` with a message that names the culprit (file, key, value)
and what was expected. Entry scripts wrap their ``main`` in :func:`run_cli`, which prints
``error: <message>`` on stderr and exits with status 2 -- no traceback for expected errors.
"""
import argparse
import errno
import sys

# The model package raises these itself (it imports nothing from outside); one class each.
from model.errors import CheckpointError, ConfigError, UserError, first_line

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "ClusterError", "ArgumentParser", "run_cli",
           "first_line"]


class DataError(UserError):
    """A missing, empty, truncated or mislabelled dataset file or folder."""


class ClusterError(UserError):
    """A data-parallel job lost a rank (it died or cannot be reached), or its cluster cannot form."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors (unknown option, invalid choice or number) are a
    :class:`ConfigError`, so they read like every other error of the entry scripts."""

    def error(self, message):
        raise ConfigError(f"command line: {message} (see {self.prog} -h)")


#: OSError numbers that come from the machine, not from a bug: a full disk or quota, a read-only
#: or vanished file system, missing permissions. They are reported like a UserError.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                       errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ESTALE, errno.EFBIG}
#: ... and those that never come from a bug, also when no file is named.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def _fail(msg, status):
    msg = " ".join(msg.split("\n"))
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(status)


def run_cli(main, argv=None):
    """Run ``main(argv)``; turn :class:`UserError` into ``error: ...`` and exit status 2.

    A file-system failure that names its file (full disk, permission denied, read-only file
    system, ...) is reported the same way; Ctrl-C outside the places that handle it exits with
    status 130 and one line, without a traceback."""
    try:
        rc = main(argv)
    except UserError as exc:
        _fail(str(exc), 2)
    except OSError as exc:
        if exc.errno in _ENVIRONMENT_ERRNOS and exc.filename:
            _fail(f"{exc.filename}: {exc.strerror}", 2)
        if exc.errno in _MACHINE_ERRNOS:  # e.g. a failed flush, which names no file
            _fail(f"{exc.strerror} (errno {exc.errno})", 2)
        raise
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C)", 130)
    sys.exit(rc or 0)
