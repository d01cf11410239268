"""Huawei ModelArts: the dataset from OBS to the node before training, the outputs back after.

A ModelArts training job runs ``train.py`` in a fresh container and hands it two OBS paths, as in
the MindSpore model zoo and mindcv: ``data_url`` (the dataset) and ``train_url`` (where the job's
results must end up). With ``run_modelarts: true``:

* :func:`prepare_data` copies ``data_url`` to ``modelarts_data_path`` (default ``/cache/data``)
  with ``moxing.file.copy_parallel`` and points ``train_data_path`` / ``val_data_path`` at the
  dataset inside it: the CIFAR folder of ``dataset_choose`` (``cifar-10-batches-bin`` /
  ``cifar-100-binary``) when the copy holds one, else the copied folder itself when it holds the
  ``.bin`` files directly. On each machine only local rank 0 copies; the other local ranks wait for
  its completion marker (``.convmlp_copy.json`` in the local folder), which also lets a later run
  on the same machine reuse a finished copy of the same ``data_url``.
* :func:`sync_outputs` copies the run's outputs in ``save_checkpoint_path`` (checkpoints,
  ``train.log``, ``metrics.csv``, ``curves.png``, ``config.yaml``: :func:`output_files`) to
  ``train_url``; global rank 0 only (the only rank that writes outputs). Nothing else of the folder
  goes: not the run's lock file, nor temporary files of a write in progress, nor files of the
  user's. The outputs are linked (copied where links cannot be made) into a staging folder that
  is copied as a whole. train.py calls it after every saved epoch, after the checkpoint of an
  interrupted run and at the end. The copy adds and replaces files in ``train_url``; it deletes
  nothing there.

Both do nothing when ``run_modelarts`` is false. A failed copy is a :class:`ModelArtsError`
naming the URL (one line via ``run_cli``); a failed upload of one epoch's outputs is a warning
(the next epoch copies everything again), the final one is an error.
"""
import json
import os
import shutil
import tempfile
import time

from ..checkpoint.checkpoint import is_epoch_file
from ..data.catalog import FOLDERS, data_format
from ..platform.errors import DataError, UserError, first_line
from ..platform.fileio import atomic_output
from .run_folder import RUN_FILES

__all__ = ["ModelArtsError", "prepare_data", "sync_outputs", "output_files", "find_dataset_folder", "local_rank",
           "MARKER", "WAIT_TIMEOUT_S"]

#: Completion marker written by local rank 0 into the local data folder once the copy is complete.
MARKER = ".convmlp_copy.json"
#: How long the other local ranks wait for local rank 0's copy before giving up.
WAIT_TIMEOUT_S = 3600.0
_POLL_S = 0.5


class ModelArtsError(UserError):
    """A copy between OBS (``data_url`` / ``train_url``) and the node failed."""


def _copy_parallel(src, dst):
    """``moxing.file.copy_parallel(src, dst)`` (OBS or local paths; folders are copied recursively)."""
    import moxing as mox  # the ModelArts SDK; config validation checked that it is installed
    mox.file.copy_parallel(src_url=src, dst_url=dst)


def local_rank(cfg, rank):
    """This process's rank on its machine: 0 for a single-process run, else ``LOCAL_RANK`` or
    ``DEVICE_ID`` (msrun sets it to the local rank), else the global `rank`."""
    if not cfg.is_distributed:
        return 0
    for name in ("LOCAL_RANK", "DEVICE_ID"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return int(rank)


def find_dataset_folder(local_root, dataset, data_url):
    """The dataset folder inside the copy of `data_url` at `local_root`: the CIFAR folder of
    `dataset` when present, else `local_root` itself when it holds ``.bin`` files. DataError else."""
    named = os.path.join(local_root, FOLDERS[dataset])
    if os.path.isdir(named):
        return named
    names = sorted(n for n in os.listdir(local_root) if n != MARKER)
    if any(n.endswith(".bin") and os.path.isfile(os.path.join(local_root, n)) for n in names):
        return local_root
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "nothing"
    raise DataError(f"data_url {data_url} (copied to {local_root}) holds neither a {FOLDERS[dataset]}/ folder "
                    f"nor .bin files (found: {shown}); expected data_url to be the {dataset} binary folder "
                    "or the folder above it")


def _read_marker(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), os.path.getmtime(path)
    except (OSError, ValueError):
        return None, None


def _write_marker(path, content):
    with atomic_output(path, label="copy marker") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f)


def _copy_data(cfg, logger, local_root, marker):
    """Local rank 0: copy data_url unless a finished copy of it is there; write the marker."""
    old, _ = _read_marker(marker)
    if old and old.get("data_url") == cfg.data_url and old.get("ok"):
        logger.info(f"ModelArts: data_url {cfg.data_url} is already copied to {local_root} "
                    f"({MARKER}); delete that folder to copy it again")
        return old["dataset_path"]
    if os.path.exists(marker):
        os.remove(marker)
    os.makedirs(local_root, exist_ok=True)
    logger.info(f"ModelArts: copying data_url {cfg.data_url} to {local_root}")
    t0 = time.time()
    try:
        _copy_parallel(cfg.data_url, local_root)
        folder = find_dataset_folder(local_root, cfg.dataset_choose, cfg.data_url)
    except Exception as exc:  # the SDK raises various types; every one ends the job the same way
        error = str(exc) if isinstance(exc, UserError) else \
            f"cannot copy data_url {cfg.data_url} to {local_root}: {first_line(exc)}"
        _write_marker(marker, {"data_url": cfg.data_url, "ok": False, "error": error})
        raise (exc if isinstance(exc, UserError) else ModelArtsError(error)) from None
    _write_marker(marker, {"data_url": cfg.data_url, "ok": True, "dataset_path": folder})
    logger.info(f"ModelArts: copied data_url in {time.time() - t0:.1f}s")
    return folder


def _wait_for_copy(cfg, local_root, marker, me):
    """Other local ranks: wait until local rank 0's marker names this data_url."""
    started = time.time()
    while True:
        content, mtime = _read_marker(marker)
        if content and content.get("data_url") == cfg.data_url:
            if content.get("ok"):
                return content["dataset_path"]
            if mtime is not None and mtime >= started - 1.0:   # a failure of this run, not an old one
                raise ModelArtsError(content.get("error") or f"local rank 0 could not copy data_url {cfg.data_url}")
        if time.time() - started > WAIT_TIMEOUT_S:
            raise ModelArtsError(f"local rank {me} waited {WAIT_TIMEOUT_S:.0f}s for local rank 0 to copy data_url "
                                 f"{cfg.data_url} to {local_root} (marker {marker}); see local rank 0's log")
        time.sleep(_POLL_S)


def prepare_data(cfg, logger, rank=0, local_root=None):
    """With ``run_modelarts``: the dataset of ``data_url`` on this machine, and ``cfg``'s data paths
    pointing at it (see the module doc). `local_root` defaults to ``cfg.modelarts_data_path``.
    Returns the dataset folder, or None when ``run_modelarts`` is off."""
    if not cfg.run_modelarts:
        return None
    if data_format(cfg.dataset_choose) != "cifar":
        raise ModelArtsError(f"run_modelarts copies the CIFAR binary folder of data_url; dataset_choose "
                             f"{cfg.dataset_choose} (an image tree) is not supported there yet: use cifar10 or "
                             "cifar100, or copy the tree yourself and set train_data_path / val_data_path")
    local_root = os.path.abspath(local_root or cfg.modelarts_data_path)
    marker = os.path.join(local_root, MARKER)
    me = local_rank(cfg, rank)
    if me == 0:
        folder = _copy_data(cfg, logger, local_root, marker)
    else:
        folder = _wait_for_copy(cfg, local_root, marker, me)
    cfg.train_data_path = folder
    cfg.val_data_path = folder
    logger.info(f"ModelArts: train_data_path and val_data_path = {folder}")
    return folder


def output_files(folder):
    """The names of the run's outputs in `folder` (:data:`run_folder.RUN_FILES` and the per-epoch
    checkpoints), sorted; nothing else that the folder holds."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if (n in RUN_FILES or is_epoch_file(n))
                  and os.path.isfile(os.path.join(folder, n)))


def _stage(folder, names):
    """A temporary folder beside the run's files holding `names` of `folder` (hard links; copies
    where the file system has none)."""
    stage = tempfile.mkdtemp(prefix=".upload-", dir=folder)
    for name in names:
        try:
            os.link(os.path.join(folder, name), os.path.join(stage, name))
        except OSError:
            shutil.copy2(os.path.join(folder, name), os.path.join(stage, name))
    return stage


def sync_outputs(cfg, logger, rank=0, final=True):
    """With ``run_modelarts``, on rank 0: copy the run's outputs (:func:`output_files`) of
    ``save_checkpoint_path`` to ``train_url``.

    A failure raises :class:`ModelArtsError` naming ``train_url``; with ``final=False`` (after one
    epoch of several) it is logged as a warning instead, and the next call copies everything again.
    Returns True when the outputs were copied."""
    if not cfg.run_modelarts or rank != 0:
        return False
    src = cfg.save_checkpoint_path
    stage = None
    try:
        stage = _stage(src, output_files(src))
        _copy_parallel(stage, cfg.train_url)
    except Exception as exc:
        msg = f"cannot copy the outputs {src} to train_url {cfg.train_url}: {first_line(exc)}"
        if final:
            raise ModelArtsError(msg) from None
        logger.warning(f"ModelArts: {msg}; the next epoch copies them again")
        return False
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    logger.info(f"ModelArts: outputs copied to train_url {cfg.train_url}")
    return True
