"""Input pipelines on MindSpore's dataset engine: the validated arrays of a split, the batched
train pipeline (augmentation, mixup/cutmix, shuffled and sharded) and the evaluation pipeline.

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
Val batches: resize to ``image_size`` (bicubic; none at 32), normalise; ``label`` int32 (B,), all
records kept.

Sharding (data parallel): train uses MindSpore's distributed sampler (global shuffle each epoch,
then shard; when the record count is not divisible by ``num_shards`` a few records are repeated so
that every shard has the same number of steps). Val is split exactly: shard ``k`` gets records
``k, k + num_shards, ...`` (no overlap, no padding, so metrics summed over shards are exact).
"""
import logging
import math
import os
import time

import numpy as np
import mindspore.dataset as ds
import mindspore.dataset.transforms as T

from ..platform.errors import ConfigError, DataError
from . import cifar
from .mixing import BatchMixer
from .synthetic import DEMO_SIZES, write_synthetic
from .transforms import eval_transforms, train_transforms

__all__ = ["create_dataset", "dataset_size", "get_class_names", "model_class_names", "load_split", "prepare_demo"]

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
    """Number of records of `split` in the whole dataset (all shards), from the file sizes."""
    folder = _prepare(cfg, split)
    return cifar.count_records(folder, cfg.dataset_choose, split, any_names=_any_names(cfg))


def get_class_names(cfg):
    """Class names of the configured dataset (the train folder's meta file, else the official names)."""
    return cifar.class_names(cfg.train_data_path, cfg.dataset_choose)


def model_class_names(cfg, num_classes, logger=None):
    """``(names, where they came from)`` for a model of `num_classes` classes: the dataset's class
    names (:func:`.cifar.class_names`: the meta file of ``train_data_path``, else the official
    names); ``class_<i>`` when the model has another number of classes."""
    names, source = cifar.class_names(cfg.train_data_path, cfg.dataset_choose, with_source=True)
    if source == "official":
        source = f"the official {cfg.dataset_choose} names"
    if len(names) != num_classes:
        if logger:
            logger.warning(f"the model has {num_classes} classes, {source} {len(names)}; using class_<i>")
        return [f"class_{i}" for i in range(num_classes)], "class_<i>"
    return names, source


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------
class _ArraySource:
    """Random-access source over the decoded arrays (MindSpore samples, shuffles and shards it)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __len__(self):
        return len(self.labels)


def create_dataset(cfg, split, num_shards=None, shard_id=None):
    """Batched ``mindspore.dataset`` pipeline of `split` ("train" | "val") for `cfg`.

    Columns: ``image`` float32 (B, 3, image_size, image_size); ``label`` float32 soft targets
    (B, num_classes) for train, int32 (B,) for val. `num_shards`/`shard_id` select this device's
    part for data-parallel runs. Reads and validates the files first (DataError on any problem);
    sets MindSpore's dataset seed to ``cfg.seed``.
    """
    if (num_shards is None) != (shard_id is None):
        raise ConfigError(f"num_shards={num_shards} and shard_id={shard_id}: expected both or neither")
    if num_shards is not None and not 0 <= shard_id < num_shards:
        raise ConfigError(f"shard_id {shard_id} is outside 0..{num_shards - 1} (num_shards {num_shards})")
    arrays = load_split(cfg, split)
    num_classes = cfg.num_classes
    if int(arrays.labels.max()) >= num_classes:
        raise ConfigError(f"num_classes {num_classes} is too small for the labels of {arrays.files[0]} "
                          f"(max {int(arrays.labels.max())}); set num_classes: null")
    workers = cfg.num_parallel_workers
    ds.config.set_seed(cfg.seed)

    if split == "train":
        batch_size = cfg.batch_size
        data = ds.GeneratorDataset(_ArraySource(arrays.images, arrays.labels), ["image", "label"], shuffle=True,
                                   num_shards=num_shards, shard_id=shard_id, python_multiprocessing=False)
        n_local = math.ceil(len(arrays) / num_shards) if num_shards else len(arrays)
        if n_local < batch_size:
            raise ConfigError(f"batch_size {batch_size} is larger than the {n_local} train records per shard in "
                              f"{_folder(cfg, split)}; expected batch_size <= {n_local}")
        data = data.map(train_transforms(cfg), input_columns="image", num_parallel_workers=workers)
        mixer = BatchMixer(num_classes, cfg.smoothing, cfg.mixup, cfg.cutmix, cfg.mixup_prob,
                           cfg.mixup_switch_prob, cfg.reprob, cfg.seed, shard_id or 0)
        return data.batch(batch_size, drop_remainder=True, input_columns=["image", "label"],
                          output_columns=["image", "label"], per_batch_map=mixer, num_parallel_workers=workers)

    images, labels = arrays.images, arrays.labels
    if num_shards:
        images, labels = images[shard_id::num_shards], labels[shard_id::num_shards]
    data = ds.GeneratorDataset(_ArraySource(images, labels), ["image", "label"], shuffle=False,
                               python_multiprocessing=False)
    data = data.map(eval_transforms(cfg), input_columns="image", num_parallel_workers=workers)
    data = data.map(T.TypeCast(np.int32), input_columns="label")
    return data.batch(cfg.eval_batch_size or cfg.batch_size, drop_remainder=False)
