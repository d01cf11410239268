"""Writing files safely: the one atomic writer of the repository (:func:`atomic_output`), the rules
for output names, and the rule that an output never replaces an input (:func:`check_not_input`).
A regular file is written under a temporary name beside it and renamed only when complete and
verified; a device, FIFO or ``/dev/stdout`` is written to in place, never replaced; a killed
process's temporary files are removed by the next writer. The rules in full: docs/architecture.md,
"How files are written".
"""
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zlib
from typing import Callable, Iterable, Optional

from .cleanup import remove_unlocked
from .errors import UserError, check_interrupted, first_line, short_quote

__all__ = ["file_sha256", "OutputError", "atomic_output", "check_output_path", "check_not_input", "check_name_length",
           "same_file", "temp_name", "remove_stale_temps", "remove_stale_scratch", "is_stream", "STDOUT",
           "write_json", "FIFO_READER_WAIT", "SCRATCH_PREFIX"]

#: The output name that means the standard output (where a script accepts it, e.g. ``--json -``).
STDOUT = "-"
#: A path every writer accepts: MindSpore's own file-name pattern (``mindspore.export``).
_PLAIN = re.compile(r"[0-9A-Za-z@_\-.:/\\]+")
_TEMP_RE = re.compile(r"^\.(?P<stem>[0-9A-Za-z_.-]*)\.tmp-(?P<pid>\d+)-(?P<key>[0-9a-f]{8})(?P<ext>\.[0-9A-Za-z]+)?$")
#: Temporary files of the previous naming (``.<name>.tmp-<pid><ext>``), still removed when stale.
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?P<ext>\.[^.]*)?$")
#: Paths that name one of this process's open files (the standard streams, ``/dev/fd/N``).
_FD_ALIAS = re.compile(r"/dev/(?P<std>stdin|stdout|stderr)|/dev/fd/(?P<fd>\d+)|/proc/(?P<pid>self|thread-self|\d+)/fd/(?P<pfd>\d+)")
_STD_FDS = {"stdin": 0, "stdout": 1, "stderr": 2}
#: Seconds a FIFO output waits for a process to open it for reading before it is an error.
FIFO_READER_WAIT = 10.0
#: How often the FIFO is tried again during that wait.
_FIFO_POLL_S = 0.05
#: The private temporary folders' name in the system temp folder: ``convmlp-out-<pid>-<random>``.
SCRATCH_PREFIX = "convmlp-out-"
_SCRATCH_RE = re.compile(re.escape(SCRATCH_PREFIX) + r"(?P<pid>\d+)-[0-9A-Za-z_]+")
#: The lock file in a private temporary folder that its process keeps locked while it lives.
_SCRATCH_LOCK = "owner.lock"


class OutputError(UserError):
    """An output file that cannot be written, or that would replace a file being read."""


def _key(name: str) -> str:
    return f"{zlib.crc32(os.fsencode(name)) & 0xFFFFFFFF:08x}"


def _plain_suffix(name: str) -> str:
    ext = os.path.splitext(name)[1]
    return ext if re.fullmatch(r"\.[0-9A-Za-z]{1,10}", ext) else ""


def temp_name(path, suffix: Optional[str] = None) -> str:
    """The temporary file that :func:`atomic_output` writes for `path`: same folder, hidden, plain
    ASCII, the process id and a hash of the name, ending with `suffix` (default: the name's own
    extension when it is a plain one)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    suffix = _plain_suffix(name) if suffix is None else suffix
    stem = re.sub(r"[^0-9A-Za-z_.-]", "_", os.path.splitext(name)[0])[:32]
    return os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{_key(name)}{suffix}")


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


def _fd_alias(path: str) -> Optional[int]:
    """The descriptor number when `path` (or the chain of links it starts) names one of this
    process's open files (``/dev/stdout``, ``/dev/fd/3``, ``/proc/self/fd/1``), else None."""
    for _ in range(40):
        path = os.path.abspath(path)
        m = _FD_ALIAS.fullmatch(path)
        if m and m.group("pid") in (None, "self", "thread-self", str(os.getpid())):
            return _STD_FDS[m.group("std")] if m.group("std") else int(m.group("fd") or m.group("pfd"))
        if not os.path.islink(path):
            return None
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return None


def is_stream(path, dash_is_stdout: bool = False) -> bool:
    """Whether `path` is written in place rather than replaced: ``-`` (with `dash_is_stdout`), one of
    this process's open files, or an existing path that is neither a regular file nor a folder
    (a device, a FIFO, a socket)."""
    path = os.fspath(path)
    if (dash_is_stdout and path == STDOUT) or _fd_alias(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _limit(folder: str, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def check_name_length(path, label: str = "output"):
    """OutputError naming `path` when one of its names, or the whole path, is longer than the file
    system takes (``NAME_MAX``, ``PATH_MAX``), before anything is created."""
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    name_max, path_max = _limit(existing, "PC_NAME_MAX", 255), _limit(existing, "PC_PATH_MAX", 4096)
    longest = max((p for p in path.split(os.sep)), key=lambda p: len(os.fsencode(p)))
    if len(os.fsencode(longest)) > name_max:
        raise OutputError(f"{label} {short_quote(path)}: the name {short_quote(longest, 24)} has "
                          f"{len(os.fsencode(longest))} bytes, more than this file system takes ({name_max}); "
                          "give a shorter name (nothing was written)")
    if len(os.fsencode(path)) >= path_max:
        raise OutputError(f"{label} {short_quote(path)}: the path has {len(os.fsencode(path))} bytes, more than "
                          f"this system takes ({path_max - 1}); give a shorter path (nothing was written)")


def check_output_path(path, *inputs, label: str = "output", dash_is_stdout: bool = False):
    """Refuse, before any work is done, an output path that names a folder, is too long, lies under
    a file, or is one of `inputs`."""
    path = os.fspath(path)
    if dash_is_stdout and path == STDOUT:
        return
    if os.path.isdir(path):
        raise OutputError(f"{label} '{path}' is a folder; expected a file name (nothing was written)")
    if is_stream(path):
        check_not_input(path, *inputs, label=label)
        if _fd_alias(path) is None and os.path.exists(path) and not os.access(path, os.W_OK):
            raise OutputError(f"{label} '{path}': permission denied (nothing was written)")
        return
    check_name_length(path, label)
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


def _entries(folder: str) -> list:
    """The names in `folder`, none when it cannot be listed."""
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True


def _temp_of(entry: str, name: Optional[str]):
    """The process id of the temporary file `entry` (of the file `name`, when given), else None."""
    m = _TEMP_RE.match(entry)
    if m:
        return int(m.group("pid")) if name is None or m.group("key") == _key(name) else None
    m = _LEGACY_TEMP_RE.match(entry)
    if m and (name is None or m.group("name") == name):
        return int(m.group("pid"))
    return None


def remove_stale_temps(folder: str, name: Optional[str] = None) -> list:
    """Delete the temporary files that killed processes left in `folder` (all of them, or only
    those of the file `name`); files of processes still running are kept. Returns the names
    removed."""
    removed = []
    for entry in _entries(folder):
        pid = _temp_of(entry, name)
        if pid is None or pid == os.getpid() or _alive(pid):
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


def _open_stream(path: str, label: str) -> int:
    """A write descriptor of the existing non-regular file `path`. A FIFO is opened without
    blocking and tried again until a process opens it for reading, at most
    :data:`FIFO_READER_WAIT` seconds (then one OutputError); it then blocks as a pipe does."""
    try:
        fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        fifo = False
    if not fifo:
        return os.open(path, os.O_WRONLY | os.O_NOCTTY)
    deadline = time.monotonic() + FIFO_READER_WAIT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            break
        except OSError as exc:   # ENXIO: no process has the FIFO open for reading
            if exc.errno != errno.ENXIO:
                raise
        if time.monotonic() >= deadline:
            raise OutputError(f"{label} '{path}' is a FIFO that no process reads (none opened it for reading "
                              f"within {FIFO_READER_WAIT:g} s); start its reader first (nothing was written)")
        check_interrupted()
        time.sleep(_FIFO_POLL_S)
    os.set_blocking(fd, True)
    return fd


def _copy_into(tmp: str, path: str, dash_is_stdout: bool, label: str):
    """Write the content of `tmp` into the existing stream `path` in place (no create, no rename)."""
    fd_number = 1 if dash_is_stdout and path == STDOUT else _fd_alias(path)
    if fd_number is not None:
        for stream in (sys.stdout, sys.__stdout__, sys.stderr, sys.__stderr__):
            if stream is not None:
                stream.flush()
        fd, own = fd_number, False
    else:
        fd, own = _open_stream(path, label), True
    try:
        with open(tmp, "rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
    finally:
        if own:
            os.close(fd)


def remove_stale_scratch(folder: Optional[str] = None) -> list:
    """Delete the private temporary folders (``convmlp-out-<pid>-*`` in `folder`, default the system
    temp folder) of processes that died while writing: a folder whose lock file no process holds.
    A live process's folder and anything without that name and lock file are kept. Returns the
    names removed."""
    folder = tempfile.gettempdir() if folder is None else folder
    removed = []
    for entry in _entries(folder):
        scratch = os.path.join(folder, entry)
        if not _SCRATCH_RE.fullmatch(entry) or os.path.islink(scratch) or not os.path.isdir(scratch):
            continue
        try:
            if remove_unlocked(scratch, os.path.join(scratch, _SCRATCH_LOCK)):
                removed.append(entry)
        except OSError:      # a lock file that is not ours (a link, not a regular file, unreadable)
            pass
    return removed


@contextlib.contextmanager
def _scratch_folder():
    """A private temporary folder for this process, locked (see :func:`remove_stale_scratch`) until
    it is removed at the end of the block."""
    scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    fd = None
    try:
        # Locked under another name, then renamed: a folder whose lock file exists is always locked.
        pending = os.path.join(scratch, ".owner.pending")
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(pending, os.path.join(scratch, _SCRATCH_LOCK))
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def _workspace(path: str, suffix: Optional[str], stream: bool):
    """``(name handed to the writer, the temporary file's real path)`` and the private folder to
    remove afterwards (or None): see the module docstring. Every write first removes the private
    folders that dead processes left (:func:`remove_stale_scratch`)."""
    remove_stale_scratch()
    if stream:
        with _scratch_folder() as scratch:
            tmp = os.path.join(scratch, "output" + (_plain_suffix(path) if suffix is None else suffix))
            yield tmp, tmp
        return
    tmp = temp_name(path, suffix)
    folder = os.path.dirname(tmp)
    if _PLAIN.fullmatch(folder):
        yield tmp, tmp
        return
    with _scratch_folder() as scratch:
        os.symlink(folder, os.path.join(scratch, "folder"))
        yield os.path.join(scratch, "folder", os.path.basename(tmp)), tmp


@contextlib.contextmanager
def atomic_output(path, verify: Optional[Callable[[str], None]] = None, inputs: Iterable = (),
                  failures: tuple = (OSError,), label: str = "output", suffix: Optional[str] = None,
                  dash_is_stdout: bool = False):
    """Write `path` safely: yields the name of a temporary file to write (ending with `suffix`, the
    extension the writer needs; default the path's own); when the block ends, ``verify(tmp)`` (if
    given) checks the complete file, which then replaces `path` (a regular file or a new name:
    flushed to disk and renamed) or is copied into it (a stream: see :func:`is_stream`).

    Before anything is written, `path` is checked (:func:`check_output_path`: not a folder, not too
    long, not one of `inputs`). On any failure (an exception in the block or in `verify`, a full
    disk, Ctrl-C) the temporary file is removed and a replaced `path` keeps its previous content.
    Exceptions of the `failures` types become :class:`OutputError` ("cannot write PATH: cause"); a
    :class:`UserError` (e.g. from `verify`) keeps its class and its message names `path` instead
    of the temporary file; anything else is re-raised as it is.
    """
    path = os.fspath(path)
    check_output_path(path, *inputs, label=label, dash_is_stdout=dash_is_stdout)
    stream = is_stream(path, dash_is_stdout)
    final = path if stream else os.path.realpath(path)   # a link to a file stays a link
    folder = os.path.dirname(final)
    with _workspace(final, suffix, stream) as (handed, tmp):
        try:
            if not stream:
                os.makedirs(folder, exist_ok=True)
                remove_stale_temps(folder, os.path.basename(final))
            _remove(tmp)
            yield handed
            if not os.path.isfile(tmp):
                raise OSError(f"{tmp} was not written")
            if verify is not None:
                verify(handed)
            check_interrupted()   # a Ctrl-C/SIGTERM whose exception was swallowed: keep the old file
            if stream:
                _copy_into(tmp, path, dash_is_stdout, label)
            else:
                _fsync(tmp)
                os.replace(tmp, final)
        except BaseException as exc:
            _remove(tmp)
            if isinstance(exc, BrokenPipeError):   # the reader went away: run_cli ends quietly
                raise
            if isinstance(exc, UserError):
                exc.args = tuple(_named(_named(a, handed, path), tmp, path) if isinstance(a, str) else a
                                 for a in exc.args)
                raise
            if isinstance(exc, failures):
                kept = "" if stream else "; the previous file (if any) is unchanged"
                raise OutputError(f"cannot write '{path}': {_named(_named(_cause(exc), handed, path), tmp, path)}"
                                  f"{kept}") from None
            raise
    if not stream:
        _fsync(folder, directory=True)


def write_json(path, obj, inputs: Iterable = (), label: str = "--json"):
    """`obj` as indented UTF-8 JSON to `path` through :func:`atomic_output` (``-`` is stdout);
    prints ``wrote PATH`` for a file."""
    import json
    with atomic_output(path, inputs=inputs, label=label, dash_is_stdout=True) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    if path != STDOUT:
        print(f"wrote {path}")


def file_sha256(path: str) -> str:
    """The hex sha256 of the file at `path`, read in 1 MiB blocks (checksums of packs and caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
