"""Input pipelines on MindSpore's dataset engine: the validated records of a split (the decoded
arrays of a CIFAR binary folder, or the checked files of an image tree, :mod:`.imagefolder`), the
batched train pipeline (augmentation, mixup/cutmix, shuffled and sharded), the evaluation pipeline
and the class names. Image files are read in ``num_parallel_workers`` threads of the source, in
this process (no worker processes, no copy between processes), as file bytes that the engine's C++
``vision.Decode`` decodes in the map's threads to the pixels of :func:`.images.read_image`, the rule
infer.py decodes with (:mod:`.encoded`: a file that decoder would read otherwise is decoded by
read_image itself).

Train (each step switchable in the config; a step that is off is not in the pipeline):

1. RandomResizedCrop to ``image_size`` (``crop_scale`` [0.8, 1], ``crop_ratio`` [3/4, 4/3],
   ``interpolation`` bicubic); also at ``image_size: 32`` (crop, then back to 32 px).
   ``crop_scale: [1, 1]`` turns it off (plain resize to ``image_size``, a no-op at 32).
2. Horizontal flip with probability ``hflip``.
3. RandAugment ``aa`` on uint8 HWC (see :func:`src.data.randaugment.rand_augment_ops`).
4. Normalize with ``mean``/``std`` (per dataset), HWC -> CHW, float32.
5. Random erasing with probability ``reprob`` (timm 'pixel' mode: one box, area 2%-33%, log-uniform
   aspect 0.3-3.3, filled with standard-normal noise), per image.
6. Per batch: one-hot labels with ``smoothing``, then mixup (``mixup`` alpha) or cutmix (``cutmix``
   alpha) with probability ``mixup_prob``, cutmix chosen with ``mixup_switch_prob`` (timm ``Mixup``,
   mode 'batch', cutmix lambda corrected to the box area).

Steps 5 and 6 run in the batch's ``per_batch_map`` with a NumPy generator seeded from
(``seed``, shard, epoch, batch), so they are reproducible. Train batches: ``image`` float32
(B, 3, H, W), ``label`` float32 (B, num_classes), incomplete last batch dropped.
Val batches: timm's evaluation transform (shorter side to ``image_size / crop_pct``, centre crop;
none for CIFAR at 32 px), normalise; ``label`` int32 (B,), all records kept.

Sharding (data parallel): train uses MindSpore's distributed sampler (global shuffle each epoch,
then shard; when the record count is not divisible by ``num_shards`` a few records are repeated so
that every shard has the same number of steps). Val is split exactly: shard ``k`` gets records
``k, k + num_shards, ...`` (no overlap, no padding, so metrics summed over shards are exact).
"""
import logging
import math
import os
import re
import time

import numpy as np
import mindspore.dataset as ds
import mindspore.dataset.transforms as T

from ..platform.errors import ConfigError, DataError
from . import cifar, imagefolder
from .catalog import data_format
from .encoded import read_encoded
from .mixing import BatchMixer
from .synthetic import DEMO_SIZES, write_synthetic
from .transforms import eval_transforms, train_transforms

__all__ = ["create_dataset", "dataset_size", "get_class_names", "model_class_names", "load_split", "prepare_demo",
           "image_split", "prepare_split", "resolve_classes", "check_val_classes", "data_failure"]

_LOG = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Data folders (of a resolved config: src.config.load_config)
# --------------------------------------------------------------------------------------------
def _folder(cfg, split):
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return cfg.train_data_path if split == "train" else cfg.val_data_path


def _any_names(cfg):
    """Non-canonical file names are allowed when train and val are different folders."""
    return os.path.realpath(cfg.train_data_path) != os.path.realpath(cfg.val_data_path)


def prepare_demo(cfg, logger=None, rank=0):
    """Write the generated demo sample (:data:`DEMO_SIZES` records) to the train folder when
    it is not there yet; in a data-parallel run rank 0 writes and the other ranks wait for it."""
    folder = cfg.train_data_path
    if rank == 0 and not os.path.isdir(folder):
        sizes = DEMO_SIZES
        (logger or _LOG).info(f"demo: writing a generated {cfg.dataset_choose}-format sample to {folder} "
                              f"({sizes['train']} train / {sizes['val']} val images)")
        write_synthetic(folder, cfg.dataset_choose, sizes["train"], sizes["val"], seed=cfg.seed)
    while not os.path.isdir(folder):  # other ranks wait for rank 0
        time.sleep(0.5)


def _prepare(cfg, split):
    """Make the split's folder available: demo data generated, or the official archive downloaded."""
    if cfg.demo:
        prepare_demo(cfg)
    folder = _folder(cfg, split)
    cifar.ensure_dataset(folder, cfg.dataset_choose, cfg.download)
    return folder


_CACHE = {}   # (folder, dataset, split, any_names) -> (file stamps, CifarArrays); a few entries


def load_split(cfg, split):
    """Validated arrays (:class:`cifar.CifarArrays`) of `split` ("train" | "val") for `cfg`.

    The decoded arrays are cached while the files keep their size and modification time, so that
    building the pipeline again (e.g. once per epoch) does not re-read them. Treat them as read-only.
    """
    folder = _prepare(cfg, split)
    any_names = _any_names(cfg)
    key = (os.path.realpath(folder), cfg.dataset_choose, split, any_names)
    try:
        files = cifar.split_files(folder, cfg.dataset_choose, split, any_names)
        stamp = tuple((p, st.st_size, st.st_mtime_ns) for p in files for st in [os.stat(p)])
    except (OSError, DataError):
        stamp = None                                   # read_split reports the problem
    hit = _CACHE.get(key)
    if stamp is not None and hit is not None and hit[0] == stamp:
        return hit[1]
    arrays = cifar.read_split(folder, cfg.dataset_choose, split, any_names=any_names)
    if stamp is not None:
        _CACHE.pop(key, None)
        _CACHE[key] = (stamp, arrays)
        while len(_CACHE) > 4:
            _CACHE.pop(next(iter(_CACHE)))
    return arrays


def dataset_size(cfg, split):
    """Number of records of `split` in the whole dataset (all shards): from the file sizes (CIFAR),
    or the checked images of the split (image trees)."""
    if data_format(cfg.dataset_choose) == "imagefolder":
        return len(image_split(cfg, split))
    folder = _prepare(cfg, split)
    return cifar.count_records(folder, cfg.dataset_choose, split, any_names=_any_names(cfg))


# --------------------------------------------------------------------------------------------
# Image trees (src.data.imagefolder)
# --------------------------------------------------------------------------------------------
_SPLITS = {}   # (train root, val_fraction) -> {split: positions}: this process's run (prepare_split)


def _tree(cfg, root, logger=None):
    if root is None:
        raise ConfigError(f"dataset_choose {cfg.dataset_choose} needs train_data_path: the folder of class "
                          "folders, root/<class>/<image> (and val_data_path, or val_fraction)")
    return imagefolder.load_tree(root, cfg.num_parallel_workers, cfg.skip_bad_images, logger)


def _saved_lists(cfg):
    """The split lists of ``val_fraction`` that a run saved: beside ``checkpoint_path`` (evl.py), else
    in ``save_checkpoint_path``; None when neither folder has them."""
    folders = ([os.path.dirname(os.path.abspath(cfg.checkpoint_path))] if cfg.checkpoint_path else []) + \
        [cfg.save_checkpoint_path]
    for folder in folders:
        paths = imagefolder.split_list_paths(folder)
        if all(os.path.isfile(p) for p in paths.values()):
            return paths
    return None


def _split_positions(cfg, tree):
    key = (os.path.realpath(cfg.train_data_path), cfg.val_fraction)
    if key not in _SPLITS:
        lists = _saved_lists(cfg)
        if lists:
            return {split: imagefolder.read_split_list(path, tree) for split, path in lists.items()}
        return dict(zip(("train", "val"), imagefolder.split_tree(tree, cfg.val_fraction, cfg.seed)))
    return _SPLITS[key]


def image_split(cfg, split, logger=None):
    """The checked :class:`.imagefolder.ImageTree` of `split`: the tree of its folder, or with
    ``val_fraction`` its part of ``train_data_path`` (the run's split: :func:`prepare_split`, else the
    lists a run saved, else :func:`.imagefolder.split_tree` with ``seed``)."""
    if cfg.val_fraction is None:
        return _tree(cfg, _folder(cfg, split), logger)
    tree = _tree(cfg, cfg.train_data_path, logger)
    return tree.subset(_split_positions(cfg, tree)[split])


def prepare_split(cfg, logger, rank=0, fresh=True):
    """``val_fraction``: fix this run's split of ``train_data_path`` for the whole process. A fresh
    run draws it (seeded by ``seed``) and rank 0 saves the two lists in ``save_checkpoint_path``; a
    resumed run reads the saved lists, so it trains and validates on the same images."""
    if cfg.val_fraction is None or data_format(cfg.dataset_choose) != "imagefolder":
        return
    tree = _tree(cfg, cfg.train_data_path, logger)
    lists = imagefolder.split_list_paths(cfg.save_checkpoint_path)
    if not fresh and all(os.path.isfile(p) for p in lists.values()):
        parts = {split: imagefolder.read_split_list(path, tree) for split, path in lists.items()}
        how = f"the saved lists {lists['train']}, {lists['val']}"
    else:
        parts = dict(zip(("train", "val"), imagefolder.split_tree(tree, cfg.val_fraction, cfg.seed)))
        if rank == 0:
            imagefolder.write_split_lists(cfg.save_checkpoint_path, tree, parts)
        how = f"val_fraction {cfg.val_fraction:g}, seed {cfg.seed}; lists in {cfg.save_checkpoint_path}"
    _SPLITS[(os.path.realpath(cfg.train_data_path), cfg.val_fraction)] = parts
    logger.info(f"split of {cfg.train_data_path}: {len(parts['train'])} train / {len(parts['val'])} val images ({how})")


def resolve_classes(cfg, logger=None):
    """The class names of the training data. Image trees: the validation tree must have the same
    classes (DataError listing the difference); ``num_classes`` null becomes their number, and a
    smaller one is a ConfigError."""
    if data_format(cfg.dataset_choose) == "cifar":
        return list(get_class_names(cfg))
    train, val = image_split(cfg, "train", logger), image_split(cfg, "val", logger)
    imagefolder.check_same_classes(train.classes, train.root, val)
    n = len(train.classes)
    if cfg.num_classes is None:
        cfg.num_classes = n
    elif cfg.num_classes < n:
        raise ConfigError(f"num_classes {cfg.num_classes} is smaller than the {n} class folders of {train.root}; "
                          "set num_classes: null (the number of class folders)")
    elif cfg.num_classes > n and logger:
        logger.warning(f"num_classes {cfg.num_classes} but {train.root} has {n} class folders: outputs "
                       f"{n}..{cfg.num_classes - 1} are never trained")
    return list(train.classes)


def get_class_names(cfg):
    """Class names of the configured dataset: the CIFAR folder's meta file, else the official names;
    an image tree's class folders."""
    if data_format(cfg.dataset_choose) == "imagefolder":
        return list(image_split(cfg, "train").classes)
    return cifar.class_names(cfg.train_data_path, cfg.dataset_choose)


def _data_class_names(cfg):
    """``(names, where from)`` of the configured data without reading images; (None, None) when an
    image tree's folder is not there."""
    if data_format(cfg.dataset_choose) == "imagefolder":
        root = cfg.train_data_path
        try:
            return (imagefolder.find_classes(root), f"the class folders of {root}") if root else (None, None)
        except DataError:
            return None, None
    names, source = cifar.class_names(cfg.train_data_path, cfg.dataset_choose, with_source=True)
    return names, (f"the official {cfg.dataset_choose} names" if source == "official" else source)


def model_class_names(cfg, num_classes, logger=None, saved=None):
    """``(names, where they came from)`` for a model of `num_classes` classes: `saved` (the names a
    checkpoint recorded), else the data's (:func:`_data_class_names`: the CIFAR meta file or the
    official names, an image tree's class folders); ``class_<i>`` when none has `num_classes` names."""
    if saved and len(saved) == num_classes:
        return list(saved), "the checkpoint"
    names, source = _data_class_names(cfg)
    if names is None or len(names) != num_classes:
        if logger:
            found = f"{source} {len(names)}" if names is not None else "no class names were found"
            logger.warning(f"the model has {num_classes} classes, {found}; using class_<i>")
        return [f"class_{i}" for i in range(num_classes)], "class_<i>"
    return list(names), source


def check_val_classes(cfg, names, where):
    """Image trees: DataError listing the difference when the validation tree's classes are not the
    model's `names` (recorded in checkpoint `where`); nothing to check for CIFAR or without names."""
    if names and data_format(cfg.dataset_choose) == "imagefolder":
        imagefolder.check_same_classes(names, where, image_split(cfg, "val"))


def data_failure(exc):
    """The DataError that a pipeline worker raised (an image that cannot be decoded), from the
    RuntimeError MindSpore's dataset engine wraps it in; None for any other error."""
    found = re.findall(r"^(?:[\w.]*\.)?DataError: (.+)$", str(exc), flags=re.MULTILINE)
    return DataError(found[-1].strip()) if found else None


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------
class _Source:
    """Random-access source over a split's records (MindSpore samples, shuffles and shards it):
    decoded images, or image files read by `load` when asked for (:func:`.encoded.read_encoded`: the
    bytes the engine's ``Decode`` decodes)."""

    def __init__(self, images, labels, load=None):
        self.images, self.labels, self.load = images, labels, load

    def __getitem__(self, i):
        image = self.images[i]
        return (self.load(image) if self.load else image), self.labels[i]

    def __len__(self):
        return len(self.labels)


def _records(cfg, split):
    """``(source, shape, where)``: a split's records, the (height, width) they all share (None for
    image files) and the folder they come from. Image files come as encoded bytes
    (:func:`.encoded.read_encoded`, decoded by the engine's C++ ``Decode``)."""
    if data_format(cfg.dataset_choose) == "imagefolder":
        tree = image_split(cfg, split)
        return _Source(tree.files, tree.labels, read_encoded), None, tree.root
    arrays = load_split(cfg, split)
    return _Source(arrays.images, arrays.labels), arrays.images.shape[1:3], _folder(cfg, split)


def create_dataset(cfg, split, num_shards=None, shard_id=None):
    """Batched ``mindspore.dataset`` pipeline of `split` ("train" | "val") for `cfg`.

    Columns: ``image`` float32 (B, 3, image_size, image_size); ``label`` float32 soft targets
    (B, num_classes) for train, int32 (B,) for val. `num_shards`/`shard_id` select this device's
    part for data-parallel runs. Reads and validates the files first (DataError on any problem;
    image trees: :func:`image_split`); sets MindSpore's dataset seed to ``cfg.seed``.
    """
    if (num_shards is None) != (shard_id is None):
        raise ConfigError(f"num_shards={num_shards} and shard_id={shard_id}: expected both or neither")
    if num_shards is not None and not 0 <= shard_id < num_shards:
        raise ConfigError(f"shard_id {shard_id} is outside 0..{num_shards - 1} (num_shards {num_shards})")
    if cfg.num_classes is None:      # an image tree's class folders, counted
        resolve_classes(cfg)
    source, shape, where = _records(cfg, split)
    num_classes = cfg.num_classes
    if len(source) and int(source.labels.max()) >= num_classes:
        raise ConfigError(f"num_classes {num_classes} is too small for the labels of {where} "
                          f"(max {int(source.labels.max())}); set num_classes: null")
    workers = cfg.num_parallel_workers
    ds.config.set_seed(cfg.seed)
    files = source.load is not None            # image files: read in the source's threads
    encoded = source.load is read_encoded      # file bytes, decoded in the C++ map
    reader = dict(num_parallel_workers=workers if files else 1, python_multiprocessing=False)

    if split == "train":
        batch_size = cfg.batch_size
        data = ds.GeneratorDataset(source, ["image", "label"], shuffle=True, num_shards=num_shards,
                                   shard_id=shard_id, **reader)
        n_local = math.ceil(len(source) / num_shards) if num_shards else len(source)
        if n_local < batch_size:
            raise ConfigError(f"batch_size {batch_size} is larger than the {n_local} train records per shard in "
                              f"{where}; expected batch_size <= {n_local}")
        data = data.map(train_transforms(cfg, shape, encoded), input_columns="image", num_parallel_workers=workers)
        mixer = BatchMixer(num_classes, cfg.smoothing, cfg.mixup, cfg.cutmix, cfg.mixup_prob,
                           cfg.mixup_switch_prob, cfg.reprob, cfg.seed, shard_id or 0)
        return data.batch(batch_size, drop_remainder=True, input_columns=["image", "label"],
                          output_columns=["image", "label"], per_batch_map=mixer, num_parallel_workers=workers)

    if num_shards:
        source = _Source(source.images[shard_id::num_shards], source.labels[shard_id::num_shards], source.load)
    data = ds.GeneratorDataset(source, ["image", "label"], shuffle=False, **reader)
    data = data.map(eval_transforms(cfg, shape, encoded), input_columns="image", num_parallel_workers=workers)
    data = data.map(T.TypeCast(np.int32), input_columns="label")
    return data.batch(cfg.eval_batch_size or cfg.batch_size, drop_remainder=False)
