"""Generated data for demos and tests: learnable synthetic images (a class is a hue and a pattern)
and writing them as a dataset in the exact CIFAR binary format, or as a class-per-folder tree of
JPEG and PNG files."""
import math
import os
import re
import shutil
import tempfile

import numpy as np

from ..platform.errors import DataError
from ..platform.fileio import atomic_output
from .catalog import NUM_CLASSES
from .cifar import COARSE_META_FILE, META_FILES, NUM_COARSE, PIXEL_BYTES, check_dataset

__all__ = ["synthetic_images", "write_synthetic", "check_replaceable", "write_image_tree", "DEMO_SIZES",
           "TREE_MARKER"]

#: Records of the generated demo sample (``--demo``; written once by src.data.pipeline.prepare_demo).
DEMO_SIZES = {"train": 3000, "val": 1000}

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


def _val_file_name(dataset):
    return "test_batch.bin" if dataset == "cifar10" else "test.bin"


#: Every data file name a generation of either dataset can write (train files, val file).
_GENERATED_DATA = re.compile(r"data_batch_[1-9]\d*\.bin|test_batch\.bin|train(_[1-9]\d*)?\.bin|test\.bin")


def _remove_stale(folder, written):
    """Delete the data files of an earlier generation in `folder` that this one did not write (a
    generation with fewer files, or without a val split): the folder then holds exactly the
    records reported. Only names a generation writes are touched; other files are the user's."""
    for name in os.listdir(folder):
        if name not in written and _GENERATED_DATA.fullmatch(name) and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))


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


def _file_counts(dataset, n_train, files):
    """Records per train file: `files` None (CIFAR-10: 5 files of nearly equal, possibly odd, sizes;
    CIFAR-100: one), an int (that many files) or a list of counts summing to `n_train`."""
    if files is None:
        files = 5 if dataset == "cifar10" else 1
    if isinstance(files, int):
        if files < 1:
            raise ValueError("files must be >= 1")
        return [n_train // files + (1 if i < n_train % files else 0) for i in range(files)]
    counts = [int(c) for c in files]
    if sum(counts) != n_train:
        raise ValueError(f"file record counts {counts} sum to {sum(counts)}, not n_train={n_train}")
    return counts


def write_synthetic(folder, dataset, n_train, n_val, seed=0, files=None, noise=0.2, chunk=4096):
    """Write a learnable synthetic dataset in the exact CIFAR binary layout into `folder`.

    `files`: how the train records are split into files: None (CIFAR-10: 5 files of nearly equal,
    possibly odd, sizes; CIFAR-100: one ``train.bin``), an int (that many files), or a list of
    record counts (summing to `n_train`). The val split goes to ``test_batch.bin`` / ``test.bin``
    (not written when `n_val` is 0). Class-name files are written too. Labels are balanced and
    shuffled. An existing folder must hold generated data (:func:`check_replaceable`); the data
    files of its earlier generation that this one does not write are removed. Returns `folder`. See
    :func:`synthetic_images` for the images.
    """
    check_dataset(dataset)
    check_replaceable(folder, dataset)
    num_classes = NUM_CLASSES[dataset]
    counts = _file_counts(dataset, n_train, files)
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

    written = _train_file_names(dataset, len(counts)) + ([_val_file_name(dataset)] if n_val else [])
    try:
        for name, n in zip(written, counts + [n_val]):
            write(os.path.join(target, name), n)
        write_text(os.path.join(target, META_FILES[dataset]), "".join(f"synthetic_{i}\n" for i in range(num_classes)))
        if dataset == "cifar100":
            write_text(os.path.join(target, COARSE_META_FILE),
                       "".join(f"synthetic_super_{i}\n" for i in range(NUM_COARSE)))
        if not new_folder:
            _remove_stale(target, written)
        else:
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


#: The hidden file that marks a tree :func:`write_image_tree` wrote (and may write again).
TREE_MARKER = ".generated-image-tree"


def write_image_tree(folder, num_classes, n_train, n_val, seed=0, sizes=(40, 72), noise=0.2):
    """Write a learnable class-per-folder tree: ``folder/train/synthetic_<k>/<n>.jpg|png`` and
    ``folder/val/...`` (none when `n_val` is 0). Images are :func:`synthetic_images` resized (bicubic)
    to a random width and height in `sizes`, every other one a JPEG (quality 95) or a PNG; labels
    balanced. Only a missing or empty folder, or one this function wrote, is written into; images of
    an earlier generation there that this one does not write are removed (only the names it
    writes), so that the tree holds exactly what was asked for. Returns ``{"train": path, "val": path}``."""
    from PIL import Image
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, TREE_MARKER)):
        raise DataError(f"{folder} already holds files that were not generated (no {TREE_MARKER}); generated "
                        "data would be mixed with them: give another --out (nothing was written)")
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, TREE_MARKER), "w").close()
    out, written = {}, set()
    for split, n in (("train", n_train), ("val", n_val)):
        if not n:
            continue
        labels = rng.permutation(np.arange(n) % num_classes)
        pictures = synthetic_images(labels, num_classes, rng, noise)
        out[split] = os.path.join(folder, split)
        for i, (label, pic) in enumerate(zip(labels, pictures)):
            sub = os.path.join(out[split], f"synthetic_{label}")
            os.makedirs(sub, exist_ok=True)
            w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
            image = Image.fromarray(pic).resize((w, h), Image.BICUBIC)
            path = os.path.join(sub, f"{i:05d}.{'jpg' if i % 2 == 0 else 'png'}")
            with atomic_output(path) as tmp:
                image.save(tmp, format="JPEG" if i % 2 == 0 else "PNG", quality=95)
            written.add(path)
    _remove_stale_images(folder, written)
    return out


_GENERATED_IMAGE = re.compile(r"\d{5}\.(jpg|png)")
_GENERATED_CLASS = re.compile(r"synthetic_\d+")


def _remove_stale_images(folder, written):
    """Delete the images of an earlier :func:`write_image_tree` in `folder` that this one did not
    write, and the class folders they leave empty; other files are the user's and stay."""
    for split in ("train", "val"):
        root = os.path.join(folder, split)
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        for cls in os.listdir(root):
            sub = os.path.join(root, cls)
            if not _GENERATED_CLASS.fullmatch(cls) or not os.path.isdir(sub) or os.path.islink(sub):
                continue
            for name in os.listdir(sub):
                path = os.path.join(sub, name)
                if path not in written and _GENERATED_IMAGE.fullmatch(name) and os.path.isfile(path):
                    os.remove(path)
            if not os.listdir(sub):
                os.rmdir(sub)
        if not os.listdir(root):
            os.rmdir(root)
