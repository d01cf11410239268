"""CIFAR-10/100 input pipelines on MindSpore's dataset engine, with the official fine-tune recipe,
and the data's command line::

    python dataset.py download --dataset cifar10 --root data      # the official archive, md5-checked
    python dataset.py check --dataset cifar10 --path data/cifar-10-batches-bin
    python dataset.py generate --dataset cifar10 --out data/demo --train 2000 --val 500

Train (each step switchable in the config; a step that is off is not in the pipeline):

1. RandomResizedCrop to ``image_size`` (``crop_scale`` [0.8, 1], ``crop_ratio`` [3/4, 4/3],
   ``interpolation`` bicubic); also at ``image_size: 32`` (crop, then back to 32 px).
   ``crop_scale: [1, 1]`` turns it off (plain resize to ``image_size``, a no-op at 32).
2. Horizontal flip with probability ``hflip``.
3. RandAugment ``aa`` on uint8 HWC (see :func:`rand_augment_ops` for the mapping of the timm spec).
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
import argparse
import logging
import math
import os
import sys
import time

import numpy as np
import mindspore.dataset as ds
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as vision
from mindspore.dataset.vision import Inter

from src import cifar
from src import config
from src.config import parse_aa, path_arg as _path
from src.errors import ArgumentParser, ConfigError, DataError, run_cli

__all__ = ["create_dataset", "dataset_size", "get_class_names", "load_split", "rand_augment_ops",
           "train_transforms", "eval_transforms", "BatchMixer", "prepare_demo", "epoch_config", "main"]

_LOG = logging.getLogger(__name__)

_INTER = {"bicubic": Inter.BICUBIC, "bilinear": Inter.BILINEAR, "nearest": Inter.NEAREST}


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
    """Write the generated demo sample (``src.config.DEMO_SIZES`` records) to the train folder when
    it is not there yet; in a data-parallel run rank 0 writes and the other ranks wait for it."""
    folder = cfg.train_data_path
    if rank == 0 and not os.path.isdir(folder):
        sizes = config.DEMO_SIZES
        (logger or _LOG).info(f"demo: writing a generated {cfg.dataset_choose}-format sample to {folder} "
                              f"({sizes['train']} train / {sizes['val']} val images)")
        cifar.write_synthetic(folder, cfg.dataset_choose, sizes["train"], sizes["val"], seed=cfg.seed)
    while not os.path.isdir(folder):  # other ranks wait for rank 0
        time.sleep(0.5)


def _prepare(cfg, split):
    """Make the split's folder available: demo data generated, or the official archive downloaded."""
    if cfg.demo:
        prepare_demo(cfg)
    folder = _folder(cfg, split)
    cifar.ensure_dataset(folder, cfg.dataset_choose, cfg.download)
    return folder


def epoch_config(cfg, epoch):
    """The config for one epoch's training pipeline: the seed moves with the epoch, so the shuffle
    and augmentation of epoch E are the same in a resumed run as in an uninterrupted one."""
    d = cfg.to_dict()
    d["seed"] = config.epoch_seed(cfg.seed, epoch)   # bounded by load_config: < 2**32 for every epoch
    return config.Config(d)


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


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------
def _magnitude_choices(m, mstd, slots=20):
    """Integer magnitudes approximating timm's per-op ``gauss(m, mstd)`` clipped to [0, 10].

    Returns a list of `slots` magnitudes (with repeats) whose uniform choice has about the
    probabilities of the rounded, clipped Gaussian; ``[m]`` when mstd is 0.
    """
    if mstd <= 0:
        return [m]
    ks = np.arange(11)
    cdf = lambda x: 0.5 * (1 + math.erf((x - m) / (mstd * math.sqrt(2))))
    p = np.array([cdf(k + 0.5) - cdf(k - 0.5) for k in ks])
    p[0], p[-1] = cdf(0.5), 1 - cdf(9.5)          # clipped mass goes to the ends
    counts = np.floor(p * slots).astype(int)
    for i in np.argsort(-(p * slots - counts))[: slots - counts.sum()]:
        counts[i] += 1                              # largest remainders
    return [int(k) for k in ks for _ in range(counts[k])]


def rand_augment_ops(spec, interpolation="bicubic", fill=(0, 0, 0)):
    """MindSpore ops for a timm RandAugment spec such as ``rand-m9-mstd0.5-inc1`` (None -> []).

    Mapping to timm's ``RandAugment`` (timm/data/auto_augment.py):

    * timm applies ``n`` ops, each chosen at random and applied with probability 0.5, at magnitude
      ``m`` out of 10. Here each of the ``n`` ops is ``RandomApply([RandomChoice([RandAugment(
      num_ops=1, magnitude=k, num_magnitude_bins=11)])], prob=0.5)``: with 11 bins MindSpore's
      magnitude ``k`` is ``k / 10`` of each op's maximum, as timm's ``m / 10``.
    * ``mstd``: timm draws each op's magnitude from ``gauss(m, mstd)`` clipped to [0, 10];
      here from integer magnitudes with the probabilities of that Gaussian rounded (for
      m9-mstd0.5: 8, 9, 10 with 3/20, 14/20, 3/20).
    * ``inc1``: MindSpore's (torchvision's) posterize and solarize already grow stronger with the
      magnitude, as timm's "increasing" ops; ``inc0`` is refused by the config.
    * Differences: MindSpore's op set is torchvision's (Identity, ShearX/Y, TranslateX/Y, Rotate,
      Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize); it has
      Identity and lacks timm's Invert and SolarizeAdd; the n ops may repeat (timm draws without
      replacement); magnitudes are integers. Maxima match timm: rotate 30 deg, shear 0.3,
      translate 0.45 of the size, enhance factors 1 +- 0.9. Fill = dataset mean, as timm.
    """
    params = parse_aa(spec)
    if params is None:
        return []
    inter = _INTER[interpolation]
    fill = tuple(int(v) for v in fill)
    ops = []
    for _ in range(params["n"]):
        choices = [vision.RandAugment(num_ops=1, magnitude=k, num_magnitude_bins=11, interpolation=inter,
                                      fill_value=fill)
                   for k in _magnitude_choices(params["m"], params["mstd"])]
        one = choices[0] if len(choices) == 1 else T.RandomChoice(choices)
        ops.append(T.RandomApply([one], prob=0.5))
    return ops


def _normalize_ops(cfg):
    mean = [255.0 * v for v in cfg.mean]
    std = [255.0 * v for v in cfg.std]
    return [vision.Normalize(mean=mean, std=std, is_hwc=True), vision.HWC2CHW()]


def train_transforms(cfg):
    """Per-image train ops on uint8 HWC (crop, flip, RandAugment, normalise, HWC->CHW)."""
    size = cfg.image_size
    inter = _INTER[cfg.interpolation]
    ops = []
    if tuple(cfg.crop_scale) != (1.0, 1.0):
        ops.append(vision.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio),
                                            interpolation=inter))
    elif size != 32:
        ops.append(vision.Resize((size, size), interpolation=inter))
    if cfg.hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=cfg.hflip))
    fill = tuple(min(255, round(255 * v)) for v in cfg.mean)
    ops += rand_augment_ops(cfg.aa, cfg.interpolation, fill)
    return ops + _normalize_ops(cfg)


def eval_transforms(cfg):
    """Per-image eval ops: resize to image_size (not at 32), normalise, HWC->CHW."""
    ops = []
    if cfg.image_size != 32:
        ops.append(vision.Resize((cfg.image_size, cfg.image_size), interpolation=_INTER[cfg.interpolation]))
    return ops + _normalize_ops(cfg)


class BatchMixer:
    """``per_batch_map`` of the train pipeline: random erasing per image, one-hot + smoothing,
    then mixup or cutmix on the batch (timm ``RandomErasing(mode='pixel')`` and ``Mixup``)."""

    def __init__(self, num_classes, smoothing=0.1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, switch_prob=0.5,
                 reprob=0.25, seed=0, shard_id=0):
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.mixup, self.cutmix = mixup, cutmix
        self.mixup_prob, self.switch_prob = mixup_prob, switch_prob
        self.reprob = reprob
        self.seed, self.shard_id = seed, shard_id

    def __call__(self, images, labels, batch_info):
        rng = np.random.default_rng([self.seed, self.shard_id, batch_info.get_epoch_num(),
                                     batch_info.get_batch_num()])
        x = np.stack(images).astype(np.float32, copy=False)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if self.reprob > 0:
            for img in x:
                if rng.random() < self.reprob:
                    self._erase(img, rng)
        off = self.smoothing / self.num_classes
        target = np.full((len(y), self.num_classes), off, np.float32)
        target[np.arange(len(y)), y] = 1.0 - self.smoothing + off
        lam, use_cutmix = self._params(rng)
        if lam != 1.0:
            if use_cutmix:
                (yl, yh, xl, xh), lam = self._cutmix_box(x.shape, lam, rng)
                x[:, :, yl:yh, xl:xh] = x[::-1, :, yl:yh, xl:xh].copy()
            else:
                x = x * lam + x[::-1] * (1.0 - lam)
            target = target * lam + target[::-1] * (1.0 - lam)
        return np.ascontiguousarray(x, np.float32), target.astype(np.float32)

    @staticmethod
    def _erase(img, rng, min_area=0.02, max_area=1 / 3, log_ratio=(math.log(0.3), math.log(1 / 0.3))):
        c, h, w = img.shape
        for _ in range(10):
            area = rng.uniform(min_area, max_area) * h * w
            aspect = math.exp(rng.uniform(*log_ratio))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if ew < w and eh < h:
                top, left = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
                img[:, top:top + eh, left:left + ew] = rng.standard_normal((c, eh, ew), np.float32)
                return

    def _params(self, rng):
        if (self.mixup <= 0 and self.cutmix <= 0) or rng.random() >= self.mixup_prob:
            return 1.0, False
        if self.mixup > 0 and self.cutmix > 0:
            use_cutmix = rng.random() < self.switch_prob
        else:
            use_cutmix = self.cutmix > 0
        alpha = self.cutmix if use_cutmix else self.mixup
        return float(rng.beta(alpha, alpha)), use_cutmix

    @staticmethod
    def _cutmix_box(shape, lam, rng):
        h, w = shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
        xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
        lam = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
        return (int(yl), int(yh), int(xl), int(xh)), lam


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


# --------------------------------------------------------------------------------------------
# Command line: python dataset.py generate|download|check
# --------------------------------------------------------------------------------------------
#: Upper bounds of the generator's counts: a million records is 3 GB on disk, 20 times CIFAR.
MAX_RECORDS, MAX_FILES, MAX_NOISE = 10 ** 6, 1000, 10.0


def _count(minimum, maximum):
    """argparse type: an integer in [`minimum`, `maximum`]."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= {minimum}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer in [{minimum}, {maximum}]")
        return value
    return parse


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_NOISE:  # NaN fails too
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number in [0, {MAX_NOISE:g}]")
    return value


def main(argv=None):
    """``python dataset.py generate|download|check``: the CIFAR binary data from the command line."""
    parser = ArgumentParser(prog="dataset.py", description="CIFAR-10/100 binary data: generate, download, check.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write learnable synthetic data in the CIFAR binary format")
    g.add_argument("--dataset", choices=cifar.DATASETS, default="cifar10")
    g.add_argument("--out", default="data/demo", type=_path, help="parent folder; data goes to OUT/cifar-10-batches-bin "
                   "or OUT/cifar-100-binary")
    g.add_argument("--train", type=_count(1, MAX_RECORDS), default=2000, help="train records")
    g.add_argument("--val", type=_count(0, MAX_RECORDS), default=500, help="val records")
    g.add_argument("--files", type=_count(1, MAX_FILES), default=None, help="number of train files (default 5 / 1)")
    g.add_argument("--seed", type=_count(0, 2 ** 32 - 1), default=0)
    g.add_argument("--noise", type=_non_negative, default=0.2, help="pixel noise std (0..1 units)")
    d = sub.add_parser("download", help="download and extract the official binary archive")
    d.add_argument("--dataset", choices=cifar.DATASETS, default="cifar10")
    d.add_argument("--root", default="data", type=_path, help="parent folder of cifar-10-batches-bin / cifar-100-binary")
    c = sub.add_parser("check", help="validate a folder and print its splits")
    c.add_argument("--dataset", choices=cifar.DATASETS, default="cifar10")
    c.add_argument("--path", required=True, type=_path, help="folder holding the .bin files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.cmd == "generate":
        folder = os.path.join(args.out, cifar.FOLDERS[args.dataset])
        if args.files is not None and args.files > args.train:
            raise DataError(f"--files {args.files} is more than the {args.train} train records")
        cifar.check_replaceable(folder, args.dataset)
        try:
            cifar.write_synthetic(folder, args.dataset, args.train, args.val, seed=args.seed, files=args.files,
                            noise=args.noise)
        except OSError as exc:
            raise DataError(f"cannot write {folder}: {exc.strerror}"
                            + (f" ({exc.filename})" if exc.filename else "")) from None
        print(f"wrote {args.train} train + {args.val} val synthetic {cifar.PRETTY_NAMES[args.dataset]} records to {folder}")
    elif args.cmd == "download":
        folder = os.path.join(args.root, cifar.FOLDERS[args.dataset])
        if os.path.exists(folder):
            print(f"{folder} already exists; nothing to do")
        else:
            cifar.ensure_dataset(folder, args.dataset, download=True)
            print(f"{cifar.PRETTY_NAMES[args.dataset]} is in {folder}")
    else:
        for split in ("train", "val"):
            arr = cifar.read_split(args.path, args.dataset, split)
            counts = np.bincount(arr.labels, minlength=cifar.NUM_CLASSES[args.dataset])
            print(f"{split}: {len(arr)} records in {len(arr.files)} file(s); per class min {counts.min()} "
                  f"max {counts.max()}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
