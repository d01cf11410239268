"""Training checkpoints: atomic writes, the ``last``/``best``/per-epoch files, and resume metadata.

Layout of ``save_checkpoint_path``::

    epoch_0003.ckpt   one per finished epoch (the newest ``keep_checkpoint_max`` are kept)
    last.ckpt         the latest state (an epoch end, or the point where Ctrl-C stopped the run)
    best.ckpt         the best validation top-1 so far
    config.yaml       the resolved configuration of the run

Every file holds the model weights (usable directly by evl.py / export.py / as a pretrained
checkpoint), the optimiser state (``adam_m.*``, ``adam_v.*``, ``global_step``) and the metadata of
:data:`META_KEYS`. A file is written under a temporary name in the same folder, flushed to disk
and then renamed, so a crash, a kill or a full disk never leaves a truncated file under a final
name and never damages the previous checkpoint (:func:`fileio.atomic_output`); the temporary
files of a killed run are removed when train.py next starts with the same folder
(:func:`fileio.remove_stale_temps`).
"""
import json
import os
import shutil
from typing import Dict, Optional

import mindspore as ms
import numpy as np

from ..config.strict_yaml import load_mapping
from ..platform.errors import CheckpointError
from ..platform.fileio import atomic_output

__all__ = ["META_KEYS", "EMA_PREFIX", "training_meta", "meta_class_names", "has_ema", "ema_weights", "save_atomic",
           "is_epoch_file", "save_training_state", "read_meta", "saved_config", "saved_config_source",
           "resume_path", "prune_epochs", "LAST", "BEST"]

LAST = "last.ckpt"
#: Name prefix of the model EMA's weights in a checkpoint (src.train.ema): ``ema.<parameter name>``.
EMA_PREFIX = "ema."
BEST = "best.ckpt"
#: Metadata stored beside the weights. ``epoch`` = finished epochs; ``step_in_epoch`` > 0 only for
#: a checkpoint written mid-epoch (Ctrl-C): resuming then skips that many batches of the epoch, and
#: ``epoch_losses`` (float32, one per step done in that epoch) makes the resumed run report the
#: epoch's mean loss over all its steps, as the uninterrupted run does. ``class_names``: the
#: training data's class names (a JSON list), so that evl.py and infer.py name the classes without
#: the data.
META_KEYS = ("epoch", "global_step", "step_in_epoch", "epoch_losses", "best_acc", "best_epoch", "arch",
             "num_classes", "image_size", "dataset", "config", "class_names")


def training_meta(cfg, epoch: int, global_step: int, step_in_epoch: int, best_acc: float, best_epoch: int,
                  epoch_losses=(), class_names=None) -> Dict:
    """What a training checkpoint records besides the weights and the optimiser state (exactly
    :data:`META_KEYS`; ``epoch_losses`` only mid-epoch): enough to resume, the run's config to
    rebuild the model, the class names."""
    losses = ms.Tensor(np.asarray(epoch_losses, np.float32)) if step_in_epoch and len(epoch_losses) else None
    meta = {"epoch": epoch, "global_step": global_step, "step_in_epoch": step_in_epoch, "epoch_losses": losses,
            "best_acc": best_acc, "best_epoch": best_epoch, "arch": cfg.arch, "num_classes": cfg.num_classes,
            "image_size": cfg.image_size, "dataset": cfg.dataset_choose, "config": cfg.to_yaml(),
            "class_names": None if class_names is None else json.dumps(list(class_names), ensure_ascii=False)}
    assert tuple(meta) == META_KEYS, "training_meta and META_KEYS disagree"
    return meta


def meta_class_names(meta: Dict) -> Optional[list]:
    """The class names a checkpoint recorded (``meta["class_names"]``), or None."""
    text = meta.get("class_names")
    if not text:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def save_atomic(save_obj, path: str, append_dict: Optional[dict] = None, mode: Optional[int] = None,
                label: str = "output"):
    """``mindspore.save_checkpoint`` to ``path`` (any file name) through :func:`fileio.atomic_output`
    (then ``chmod`` to `mode` when given: MindSpore makes the file read-only for its owner); errors
    name it as `label` (the option that gave it).

    Every checkpoint carries MindSpore's CRC-32 of its whole content (``crc_check=True``), which
    :func:`model.weights.read_checkpoint` verifies: MindSpore computes it while writing (no second
    pass), it covers every byte (names, shapes, metadata, tensors), and MindSpore's own
    ``load_checkpoint`` still reads such a file. On any failure (full disk, permissions) the
    temporary file is removed, ``path`` keeps its old content, and :class:`fileio.OutputError`
    names the file and the cause.
    """
    with atomic_output(path, failures=(Exception,), label=label, suffix=".ckpt") as tmp:
        try:
            ms.save_checkpoint(save_obj, tmp, append_dict=append_dict, crc_check=True)
            if mode is not None:
                os.chmod(tmp, mode)
        finally:
            # MindSpore writes ``tmp`` through its own intermediate ``<tmp without .ckpt>.tmp``
            intermediate = os.path.splitext(tmp)[0] + ".tmp"
            if os.path.lexists(intermediate):
                try:
                    os.remove(intermediate)
                except OSError:
                    pass


def _link_or_copy(src: str, dst: str):
    """Make ``dst`` hold ``src``'s content atomically (hard link when possible, else copy)."""
    with atomic_output(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def save_training_state(train_cell, save_dir: str, meta: Dict, epoch_file: bool = True,
                        is_best: bool = False, keep: int = 5) -> str:
    """Write the state of ``train_cell`` (weights + optimiser) with ``meta``.

    With ``epoch_file`` the state goes to ``epoch_{E:04d}.ckpt`` and ``last.ckpt`` (and
    ``best.ckpt`` when ``is_best``) point to the same bytes; otherwise only ``last.ckpt`` is
    written (mid-epoch interrupt). Returns the path written first.
    """
    os.makedirs(save_dir, exist_ok=True)
    # ``global_step`` is the optimiser's own parameter, saved with the cell: not appended again.
    append = {k: meta[k] for k in META_KEYS
              if k in meta and meta[k] is not None and k != "global_step"}
    last = os.path.join(save_dir, LAST)
    if not epoch_file:
        save_atomic(train_cell, last, append)
        return last
    path = os.path.join(save_dir, f"epoch_{int(meta['epoch']):04d}.ckpt")
    save_atomic(train_cell, path, append)
    _link_or_copy(path, last)
    if is_best:
        _link_or_copy(path, os.path.join(save_dir, BEST))
    prune_epochs(save_dir, keep)
    return path


def is_epoch_file(name: str) -> bool:
    """Whether `name` is one of the per-epoch checkpoints of a run folder (``epoch_0003.ckpt``)."""
    return name.startswith("epoch_") and name.endswith(".ckpt")


def prune_epochs(save_dir: str, keep: int):
    """Delete all but the newest ``keep`` per-epoch files (``last``/``best`` are separate links)."""
    files = sorted(f for f in os.listdir(save_dir) if is_epoch_file(f))
    for f in files[:-keep] if keep > 0 else files:
        try:
            os.remove(os.path.join(save_dir, f))
        except OSError:
            pass


def read_meta(params: Dict) -> Dict:
    """The metadata of a loaded checkpoint as plain Python values (``epoch_losses`` a list;
    missing keys absent)."""
    meta = {}
    for k in META_KEYS:
        if k in params:
            v = params[k]
            meta[k] = v if isinstance(v, str) else v.asnumpy().tolist() if k == "epoch_losses" else v.asnumpy().item()
    return meta


def saved_config_source(path: str) -> str:
    """How messages name the saved config of the checkpoint at `path`."""
    return f"checkpoint '{path}': its saved config (meta 'config')"


def saved_config(meta: Dict, path: str) -> Optional[Dict]:
    """The run config a train.py checkpoint recorded (``meta["config"]``), or None when it has
    none. Parsed like a config file (a mapping, no key given twice); CheckpointError naming
    `path` otherwise. The one reader of a checkpoint's saved config."""
    if "config" not in meta:
        return None
    return load_mapping(meta["config"], saved_config_source(path), error=CheckpointError)


def resume_path(resume: Optional[str], save_dir: str) -> Optional[str]:
    """``resume: auto`` -> ``{save_dir}/last.ckpt`` if it exists (else a fresh start); a path ->
    that file, which must exist."""
    if resume is None:
        return None
    if resume == "auto":
        last = os.path.join(save_dir, LAST)
        return last if os.path.isfile(last) else None
    if not os.path.isfile(resume):
        raise CheckpointError(f"resume: checkpoint '{resume}' does not exist")
    return resume


def has_ema(params):
    """Whether a checkpoint's entries hold EMA weights."""
    return any(k.startswith(EMA_PREFIX) for k in params)


def ema_weights(params, path):
    """The EMA weights of a checkpoint under the model's own names (for evaluation, export, inference
    and conversion), the non-tensor entries (metadata) kept; CheckpointError when it has none."""
    if not has_ema(params):
        raise CheckpointError(f"'{path}' holds no EMA weights (ema.*): it was written without model_ema; "
                              "leave out use_ema (or --ema) to use its weights")
    out = {k[len(EMA_PREFIX):]: v for k, v in params.items() if k.startswith(EMA_PREFIX)}
    out.update({k: v for k, v in params.items() if isinstance(v, str)})
    return out
