"""The held-out validation split of one image tree (``val_fraction``) and the file lists a run
saves in its folder so that a resumed run, evl.py and infer.py see the same split: each split's
images relative to the tree's root, one escaped name a line (every name a file system allows reads
back exactly). Every problem is one ``error:`` line naming the list and the file.
"""
import os
import re

import numpy as np

from ..platform.errors import DataError
from ..platform.fileio import atomic_output
from .imagefolder import _bare, _relative

__all__ = ["SPLIT_LISTS", "split_tree", "split_list_paths", "write_split_lists", "read_split_list", "encode_name",
           "decode_name"]

#: The files a run with ``val_fraction`` saves in its folder: each split's images, one per line,
#: relative to the tree's root (``<class>/<file>``).
SPLIT_LISTS = {"train": "train_files.txt", "val": "val_files.txt"}


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


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}


def encode_name(name):
    """`name` (a path as ``os.fsdecode`` gives it) as one line of ASCII-safe UTF-8 text: a backslash,
    newline, carriage return and tab as ``\\\\ \\n \\r \\t``, other control characters as ``\\xHH``,
    and each byte that is not UTF-8 (a surrogate of ``surrogateescape``) as ``\\xHH`` with HH >= 80;
    spaces and every other character are kept. :func:`decode_name` reads it back exactly."""
    out = []
    for ch in name:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def decode_name(line):
    """The name :func:`encode_name` wrote as `line`; ValueError for an escape it never writes."""
    out, i = [], 0
    while i < len(line):
        ch = line[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        kind = line[i + 1:i + 2]
        if kind in _UNESCAPES:
            out.append(_UNESCAPES[kind])
            i += 2
        elif kind in ("x", "u") and re.fullmatch(r"[0-9a-f]{2}" if kind == "x" else r"[0-9a-f]{4}",
                                                 line[i + 2:i + (4 if kind == "x" else 6)]):
            width = 2 if kind == "x" else 4
            code = int(line[i + 2:i + 2 + width], 16)
            out.append(chr(0xDC00 + code if kind == "x" and code >= 0x80 else code))
            i += 2 + width
        else:
            raise ValueError(f"unknown escape {line[i:i + 2]!r} at character {i + 1}")
    return "".join(out)


def _relative_names(tree, index):
    """``<class>/<file>`` of the files at positions `index` of `tree`: :func:`_relative` of each, read
    straight from the :class:`FileList` when it holds the paths under the tree's root (no
    ``relpath`` per file: a resumed run's lists name every file of the tree)."""
    files = tree.files
    if files.prefix == os.path.join(tree.root, ""):
        return [files.relative(i).replace(os.sep, "/") for i in index]
    return [_relative(files[i], tree.root) for i in index]


def write_split_lists(folder, tree, parts):
    """Save each split's files (`parts`: split -> positions in `tree`), relative to the tree's root,
    one per line, each name escaped (:func:`encode_name`) so that every name a file system allows
    reads back exactly (a plain name is written as it is: lists written before escaping was
    introduced read the same, unless a name holds a backslash)."""
    os.makedirs(folder, exist_ok=True)
    for split, path in split_list_paths(folder).items():
        lines = [encode_name(name) for name in _relative_names(tree, parts[split])]
        with atomic_output(path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(line + "\n" for line in lines))


def _read_names(path):
    """The names a split list holds, one escaped name a line (:func:`decode_name`)."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    names = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            names.append(decode_name(line))
        except ValueError as exc:
            raise DataError(f"split list {_bare(path)} line {number}: {exc}; expected names written by "
                            "train.py (start a new run to write the lists again)") from None
    return names


def read_split_list(path, tree):
    """Positions in `tree` of the files a saved list names; DataError naming the list and the first
    file that is no longer a checked image of the tree."""
    where = {name: i for i, name in enumerate(_relative_names(tree, range(len(tree))))}
    try:
        names = _read_names(path)
    except OSError as exc:
        raise DataError(f"cannot read the split list {_bare(path)}: {exc.strerror}") from None
    missing = [n for n in names if n not in where]
    if missing:
        raise DataError(f"split list {_bare(path)} names {len(missing)} file(s) that are not images of "
                        f"{_bare(tree.root)} any more, e.g. {_bare(missing[0])}; restore them, or start a "
                        "new run (another save_checkpoint_path)")
    return np.asarray([where[n] for n in names], np.int64)
