"""The repository's user cache folder, in one place, so that everything cached per user (compiled
kernels, compiled graphs, downloads) lands under the same root and honours ``$XDG_CACHE_HOME``;
and the rule every cache follows there: it deletes only what it made.

A cache marks each folder it creates with a :data:`MARKER` file (the folder appears under its name
only with the marker inside: it is made under a temporary name and renamed) and prunes or deletes
only marked folders. A cache root given by the user that already holds other things is never
used directly: the cache makes a marked subfolder of its own there (:func:`cache_root`)."""
import os
import shutil
import tempfile

__all__ = ["cache_dir", "MARKER", "is_marked", "make_folder", "cache_root"]

#: The file that marks a folder as made by one of this repository's caches.
MARKER = ".convmlp-cache"


def cache_dir(*parts) -> str:
    """The one home of the repository's user cache folder: ``$XDG_CACHE_HOME/convmlp_mindspore/<parts>``,
    or ``~/.cache/convmlp_mindspore/<parts>`` when ``XDG_CACHE_HOME`` is unset or empty. Returns the
    path only; creating the folder is left to the caller."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "convmlp_mindspore", *parts)


def is_marked(folder: str) -> bool:
    """Whether `folder` was made by one of this repository's caches (it holds :data:`MARKER`)."""
    return os.path.isdir(folder) and not os.path.islink(folder) and os.path.isfile(os.path.join(folder, MARKER))


def _mark(folder: str):
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        f.write("made by a cache of convmlp_mindspore; it deletes only folders holding this file\n")


def make_folder(parent: str, name: str) -> str:
    """``parent/name``, created with its marker when it does not exist (under a temporary name,
    then renamed, so that no process sees it unmarked). An existing folder is returned as it is:
    callers check :func:`is_marked` before they delete anything in it."""
    path = os.path.join(parent, name)
    if os.path.lexists(path):
        return path
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.new-", dir=parent)
    try:
        _mark(tmp)
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(path):   # else another process made it first
            raise
    return path


def _only_caches(root: str) -> bool:
    """Whether everything in `root` was made by a cache: marked folders and their lock files."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not (is_marked(path) or (name.endswith(".lock") and is_marked(path[:-len(".lock")]))):
            return False
    return True


def cache_root(root: str, own: str) -> str:
    """The folder a cache keeps its folders in: `root` itself when a cache made it (or it is missing,
    empty, or holds only folders a cache made: it is marked now), else the marked subfolder `own`
    of `root`, so that nothing a root already held is ever pruned. OSError when `own` exists there
    without a marker."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        make_folder(os.path.dirname(root), os.path.basename(root))
    if is_marked(root):
        return root
    if _only_caches(root):
        _mark(root)
        return root
    folder = make_folder(root, own)
    if not is_marked(folder):
        raise FileExistsError(f"{folder} exists and was not made by this cache")
    return folder
