"""Compiled-graph cache: MindSpore's compile cache, with one folder per setting so it is safe to leave
on. A folder's name hashes everything the compiled graphs depend on (versions, sources, kernels,
device, data sizes, every config key not in :data:`NOT_IN_GRAPH`); it is a hit only when its files
match their manifest, one process uses it at a time, and only folders the cache made are pruned.
Call :func:`open_graph_cache` once per process, after the model is built and before the first graph
to cache compiles. Why MindSpore's own cache needs this, and the rules: docs/architecture.md,
"Compiled graphs".
"""
import hashlib
import json
import os
import platform
import shutil
import sys

from model.cache import MARKER, cache_dir, cache_root, is_marked, make_folder

from .. import REPO_ROOT
from .cleanup import prune_folders, try_lock
from .errors import UserError
from .fileio import atomic_output, file_sha256

__all__ = ["open_graph_cache", "GraphCache", "graph_fingerprint", "cache_key", "default_root",
           "NOT_IN_GRAPH", "ENV_ROOT", "KEEP", "MANIFEST"]

#: Environment variable naming the cache root.
ENV_ROOT = "CONVMLP_GRAPH_CACHE"
#: Folders kept under the root (the least recently used beyond this are removed).
KEEP = 24
#: The file that makes a folder a hit: sizes and SHA-256 of every cached file.
MANIFEST = "manifest.json"
_KEY_FILE = "key.json"
_OWN_FILES = (MANIFEST, _KEY_FILE)
#: The subfolder used when the root holds things this cache did not make.
_OWN_SUBFOLDER = "convmlp_graph_cache"

#: Config keys that never reach a compiled graph (data paths and loading, augmentation done in the
#: data pipeline, where weights come from, logging, checkpoint files). Every other key is hashed.
#: ``device_target`` is replaced by the resolved device; the data sizes are passed separately.
NOT_IN_GRAPH = frozenset({
    "pretrained_ckpt", "checkpoint_path", "resume", "dataset_choose", "train_data_path",
    "val_data_path", "download", "demo", "num_parallel_workers", "mean", "std", "crop_scale",
    "crop_ratio", "interpolation", "hflip", "aa", "reprob", "smoothing", "mixup", "cutmix",
    "mixup_prob", "mixup_switch_prob", "save_checkpoint_path", "keep_checkpoint_max",
    "eval_interval", "log_interval", "device_target", "device_id", "run_modelarts", "graph_cache",
    "crop_pct", "val_fraction", "skip_bad_images", "use_ema",
})

_SOURCE_DIRS = ("model", "src")
_SOURCE_EXT = (".py", ".cc", ".h")
_MS_ENABLE, _MS_PATH = "MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH"
_process_folder = None   # the folder MindSpore was pointed at in this process (it reads it once)


def default_root():
    """``$CONVMLP_GRAPH_CACHE``, else ``$XDG_CACHE_HOME/convmlp_mindspore/graphs``, else
    ``~/.cache/convmlp_mindspore/graphs``."""
    if os.environ.get(ENV_ROOT):
        return os.path.abspath(os.path.expanduser(os.environ[ENV_ROOT]))
    return cache_dir("graphs")


# --------------------------------------------------------------------------------------------
# The key
# --------------------------------------------------------------------------------------------
def _source_files():
    """The repository's files a compiled graph can depend on, as absolute paths (sorted)."""
    files = {os.path.join(REPO_ROOT, n) for n in os.listdir(REPO_ROOT) if n.endswith(".py")}
    for sub in _SOURCE_DIRS:
        for folder, dirs, names in os.walk(os.path.join(REPO_ROOT, sub)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files.update(os.path.join(folder, n) for n in names if n.endswith(_SOURCE_EXT))
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main and os.path.isfile(main):
        files.add(os.path.abspath(main))
    return sorted(files)


def _sources_digest():
    digest = hashlib.sha256()
    for path in _source_files():
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, REPO_ROOT).encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def _kernel_libraries(cfg, device):
    """Paths of the C++ kernel libraries the model's Custom ops name (their folder is keyed by a
    hash of the sources, compiler and CPU), or None when the kernels are not applied to the network
    (the rule ``build_model`` follows: :func:`~src.platform.device.cpu_kernels_wanted`)."""
    from .device import cpu_kernels_wanted
    if not cpu_kernels_wanted(cfg, device):
        return None
    from model import cpu_kernels
    if not cpu_kernels.active():
        return None
    return cpu_kernels.built_libraries()   # the model's kernels, the optimiser's when built


def graph_fingerprint(cfg, purpose, device, rank=0, world=1, data=None):
    """Everything the graphs of a ``purpose`` process depend on, as a JSON-ready dict.

    `data`: the numbers of images the run sees, e.g. ``{"train": 50000, "val": 10000}`` (they fix
    the steps per epoch, hence the learning-rate array, and the size of a short first evaluation
    batch)."""
    import mindspore as ms
    config = {k: v for k, v in sorted(cfg.to_dict().items()) if k not in NOT_IN_GRAPH}
    return {
        "purpose": purpose,
        "mindspore": ms.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "repository": REPO_ROOT,
        "sources": _sources_digest(),
        "kernels": _kernel_libraries(cfg, device),
        "device": device,
        "world": int(world),
        "rank": int(rank),
        "data": dict(sorted((data or {}).items())),
        "config": config,
    }


def cache_key(fingerprint):
    """The folder name for a fingerprint: ``<purpose>-<20 hex digits>``."""
    text = json.dumps(fingerprint, sort_keys=True, default=repr)
    return f"{fingerprint['purpose']}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------
def _cached_files(folder):
    """``{relative path: absolute path}`` of MindSpore's files in `folder`."""
    out = {}
    for base, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(base, n)
            rel = os.path.relpath(path, folder)
            if rel not in _OWN_FILES and not n.startswith(".") and os.path.isfile(path):
                out[rel] = path
    return out


def _clear(folder):
    """Empty `folder` but for its marker (MindSpore writes its files read-only; the folder itself is
    writable). Only a marked folder is ever emptied."""
    if not is_marked(folder):
        raise FileExistsError(f"{folder} was not made by this cache")
    for name in os.listdir(folder):
        if name == MARKER:
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _check(folder):
    """``(state, why)``: ``("hit", None)`` when the manifest holds and every file matches it;
    ``("miss", None)`` without a manifest; ``("damaged", why)`` otherwise. Files the manifest does
    not list (written after it, by a run that stopped) are removed."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return "miss", None
    try:
        with open(path) as f:
            listed = json.load(f)["files"]
        if not isinstance(listed, dict) or not listed:
            raise ValueError("no files listed")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "damaged", f"{MANIFEST} unreadable: {exc}"
    present = _cached_files(folder)
    for rel, entry in sorted(listed.items()):
        file = present.get(rel)
        if file is None:
            return "damaged", f"{rel} is missing"
        if os.path.getsize(file) != entry.get("size"):
            return "damaged", f"{rel} has {os.path.getsize(file)} bytes, {entry.get('size')} expected"
        if file_sha256(file) != entry.get("sha256"):
            return "damaged", f"{rel} does not match its checksum"
    for rel in set(present) - set(listed):
        os.unlink(present[rel])
    return "hit", None


def _last_used(path):
    """When the cache folder `path` was last used (its manifest's time, else the folder's), or None
    for anything in the root that this cache did not make."""
    if not is_marked(path):
        return None
    manifest = os.path.join(path, MANIFEST)
    return os.path.getmtime(manifest if os.path.exists(manifest) else path)


class GraphCache:
    """The cache folder of one process: ``state`` is ``"hit"``, ``"miss"`` or ``"off"``."""

    def __init__(self, folder, state, logger, fingerprint=None, lock_fd=None):
        self.folder, self.state, self.logger = folder, state, logger
        self.fingerprint = fingerprint
        self._lock_fd = lock_fd
        self._committed = None   # {relative path: (size, mtime_ns)} of the last manifest

    @property
    def enabled(self):
        return self.state != "off"

    def close(self):
        """Release the folder's lock (it is released anyway when the process ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def commit(self):
        """Record the files now in the folder in the manifest, which makes the folder a hit for
        the next process. Call once the graphs compiled (train.py: after the compile and after
        each epoch, so the evaluation graph is included); repeated calls rewrite the manifest
        only when files changed. A failure to write switches the cache off with one warning."""
        if not self.enabled:
            return False
        try:
            files = _cached_files(self.folder)
            stamp = {rel: (os.path.getsize(p), os.stat(p).st_mtime_ns) for rel, p in files.items()}
            if not files or stamp == self._committed:
                return False
            manifest = {"files": {rel: {"size": os.path.getsize(p), "sha256": file_sha256(p)}
                                  for rel, p in sorted(files.items())}}
            for name, content in ((_KEY_FILE, self.fingerprint), (MANIFEST, manifest)):
                with atomic_output(os.path.join(self.folder, name), label="graph cache file") as tmp:
                    with open(tmp, "w") as f:
                        json.dump(content, f, indent=1, sort_keys=True, default=repr)
            self._committed = stamp
            return True
        except (OSError, UserError) as exc:
            self.logger.warning(f"graph cache: cannot write {self.folder} ({getattr(exc, 'strerror', None) or exc}); "
                                "continuing without it")
            self.state = "off"
            return False


def _off(why, logger):
    """An "off" cache; when this process already cached graphs, MindSpore stops caching."""
    if _process_folder is not None:
        os.environ[_MS_ENABLE] = "0"
    logger.info(f"graph cache: off ({why})")
    return GraphCache(None, "off", logger)


def open_graph_cache(cfg, purpose, logger, device, rank=0, world=1, data=None, root=None, keep=KEEP):
    """Point MindSpore's compile cache at this setting's folder and log ``graph cache: hit (...)``,
    ``miss (...)`` or ``off (why)``. Returns a :class:`GraphCache` (``commit()`` is a no-op when off).
    See the module docstring for what the folder's hash covers; ``data`` as in
    :func:`graph_fingerprint`. Never raises for a cache problem: the run compiles without it."""
    global _process_folder
    why_off = None
    if not getattr(cfg, "graph_cache", True):
        why_off = "graph_cache: false"
    elif cfg.mode != "graph":
        why_off = f"mode {cfg.mode}"
    elif _process_folder is not None:
        why_off = f"this process already cached its graphs in {_process_folder}"
    elif os.environ.get(_MS_ENABLE) or os.environ.get(_MS_PATH):
        why_off = f"{_MS_ENABLE} / {_MS_PATH} set in the environment: MindSpore's own cache as configured there"
    if why_off:
        return _off(why_off, logger)

    fingerprint = graph_fingerprint(cfg, purpose, device, rank, world, data)
    name = cache_key(fingerprint)
    folder = os.path.join(os.path.abspath(root or default_root()), name)
    lock_fd = None
    try:
        root = cache_root(root or default_root(), _OWN_SUBFOLDER)
        folder = make_folder(root, name)
        if not is_marked(folder):
            raise FileExistsError(f"{folder} was not made by this cache")
        lock_fd = try_lock(os.path.join(root, name + ".lock"), create=True)
        if lock_fd is None:
            return _off(f"{folder} is in use by another process", logger)
        state, why = _check(folder)
        if state == "damaged":
            logger.warning(f"graph cache: {folder} is damaged ({why}); cleared, compiling again")
            state = "miss"
        if state == "miss":
            _clear(folder)
        else:
            os.utime(os.path.join(folder, MANIFEST))   # most recently used
    except OSError as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        logger.warning(f"graph cache: off (cannot use {folder}: {getattr(exc, 'strerror', None) or exc})")
        return GraphCache(None, "off", logger)
    try:
        prune_folders(root, keep, name, _last_used)
    except OSError:
        pass   # another process pruning at the same time; the next run tries again
    os.environ[_MS_ENABLE] = "1"
    os.environ[_MS_PATH] = folder
    _process_folder = folder
    logger.info(f"graph cache: {state} ({folder})")
    cache = GraphCache(folder, state, logger, fingerprint, lock_fd)
    if state == "hit":
        cache._committed = {rel: (os.path.getsize(p), os.stat(p).st_mtime_ns)
                            for rel, p in _cached_files(folder).items()}
    return cache
