"""Writing files safely: the one atomic writer of the repository, and the rule that an output never
replaces an input.

Every file the entry scripts write (checkpoints, ``metrics.csv``, ``curves.png``, ``config.yaml``,
JSON results, exported ``.mindir`` files, converted weights, generated data, downloads) goes
through :func:`atomic_output`::

    with atomic_output("model.ckpt", inputs=[src]) as tmp:
        mindspore.save_checkpoint(params, tmp)

The content is written to a temporary file in the same folder (``.model.ckpt.tmp-<pid>.ckpt``: the
extension is kept, as MindSpore, matplotlib and ``mindspore.export`` choose the format or append
an extension from it), the optional ``verify`` callback checks the complete temporary file, the
file is flushed to disk and only then renamed over `path` with ``os.replace``. So `path` is always
either the previous file or the complete, verified new one. On any failure the temporary file is
removed and the error names `path`, never the temporary file.

:func:`check_not_input` refuses an output that is one of the files being read, compared by
resolved path and by (device, inode), so symbolic and hard links count as the same file.

Temporary files of a process that was killed (``kill -9``, power loss) carry its process id; the
next writer of the same file, or :func:`remove_stale_temps` for a whole folder, removes them.
"""
import contextlib
import os
import re
from typing import Callable, Iterable, Optional

from .errors import UserError, check_interrupted, first_line

__all__ = ["OutputError", "atomic_output", "check_output_path", "check_not_input", "same_file",
           "temp_name", "remove_stale_temps"]

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?P<ext>\.[^.]*)?$")


class OutputError(UserError):
    """An output file that cannot be written, or that would replace a file being read."""


def temp_name(path: str) -> str:
    """The temporary file that :func:`atomic_output` writes for `path` (same folder, hidden, the
    process id, the same extension)."""
    folder, name = os.path.split(os.path.abspath(path))
    ext = os.path.splitext(name)[1]
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}{ext}")


def same_file(a: str, b: str) -> bool:
    """Whether `a` and `b` are the same file: the same resolved path, or the same (device, inode)
    (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _labelled(item, default):
    return item if isinstance(item, tuple) else (default, item)


def check_not_input(output, *inputs, label: str = "output"):
    """Refuse to write `output` when it is one of `inputs` (paths, or ``(label, path)`` pairs; None
    entries are skipped) through the same path, a symbolic link or a hard link.

    Raises :class:`OutputError` naming both, before anything is written."""
    output = os.fspath(output)
    for item in inputs:
        what, path = _labelled(item, "input")
        if path is None:
            continue
        path = os.fspath(path)
        if same_file(output, path):
            how = "" if os.path.abspath(output) == os.path.abspath(path) else " (the same file through a link)"
            raise OutputError(f"{label} '{output}' is the {what} '{path}'{how}: writing it would replace the "
                              f"file being read; give another {label} (nothing was written)")


def check_output_path(path, *inputs, label: str = "output"):
    """Refuse, before any work is done, an output path that names a folder or one of `inputs`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(f"{label} '{path}' is a folder; expected a file name (nothing was written)")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"{label} '{path}': '{parent}' is not a folder (nothing was written)")
    check_not_input(path, *inputs, label=label)


def _remove(path):
    try:
        if os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True


def remove_stale_temps(folder: str, name: Optional[str] = None) -> list:
    """Delete the temporary files that killed processes left in `folder` (all of them, or only
    those of the file `name`); files of processes still running are kept. Returns the names
    removed."""
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry)
        if not m or (name is not None and m.group("name") != name):
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.remove(os.path.join(folder, entry))
            removed.append(entry)
        except OSError:
            pass
    return removed


def _fsync(path: str, directory: bool = False):
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot sync a folder; the file itself is on disk
            raise
    finally:
        os.close(fd)


def _cause(exc: BaseException) -> str:
    """An OSError's reason (``No space left on device``), else the exception's first line."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)


def _named(text: str, tmp: str, path: str) -> str:
    """`text` with every mention of the temporary file replaced by the user's path."""
    return text.replace(tmp, path).replace(os.path.basename(tmp), os.path.basename(path))


@contextlib.contextmanager
def atomic_output(path, verify: Optional[Callable[[str], None]] = None, inputs: Iterable = (),
                  failures: tuple = (OSError,), label: str = "output"):
    """Write `path` atomically: yields the name of a temporary file in the same folder to write;
    when the block ends, ``verify(tmp)`` (if given) checks the complete file, it is flushed to disk
    and renamed to `path`.

    Before anything is written, `path` is checked against `inputs` (:func:`check_not_input`) and
    must not be a folder. On any failure (an exception in the block or in `verify`, a full disk,
    Ctrl-C) the temporary file is removed and `path` keeps its previous content. Exceptions of
    the `failures` types become :class:`OutputError` ("cannot write PATH: cause"); a
    :class:`UserError` (e.g. from `verify`) keeps its class and its message names `path` instead
    of the temporary file; anything else is re-raised as it is.
    """
    path = os.fspath(path)
    check_output_path(path, *inputs, label=label)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = temp_name(path)
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temps(folder, os.path.basename(path))
        _remove(tmp)
        yield tmp
        if not os.path.isfile(tmp):
            raise OSError(f"{tmp} was not written")
        if verify is not None:
            verify(tmp)
        _fsync(tmp)
        check_interrupted()   # a Ctrl-C/SIGTERM whose exception was swallowed: keep the old file
        os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, UserError):
            exc.args = tuple(_named(a, tmp, path) if isinstance(a, str) else a for a in exc.args)
            raise
        if isinstance(exc, failures):
            raise OutputError(f"cannot write '{path}': {_named(_cause(exc), tmp, path)}; the previous "
                              "file (if any) is unchanged") from None
        raise
    _fsync(folder, directory=True)
