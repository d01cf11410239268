"""The kept results of the image check (:func:`.images.inspect_image`), so that every image of a tree
is checked once per version of the tree, not at every start of every process: one file per tree and
decoding rule under ``$CONVMLP_IMAGE_CACHE`` (default ``~/.cache/convmlp_mindspore/image_checks``),
replaced whole, one process checking a tree at a time while the others wait, only the cache's own
folders pruned. Details: docs/architecture.md, "Image checks".
"""
import collections
import errno
import fcntl
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model.cache import cache_dir, cache_root, is_marked, make_folder

from ..platform.cleanup import prune_folders
from ..platform.console import Progress
from ..platform.errors import DataError, first_line
from ..platform.fileio import OutputError, atomic_output
from . import images
from .images import inspect_image

__all__ = ["image_sizes", "default_root", "cache_file", "ENV_ROOT", "KEEP", "WAIT_S", "SAY_EVERY_S", "PROGRESS_FROM"]

_LOG = logging.getLogger(__name__)

#: Environment variable naming the cache root.
ENV_ROOT = "CONVMLP_IMAGE_CACHE"
#: Trees whose results are kept (the least recently checked beyond this are removed).
KEEP = 64
#: Seconds a process waits for another one checking the same tree before it checks on its own
#: (a first check of ImageNet's 1.28 M files takes some minutes of 2 cores).
WAIT_S = 3600.0
#: While it waits, a process says so every this many seconds.
SAY_EVERY_S = 300.0
#: A check of this many files or more shows its progress.
PROGRESS_FROM = 2000
_FILE = "checked.npz"
_OWN_SUBFOLDER = "convmlp_image_checks"
_BLOCK = 4096          # files handed to the threads at a time
_FORMAT = 1


def default_root():
    """The cache root: ``$CONVMLP_IMAGE_CACHE``, else the repository's user cache folder."""
    return os.environ.get(ENV_ROOT) or cache_dir("image_checks")


def _rules():
    """What the kept results depend on: the check's code and limits."""
    digest = hashlib.sha256(f"{_FORMAT} {images.MAX_IMAGE_PIXELS}".encode())
    with open(images.__file__, "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()


def _key(tree_root, min_side):
    text = os.fsencode(os.path.realpath(tree_root)) + f"\0{min_side}".encode()
    return hashlib.sha256(text).hexdigest()[:20]


def cache_file(tree_root, root=None, min_side=None):
    """The file that keeps the results for the tree at `tree_root` checked with `min_side` (under
    `root`, default :func:`default_root`); the folders are made when missing."""
    base = cache_root(root or default_root(), _OWN_SUBFOLDER)
    folder = make_folder(base, _key(tree_root, min_side))
    if not is_marked(folder):
        raise FileExistsError(f"{folder} exists and was not made by this cache")
    return os.path.join(folder, _FILE)


# --------------------------------------------------------------------------------------------
# One process per tree
# --------------------------------------------------------------------------------------------
def _lock(path, tree_root, logger):
    """An exclusive lock on `path` (a descriptor to close). While another process holds it (it is
    checking the tree) this one waits, saying so at once and every :data:`SAY_EVERY_S` seconds, for
    at most :data:`WAIT_S` seconds (then None). A process that ends, however it ends, releases its
    lock: a failed first process never leaves the others waiting."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    t0, said = time.time(), -SAY_EVERY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        waited = time.time() - t0
        if waited > WAIT_S:
            os.close(fd)
            logger.warning(f"another process has been checking the images of {tree_root} for {waited:.0f} s "
                           f"(lock {path}); checking them without the cache")
            return None
        if waited - said >= SAY_EVERY_S:
            logger.info(f"waiting for another process that is checking the images of {tree_root} "
                        f"({waited:.0f} s; lock {path})")
            said = waited
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# The kept results
# --------------------------------------------------------------------------------------------
def _contiguous(files):
    """``(buffer, offsets)`` of a :class:`.imagefolder.FileList`'s relative paths, end to end."""
    starts, ends = files.starts, files.ends
    if len(starts) == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    if starts[0] == 0 and ends[-1] == len(files.buffer) and np.array_equal(starts[1:], ends[:-1]):
        return files.buffer, np.concatenate([[0], ends])
    parts = [files.buffer[s:e] for s, e in zip(starts, ends)]
    return np.concatenate(parts), np.concatenate([[0], np.cumsum(ends - starts)])


def _read(path, rules, logger):
    """The kept ``(buffer, offsets, stamps, sizes)``, or None (missing, unreadable, other rules)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            kept = {k: z[k] for k in ("rules", "buffer", "offsets", "stamps", "sizes")}
        n = len(kept["stamps"])
        if len(kept["offsets"]) != n + 1 or kept["sizes"].shape != (n, 2) or kept["offsets"][-1] != len(kept["buffer"]):
            raise ValueError("its arrays do not fit together")
    except Exception as exc:       # a damaged file: zip, npy or shape errors of any kind
        logger.warning(f"the kept image check {path} is unreadable ({first_line(exc)}); checking again and "
                       "replacing it")
        return None
    if str(kept["rules"]) != rules:
        logger.info(f"the image check has changed since {path} was written; checking every image again")
        return None
    return kept["buffer"], kept["offsets"], kept["stamps"], kept["sizes"]


def _write(path, rules, buffer, offsets, stamps, sizes):
    with atomic_output(path, label="image check cache") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, rules=np.array(rules), buffer=buffer, offsets=offsets, stamps=stamps, sizes=sizes)


def _reuse(kept, buffer, offsets, stamps):
    """Sizes of the listed files that `kept` holds for the same path, size and time (-1 elsewhere)."""
    n = len(stamps)
    sizes = np.full((n, 2), -1, np.int32)
    if kept is None:
        return sizes
    k_buffer, k_offsets, k_stamps, k_sizes = kept
    if np.array_equal(k_offsets, offsets) and np.array_equal(k_buffer, buffer):
        where = np.arange(n)                               # the same files in the same order
    else:
        index = {k_buffer[k_offsets[j]:k_offsets[j + 1]].tobytes(): j for j in range(len(k_stamps))}
        where = np.fromiter((index.get(buffer[offsets[i]:offsets[i + 1]].tobytes(), -1) for i in range(n)),
                            np.int64, n)
    found = where >= 0
    same = found.copy()
    same[found] = np.all(k_stamps[where[found]] == stamps[found], axis=1) & (stamps[found, 0] >= 0)
    sizes[same] = k_sizes[where[same]]
    return sizes


def _inspect(path, min_side):
    try:
        info = inspect_image(path, min_side)
        return info.width, info.height, None
    except DataError as exc:
        return -1, -1, str(exc)


def _inspect_block(paths, min_side):
    return [_inspect(path, min_side) for path in paths]


def _check(files, todo, workers, logger, root, min_side):
    """``(sizes, reasons)`` of the files at positions `todo`, checked by `workers` threads, a block of
    files at a time (a million files are never a million tasks). Threads, not processes: processes
    checked about 1.4 x faster on 2 cores (Pillow's header parsing holds the GIL), but a fork of a
    process running MindSpore's threads is unsafe, and a fresh interpreter per worker imports the
    entry script (MindSpore included) again, which costs more than it saves except on the first
    check of a very large tree."""
    sizes, reasons = np.full((len(todo), 2), -1, np.int32), {}
    block = max(64, min(_BLOCK, len(todo) // (4 * max(1, workers)) + 1))
    progress = Progress(len(todo), f"checking the images of {root}", logger, enabled=len(todo) >= PROGRESS_FROM,
                        log_interval=block * max(1, len(todo) // (10 * block)))     # about ten lines
    starts = iter(range(0, len(todo), block))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        running = collections.deque()
        while True:
            while len(running) < 2 * max(1, workers):      # a few blocks of paths alive, not all
                start = next(starts, None)
                if start is None:
                    break
                running.append((start, pool.submit(_inspect_block, [files[i] for i in todo[start:start + block]],
                                                        min_side)))
            if not running:
                break
            start, future = running.popleft()
            for k, (w, h, why) in enumerate(future.result(), start):
                sizes[k] = w, h
                if why:
                    reasons[int(todo[k])] = why
            progress.update(min(block, len(todo) - start))
    progress.close()
    return sizes, reasons


def image_sizes(tree, workers=2, logger=None, root=None, min_side=None):
    """``(sizes, reasons)`` of every file of `tree` (an unchecked :class:`.imagefolder.ImageTree`
    with its ``stamps``) checked with `min_side` (:func:`.images.inspect_image`): ``sizes`` int32
    (N, 2) width and height, -1 for a bad file; ``reasons`` {position: the DataError message} of the
    bad files. Files the cache (under `root`, default :func:`default_root`) holds unchanged are not
    checked again."""
    logger = logger or _LOG
    rules = _rules()
    buffer, offsets = _contiguous(tree.files)
    stamps = tree.stamps if tree.stamps is not None else np.full((len(tree.files), 2), -1, np.int64)
    fd = path = None
    try:
        path = cache_file(tree.root, root, min_side)
        fd = _lock(os.path.dirname(path) + ".lock", tree.root, logger)
    except OSError as exc:
        logger.warning(f"cannot keep the image check in {root or default_root()} ({first_line(exc)}); "
                       "checking without it")
    try:
        kept = _read(path, rules, logger) if fd is not None else None
        sizes = _reuse(kept, buffer, offsets, stamps)
        todo = np.flatnonzero(sizes[:, 0] < 0)
        checked, reasons = _check(tree.files, todo, workers, logger, tree.root, min_side)
        sizes[todo] = checked
        unchanged = kept is not None and len(reasons) == len(todo) and np.array_equal(kept[1], offsets) and \
            np.array_equal(kept[2], stamps) and np.array_equal(kept[0], buffer)
        if fd is not None and not unchanged:
            try:
                _write(path, rules, buffer, offsets, stamps, sizes)
                folder = os.path.dirname(path)     # the least recently checked trees beyond KEEP go
                prune_folders(os.path.dirname(folder), KEEP, os.path.basename(folder), _last_checked)
            except (OSError, OutputError) as exc:     # a full disk, a read-only cache: the run goes on
                logger.warning(f"cannot keep the image check in {path} ({first_line(exc)}); the next start checks "
                               "again")
    finally:
        if fd is not None:
            os.close(fd)
    return sizes, reasons


def _last_checked(folder):
    """When the tree of the cache folder `folder` was last checked (its results' time), or None for
    a folder that is not one of this cache's."""
    file = os.path.join(folder, _FILE)
    return os.stat(file).st_mtime if is_marked(folder) and os.path.isfile(file) else None
