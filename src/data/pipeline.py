"""Input pipelines on MindSpore's dataset engine: the validated records of a split (the decoded
arrays of a CIFAR binary folder, or the checked files of an image tree, :mod:`.imagefolder`), the
batched train pipeline (augmentation, mixup/cutmix, shuffled and sharded), the evaluation pipeline
and the class names. Image files are read in ``num_parallel_workers`` threads of the source, in
this process (no worker processes, no copy between processes), as file bytes that the engine's C++
``vision.Decode`` decodes in the map's threads to the pixels of :func:`.images.read_image`, the rule
infer.py decodes with (:mod:`.encoded`: a file that decoder would read otherwise, or that is decoded
at reduced size, is decoded by read_image itself); for training with the bicubic crop, read_image
decodes each file and one C++ call cuts its crop (:mod:`.native`), both in the map's threads and
without Python's lock, faster than the engine's decoder and filter. With ``skip_bad_images`` a
file that fails to decode there is replaced by the next good record of its split and counted
(:func:`.records.log_decode_skips`: one warning line per epoch); in evaluation the replacement is
labelled :data:`.records.LEFT_OUT` and left out of the metrics (:func:`.records.log_left_out`).
Without it the run stops naming the file.

Train (each step switchable in the config; a step that is off is not in the pipeline):

1. RandomResizedCrop to ``image_size`` (``crop_scale`` [0.8, 1], ``crop_ratio`` [3/4, 4/3],
   ``interpolation`` bicubic: Pillow's filter, as torchvision); also at ``image_size: 32`` (crop, then
   back to 32 px).
   ``crop_scale: [1, 1]`` turns it off (plain resize to ``image_size``, a no-op at 32).
2. Horizontal flip with probability ``hflip``.
3. RandAugment ``aa`` on uint8 HWC (see :func:`src.data.randaugment.rand_augment_ops`).
4. Normalize with ``mean``/``std`` (per dataset), HWC -> CHW, float32 (per batch in one C++ pass,
   :func:`.native.normalize_batch`, where the C++ parts are built; else by the engine per image).
5. Random erasing with probability ``reprob`` (timm 'pixel' mode: one box, area 2%-33%, log-uniform
   aspect 0.3-3.3, filled with standard-normal noise), per image.
6. Per batch: one-hot labels with ``smoothing``, then mixup (``mixup`` alpha) or cutmix (``cutmix``
   alpha) with probability ``mixup_prob``, cutmix chosen with ``mixup_switch_prob`` (timm ``Mixup``,
   mode 'batch', cutmix lambda corrected to the box area).

Steps 5 and 6 run in the batch's ``per_batch_map`` with a NumPy generator seeded from
(``seed``, shard, epoch, batch), so they are reproducible. Train batches: ``image`` float32
(B, 3, H, W), ``label`` float32 (B, num_classes), incomplete last batch dropped.
Val batches: timm's evaluation transform (shorter side to ``image_size / crop_pct``, centre crop;
none for CIFAR at 32 px), normalise; ``label`` int32 (B,), all records kept (one that
``skip_bad_images`` replaced: labelled ``LEFT_OUT``, -1).

Sharding (data parallel): train uses MindSpore's distributed sampler (global shuffle each epoch,
then shard; when the record count is not divisible by ``num_shards`` a few records are repeated so
that every shard has the same number of steps). Val is split exactly: shard ``k`` gets records
``k, k + num_shards, ...`` (no overlap, no padding, so metrics summed over shards are exact).
"""
import copy
import functools
import logging
import math
import os
import sys
import time

import numpy as np
import mindspore.dataset as ds
import mindspore.dataset.transforms as T

from ..platform.errors import ConfigError, DataError
from . import cifar, imagefolder, native, packed_read, split_lists
from .catalog import data_format, split_folders
from .encoded import read_encoded
from .images import read_image
from .mixing import BatchMixer
from .packed_format import is_packed
from .records import CropRecords, RecordIndices, SkipTally, Source
from .synthetic import DEMO_SIZES, write_synthetic
from .transforms import decode_min_side, eval_transforms, normalize_values, train_transforms

__all__ = ["create_dataset", "dataset_size", "get_class_names", "model_class_names", "load_split", "prepare_demo",
           "image_split", "prepare_split", "resolve_classes", "check_layout", "saved_split_lists",
           "check_val_classes"]

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
    the checked images of the split (image trees), or a pack's manifest."""
    part = _packed(cfg, split)
    if part is not None:
        return len(part)
    if data_format(cfg.dataset_choose) == "imagefolder":
        return len(image_split(cfg, split))
    folder = _prepare(cfg, split)
    return cifar.count_records(folder, cfg.dataset_choose, split, any_names=_any_names(cfg))


# --------------------------------------------------------------------------------------------
# Packed data (src.data.packed_read): a NAME.mindrecord data path, read wherever a folder is
# --------------------------------------------------------------------------------------------
def _packed(cfg, split):
    """The verified :class:`.packed_read.PackedSplit` of `split` when its data path names a pack, else
    None; ``val_fraction`` on a pack is a ConfigError (a pack's splits are fixed when it is written)."""
    path = cfg.train_data_path if split == "train" or cfg.val_fraction is not None else cfg.val_data_path
    if not is_packed(path):
        return None
    if cfg.val_fraction is not None:
        packed_read.refuse_val_fraction(cfg)
    if cfg.skip_bad_images and path not in _SKIP_NAMED:
        _SKIP_NAMED.add(path)
        print(f"warning: skip_bad_images applies to image folders; {path} is packed, and its images were "
              "checked when it was packed (dataset.py pack --skip_bad_images leaves bad ones out): a record "
              "that cannot be decoded stops the run, naming it", file=sys.stderr, flush=True)
    return packed_read.open_pack(path, split)


_SKIP_NAMED = set()   # the packs whose skip_bad_images warning this process printed


# --------------------------------------------------------------------------------------------
# Image trees (src.data.imagefolder)
# --------------------------------------------------------------------------------------------
_SPLITS = {}   # (train root, val_fraction) -> {split: positions}: this process's run (prepare_split)


def _tree(cfg, root, logger=None):
    if root is None:
        raise ConfigError(f"dataset_choose {cfg.dataset_choose} needs train_data_path: the folder of class "
                          "folders, root/<class>/<image> (and val_data_path, or val_fraction)")
    return imagefolder.load_tree(root, cfg.num_parallel_workers, cfg.skip_bad_images, logger, decode_min_side(cfg))


def saved_split_lists(cfg):
    """The split lists of ``val_fraction`` that a run saved: beside ``checkpoint_path`` (evl.py), else
    in ``save_checkpoint_path``; None when neither folder has them."""
    folders = ([os.path.dirname(os.path.abspath(cfg.checkpoint_path))] if cfg.checkpoint_path else []) + \
        [cfg.save_checkpoint_path]
    for folder in folders:
        paths = split_lists.split_list_paths(folder)
        if all(os.path.isfile(p) for p in paths.values()):
            return paths
    return None


def _split_positions(cfg, tree):
    key = (os.path.realpath(cfg.train_data_path), cfg.val_fraction)
    if key not in _SPLITS:
        lists = saved_split_lists(cfg)
        if lists:
            return {split: split_lists.read_split_list(path, tree) for split, path in lists.items()}
        return _draw_split(cfg, tree)
    return _SPLITS[key]


def _draw_split(cfg, tree):
    """``val_fraction``'s split of `tree` (:func:`.split_lists.split_tree`); ConfigError naming the
    classes too small to give validation an image (a class of one image would be missing from
    validation, and with every class so small, validation would be empty)."""
    counts = np.bincount(tree.labels, minlength=len(tree.classes))
    small = [c for c, n in zip(tree.classes, counts) if n < 2]
    if small:
        shown = ", ".join(repr(c) for c in small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
        whole = "so the validation split would be empty" if len(small) == len(tree.classes) else \
            "so validation would miss them"
        raise ConfigError(f"val_fraction {cfg.val_fraction:g}: {len(small)} of the {len(tree.classes)} classes of "
                          f"{tree.root} have fewer than 2 images ({shown}), {whole}; expected at least 2 images per "
                          "class (one to train, one to validate), or give val_data_path instead of val_fraction")
    return dict(zip(("train", "val"), split_lists.split_tree(tree, cfg.val_fraction, cfg.seed)))


def image_split(cfg, split, logger=None):
    """The checked :class:`.imagefolder.ImageTree` of `split`: the tree of its folder, or with
    ``val_fraction`` its part of ``train_data_path`` (the run's split: :func:`prepare_split`, else the
    lists a run saved, else :func:`.split_lists.split_tree` with ``seed``); a pack's split
    (:func:`_packed`) has the same ``classes``, ``labels`` and ``root``."""
    part = _packed(cfg, split)
    if part is not None:
        return part
    if cfg.val_fraction is None:
        return _tree(cfg, _folder(cfg, split), logger)
    tree = _tree(cfg, cfg.train_data_path, logger)
    return tree.subset(_split_positions(cfg, tree)[split])


def prepare_split(cfg, logger, rank=0, fresh=True, world=1):
    """``val_fraction``: fix this run's split of ``train_data_path`` for the whole process. A fresh
    run draws it (seeded by ``seed``) and rank 0 saves the two lists in ``save_checkpoint_path``; a
    resumed run reads the saved lists, so it trains and validates on the same images. A train part
    too small for one batch on each of the `world` devices is refused before any list is written."""
    if cfg.val_fraction is None or data_format(cfg.dataset_choose) != "imagefolder":
        return
    if is_packed(cfg.train_data_path):
        packed_read.refuse_val_fraction(cfg)
    tree = _tree(cfg, cfg.train_data_path, logger)
    lists = split_lists.split_list_paths(cfg.save_checkpoint_path)
    if not fresh and all(os.path.isfile(p) for p in lists.values()):
        parts = {split: split_lists.read_split_list(path, tree) for split, path in lists.items()}
        how = f"the saved lists {lists['train']}, {lists['val']}"
    else:
        parts = _draw_split(cfg, tree)
        if len(parts["train"]) < cfg.batch_size * world:
            raise ConfigError(f"val_fraction {cfg.val_fraction:g} leaves {len(parts['train'])} train images of "
                              f"{tree.root}, fewer than batch_size {cfg.batch_size} x {world} device(s); expected "
                              f"batch_size <= {len(parts['train']) // world} (or more images, or a smaller "
                              "val_fraction)")
        if rank == 0:
            split_lists.write_split_lists(cfg.save_checkpoint_path, tree, parts)
        how = f"val_fraction {cfg.val_fraction:g}, seed {cfg.seed}; lists in {cfg.save_checkpoint_path}"
    _SPLITS[(os.path.realpath(cfg.train_data_path), cfg.val_fraction)] = parts
    logger.info(f"split of {cfg.train_data_path}: {len(parts['train'])} train / {len(parts['val'])} val images ({how})")


def check_layout(cfg):
    """Image trees, before any image is read: a data folder whose only sub-folders are split names
    (``X/train`` and ``X/val``, as ``dataset.py generate`` and Flowers-102 lay them out;
    :func:`.catalog.split_folders`) would be read as classes named after the splits; ConfigError naming
    the folders to give instead."""
    if data_format(cfg.dataset_choose) != "imagefolder":
        return
    for key in ("train_data_path", "val_data_path"):
        root = getattr(cfg, key)
        if not root or is_packed(root):
            continue
        try:
            splits = split_folders(imagefolder.find_classes(root))
        except DataError:
            continue                                   # reported when the tree is read
        if "train" not in splits or len(splits) < 2:
            continue
        raise ConfigError(f"{key} {root} holds the split folders {', '.join(splits)}, not class folders; give "
                          f"--train_data_path {os.path.join(root, 'train')} --val_data_path "
                          f"{os.path.join(root, splits[1])}")


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
    an image tree's class folders; a pack's."""
    if data_format(cfg.dataset_choose) == "imagefolder" or is_packed(cfg.train_data_path):
        return list(image_split(cfg, "train").classes)
    return cifar.class_names(cfg.train_data_path, cfg.dataset_choose)


def _data_class_names(cfg):
    """``(names, where from)`` of the configured data without reading images; (None, None) when an
    image tree's folder or a pack is not there."""
    if is_packed(cfg.train_data_path):
        try:
            return packed_read.open_pack(cfg.train_data_path, "train").classes, f"the pack {cfg.train_data_path}"
        except DataError:
            return None, None
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


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------
def _train_crop(cfg, split, shard_id):
    """The training crop as one C++ call in the map's threads (:mod:`.native`), or None where the
    engine's ``RandomResizedCrop`` crops instead: evaluation, ``crop_scale: [1, 1]``, an
    interpolation other than bicubic (the engine's filters are not Pillow's), or no C++ compiler. Each
    record's box is drawn from (the epoch's seed, the shard, the record's index)."""
    if split != "train" or tuple(cfg.crop_scale) == (1.0, 1.0) or cfg.interpolation != "bicubic":
        return None
    if native.library() is None:
        return None
    size, scale, ratio, seed, shard = cfg.image_size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), cfg.seed, shard_id

    def crop(image, index):
        return native.random_resized_crop(image, size, scale, ratio, native.record_key(seed, shard, index))[0]
    return crop


def _records(cfg, split, shard_id=None):
    """``(source, shape, where)``: a split's records, the (height, width) they all share (None for
    image files) and the folder they come from; a pack's split is its own source (:func:`_packed`).
    Image files come as encoded bytes (:func:`.encoded.read_encoded`, decoded by the engine's C++
    ``Decode``), or, for training with the C++ crop (:func:`_train_crop`), as the crops of
    :func:`.images.read_image`'s pixels (Pillow decodes faster than the engine)."""
    part = _packed(cfg, split)
    if part is not None:
        crop = _train_crop(cfg, split, shard_id or 0)
        if crop is None:
            return part, part.shape, part.root
        part = copy.copy(part)          # the pack's verified split is shared; its crop is this pipeline's
        part.crop = crop
        return part, (cfg.image_size,) * 2, part.root
    if data_format(cfg.dataset_choose) == "imagefolder":
        tree = image_split(cfg, split)
        tally = SkipTally.path() if cfg.skip_bad_images else None
        crop = _train_crop(cfg, split, shard_id or 0)
        if crop is not None:
            load = functools.partial(read_image, min_side=decode_min_side(cfg))
            return Source(tree.files, tree.labels, load, tally, crop), (cfg.image_size,) * 2, tree.root
        load = functools.partial(read_encoded, min_side=decode_min_side(cfg))
        return Source(tree.files, tree.labels, load, tally), None, tree.root
    arrays = load_split(cfg, split)
    return Source(arrays.images, arrays.labels), arrays.images.shape[1:3], _folder(cfg, split)


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
    source, shape, where = _records(cfg, split, shard_id)
    num_classes = cfg.num_classes
    if len(source) and int(source.labels.max()) >= num_classes:
        raise ConfigError(f"num_classes {num_classes} is too small for the labels of {where} "
                          f"(max {int(source.labels.max())}); set num_classes: null")
    workers = cfg.num_parallel_workers
    ds.config.set_seed(cfg.seed)
    load = getattr(source, "load", None)
    files = load is not None                   # image files: read in the source's threads
    encoded = getattr(load, "func", load) is read_encoded      # file bytes, decoded in the C++ map
    reader = dict(num_parallel_workers=workers if files else 1, python_multiprocessing=False)

    if split == "train":
        return _train_pipeline(cfg, source, shape, where, encoded, reader, num_shards, shard_id)
    return _eval_pipeline(cfg, source, shape, encoded, reader, num_shards, shard_id)


def _train_pipeline(cfg, source, shape, where, encoded, reader, num_shards, shard_id):
    """The train split's records shuffled and sharded, augmented, batched and mixed."""
    batch_size, workers = cfg.batch_size, cfg.num_parallel_workers
    if isinstance(source, packed_read.PackedSplit):
        data = source.dataset(True, num_shards, shard_id, workers, decode_min_side(cfg))
    elif source.crop is not None:                 # records decoded and cut in the map
        data = ds.GeneratorDataset(RecordIndices(source), ["image", "label"], shuffle=True,
                                   num_shards=num_shards, shard_id=shard_id, num_parallel_workers=1,
                                   python_multiprocessing=False)
        data = data.map(CropRecords(source), input_columns=["image", "label"],
                        output_columns=["image", "label"], num_parallel_workers=workers,
                        python_multiprocessing=False)
    else:
        data = ds.GeneratorDataset(source, ["image", "label"], shuffle=True, num_shards=num_shards,
                                   shard_id=shard_id, **reader)
    n_local = math.ceil(len(source) / num_shards) if num_shards else len(source)
    if n_local < batch_size:
        raise ConfigError(f"batch_size {batch_size} is larger than the {n_local} train records per shard in "
                          f"{where}; expected batch_size <= {n_local}")
    in_batch = native.library() is not None       # uint8 images normalised per batch in one C++ pass
    ops = train_transforms(cfg, shape, encoded, source.crop is not None, normalize=not in_batch)
    if ops:                                         # none: crop only, normalised per batch
        data = data.map(ops, input_columns="image", num_parallel_workers=workers)
    mixer = BatchMixer(cfg.num_classes, cfg.smoothing, cfg.mixup, cfg.cutmix, cfg.mixup_prob,
                       cfg.mixup_switch_prob, cfg.reprob, cfg.seed, shard_id or 0,
                       normalize=normalize_values(cfg) if in_batch else None)
    return data.batch(batch_size, drop_remainder=True, input_columns=["image", "label"],
                      output_columns=["image", "label"], per_batch_map=mixer, num_parallel_workers=workers)


def _eval_pipeline(cfg, source, shape, encoded, reader, num_shards, shard_id):
    """The evaluation split's records in order, shard k taking records k, k + num_shards, ..."""
    workers = cfg.num_parallel_workers
    if isinstance(source, packed_read.PackedSplit):
        data = source.dataset(False, num_shards, shard_id, workers, decode_min_side(cfg))
    else:                               # a replaced image labelled LEFT_OUT: the metrics leave it out
        part = slice(shard_id, None, num_shards) if num_shards else slice(None)
        source = Source(source.images[part], source.labels[part], source.load, source.tally, evaluation=True)
        data = ds.GeneratorDataset(source, ["image", "label"], shuffle=False, **reader)
    data = data.map(eval_transforms(cfg, shape, encoded), input_columns="image", num_parallel_workers=workers)
    data = data.map(T.TypeCast(np.int32), input_columns="label")
    return data.batch(cfg.eval_batch_size or cfg.batch_size, drop_remainder=False)
