"""The data's command line: generate, download or check a dataset folder.

    python dataset.py download --dataset cifar10 --root data      # the official archive, md5-checked
    python dataset.py check --dataset cifar10 --path data/cifar-10-batches-bin
    python dataset.py check --path data/flowers102                # an image tree (or its split folders)
    python dataset.py generate --dataset cifar10 --out data/demo --train 2000 --val 500
    python dataset.py generate --format imagefolder --out data/demo/images --classes 5 --train 500 --val 100
    python dataset.py pack --path data/imagenet --out data/imagenet.mindrecord   # MindRecord shards (src/data/packed_write.py)
    python dataset.py check --path data/imagenet.mindrecord                      # every shard hashed, every record read

The input pipelines that train.py, evl.py and infer.py use are in :mod:`src.data`.
"""
import src  # noqa: F401  (first: it keeps MindSpore's C++ log quiet, see src/__init__.py)
import argparse
import logging
import os
import sys

import numpy as np

from src.config import SEED_LIMIT, load_config, path_arg as _path
from src.data import cifar, imagefolder, packed_read, packed_write
from src.data.catalog import CIFAR, DATASETS, FOLDERS, NUM_CLASSES, PRETTY_NAMES, data_format, split_folders
from src.data.packed_format import is_packed
from src.data.synthetic import write_image_tree, write_synthetic
from src.data.transforms import decode_min_side
from src.platform.bounds import check_disk_space
from src.platform.errors import ArgumentParser, DataError, run_cli, short_quote, shown_name

__all__ = ["main", "generate", "download", "check", "pack"]

#: Upper bounds of the generator's counts: a million records is 3 GB on disk, 20 times CIFAR.
MAX_RECORDS, MAX_FILES, MAX_NOISE, MAX_CLASSES = 10 ** 6, 1000, 10.0, 1000
#: The most one generated image file takes on disk (a 72 x 72 PNG of noise and its folder entry).
IMAGE_FILE_BYTES = 20_000
#: Where ``generate`` writes by default.
GENERATE_OUT = {"cifar": "data/demo", "imagefolder": "data/demo/images"}


def _count(minimum, maximum):
    """argparse type: an integer in [`minimum`, `maximum`]."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"invalid value {short_quote(text)}: expected an integer >= {minimum}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"invalid value {short_quote(text)}: expected an integer in [{minimum}, {maximum}]")
        return value
    return parse


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_NOISE:  # NaN fails too
        raise argparse.ArgumentTypeError(f"invalid value {short_quote(text)}: expected a number in [0, {MAX_NOISE:g}]")
    return value


def parse_args(argv=None):
    parser = ArgumentParser(prog="dataset.py", description="CIFAR-10/100 binary data and image trees: generate, "
                            "download, check.")
    parser.add_argument("--verbose", action="store_true", help="also show MindSpore's own log lines")
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write learnable synthetic data in the CIFAR binary format or as a tree "
                       "of JPEG and PNG files")
    g.add_argument("--format", choices=tuple(GENERATE_OUT), default="cifar")
    g.add_argument("--dataset", choices=CIFAR, default="cifar10", help="CIFAR format: which of the two")
    g.add_argument("--classes", type=_count(2, MAX_CLASSES), default=5, help="imagefolder: number of classes")
    g.add_argument("--out", default=None, type=_path, help="CIFAR: parent folder, data goes to "
                   "OUT/cifar-10-batches-bin or OUT/cifar-100-binary (default data/demo); imagefolder: OUT/train "
                   "and OUT/val (default data/demo/images)")
    g.add_argument("--train", type=_count(1, MAX_RECORDS), default=2000, help="train records")
    g.add_argument("--val", type=_count(0, MAX_RECORDS), default=500, help="val records")
    g.add_argument("--files", type=_count(1, MAX_FILES), default=None, help="number of train files (default 5 / 1)")
    g.add_argument("--seed", type=_count(0, SEED_LIMIT - 1), default=0)
    g.add_argument("--noise", type=_non_negative, default=0.2, help="pixel noise std (0..1 units)")
    d = sub.add_parser("download", help="download and extract the official binary archive")
    d.add_argument("--dataset", choices=DATASETS, default="cifar10")
    d.add_argument("--root", default="data", type=_path, help="parent folder of cifar-10-batches-bin / cifar-100-binary")
    c = sub.add_parser("check", help="validate a folder and print its splits")
    c.add_argument("--dataset", choices=DATASETS, default=None, help="default: cifar10 for a folder of .bin files, "
                   "else an image tree")
    c.add_argument("--path", required=True, type=_path, help="folder holding the .bin files, or an image tree "
                   "(root/<class>/<image>, or root/train/<class>/<image> and root/val/...)")
    c.add_argument("--workers", type=_count(1, 256), default=2, help="image trees: threads checking the images")
    p = sub.add_parser("pack", help="write an image tree or a CIFAR folder as MindRecord shards (NAME.mindrecord), "
                       "which train.py, evl.py and check read wherever they read a folder")
    p.add_argument("--path", required=True, type=_path, help="an image tree (root/<class>/<image>, or root/train/... "
                   "and root/val/...) or a CIFAR folder of .bin files")
    p.add_argument("--out", required=True, type=_path, help="the pack, a folder NAME.mindrecord (an earlier pack there "
                   "is replaced, anything else refused)")
    p.add_argument("--dataset", choices=CIFAR, default=None, help="a CIFAR folder: which of the two (default cifar10 "
                   "for a folder of .bin files)")
    p.add_argument("--max_side", type=_count(8, 65535), default=None, help="re-encode images longer than this many "
                   f"px on their longer side (JPEG quality {packed_write.JPEG_QUALITY}); default: the original bytes")
    p.add_argument("--shard_size", type=_count(1, 10 ** 7), default=packed_write.DEFAULT_SHARD_SIZE,
                   help=f"records per shard (default {packed_write.DEFAULT_SHARD_SIZE}, about 1 GB of ImageNet JPEGs)")
    p.add_argument("--skip_bad_images", action="store_true", help="leave unreadable images out (counted) instead "
                   "of stopping at the first")
    p.add_argument("--workers", type=_count(1, 256), default=2, help="threads checking the images")
    return parser.parse_args(argv)


def generate(args):
    """Learnable synthetic data in the CIFAR binary format or as an image tree; only generated data is
    ever replaced, and the folder then holds exactly what is reported (files of an earlier
    generation that this one does not write are removed)."""
    out = args.out or GENERATE_OUT[args.format]
    if args.format == "imagefolder":
        for split, n in (("train", args.train), ("val", args.val)):
            if 0 < n < args.classes:   # a split without some classes: train.py would refuse the tree
                raise DataError(f"--{split} {n} is fewer than --classes {args.classes}: every class folder of the "
                                f"{split} split needs an image; give --{split} >= {args.classes}"
                                + (" (or --val 0)" if split == "val" else "") + " (nothing was written)")
        check_disk_space(f"--train {args.train} --val {args.val}", (args.train + args.val) * IMAGE_FILE_BYTES, out,
                         "give smaller counts or another --out")
        paths = write_image_tree(out, args.classes, args.train, args.val, seed=args.seed, noise=args.noise)
        print(f"wrote {args.train} train + {args.val} val synthetic JPEG/PNG images of {args.classes} classes to "
              + " and ".join(paths.values()))
        return
    folder = os.path.join(out, FOLDERS[args.dataset])
    if args.files is not None and args.files > args.train:
        raise DataError(f"--files {args.files} is more than the {args.train} train records")
    check_disk_space(f"--train {args.train} --val {args.val}", (args.train + args.val) * cifar.RECORD_BYTES[args.dataset],
                     folder, "give fewer records or another --out")
    try:
        write_synthetic(folder, args.dataset, args.train, args.val, seed=args.seed, files=args.files,
                        noise=args.noise)
    except OSError as exc:
        raise DataError(f"cannot write {folder}: {exc.strerror}"
                        + (f" ({exc.filename})" if exc.filename else "")) from None
    print(f"wrote {args.train} train + {args.val} val synthetic {PRETTY_NAMES[args.dataset]} records to {folder}")


def download(args):
    """The official archive, md5-checked and safely extracted, unless the folder is there."""
    folder = os.path.join(args.root, FOLDERS[args.dataset])
    if os.path.exists(folder):   # said only of a folder that holds the dataset (DataError otherwise)
        if data_format(args.dataset) != "cifar":
            print(f"{folder} already exists; nothing to do (check it with: python dataset.py check --path {folder})")
            return
        n = {split: cifar.count_records(folder, args.dataset, split) for split in ("train", "val")}
        print(f"{folder} already holds {n['train']} train + {n['val']} val {PRETTY_NAMES[args.dataset]} records; "
              "nothing to do")
    else:
        cifar.ensure_dataset(folder, args.dataset, download=True)
        print(f"{PRETTY_NAMES[args.dataset]} is in {folder}")


def check(args):
    """Validate every file of both splits and print their sizes and class balance (CIFAR), or every
    image of a tree (:func:`check_tree`)."""
    if is_packed(args.path):
        return packed_read.check_pack(args.path)
    dataset = args.dataset or ("cifar10" if os.path.isdir(args.path) and any(
        n.endswith(".bin") for n in os.listdir(args.path)) else "imagefolder")
    if data_format(dataset) == "imagefolder":
        return check_tree(args.path, args.workers)
    args.dataset = dataset
    for split in ("train", "val"):
        arr = cifar.read_split(args.path, args.dataset, split)
        counts = np.bincount(arr.labels, minlength=NUM_CLASSES[args.dataset])
        print(f"{split}: {len(arr)} records in {len(arr.files)} file(s); per class min {counts.min()} "
              f"max {counts.max()}")


def _describe(tree, bad):
    counts = tree.counts()
    w, h = tree.sizes[:, 0], tree.sizes[:, 1]
    print(f"{shown_name(tree.root, quoted=False)}: {len(tree.classes)} classes, {len(tree)} good images, "
          f"{len(bad)} bad, "
          f"{len(tree.skipped)} other files skipped")
    names = [shown_name(c, quoted=False) for c in tree.classes]
    print(f"  images per class: min {counts.min()} ({names[counts.argmin()]}), max {counts.max()} "
          f"({names[counts.argmax()]}), mean {counts.mean():.1f}")
    if len(tree.classes) <= 30:
        print("  " + ", ".join(f"{c} {n}" for c, n in zip(names, counts)))
    if len(tree):
        print(f"  image sizes: width {w.min()}..{w.max()} (median {int(np.median(w))}), height {h.min()}..{h.max()} "
              f"(median {int(np.median(h))})")
    for path, why in bad[:20]:
        print(f"  bad: {why}")
    for path in tree.skipped[:5]:
        print(f"  skipped (not an image extension): {shown_name(path)}")


def _default_min_side():
    """The decoding rule's ``min_side`` of train.py's defaults for an image tree (check and pack
    judge the images as a run with them decodes)."""
    return decode_min_side(load_config(["--dataset_choose", "imagefolder"]))


def check_tree(path, workers=2):
    """Check every image of a tree (or of each split folder of it) and report classes, images per
    class, image sizes and bad files; DataError when there are bad files or the splits' classes differ."""
    splits = split_folders(os.listdir(path)) if os.path.isdir(path) else []
    trees, bad = [], []
    min_side = _default_min_side()
    for root in [os.path.join(path, n) for n in splits] or [path]:
        tree = imagefolder.check_images(imagefolder.scan_tree(root), workers, skip_bad=True, min_side=min_side)
        _describe(tree, tree.bad)
        trees.append(tree)
        bad += tree.bad
    for tree in trees[1:]:
        imagefolder.check_same_classes(trees[0].classes, trees[0].root, tree, f"{os.path.basename(tree.root)} split")
    if bad:
        raise DataError(f"{len(bad)} bad image file(s) in {path} (listed above), e.g. {bad[0][1]}; fix or remove "
                        "them, or train with skip_bad_images: true")


def pack(args):
    """MindRecord shards of an image tree or a CIFAR folder (:func:`src.data.packed_write.pack`)."""
    manifest = packed_write.pack(args.path, args.out, args.dataset, args.shard_size, args.max_side, args.workers,
                                 args.skip_bad_images, _default_min_side())
    parts = ", ".join(f"{name} {s['records']} records in {len(s['shards'])} shard(s)"
                      for name, s in manifest["splits"].items())
    print(f"packed {args.path} into {args.out}: {len(manifest['classes'])} classes; {parts}")


COMMANDS = {"generate": generate, "download": download, "check": check, "pack": pack}


def main(argv=None):
    """``python dataset.py generate|download|check``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    COMMANDS[args.cmd](args)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
