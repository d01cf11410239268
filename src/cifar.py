"""CIFAR-10/100 in the binary release: reading with validation, download, class names, and a
generator of learnable synthetic data in the same format.

Layout (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"):

* CIFAR-10, folder ``cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train),
  ``test_batch.bin`` (val), ``batches.meta.txt`` (class names, one per line). One record =
  1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B, each a row-major 32x32 plane).
* CIFAR-100, folder ``cifar-100-binary/``: ``train.bin``, ``test.bin``, ``fine_label_names.txt``,
  ``coarse_label_names.txt``. One record = coarse label byte + fine label byte + 3072 pixel bytes.

Which files form a split:

1. the canonical names, when the folder has any: CIFAR-10 train ``data_batch_<n>.bin``, val
   ``test_batch.bin`` (or ``test_batch_<n>.bin``); CIFAR-100 train ``train.bin`` (or
   ``train_<n>.bin``), val ``test.bin`` (or ``test_<n>.bin``);
2. otherwise, when the train and val folders are different folders (``any_names=True``), every
   ``*.bin`` in the folder except those named for the *other* split: a file named ``test_batch.bin``
   (``test.bin``) is never trained on, ``data_batch_<n>.bin`` (``train.bin``) never evaluated on;
3. otherwise an error: a folder shared by both splits must use the canonical names, and a folder
   whose only files are named for the other split (a training folder holding just
   ``test_batch.bin``) is an error naming them, instead of training on the test set.

Any number of records per file is accepted. Everything is validated before training starts and
every problem raises :class:`errors.DataError` with one line naming the file and the expectation.

Command line: ``python dataset.py generate|download|check`` (see dataset.py).
"""
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .download import DownloadError, download_url, md5sum, safe_extract_tar
from .errors import DataError
from .fileio import atomic_output

__all__ = ["CifarArrays", "read_split", "split_files", "count_records", "class_names", "write_synthetic",
           "synthetic_images", "check_replaceable", "ensure_dataset", "archive_url", "DATASETS", "NUM_CLASSES",
           "FOLDERS", "MEAN", "STD", "PRETTY_NAMES", "ARCHIVES", "BASE_URL",
           "CIFAR10_CLASSES", "CIFAR100_CLASSES", "OFFICIAL_CLASSES"]

_LOG = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
NUM_COARSE = 20
PRETTY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
FOLDERS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}
# Per-channel statistics of the training images (RGB, 0..1), used to normalise the inputs.
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4867, 0.4408)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2675, 0.2565, 0.2761)}
PIXEL_BYTES = 32 * 32 * 3
LABEL_BYTES = {"cifar10": 1, "cifar100": 2}
RECORD_BYTES = {d: LABEL_BYTES[d] + PIXEL_BYTES for d in DATASETS}     # 3073, 3074
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


def _check_dataset(dataset):
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


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
    _check_dataset(dataset)
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
    _check_dataset(dataset)
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
    _check_dataset(dataset)
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


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------
_PATTERN_KINDS = ("hstripes", "vstripes", "checker", "rings", "dots")


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB, all arrays of the same shape with values in [0, 1]; returns (..., 3)."""
    h = (h % 1.0) * 6.0
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def synthetic_images(labels, num_classes, rng, noise=0.2):
    """Learnable 32x32 RGB images (uint8, N x 32 x 32 x 3) for the given labels.

    A class is a (hue, pattern) pair: the pattern is one of horizontal stripes, vertical stripes,
    checkerboard, rings or dots at two frequencies (2 patterns for <= 10 classes, 10 for more),
    the hue one of ceil(num_classes / patterns) hues. Both must be recognised (neither alone gives
    the class); all patterns survive a horizontal flip. Per image: random phase, centre, frequency
    (+-12%), hue (+-0.02), saturation, brightness, contrast, a distracting blob of random colour,
    and Gaussian pixel noise of std `noise` (in 0..1 units).
    """
    labels = np.asarray(labels)
    n = len(labels)
    n_pat = 2 if num_classes <= 10 else 10
    n_hues = max(1, math.ceil(num_classes / n_pat))
    hue_idx, pat_idx = labels // n_pat, labels % n_pat
    kind = pat_idx % 5
    freq = np.where(pat_idx >= 5, 4.5, 2.5) * rng.uniform(0.88, 1.12, n)

    grid = (np.arange(32) + 0.5) / 32.0
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    yy, xx = yy[None], xx[None]
    cy, cx = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    ph1, ph2 = rng.uniform(0, 2 * np.pi, (2, n, 1, 1))
    f = freq[:, None, None] * 2 * np.pi
    k = kind[:, None, None]
    s_h = np.sin(f * yy + ph1)
    s_v = np.sin(f * xx + ph1)
    s_c = np.sign(np.sin(f * yy + ph1) * np.sin(f * xx + ph2))
    s_r = np.sin(f * 1.2 * np.hypot(yy - cy, xx - cx) + ph1)
    s_d = np.where(np.cos(f * (yy - cy)) * np.cos(f * (xx - cx)) > 0.55, 1.0, -1.0)
    pattern = np.choose(k, [s_h, s_v, s_c, s_r, s_d])                 # (n, 32, 32) in [-1, 1]

    hue = hue_idx / n_hues + rng.normal(0, 0.02, n)
    sat = rng.uniform(0.55, 0.95, n)
    val = rng.uniform(0.55, 0.95, n)
    fg = _hsv_to_rgb(hue, sat, val)                                     # (n, 3)
    bg = _hsv_to_rgb(hue + 0.5, sat * 0.4, val * rng.uniform(0.25, 0.5, n))
    amp = rng.uniform(0.6, 1.0, n)[:, None, None, None]
    w = (pattern[..., None] * 0.5 + 0.5) * amp
    img = bg[:, None, None, :] * (1 - w) + fg[:, None, None, :] * w

    # distractor: a soft blob of random colour at a random place
    by, bx = rng.uniform(0.1, 0.9, (2, n, 1, 1))
    radius = rng.uniform(0.08, 0.2, (n, 1, 1))
    blob = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * radius ** 2))[..., None] * 0.8
    blob_rgb = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.3, 1, n), rng.uniform(0.3, 1, n))
    img = img * (1 - blob) + blob_rgb[:, None, None, :] * blob

    img = img + rng.normal(0, noise, img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _records(dataset, images, labels, num_classes):
    """Serialise HWC images and labels into CIFAR binary records (bytes)."""
    n = len(labels)
    planes = images.transpose(0, 3, 1, 2).reshape(n, PIXEL_BYTES)
    if dataset == "cifar10":
        head = labels.astype(np.uint8)[:, None]
    else:
        coarse = (labels * NUM_COARSE // num_classes).astype(np.uint8)
        head = np.stack([coarse, labels.astype(np.uint8)], axis=1)
    return np.concatenate([head, planes], axis=1).tobytes()


def _train_file_names(dataset, k):
    if dataset == "cifar10":
        return [f"data_batch_{i + 1}.bin" for i in range(k)]
    return ["train.bin"] if k == 1 else [f"train_{i + 1}.bin" for i in range(k)]


def check_replaceable(folder, dataset):
    """DataError unless `folder` is missing, empty, or holds data that :func:`write_synthetic`
    wrote (its class-name file lists ``synthetic_*`` names): generating data must never replace a
    real dataset."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DataError(f"cannot read folder {folder}: {exc.strerror}") from None
    if not entries:
        return
    meta = os.path.join(folder, META_FILES[dataset])
    try:
        with open(meta, encoding="utf-8", errors="replace") as f:
            first = f.readline().strip()
    except OSError:
        first = ""
    if not first.startswith("synthetic_"):
        raise DataError(f"{folder} already holds data that was not generated ({meta} does not list synthetic_* "
                        "class names); generated data would replace it: give another --out (nothing was written)")


def write_synthetic(folder, dataset, n_train, n_val, seed=0, files=None, noise=0.2, chunk=4096):
    """Write a learnable synthetic dataset in the exact CIFAR binary layout into `folder`.

    `files`: how the train records are split into files: None (CIFAR-10: 5 files of nearly equal,
    possibly odd, sizes; CIFAR-100: one ``train.bin``), an int (that many files), or a list of
    record counts (summing to `n_train`). The val split goes to ``test_batch.bin`` / ``test.bin``
    (not written when `n_val` is 0). Class-name files are written too. Labels are balanced and
    shuffled. Returns `folder`. See :func:`synthetic_images` for the images.
    """
    _check_dataset(dataset)
    num_classes = NUM_CLASSES[dataset]
    if files is None:
        files = 5 if dataset == "cifar10" else 1
    if isinstance(files, int):
        if files < 1:
            raise ValueError("files must be >= 1")
        counts = [n_train // files + (1 if i < n_train % files else 0) for i in range(files)]
    else:
        counts = [int(c) for c in files]
        if sum(counts) != n_train:
            raise ValueError(f"file record counts {counts} sum to {sum(counts)}, not n_train={n_train}")
    rng = np.random.default_rng(seed)
    # A new folder is written under a temporary name and renamed at the end, so that a folder that
    # exists is complete (other processes may wait for it); an existing folder is written in place.
    final = os.path.abspath(folder)
    new_folder = not os.path.exists(final)
    target = final
    if new_folder:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        target = tempfile.mkdtemp(prefix="." + os.path.basename(final) + ".", dir=os.path.dirname(final))

    def write(path, n):
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                for s in range(0, n, chunk):
                    lab = labels[s:s + chunk]
                    f.write(_records(dataset, synthetic_images(lab, num_classes, rng, noise), lab, num_classes))

    def write_text(path, text):
        with atomic_output(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)

    try:
        for name, n in zip(_train_file_names(dataset, len(counts)), counts):
            write(os.path.join(target, name), n)
        if n_val:
            write(os.path.join(target, "test_batch.bin" if dataset == "cifar10" else "test.bin"), n_val)
        write_text(os.path.join(target, META_FILES[dataset]), "".join(f"synthetic_{i}\n" for i in range(num_classes)))
        if dataset == "cifar100":
            write_text(os.path.join(target, COARSE_META_FILE),
                       "".join(f"synthetic_super_{i}\n" for i in range(NUM_COARSE)))
        if new_folder:
            os.chmod(target, 0o755)
            try:
                os.rename(target, final)
            except OSError:
                if not os.path.isdir(final):   # else another process finished the same folder first
                    raise
    finally:
        if new_folder and os.path.exists(target):
            shutil.rmtree(target, ignore_errors=True)
    return folder
