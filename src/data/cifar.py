"""CIFAR-10/100 in the binary release: the format, reading with validation (which files form a split,
any number of records per file, every problem one :class:`errors.DataError` line naming the file),
the download of the official archive, and class names (the generator of data in this format:
:mod:`.synthetic`; the command line: ``python dataset.py generate|download|check``). The format and
the rules: data/README.md.
"""
import logging
import os
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..platform.download import DownloadError, download_url, md5sum, safe_extract_tar
from ..platform.errors import DataError
from .catalog import CIFAR, FOLDERS, NUM_CLASSES, PRETTY_NAMES

__all__ = ["CifarArrays", "read_split", "split_files", "count_records", "class_names", "ensure_dataset",
           "archive_url", "check_dataset", "ARCHIVES", "BASE_URL", "CIFAR10_CLASSES", "CIFAR100_CLASSES",
           "OFFICIAL_CLASSES", "META_FILES", "RECORD_BYTES"]

_LOG = logging.getLogger(__name__)

NUM_COARSE = 20
PIXEL_BYTES = 32 * 32 * 3
LABEL_BYTES = {"cifar10": 1, "cifar100": 2}
RECORD_BYTES = {d: LABEL_BYTES[d] + PIXEL_BYTES for d in CIFAR}     # 3073, 3074
_PATTERNS = {
    "cifar10": {"train": re.compile(r"^data_batch_\d+\.bin$"), "val": re.compile(r"^test_batch(_\d+)?\.bin$")},
    "cifar100": {"train": re.compile(r"^train(_\d+)?\.bin$"), "val": re.compile(r"^test(_\d+)?\.bin$")},
}
_CANONICAL = {"cifar10": {"train": "data_batch_<n>.bin", "val": "test_batch.bin"},
              "cifar100": {"train": "train.bin", "val": "test.bin"}}
META_FILES = {"cifar10": "batches.meta.txt", "cifar100": "fine_label_names.txt"}
COARSE_META_FILE = "coarse_label_names.txt"
# The official class names (the content of the meta files above), for when no data folder is at
# hand (e.g. inference on a deployment machine).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm")
OFFICIAL_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}

# Official archives. The base URL can be overridden with the environment variable CONVMLP_CIFAR_URL
# (a mirror, or a local server in tests).
BASE_URL = "https://www.cs.toronto.edu/~kriz/"
ARCHIVES = {"cifar10": ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
            "cifar100": ("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8")}


@dataclass
class CifarArrays:
    """One decoded split. `images` uint8 (N, 32, 32, 3) HWC RGB; `labels` int32 (N,) (the fine
    labels for CIFAR-100); `coarse` int32 (N,) for CIFAR-100, else None; `files` the paths read."""
    images: np.ndarray
    labels: np.ndarray
    coarse: Optional[np.ndarray]
    files: List[str]

    def __len__(self):
        return len(self.labels)


def _other(dataset):
    return "cifar100" if dataset == "cifar10" else "cifar10"


def check_dataset(dataset):
    if dataset not in CIFAR:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(CIFAR)}")


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------------------------
# Finding and reading files
# --------------------------------------------------------------------------------------------
def _check_folder(folder, dataset):
    if not os.path.exists(folder):
        raise DataError(f"dataset folder {folder} does not exist; expected the {PRETTY_NAMES[dataset]} binary files "
                        f"there (see data/README.md, or set download: true)")
    if not os.path.isdir(folder):
        raise DataError(f"dataset path {folder} is not a folder; expected the folder holding the "
                        f"{PRETTY_NAMES[dataset]} .bin files")


def split_files(folder, dataset, split, any_names=False):
    """The ``.bin`` files of `split` ("train" or "val") in `folder`, by the rule in the module doc."""
    check_dataset(dataset)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    _check_folder(folder, dataset)
    try:
        # hidden files are skipped (e.g. macOS "._data_batch_1.bin" resource forks)
        names = sorted((n for n in os.listdir(folder) if n.endswith(".bin") and not n.startswith(".")),
                       key=_natural_key)
    except OSError as exc:
        raise DataError(f"dataset folder {folder} cannot be listed ({exc.strerror})") from None
    if not names:
        raise DataError(f"dataset folder {folder} has no .bin files; expected the {PRETTY_NAMES[dataset]} binary "
                        f"files ({_CANONICAL[dataset]['train']}, {_CANONICAL[dataset]['val']})")
    own = [n for n in names if any(p.match(n) for p in _PATTERNS[dataset].values())]
    foreign = [n for n in names if any(p.match(n) for p in _PATTERNS[_other(dataset)].values())]
    if not own and foreign:
        other = _other(dataset)
        raise DataError(f"dataset folder {folder} looks like {PRETTY_NAMES[other]} ({', '.join(foreign[:3])}), but "
                        f"dataset_choose is {dataset}; expected {_CANONICAL[dataset]['train']} and "
                        f"{_CANONICAL[dataset]['val']}, or set dataset_choose: {other}")
    chosen = [n for n in names if _PATTERNS[dataset][split].match(n)]
    if not chosen:
        if not any_names:
            raise DataError(f"dataset folder {folder} has no {split} files for {PRETTY_NAMES[dataset]} (expected "
                            f"{_CANONICAL[dataset][split]}; found {', '.join(names[:5])}); other names are "
                            f"used only when train_data_path and val_data_path are different folders")
        other = "val" if split == "train" else "train"
        chosen = [n for n in names if not _PATTERNS[dataset][other].match(n)]
        if not chosen:
            doing = ("train on the test set" if split == "train" else "evaluate on training data")
            raise DataError(f"{split} folder {folder} holds only {other}-split files of {PRETTY_NAMES[dataset]} "
                            f"({', '.join(names[:5])}): reading {os.path.join(folder, names[0])} as the {split} "
                            f"split would {doing}; expected {_CANONICAL[dataset][split]} (or other names that "
                            f"are not {_CANONICAL[dataset][other]})")
    return [os.path.join(folder, n) for n in chosen]


def _file_records(path, dataset):
    """Number of records in `path`, from its size; DataError if it is not a whole number."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror})") from None
    if not os.path.isfile(path):
        raise DataError(f"{path} is not a regular file; expected a file of {PRETTY_NAMES[dataset]} records")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path} cannot be read (permission denied); expected a readable file")
    rec = RECORD_BYTES[dataset]
    if size % rec == 0:
        return size // rec
    other = _other(dataset)
    orec = RECORD_BYTES[other]
    if size % orec == 0:
        raise DataError(f"{path}: size {size} bytes is not a whole number of {rec}-byte {PRETTY_NAMES[dataset]} records "
                        f"but is of {orec}-byte {PRETTY_NAMES[other]} records; is this a {PRETTY_NAMES[other]} file? "
                        f"(set dataset_choose: {other})")
    raise DataError(f"{path}: size {size} bytes is not a whole number of {rec}-byte {PRETTY_NAMES[dataset]} records "
                    f"({size // rec} records + {size % rec} bytes): truncated or trailing bytes")


def _plausible(raw_bytes, dataset):
    """Whether the bytes parse as `dataset` records with all labels in range."""
    rec = RECORD_BYTES[dataset]
    if len(raw_bytes) % rec or not len(raw_bytes):
        return False
    raw = raw_bytes.reshape(-1, rec)
    if dataset == "cifar10":
        return bool((raw[:, 0] < 10).all())
    return bool((raw[:, 0] < NUM_COARSE).all() and (raw[:, 1] < 100).all())


def _label_error(path, dataset, raw_bytes, index, value, what, allowed):
    other = _other(dataset)
    hint = ""
    if _plausible(raw_bytes, other):
        hint = f"; the file parses as {PRETTY_NAMES[other]} records, set dataset_choose: {other}"
    return DataError(f"{path}: record {index} has {what} {value}, expected {allowed} for {PRETTY_NAMES[dataset]}{hint}")


def _decode_file(path, dataset, n, images_out, labels_out, coarse_out):
    """Decode `n` records of `path` into the given output slices, validating the labels."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror})") from None
    rec = RECORD_BYTES[dataset]
    if len(buf) != n * rec:
        raise DataError(f"{path} changed while being read (expected {n * rec} bytes, got {len(buf)})")
    flat = np.frombuffer(buf, dtype=np.uint8)
    raw = flat.reshape(n, rec)
    if dataset == "cifar10":
        labels = raw[:, 0]
        bad = np.flatnonzero(labels >= 10)
        if bad.size:
            raise _label_error(path, dataset, flat, int(bad[0]), int(labels[bad[0]]), "label", "0..9")
    else:
        coarse, labels = raw[:, 0], raw[:, 1]
        bad = np.flatnonzero(labels >= 100)
        if bad.size:
            raise _label_error(path, dataset, flat, int(bad[0]), int(labels[bad[0]]), "fine label", "0..99")
        bad = np.flatnonzero(coarse >= NUM_COARSE)
        if bad.size:
            raise _label_error(path, dataset, flat, int(bad[0]), int(coarse[bad[0]]), "coarse label",
                               f"0..{NUM_COARSE - 1}")
        coarse_out[:] = coarse
    labels_out[:] = labels
    # (N, 3, 32, 32) planes -> (N, 32, 32, 3) HWC
    images_out[:] = raw[:, LABEL_BYTES[dataset]:].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)


def count_records(folder, dataset, split, any_names=False):
    """Number of records of `split` in `folder`, from the file sizes (sizes validated, labels not)."""
    return sum(_file_records(p, dataset) for p in split_files(folder, dataset, split, any_names))


def read_split(folder, dataset, split, any_names=False):
    """Read and validate one split of a CIFAR binary folder; returns :class:`CifarArrays`.

    `dataset` is "cifar10" or "cifar100", `split` is "train" or "val". `any_names`: use every
    ``*.bin`` when the folder has no canonical files for the split (set it when the train and val
    folders differ). Raises DataError for a missing or empty folder, a file that is not a whole
    number of records, a folder or file of the other CIFAR, labels out of range, an unreadable file
    and a split without records.
    """
    files = split_files(folder, dataset, split, any_names)
    counts = [_file_records(p, dataset) for p in files]
    total = sum(counts)
    for path, n in zip(files, counts):
        if n == 0 and total:
            _LOG.warning("%s is empty (0 records); is it an incomplete copy?", path)
    if total == 0:
        raise DataError(f"the {split} split in {folder} has no records (files: "
                        f"{', '.join(os.path.basename(p) for p in files)} are empty); expected "
                        f"{RECORD_BYTES[dataset]}-byte {PRETTY_NAMES[dataset]} records")
    images = np.empty((total, 32, 32, 3), np.uint8)
    labels = np.empty(total, np.int32)
    coarse = np.empty(total, np.int32) if dataset == "cifar100" else None
    start = 0
    for path, n in zip(files, counts):
        end = start + n
        _decode_file(path, dataset, n, images[start:end], labels[start:end],
                     coarse[start:end] if coarse is not None else None)
        start = end
    return CifarArrays(images, labels, coarse, files)


def class_names(folder, dataset, coarse=False, with_source=False):
    """Class names of `dataset`: the meta file in `folder` when it is there and complete
    (``batches.meta.txt`` / ``fine_label_names.txt``, or ``coarse_label_names.txt`` with `coarse`),
    else the official names (:data:`OFFICIAL_CLASSES`; ``coarse_<i>`` for the coarse labels).
    With `with_source`, returns ``(names, source)``: the meta file's path, or "official"."""
    check_dataset(dataset)
    n = NUM_COARSE if coarse else NUM_CLASSES[dataset]
    path = os.path.join(folder, COARSE_META_FILE if coarse else META_FILES[dataset])
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as exc:
            _LOG.warning("cannot read %s (%s); using the official class names", path, exc.strerror)
        else:
            if len(names) == n:
                return (names, path) if with_source else names
            _LOG.warning("%s has %d names, expected %d; using the official class names", path, len(names), n)
    names = [f"coarse_{i}" for i in range(n)] if coarse else list(OFFICIAL_CLASSES[dataset])
    return (names, "official") if with_source else names


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------
def archive_url(dataset):
    """URL of the official binary archive of `dataset` (base from $CONVMLP_CIFAR_URL if set)."""
    base = os.environ.get("CONVMLP_CIFAR_URL") or BASE_URL
    return base.rstrip("/") + "/" + ARCHIVES[dataset][0]


def ensure_dataset(folder, dataset, download):
    """Make sure `folder` exists; when it is missing and `download` is true, download the official
    archive into the folder's parent (md5-checked, reused if already there) and extract it safely.

    Returns `folder`. Raises DataError when the folder is missing and `download` is off, when the
    download fails (saying where to put the files by hand), or when the archive does not produce
    `folder` (its name must be cifar-10-batches-bin / cifar-100-binary)."""
    check_dataset(dataset)
    if os.path.exists(folder):
        _check_folder(folder, dataset)
        return folder
    url = archive_url(dataset)
    if not download:
        raise DataError(f"dataset folder {folder} does not exist; put the {PRETTY_NAMES[dataset]} binary files there "
                        f"(extracted from {url}) or set download: true")
    parent = os.path.dirname(os.path.abspath(folder))
    name, md5 = ARCHIVES[dataset]
    archive = os.path.join(parent, name)
    if os.path.isfile(archive) and md5sum(archive) == md5:
        _LOG.info("using the already downloaded %s", archive)
    else:
        _LOG.info("downloading %s to %s", url, archive)
        try:
            download_url(url, archive, md5=md5, desc=name)
        except DownloadError as exc:
            raise DataError(f"could not download {url} ({exc.reason}); without network, download it elsewhere "
                            f"and put it at {archive}, or extract it so that {folder} holds the "
                            f"{PRETTY_NAMES[dataset]} .bin files") from None
    safe_extract_tar(archive, parent)
    if not os.path.isdir(folder):
        extracted = os.path.join(parent, FOLDERS[dataset])
        raise DataError(f"{archive} was extracted to {extracted}, but the configured folder is {folder}; "
                        f"expected a folder named {FOLDERS[dataset]} (set the data path to {extracted})")
    _LOG.info("extracted %s into %s", archive, parent)
    return folder
