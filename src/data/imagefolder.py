"""Class-per-folder image trees (``root/<class>/<image>``, the layout of torchvision's and timm's
``ImageFolder``): finding the classes and their images, checking every file before training, the
held-out validation split of one tree (``val_fraction``) and the file lists a run saves.

Rules (one ``error:`` line naming the folder or file, or a counted skip):

* classes are the sub-folders of the root, sorted as timm sorts them (the official training
  script's loader): case-insensitive, runs of digits by value (``2`` before ``10``), ties by name;
  class ``i`` is the ``i``-th. A class folder's images may sit in sub-folders; symbolic links to
  folders and files are followed (a link back up the tree is not walked twice);
* hidden files and folders (``.name``) are ignored; files without an image extension
  (:data:`.images.IMAGE_EXTENSIONS`) are skipped and counted;
* a missing or empty root, a root without class folders and a class folder without images are errors;
* every image is checked (:func:`.images.inspect_image`: empty, unreadable, truncated, larger than
  :data:`.images.MAX_IMAGE_PIXELS`): the first bad file is an error, or with ``skip_bad_images``
  all bad files are left out and counted.
"""
import functools
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import List, Tuple

import numpy as np

from ..platform.errors import DataError
from ..platform.fileio import atomic_output
from .images import IMAGE_EXTENSIONS, inspect_image, is_image_name

__all__ = ["ImageTree", "natural_key", "find_classes", "scan_tree", "check_images", "load_tree", "split_tree",
           "check_same_classes", "split_list_paths", "write_split_lists", "read_split_list", "SPLIT_LISTS"]

_LOG = logging.getLogger(__name__)

#: The files a run with ``val_fraction`` saves in its folder: each split's images, one per line,
#: relative to the tree's root (``<class>/<file>``).
SPLIT_LISTS = {"train": "train_files.txt", "val": "val_files.txt"}


@dataclass
class ImageTree:
    """The images of one tree: ``files[i]`` (a path under `root`) has class ``labels[i]``, the index
    of its folder in `classes`. `skipped`: files without an image extension; `bad`: ``(path,
    reason)`` of the images left out by ``skip_bad_images``; `sizes`: ``(width, height)`` per file
    once checked."""
    root: str
    classes: List[str]
    files: List[str]
    labels: np.ndarray
    skipped: List[str] = field(default_factory=list)
    bad: List[Tuple[str, str]] = field(default_factory=list)
    sizes: np.ndarray = None

    def __len__(self):
        return len(self.files)

    def counts(self):
        """Images per class."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def subset(self, index):
        """The tree's files at `index` (an array of positions), everything else kept."""
        index = np.asarray(index, dtype=np.int64)
        return replace(self, files=[self.files[i] for i in index], labels=self.labels[index],
                       sizes=None if self.sizes is None else self.sizes[index])


def natural_key(name):
    """timm's sort key of class folders (case-insensitive, digit runs by value), then the name."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name.lower())], name


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


def _walk(folder):
    """``(image files, other files)`` under `folder`, hidden entries left out, links followed once."""
    images, others, seen = [], [], set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:          # a link back to a folder already walked
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        for name in sorted((n for n in names if not n.startswith(".")), key=natural_key):
            (images if is_image_name(name) else others).append(os.path.join(here, name))
    return images, others


def scan_tree(root):
    """:class:`ImageTree` of every image file under `root`'s class folders (not yet checked)."""
    classes = find_classes(root)
    files, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        images, others = _walk(os.path.join(root, name))
        if not images:
            raise DataError(f"class folder {os.path.join(root, name)} has no image files (expected "
                            f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        files += images
        labels += [label] * len(images)
        skipped += others
    return ImageTree(root, classes, files, np.asarray(labels, np.int32), skipped)


def check_images(tree, workers=2, skip_bad=False):
    """Check every image of `tree` (:func:`.images.inspect_image`, in `workers` threads); returns the
    tree with ``sizes`` set, the bad files left out and listed in ``bad`` when `skip_bad`, else
    DataError for the first bad file (with the number of others)."""
    def one(path):
        try:
            info = inspect_image(path)
            return (info.width, info.height), None
        except DataError as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(one, tree.files))
    bad = [(path, why) for path, (_, why) in zip(tree.files, results) if why]
    if bad and not skip_bad:
        more = f" ({len(bad) - 1} more bad file(s) in {tree.root})" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][1]}{more}; fix or remove it, or set skip_bad_images: true to leave bad images out")
    good = [i for i, (size, _) in enumerate(results) if size is not None]
    out = tree.subset(good)
    out.sizes = np.asarray([results[i][0] for i in good], np.int64).reshape(-1, 2)
    out.bad = bad
    return out


def _stamp(root):
    """The modification times of the root and its first-level folders: they change when a class
    folder's files are added, removed or renamed."""
    names = sorted(os.listdir(root))
    return tuple((n, os.stat(os.path.join(root, n)).st_mtime_ns) for n in names) + (os.stat(root).st_mtime_ns,)


def load_tree(root, workers=2, skip_bad=False, logger=None):
    """The checked :class:`ImageTree` of `root` (:func:`scan_tree`, :func:`check_images`), kept while
    the folders are unchanged, so that a pipeline built again (each epoch) does not check again."""
    try:
        stamp = _stamp(root)
    except OSError:
        return _checked_tree(root, workers, skip_bad, logger)    # scan_tree reports the problem
    return _checked_tree_of(os.path.realpath(root), stamp, root, workers, skip_bad, logger)


@functools.lru_cache(maxsize=4)
def _checked_tree_of(real_root, stamp, root, workers, skip_bad, logger):
    return _checked_tree(root, workers, skip_bad, logger)


def _checked_tree(root, workers, skip_bad, logger):
    t0 = time.time()
    tree = check_images(scan_tree(root), workers, skip_bad)
    log = logger or _LOG
    log.info(f"{root}: {len(tree)} images in {len(tree.classes)} classes, checked in {time.time() - t0:.1f}s")
    if tree.skipped:
        log.info(f"{root}: skipped {len(tree.skipped)} file(s) without an image extension, e.g. {tree.skipped[0]}")
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
    parts = [f"only in {where}: {', '.join(only_train[:8])}" if only_train else "",
             f"only in {tree.root}: {', '.join(only_val[:8])}" if only_val else ""]
    detail = "; ".join(p for p in parts if p) or "the same names in another order"
    raise DataError(f"the {what} classes are not the training classes ({detail}); expected the same class "
                    "folders in both")


# --------------------------------------------------------------------------------------------
# val_fraction: one tree, two splits
# --------------------------------------------------------------------------------------------
def split_tree(tree, fraction, seed):
    """``(train positions, val positions)`` of `tree`: per class, ``round(n x fraction)`` images (at
    least 1 and at most n - 1 for a class of 2 or more) drawn with a generator seeded by (`seed`,
    class index), so the split depends only on the files, the fraction and the seed."""
    train, val = [], []
    for label in range(len(tree.classes)):
        members = np.flatnonzero(tree.labels == label)
        n = len(members)
        k = min(n - 1, max(1, int(round(n * fraction)))) if n > 1 else 0
        order = np.random.default_rng([seed, label]).permutation(n)
        val += members[order[:k]].tolist()
        train += members[order[k:]].tolist()
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(val, np.int64))


def split_list_paths(folder):
    return {split: os.path.join(folder, name) for split, name in SPLIT_LISTS.items()}


def write_split_lists(folder, tree, parts):
    """Save each split's files (`parts`: split -> positions in `tree`), relative to the tree's root."""
    os.makedirs(folder, exist_ok=True)
    for split, path in split_list_paths(folder).items():
        lines = [os.path.relpath(tree.files[i], tree.root).replace(os.sep, "/") for i in parts[split]]
        with atomic_output(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))


def read_split_list(path, tree):
    """Positions in `tree` of the files a saved list names; DataError naming the list and the first
    file that is no longer a checked image of the tree."""
    where = {os.path.relpath(p, tree.root).replace(os.sep, "/"): i for i, p in enumerate(tree.files)}
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the split list {path}: {exc}") from None
    missing = [n for n in names if n not in where]
    if missing:
        raise DataError(f"split list {path} names {len(missing)} file(s) that are not images of {tree.root} any "
                        f"more, e.g. {missing[0]}; restore them, or start a new run (another save_checkpoint_path)")
    return np.asarray([where[n] for n in names], np.int64)
