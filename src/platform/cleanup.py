"""Deleting what this repository made, once no process holds it: a folder removed under its lock
(:func:`remove_unlocked`: the private folder of a writer that died, a cache's folder no process
uses) and a cache's least recently used folders beyond the number it keeps (:func:`prune_folders`).
A lock is ``flock`` on a file, which the kernel releases when its process ends, however it ends."""
import contextlib
import errno
import fcntl
import os
import shutil
import stat
from typing import Callable, Optional

__all__ = ["try_lock", "remove_unlocked", "prune_folders"]


def try_lock(path, create: bool = False) -> Optional[int]:
    """A descriptor of the regular file `path` holding its exclusive lock, or None when another
    process holds it (or, without `create`, when there is no such file). A link, a FIFO or anything
    else that is not a regular file is OSError, as is a file that cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a lock file", path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def remove_unlocked(folder, lock, create: bool = False) -> bool:
    """Delete `folder`, holding `lock` (:func:`try_lock`) meanwhile, and then the lock file when it
    was not inside the folder; False, with nothing deleted, when another process holds the lock."""
    fd = try_lock(lock, create)
    if fd is None:
        return False
    try:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
    finally:
        os.close(fd)
    return True


def prune_folders(root, keep: int, current: str, last_used: Callable[[str], Optional[float]]) -> list:
    """Delete the least recently used of a cache's folders in `root` beyond `keep`: `current` (the
    name of the one in use) counts among the kept and is never deleted; `last_used(path)` is when a
    folder was last used, or None for one that is not the cache's own (it is never touched). Each
    goes under its lock ``NAME.lock`` beside it (:func:`remove_unlocked`: a folder that another
    process holds stays). Returns the names deleted."""
    used = []
    for name in os.listdir(root):
        when = None if name == current else last_used(os.path.join(root, name))
        if when is not None:
            used.append((when, name))
    removed = []
    for _, name in sorted(used, reverse=True)[max(keep - 1, 0):]:
        if remove_unlocked(os.path.join(root, name), os.path.join(root, name + ".lock"), create=True):
            removed.append(name)
    return removed
