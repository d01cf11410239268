"""Errors a user can fix, and the one place that turns them into a clear one-line message.

Every expected failure (bad config value, broken data file, checkpoint of another model, ...)
raises a subclass of :class:`UserError` with a message that names the culprit (file, key, value)
and what was expected. Entry scripts wrap their ``main`` in :func:`run_cli`, which prints
``error: <message>`` on stderr and exits with status 2 -- no traceback for expected errors.
Ctrl-C and SIGTERM end every script the same way: one line, exit status 130. Output to a pipe
whose reader has gone (``evl.py | head -1``: stdout, stderr, the log, ``--json -`` or a FIFO) ends
the script quietly with exit status 141, as a Unix tool that SIGPIPE ends (128 + 13).
"""
import argparse
import errno
import os
import signal
import sys

# The model package raises these itself (it imports nothing from outside); one class each.
from model.errors import CheckpointError, ConfigError, UserError, first_line, short_list, short_quote

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "ClusterError", "ArgumentParser", "run_cli",
           "first_line", "short_list", "short_quote", "shown_name", "Interrupted", "check_interrupted",
           "EXIT_INTERRUPTED", "EXIT_BROKEN_PIPE"]

#: Exit status after Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention for Ctrl-C).
EXIT_INTERRUPTED = 130
#: Exit status after output to a pipe whose reader has gone (128 + SIGPIPE, what the shell shows for
#: a tool that SIGPIPE ended, e.g. ``yes | head -1``).
EXIT_BROKEN_PIPE = 141


def shown_name(name, quoted=True) -> str:
    """A file, folder or class name as every message, log line and table prints it: whole, on one
    line, and printable in any terminal. A name a file system allows may hold a newline, a tab, a
    carriage return, leading or trailing spaces, or bytes that are not UTF-8 (which Python keeps as
    surrogates, ``os.fsdecode``); such a name is printed as its Python literal (``'a\\nb'``,
    ``'\\udcff.png'``). With `quoted` false a plain name is printed bare (tables, infer.py's
    output), else always in quotes (messages)."""
    text = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
    plain = text.isprintable() and text == text.strip() and "\\" not in text and "'" not in text
    return text if plain and not quoted else f"'{text}'" if plain else repr(text)


class DataError(UserError):
    """A missing, empty, truncated or mislabelled dataset file or folder."""


class ClusterError(UserError):
    """A data-parallel job lost a rank (it died or cannot be reached), or its cluster cannot form."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors (unknown option, invalid choice or number) are a
    :class:`ConfigError`, so they read like every other error of the entry scripts."""

    def error(self, message):
        raise ConfigError(f"command line: {message} (see {self.prog} -h)")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        self._refuse_repeated(args)
        return super().parse_known_args(args, namespace)

    def _refuse_repeated(self, args):
        """ConfigError naming an option given twice and both values (argparse keeps the last)."""
        seen = {}
        for i, tok in enumerate(args):
            if tok == "--":
                break
            name, eq, inline = tok.partition("=")
            action = self._option_string_actions.get(name) if tok.startswith("-") else None
            if action is None or action.dest == "help":
                continue
            if eq:
                value = inline
            else:
                value = " ".join(t for t in _values_after(args, i + 1, self._option_string_actions))
            if action.dest in seen:
                first_name, first = seen[action.dest]
                shown = f" ({short_quote(first)} and {short_quote(value)})" if first or value else ""
                raise ConfigError(f"command line: {name} is given twice{shown}; give it once")
            seen[action.dest] = (name, value)


#: OSError numbers that come from the machine, not from a bug: a full disk or quota, a read-only
#: or vanished file system, missing permissions. They are reported like a UserError.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                       errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ESTALE, errno.EFBIG, errno.ENAMETOOLONG}
#: ... and those that never come from a bug, also when no file is named.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def _values_after(args, start, options):
    """The tokens after an option up to the next option (its value or values)."""
    out = []
    for tok in args[start:]:
        if tok.startswith("-") and (tok.partition("=")[0] in options or tok == "--"):
            break
        out.append(tok)
    return out


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The SIGINT/SIGTERM received by this process. The exception the handler raises can be swallowed
#: (Python ignores exceptions raised inside ``__del__`` and some callbacks), so the signal is also
#: recorded here and :func:`check_interrupted` raises it again where it must not be missed.
_received = []


#: The terminal's stderr while the framework's is silenced (:func:`_silence_framework`).
_saved_stderr = []


def _silence_framework():
    """Send file descriptor 2 to the null device until :func:`_restore_stderr`: once an interrupt
    is raised the process is ending, and MindSpore reports the exception passing through its
    compiler with a dump of its own (an ``[ERROR] ANALYZER`` log of 50-150 lines) before the one
    line that :func:`run_cli` prints."""
    if _saved_stderr:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        _saved_stderr.append(saved)
    except (OSError, ValueError, AttributeError):
        pass


def _restore_stderr():
    if _saved_stderr:
        saved = _saved_stderr.pop()
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)


def _raise_interrupted(signum, frame):
    _received.append(signum)
    _silence_framework()
    raise Interrupted(signum)


def check_interrupted():
    """Raise :class:`Interrupted` when a SIGINT/SIGTERM arrived whose exception was swallowed;
    called before an output replaces a file, and by :func:`run_cli` after ``main`` returns."""
    if _received:
        raise Interrupted(_received[-1])


def _quiet_swallowed_interrupt(unraisable):
    """``sys.unraisablehook``: an :class:`Interrupted` raised where Python cannot propagate it (a
    ``__del__``) is recorded in ``_received`` already; print nothing for it."""
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)


def _install_signal_handlers():
    """SIGTERM (and SIGINT) raise :class:`Interrupted` in the main thread. MindSpore's runtime turns
    Ctrl-C into SIGTERM for the process once it has run (it ignores SIGINT at the Python level and
    relays it), whose default action would end the process with status 143 and no word."""
    sys.unraisablehook = _quiet_swallowed_interrupt
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(signum, _raise_interrupted)
        except (ValueError, OSError):  # not the main thread: nothing to install
            pass


#: Longest message printed: every value in a message is quoted short (:func:`short_quote`); this
#: only keeps a message that still grew (a list of thousands of names) to a readable line.
_MESSAGE_LIMIT = 2000


def _fail(msg, status):
    msg = " ".join(msg.splitlines())
    if len(msg) > _MESSAGE_LIMIT:
        msg = f"{msg[:_MESSAGE_LIMIT]}... ({len(msg)} characters)"
    try:
        print(f"error: {msg}", file=sys.stderr, flush=True)
    except BrokenPipeError:   # nobody reads stderr any more
        _end_broken_pipe()
    sys.exit(status)


def _end_broken_pipe():
    """End quietly after output to a pipe whose reader has gone: the standard streams are pointed at
    the null device (what Python still holds for them is flushed there at exit, instead of a second
    ``BrokenPipeError`` and an ``Exception ignored`` message), exit status 141."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                fd = stream.fileno()
            except (AttributeError, OSError, ValueError):   # not a file (a test's StringIO): nothing to redirect
                continue
            os.dup2(null, fd)
    finally:
        os.close(null)
    sys.exit(EXIT_BROKEN_PIPE)


def _flush_standard_streams():
    """Write out what is still buffered for stdout and stderr (a pipe is block-buffered), so that a
    reader that has gone is noticed here, not by the interpreter's shutdown."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def _interrupted(signum):
    how = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM: a kill, or Ctrl-C relayed by MindSpore's runtime"
    _fail(f"interrupted ({how})", EXIT_INTERRUPTED)


def _report(exc):
    """One ``error:`` line for a UserError or an OSError of the machine (full disk, permissions,
    a name too long); anything else is a bug and keeps its traceback."""
    if isinstance(exc, UserError):
        _fail(str(exc), 2)
    if isinstance(exc, OSError):
        if exc.errno in _ENVIRONMENT_ERRNOS and exc.filename:
            name = exc.filename if len(str(exc.filename)) <= 200 else short_quote(exc.filename, 200)
            _fail(f"{name}: {exc.strerror}", 2)
        if exc.errno in _MACHINE_ERRNOS:  # e.g. a failed flush, which names no file
            _fail(f"{exc.strerror} (errno {exc.errno})", 2)
    raise exc


def run_cli(main, argv=None):
    """Run ``main(argv)``; turn :class:`UserError` into ``error: ...`` and exit status 2.

    A file-system failure that names its file (full disk, permission denied, read-only file
    system, ...) is reported the same way; Ctrl-C or SIGTERM outside the places that handle them
    (train.py saves a resumable checkpoint first) exits with status 130 and one line, without a
    traceback. The files a script writes go through temporary names, so an interrupt leaves
    the previous ones as they were. Output to a pipe whose reader has gone (``| head``) ends the
    script quietly, exit status 141 (:data:`EXIT_BROKEN_PIPE`)."""
    _install_signal_handlers()
    try:
        try:
            rc = main(argv)
            check_interrupted()
            _flush_standard_streams()
        finally:
            _restore_stderr()   # the terminal's stderr back for the one line below
    except KeyboardInterrupt as exc:
        _interrupted(getattr(exc, "signum", signal.SIGINT))
    except BrokenPipeError:
        _end_broken_pipe()
    except SystemExit:   # e.g. argparse's -h: what it printed is still buffered
        try:
            _flush_standard_streams()
        except BrokenPipeError:
            _end_broken_pipe()
        raise
    except Exception as exc:
        if _received:   # the framework turned the interrupt into an error of its own
            _interrupted(_received[-1])
        _report(exc)
    sys.exit(rc or 0)
