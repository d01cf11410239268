"""Who may write a training run's folder (``save_checkpoint_path``).

* One process at a time: :func:`hold_run_folder` takes an exclusive lock on ``.train.lock`` in the
  folder for the whole run (rank 0 only under msrun) and refuses a second run with one line naming
  the process that holds it. The lock is a POSIX record lock (``fcntl.lockf``): the kernel releases
  it when the process dies, even by ``kill -9``, so a killed run never blocks the next one, and it
  is not inherited by forked children (data-pipeline workers), which may outlive a killed trainer.
  The lock file is removed when the run ends; one left by a killed run is simply taken over.
* A fresh run never replaces another run: :func:`check_fresh_start` refuses a folder holding a run
  (``last.ckpt``) unless ``--resume`` continues it, or unless both the new run and the one in the
  folder are demo runs (``demo: true`` in the folder's ``config.yaml``, or in ``last.ckpt``'s
  saved config); the old demo run's files are then deleted before the new one starts.
* The run's outputs are not its inputs: :func:`check_run_inputs` refuses a run folder whose files
  (checkpoints, metrics, log) are the pretrained checkpoint or data files being read.
"""
import atexit
import fcntl
import os
import time

from ..checkpoint.checkpoint import BEST, LAST, Checkpoint, is_epoch_file, resume_path
from ..config.strict_yaml import load_mapping
from ..platform.errors import ConfigError
from ..platform.fileio import check_name_length, check_not_input
from .metrics import MetricsLog

__all__ = ["LOCK_NAME", "LOG_FILE", "CONFIG_FILE", "RUN_FILES", "RunFolderBusy", "claim_run_folder", "hold_run_folder",
           "check_fresh_start", "check_run_inputs", "run_was_demo"]

LOCK_NAME = ".train.lock"
#: The run's log and its resolved config, in the run folder.
LOG_FILE, CONFIG_FILE = "train.log", "config.yaml"
#: The files train.py writes in a run folder, besides ``epoch_NNNN.ckpt``.
RUN_FILES = (LAST, BEST, CONFIG_FILE, MetricsLog.CSV, MetricsLog.PNG, LOG_FILE)

_held = {}   # real path of a held folder -> open descriptor of its lock file (kept for the process)


class RunFolderBusy(ConfigError):
    """Another process is writing the run folder."""


def _holder_pid(path: str) -> str:
    """The process id written in the lock file (retried briefly: the holder writes it just after
    taking the lock)."""
    for _ in range(20):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.05)
    return "unknown"


def hold_run_folder(folder: str) -> str:
    """Lock `folder` for this process until it exits; returns the lock file's path.

    Raises :class:`RunFolderBusy` when another live process holds it."""
    os.makedirs(folder, exist_ok=True)
    real = os.path.realpath(folder)
    path = os.path.join(folder, LOCK_NAME)
    if real in _held:
        return path
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunFolderBusy(
                f"save_checkpoint_path {folder} is in use by another train.py run (process "
                f"{_holder_pid(path)}, lock file {path}); wait for it to finish, or give another "
                "save_checkpoint_path (nothing was written)") from None
        # The previous holder removes the file when it ends: a lock on a file no longer in the
        # folder protects nothing, so take the current one.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (mine.st_dev, mine.st_ino) != (current.st_dev, current.st_ino):
            os.close(fd)
            continue
        break
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:   # e.g. a full disk: the lock holds without the process id in it
        pass
    _held[real] = fd
    atexit.register(_release, real, path)
    return path


def _release(real: str, path: str):
    fd = _held.pop(real, None)
    if fd is None:
        return
    try:
        os.remove(path)   # while still locked, so no other process holds a removed file
    except OSError:
        pass
    os.close(fd)


def _saved_config(folder: str):
    """The config of the run in `folder`: its ``config.yaml``, else the one saved in ``last.ckpt``
    (a dict), or None when neither can be read (both parsed like a config file)."""
    try:
        with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
            return load_mapping(f.read(), CONFIG_FILE)
    except (OSError, UnicodeDecodeError, ConfigError):
        pass
    try:
        path = os.path.join(folder, LAST)
        return Checkpoint.read(path).meta.saved_config(path)
    except Exception:
        return None


def run_was_demo(folder: str) -> bool:
    """Whether the run in `folder` recorded ``demo: true`` in its saved config."""
    saved = _saved_config(folder)
    return bool(saved) and saved.get("demo") is True


def check_fresh_start(folder: str, resume, demo: bool, logger, owner: bool = True):
    """A run that does not resume must not replace the run in `folder` (``last.ckpt``), except a
    demo run replacing a demo run, whose checkpoints and metrics are then deleted. Under msrun
    every rank refuses a non-demo case; only the `owner` (rank 0, holding the lock) looks at and
    deletes a previous demo run."""
    previous = os.path.join(folder, LAST)
    if resume is not None or not os.path.isfile(previous):
        return
    if not demo:
        raise ConfigError(f"save_checkpoint_path {folder} already holds a run ({previous}); "
                          "continue it with --resume auto, or give another save_checkpoint_path "
                          "(nothing was overwritten)")
    if not owner:
        return
    if not run_was_demo(folder):
        raise ConfigError(f"save_checkpoint_path {folder} holds a run that is not a demo run "
                          f"({os.path.join(folder, CONFIG_FILE)} does not say demo: true); --demo replaces "
                          "only a previous demo run: give another --save_checkpoint_path, or continue that "
                          "run with --resume auto (nothing was overwritten)")
    for name in os.listdir(folder):
        if is_epoch_file(name) or (name in RUN_FILES and name != LOG_FILE):
            os.remove(os.path.join(folder, name))
    logger.warning(f"demo: starting over in {folder} (the previous demo run is replaced)")


def check_run_inputs(folder: str, pretrained=None, data_folders=()):
    """Refuse a run folder whose output files are files the run reads: the pretrained checkpoint or
    a data file (same path, symbolic or hard link)."""
    inputs = [("pretrained_ckpt", pretrained)] if pretrained else []
    for data in dict.fromkeys(d for d in data_folders if d):
        try:
            names = sorted(os.listdir(data))
        except OSError:
            continue   # the data checks name a missing folder
        inputs += [("data file", os.path.join(data, n)) for n in names
                   if os.path.isfile(os.path.join(data, n))]
    try:
        outputs = [n for n in os.listdir(folder) if is_epoch_file(n)]
    except OSError:
        outputs = []
    for name in list(RUN_FILES) + outputs:
        check_not_input(os.path.join(folder, name), *inputs, label="run file")


def claim_run_folder(cfg) -> str:
    """train.py (rank 0), before it writes anything: lock ``cfg.save_checkpoint_path`` for this
    process (:func:`hold_run_folder`) and refuse it when its files are the run's inputs (the
    pretrained checkpoint, unless the run resumes, and the data files). Returns the lock file."""
    folder = cfg.save_checkpoint_path
    check_name_length(folder, "save_checkpoint_path")
    lock = hold_run_folder(folder)
    check_run_inputs(folder, data_folders=(cfg.train_data_path, cfg.val_data_path),
                     pretrained=None if resume_path(cfg.resume, folder) else cfg.pretrained_ckpt)
    return lock
