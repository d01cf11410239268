"""The data's command line: generate, download or check a dataset folder.

    python dataset.py download --dataset cifar10 --root data      # the official archive, md5-checked
    python dataset.py check --dataset cifar10 --path data/cifar-10-batches-bin
    python dataset.py generate --dataset cifar10 --out data/demo --train 2000 --val 500

The input pipelines that train.py, evl.py and infer.py use are in :mod:`src.data`.
"""
import src  # noqa: F401  (first: it keeps MindSpore's C++ log quiet, see src/__init__.py)
import argparse
import logging
import os
import sys

import numpy as np

from src.config import SEED_LIMIT, path_arg as _path
from src.data import cifar
from src.data.catalog import DATASETS, FOLDERS, NUM_CLASSES, PRETTY_NAMES
from src.data.synthetic import write_synthetic
from src.platform.bounds import check_disk_space
from src.platform.errors import ArgumentParser, DataError, run_cli, short_quote

__all__ = ["main", "generate", "download", "check"]

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
    parser = ArgumentParser(prog="dataset.py", description="CIFAR-10/100 binary data: generate, download, check.")
    parser.add_argument("--verbose", action="store_true", help="also show MindSpore's own log lines")
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write learnable synthetic data in the CIFAR binary format")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10")
    g.add_argument("--out", default="data/demo", type=_path, help="parent folder; data goes to OUT/cifar-10-batches-bin "
                   "or OUT/cifar-100-binary")
    g.add_argument("--train", type=_count(1, MAX_RECORDS), default=2000, help="train records")
    g.add_argument("--val", type=_count(0, MAX_RECORDS), default=500, help="val records")
    g.add_argument("--files", type=_count(1, MAX_FILES), default=None, help="number of train files (default 5 / 1)")
    g.add_argument("--seed", type=_count(0, SEED_LIMIT - 1), default=0)
    g.add_argument("--noise", type=_non_negative, default=0.2, help="pixel noise std (0..1 units)")
    d = sub.add_parser("download", help="download and extract the official binary archive")
    d.add_argument("--dataset", choices=DATASETS, default="cifar10")
    d.add_argument("--root", default="data", type=_path, help="parent folder of cifar-10-batches-bin / cifar-100-binary")
    c = sub.add_parser("check", help="validate a folder and print its splits")
    c.add_argument("--dataset", choices=DATASETS, default="cifar10")
    c.add_argument("--path", required=True, type=_path, help="folder holding the .bin files")
    return parser.parse_args(argv)


def generate(args):
    """Learnable synthetic data in the CIFAR binary format; only generated data is ever replaced,
    and the folder then holds exactly the records reported (files of an earlier generation that
    this one does not write are removed)."""
    folder = os.path.join(args.out, FOLDERS[args.dataset])
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
    if os.path.exists(folder):
        print(f"{folder} already exists; nothing to do")
    else:
        cifar.ensure_dataset(folder, args.dataset, download=True)
        print(f"{PRETTY_NAMES[args.dataset]} is in {folder}")


def check(args):
    """Validate every file of both splits and print their sizes and class balance."""
    for split in ("train", "val"):
        arr = cifar.read_split(args.path, args.dataset, split)
        counts = np.bincount(arr.labels, minlength=NUM_CLASSES[args.dataset])
        print(f"{split}: {len(arr)} records in {len(arr.files)} file(s); per class min {counts.min()} "
              f"max {counts.max()}")


COMMANDS = {"generate": generate, "download": download, "check": check}


def main(argv=None):
    """``python dataset.py generate|download|check``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    COMMANDS[args.cmd](args)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
