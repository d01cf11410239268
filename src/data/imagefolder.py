"""Class-per-folder image trees (``root/<class>/<image>``, the layout of torchvision's and timm's
``ImageFolder``): finding the classes (timm's order) and their images, checking every file before
training (:mod:`.checked` keeps the results); the held-out validation split of one tree and the
file lists a run saves are :mod:`.split_lists`. Every problem is one ``error:`` line naming the
folder or file, or a counted skip. The rules: data/README.md; the listing at scale:
docs/architecture.md, "Image trees at scale".
"""
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import List, Tuple

import numpy as np

from ..platform.errors import DataError, shown_name
from . import checked
from .images import IMAGE_EXTENSIONS, is_image_name

__all__ = ["ImageTree", "FileList", "natural_key", "find_classes", "scan_tree", "check_images", "load_tree",
           "check_same_classes", "require_usable"]

_LOG = logging.getLogger(__name__)

class FileList:
    """The paths of a tree's files, held compactly: one buffer of the paths relative to the tree
    (file-system bytes) and the start and end of each, so a million files cost a few tens of
    megabytes, not a Python string each, and pickle (to the pipeline's worker processes) as three
    arrays. ``files[i]`` is ``root/<class>/.../<file>`` as a str; an array of positions or a slice
    gives another :class:`FileList` over the same buffer."""
    __slots__ = ("prefix", "buffer", "starts", "ends")

    def __init__(self, prefix, buffer, starts, ends):
        self.prefix, self.buffer, self.starts, self.ends = prefix, buffer, starts, ends

    @classmethod
    def of(cls, root, relative):
        """The list of `relative` paths (str, under `root`)."""
        encoded = [os.fsencode(r) for r in relative]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        ends = np.cumsum(lengths)
        return cls(os.path.join(root, ""), np.frombuffer(b"".join(encoded), np.uint8), ends - lengths, ends)

    def __len__(self):
        return len(self.starts)

    def relative(self, i):
        """The path of file `i` relative to the tree's root."""
        return os.fsdecode(self.buffer[self.starts[i]:self.ends[i]].tobytes())

    def __getitem__(self, i):
        if isinstance(i, slice) or np.ndim(i) > 0:
            index = np.arange(len(self))[i] if isinstance(i, slice) else np.asarray(i, np.int64)
            return FileList(self.prefix, self.buffer, self.starts[index], self.ends[index])
        return self.prefix + self.relative(int(i))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other):
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __repr__(self):
        return f"FileList({len(self)} files under {self.prefix!r})"


@dataclass
class ImageTree:
    """The images of one tree: ``files[i]`` (a path under `root`, :class:`FileList`) has class
    ``labels[i]`` (int32), the index of its folder in `classes`. `skipped`: files without an image
    extension; `bad`: ``(path, reason)`` of the images left out by ``skip_bad_images``; `sizes`:
    ``(width, height)`` per file (int32) once checked; `stamps`: ``(size, modification time ns)``
    per file as listed (-1 when it could not be read), until checked."""
    root: str
    classes: List[str]
    files: FileList
    labels: np.ndarray
    skipped: List[str] = field(default_factory=list)
    bad: List[Tuple[str, str]] = field(default_factory=list)
    sizes: np.ndarray = None
    stamps: np.ndarray = None

    def __post_init__(self):
        if not isinstance(self.files, FileList):      # paths given one by one: held as they are
            self.files = FileList.of("", list(self.files))

    def __len__(self):
        return len(self.files)

    def counts(self):
        """Images per class."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def subset(self, index):
        """The tree's files at `index` (an array of positions), everything else kept."""
        index = np.asarray(index, dtype=np.int64)
        return replace(self, files=self.files[index], labels=self.labels[index],
                       sizes=None if self.sizes is None else self.sizes[index],
                       stamps=None if self.stamps is None else self.stamps[index])


def _relative(path, root):
    """`path` relative to `root`, with ``/`` between its parts (``<class>/<file>``)."""
    return os.path.relpath(path, root).replace(os.sep, "/")


def _bare(name):
    """A folder, class or file name as this module's messages print it (:func:`shown_name`)."""
    return shown_name(name, quoted=False)


def natural_key(name):
    """timm's sort key of class folders (case-insensitive, digit runs by value), then the name."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name.lower())], name


_DIGITS = re.compile(r"\d+")


def _number(match):
    digits = str(int(match.group()))
    return f"\0{chr(len(digits) + 1)}{digits}\0"


def _sort_key(name):
    """A key that orders names exactly as :func:`natural_key` does, as one string (about three
    times faster to build and compare, which counts for a million files): each digit run becomes
    its length then its value's digits, between NUL characters (which no file name holds)."""
    return _DIGITS.sub(_number, name.lower()), name


# --------------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------------
def _layout_hint(root):
    return f"expected {root}/<class>/<image> (one folder per class; see data/README.md)"


def find_classes(root):
    """The class folders of `root`, sorted by :func:`natural_key`; DataError when `root` is missing,
    not a folder, or has no class folders."""
    if not os.path.exists(root):
        raise DataError(f"image folder {root} does not exist; {_layout_hint(root)}")
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} is not a folder; {_layout_hint(root)}")
    try:
        entries = sorted(os.listdir(root))
    except OSError as exc:
        raise DataError(f"cannot read image folder {root}: {exc.strerror}") from None
    classes = [n for n in entries if not n.startswith(".") and os.path.isdir(os.path.join(root, n))]
    if not classes:
        loose = [n for n in entries if is_image_name(n)]
        found = f"it holds {len(loose)} image file(s) but no class folders" if loose else \
            "it is empty" if not [n for n in entries if not n.startswith(".")] else "it has no class folders"
        raise DataError(f"image folder {root}: {found}; {_layout_hint(root)}")
    return sorted(classes, key=natural_key)


def _stat(entry):
    try:
        st = entry.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:        # a broken link: listed, and the check reports it
        return -1, -1


class _Listing:
    """What :func:`_walk` collects: image paths relative to the root with their stamps, other files."""

    def __init__(self):
        self.images, self.stamps, self.others, self.seen = [], [], [], set()


def _walk(path, relative, out):
    """Add the files under folder `path` (`relative` to the root) to `out`, as ``os.walk`` top-down
    with links followed would list them: the folder's files sorted, then each sub-folder in turn;
    hidden entries left out, a folder reached again through a link not walked twice. One
    ``os.scandir`` per folder, one realpath per folder, one stat per image (size and time)."""
    real = os.path.realpath(path)
    if real in out.seen:
        return
    out.seen.add(real)
    try:
        with os.scandir(path) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError:        # as os.walk: an unreadable folder lists nothing
        return
    dirs, files = [], []
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        (dirs if is_dir else files).append(e)
    files.sort(key=_entry_key)
    for e in files:
        if e.name.lower().endswith(IMAGE_EXTENSIONS):       # is_image_name: hidden ones are gone
            out.images.append(relative + e.name)
            out.stamps.append(_stat(e))
        else:
            out.others.append(os.path.join(path, e.name))
    for e in sorted(dirs, key=_entry_key):
        _walk(os.path.join(path, e.name), relative + e.name + os.sep, out)


def _entry_key(entry):
    return _sort_key(entry.name)


def scan_tree(root):
    """:class:`ImageTree` of every image file under `root`'s class folders (not yet checked)."""
    classes = find_classes(root)
    out, counts = _Listing(), []
    chunks, stamps = [], []
    for name in classes:
        out.seen = set()
        _walk(os.path.join(root, name), name + os.sep, out)
        if not out.images:
            raise DataError(f"class folder {_bare(os.path.join(root, name))} has no image files (expected "
                            f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        counts.append(len(out.images))
        chunks.append(FileList.of(root, out.images))      # one class at a time: few str objects alive
        stamps.append(np.asarray(out.stamps, np.int64).reshape(-1, 2))
        out.images, out.stamps = [], []
    lengths = [len(c.buffer) for c in chunks]
    shift = np.repeat(np.cumsum([0] + lengths[:-1]), counts)
    files = FileList(os.path.join(root, ""), np.concatenate([c.buffer for c in chunks]),
                     np.concatenate([c.starts for c in chunks]) + shift,
                     np.concatenate([c.ends for c in chunks]) + shift)
    labels = np.repeat(np.arange(len(classes), dtype=np.int32), counts)
    return ImageTree(root, classes, files, labels, out.others, stamps=np.concatenate(stamps))


def check_images(tree, workers=2, skip_bad=False, min_side=None, logger=None):
    """Check every image of `tree` (:func:`.images.inspect_image` with `min_side`, in `workers`
    threads) that the kept results of an earlier check (:mod:`.checked`) do not cover; returns the
    tree with ``sizes`` set, the bad files left out and listed in ``bad`` when `skip_bad`, else
    DataError for the first bad file (with the number of others)."""
    sizes, reasons = checked.image_sizes(tree, workers, logger or _LOG, min_side=min_side)
    bad = [(tree.files[i], reasons[i]) for i in sorted(reasons)]
    if bad and not skip_bad:
        more = f" ({len(bad) - 1} more bad file(s) in {tree.root})" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][1]}{more}; fix or remove it, or set skip_bad_images: true to leave bad images out")
    good = np.flatnonzero(sizes[:, 0] >= 0)
    out = tree.subset(good)
    out.sizes, out.stamps, out.bad = sizes[good], None, bad
    return out


def require_usable(tree):
    """`tree` after ``skip_bad_images`` left its bad files out; DataError when nothing usable is left
    (no image at all, or a class whose every image is bad: training without it would silently change
    the label space). An image tree with bad files is then a DataError at start, never a surprise
    later (a batch size larger than nothing, a class the model never sees)."""
    if not tree.bad:
        return tree
    if not len(tree):
        raise DataError(f"no usable images in {_bare(tree.root)}: all {len(tree.bad)} image file(s) are bad, "
                        f"e.g. {tree.bad[0][1]}; fix or replace them")
    empty = [c for c, n in zip(tree.classes, tree.counts()) if n == 0]
    if empty:
        bad = [(p, why) for p, why in tree.bad if _relative(p, tree.root).split("/")[0] == empty[0]]
        more = f" ({len(empty) - 1} more class(es) like it: {', '.join(map(_bare, empty[1:4]))})" \
            if len(empty) > 1 else ""
        raise DataError(f"class {_bare(empty[0])} of {_bare(tree.root)} has no usable image: all its "
                        f"{len(bad)} image file(s) are bad, e.g. {bad[0][1] if bad else '?'}{more}; skip_bad_images "
                        "leaves bad images out, not classes: fix the images or remove the class folder")
    return tree


def _stamp(root):
    """The modification times of the root and its first-level folders: they change when a class
    folder's files are added, removed or renamed."""
    names = sorted(os.listdir(root))
    return tuple((n, os.stat(os.path.join(root, n)).st_mtime_ns) for n in names) + (os.stat(root).st_mtime_ns,)


_LOADED = {}    # (real root, folder stamps, root, workers, skip_bad, min_side) -> checked tree; a few


def load_tree(root, workers=2, skip_bad=False, logger=None, min_side=None):
    """The checked :class:`ImageTree` of `root` (:func:`scan_tree`, :func:`check_images`), kept in the
    process while the folders are unchanged, so that a pipeline built again (each epoch), or the
    tree asked for again by another step of the start, is not listed again."""
    try:
        key = (os.path.realpath(root), _stamp(root), root, workers, skip_bad, min_side)
    except OSError:
        return _checked_tree(root, workers, skip_bad, logger, min_side)    # scan_tree reports the problem
    if key not in _LOADED:
        tree = _checked_tree(root, workers, skip_bad, logger, min_side)
        while len(_LOADED) >= 4:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = tree
    return _LOADED[key]


def _checked_tree(root, workers, skip_bad, logger, min_side=None):
    t0 = time.time()
    log = logger or _LOG
    tree = require_usable(check_images(scan_tree(root), workers, skip_bad, min_side, log))
    log.info(f"{root}: {len(tree)} images in {len(tree.classes)} classes, checked in {time.time() - t0:.1f}s")
    if tree.skipped:
        log.info(f"{root}: skipped {len(tree.skipped)} file(s) without an image extension, e.g. "
                 f"{_bare(tree.skipped[0])}")
    if tree.bad:
        log.warning(f"{root}: skip_bad_images: left out {len(tree.bad)} bad image file(s), e.g. {tree.bad[0][1]}")
    return tree


def check_same_classes(expected, where, tree, what="validation"):
    """DataError listing the difference when the classes of `tree` are not `expected` (the classes
    of the training data, from `where`: a folder or a checkpoint)."""
    if list(tree.classes) == list(expected):
        return
    only_train = [c for c in expected if c not in set(tree.classes)]
    only_val = [c for c in tree.classes if c not in set(expected)]
    parts = [f"only in {where}: {', '.join(map(_bare, only_train[:8]))}" if only_train else "",
             f"only in {tree.root}: {', '.join(map(_bare, only_val[:8]))}" if only_val else ""]
    detail = "; ".join(p for p in parts if p) or "the same names in another order"
    raise DataError(f"the {what} classes are not the training classes ({detail}); expected the same class "
                    "folders in both")
