"""The checkpoint file of this repository: :class:`Checkpoint` (a file read back: its entries and what
they describe), :class:`CheckpointMeta` (the typed metadata train.py records beside the weights) and
the writers (:func:`save_atomic`, :func:`save_training_state`). Every other module reads and writes
checkpoints through this one."""
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import mindspore as ms
import numpy as np

from model.weights import read_checkpoint_entries

from ..config.strict_yaml import load_mapping
from ..platform.errors import CheckpointError
from ..platform.fileio import atomic_output

__all__ = ["Checkpoint", "CheckpointMeta", "META_KEYS", "EMA_PREFIX", "LAST", "BEST", "save_atomic",
           "save_training_state", "is_epoch_file", "prune_epochs", "resume_path"]

LAST = "last.ckpt"
BEST = "best.ckpt"
#: Name prefix of the model EMA's weights in a checkpoint (src.train.ema): ``ema.<parameter name>``.
EMA_PREFIX = "ema."
#: The metadata entries beside the weights, in the order they are written; the fields of
#: :class:`CheckpointMeta`. A file written before ``epoch_losses`` and ``class_names`` existed lacks
#: them (and a pth2ckpt.py checkpoint has none): what a file lacks reads as the field's default.
META_KEYS = ("epoch", "global_step", "step_in_epoch", "epoch_losses", "best_acc", "best_epoch", "arch",
             "num_classes", "image_size", "dataset", "config", "class_names")


@dataclass
class CheckpointMeta:
    """What a train.py checkpoint records besides the weights and the optimiser state.

    Where training resumes: ``epoch`` finished epochs, ``global_step`` optimiser steps, and for a
    checkpoint written mid-epoch (Ctrl-C) ``step_in_epoch`` > 0 steps of the next epoch with their
    losses ``epoch_losses`` (so that the resumed run reports the epoch's mean loss over all its
    steps); ``best_acc`` / ``best_epoch``, the best validation top-1 so far. What the weights are:
    ``arch``, ``num_classes``, ``image_size``, ``dataset`` and the run's resolved ``config`` (YAML
    text: the topology, the recipe, the input's preparation); ``class_names``, the training data's
    classes, so that evl.py and infer.py name them without the data. None where the file does not
    record it."""
    epoch: Optional[int] = None
    global_step: Optional[int] = None
    step_in_epoch: int = 0
    epoch_losses: List[float] = field(default_factory=list)
    best_acc: Optional[float] = None
    best_epoch: Optional[int] = None
    arch: Optional[str] = None
    num_classes: Optional[int] = None
    image_size: Optional[int] = None
    dataset: Optional[str] = None
    config: Optional[str] = None
    class_names: Optional[List[str]] = None

    @classmethod
    def of_run(cls, cfg, epoch: int, global_step: int, best_acc: float, best_epoch: int, step_in_epoch: int = 0,
               epoch_losses=(), class_names=None) -> "CheckpointMeta":
        """The metadata of a checkpoint of the run of `cfg` written at (`epoch`, `step_in_epoch`)."""
        return cls(epoch=epoch, global_step=global_step, step_in_epoch=step_in_epoch,
                   epoch_losses=[float(x) for x in epoch_losses] if step_in_epoch else [],
                   best_acc=best_acc, best_epoch=best_epoch, arch=cfg.arch, num_classes=cfg.num_classes,
                   image_size=cfg.image_size, dataset=cfg.dataset_choose, config=cfg.to_yaml(),
                   class_names=None if class_names is None else list(class_names))

    @classmethod
    def from_entries(cls, entries: Dict) -> "CheckpointMeta":
        """The metadata among a checkpoint's entries (name -> Parameter or string)."""
        found = {}
        for key in META_KEYS:
            value = entries.get(key)
            if value is None:
                continue
            if isinstance(value, str):
                found[key] = value
            elif key == "epoch_losses":
                found[key] = value.asnumpy().tolist()
            else:
                found[key] = value.asnumpy().item()
        found["class_names"] = _class_names(found.get("class_names"))
        return cls(**found)

    def to_entries(self) -> Dict[str, Any]:
        """The entries that record this metadata (``append_dict`` of ``mindspore.save_checkpoint``):
        what is None is left out, ``epoch_losses`` only mid-epoch, ``class_names`` as a JSON list;
        ``global_step`` is the optimiser's own parameter, saved with its cell."""
        values = {key: getattr(self, key) for key in META_KEYS if key != "global_step"}
        values["epoch_losses"] = (ms.Tensor(np.asarray(self.epoch_losses, np.float32))
                                  if self.step_in_epoch and self.epoch_losses else None)
        if self.class_names is not None:
            values["class_names"] = json.dumps(list(self.class_names), ensure_ascii=False)
        return {key: value for key, value in values.items() if value is not None}

    def saved_config(self, path: str) -> Optional[Dict]:
        """The run config this checkpoint (at `path`) recorded as a mapping, or None when it has none.
        Parsed like a config file (a mapping, no key given twice); CheckpointError naming `path`
        otherwise."""
        if self.config is None:
            return None
        return load_mapping(self.config, saved_config_source(path), error=CheckpointError)


def saved_config_source(path: str) -> str:
    """How messages name the saved config of the checkpoint at `path`."""
    return f"checkpoint '{path}': its saved config (meta 'config')"


def _class_names(text) -> Optional[List[str]]:
    """The class names of a ``class_names`` entry (a JSON list), or None."""
    if not text:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


@dataclass
class Checkpoint:
    """A checkpoint file read back: every entry (``entries``: the model's weights, the optimiser
    state ``adam_m.*`` / ``adam_v.*`` / ``global_step``, the EMA's ``ema.*``, the metadata), the
    metadata as :class:`CheckpointMeta`, and whether MindSpore's CRC-32 of the file was there and
    matched (``checksum_verified``; a damaged file is refused while reading)."""
    path: str
    entries: Dict[str, Any]
    meta: CheckpointMeta
    checksum_verified: bool

    @classmethod
    def read(cls, path: str) -> "Checkpoint":
        """Read the checkpoint at `path` (:func:`model.weights.read_checkpoint_entries`: one
        CheckpointError when it is missing, damaged, truncated, not a checkpoint or not finite)."""
        entries, verified = read_checkpoint_entries(path)
        return cls(os.fspath(path), entries, CheckpointMeta.from_entries(entries), verified)

    @property
    def has_ema(self) -> bool:
        """Whether the file holds the weights of a model EMA (``ema.*``)."""
        return any(k.startswith(EMA_PREFIX) for k in self.entries)

    def model_entries(self, use_ema: bool = False) -> Dict[str, Any]:
        """The entries a model is loaded from: all of them, or with `use_ema` the EMA's weights under
        the model's own names with the metadata (strings) kept; CheckpointError when the file
        holds no EMA weights."""
        if not use_ema:
            return self.entries
        if not self.has_ema:
            raise CheckpointError(f"'{self.path}' holds no EMA weights (ema.*): it was written without model_ema; "
                                  "leave out use_ema (or --ema) to use its weights")
        out = {k[len(EMA_PREFIX):]: v for k, v in self.entries.items() if k.startswith(EMA_PREFIX)}
        out.update({k: v for k, v in self.entries.items() if isinstance(v, str)})
        return out

    def tensors(self) -> Dict[str, Any]:
        """Every entry that is not text (what ``mindspore.load_param_into_net`` takes)."""
        return {k: v for k, v in self.entries.items() if not isinstance(v, str)}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def save_atomic(save_obj, path: str, append_dict: Optional[dict] = None, mode: Optional[int] = None,
                label: str = "output"):
    """``mindspore.save_checkpoint`` to ``path`` (any file name) through :func:`fileio.atomic_output`
    (then ``chmod`` to `mode` when given: MindSpore makes the file read-only for its owner); errors
    name it as `label` (the option that gave it).

    Every checkpoint carries MindSpore's CRC-32 of its whole content (``crc_check=True``), which
    :meth:`Checkpoint.read` verifies: MindSpore computes it while writing (no second pass), it
    covers every byte (names, shapes, metadata, tensors), and MindSpore's own ``load_checkpoint``
    still reads such a file. On any failure (full disk, permissions) the temporary file is removed,
    ``path`` keeps its old content, and :class:`fileio.OutputError` names the file and the cause.
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


def save_training_state(train_cell, save_dir: str, meta: CheckpointMeta, epoch_file: bool = True,
                        is_best: bool = False, epochs_kept: int = 5) -> str:
    """Write the state of ``train_cell`` (weights + optimiser) with `meta` into the run folder.

    With ``epoch_file`` the state goes to ``epoch_{E:04d}.ckpt`` and ``last.ckpt`` (and
    ``best.ckpt`` when ``is_best``) point to the same bytes, and only the newest `epochs_kept`
    per-epoch files stay; otherwise only ``last.ckpt`` is written (mid-epoch interrupt). Returns the
    path written first.
    """
    os.makedirs(save_dir, exist_ok=True)
    entries = meta.to_entries()
    last = os.path.join(save_dir, LAST)
    if not epoch_file:
        save_atomic(train_cell, last, entries)
        return last
    path = os.path.join(save_dir, f"epoch_{int(meta.epoch):04d}.ckpt")
    save_atomic(train_cell, path, entries)
    _link_or_copy(path, last)
    if is_best:
        _link_or_copy(path, os.path.join(save_dir, BEST))
    prune_epochs(save_dir, epochs_kept)
    return path


def is_epoch_file(name: str) -> bool:
    """Whether `name` is one of the per-epoch checkpoints of a run folder (``epoch_0003.ckpt``)."""
    return name.startswith("epoch_") and name.endswith(".ckpt")


def prune_epochs(save_dir: str, epochs_kept: int):
    """Delete all but the newest `epochs_kept` per-epoch files (``last``/``best`` are separate links)."""
    files = sorted(f for f in os.listdir(save_dir) if is_epoch_file(f))
    for f in files[:-epochs_kept] if epochs_kept > 0 else files:
        try:
            os.remove(os.path.join(save_dir, f))
        except OSError:
            pass


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
