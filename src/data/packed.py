"""Packed data sets: an image tree or a CIFAR binary folder written as MindRecord shards (MindSpore's
own format for large data sets: a C++ reader that shards and shuffles, no file opened per image),
verified on every read, and read back as the same images with the same labels and class names.

A pack is a folder ``NAME.mindrecord``::

    NAME.mindrecord/
        manifest.json                          written last: classes, splits, shards, sha256 of each file
        train-00000-of-00003.mindrecord        one MindRecord file per shard, with its index
        train-00000-of-00003.mindrecord.db     (records of a split in the source's order)
        ...
        val-00000-of-00001.mindrecord(.db)

Rules:

* **Records** hold ``image`` (the image file's own bytes; CIFAR pixels as lossless PNG; with
  ``max_side`` an image longer than that is decoded by :func:`.images.read_image` -- EXIF orientation
  applied --, shrunk to ``max_side`` on its longer side (Pillow bicubic) and stored as JPEG quality
  :data:`JPEG_QUALITY`), ``label`` and ``name`` (the file's path under the tree, ``train/000123`` for
  CIFAR). Read back, ``image`` is decoded by :func:`.images.read_image`: the rule a folder is read with.
* **Splits**: a tree whose sub-folders are split folders (``train``, ``val``, ...), and a CIFAR
  folder (``train``, ``val``), give one split each; any other tree is the one split ``all``. A
  reader of split ``val`` takes ``val``, else ``valid``/``validation``/``test``; the split ``all``
  serves both (as the same folder given twice would). A split without records is left out.
* **Writing is atomic**: the shards are written in ``.NAME.mindrecord.partial`` beside the output, one
  at a time, each followed by a small ``.done`` file holding its checksums; the manifest comes last
  and the folder is then renamed to ``NAME.mindrecord``, so a pack appears whole or not at all. A pack
  that was killed resumes: the same input and options find the partial folder, keep each finished
  shard whose checksums still match and write the rest; the result is the same, byte for byte, as
  an uninterrupted pack. On an error the partial folder is removed. One pack writes an output at a
  time (a POSIX lock on ``.NAME.mindrecord.lock``); only an earlier pack is replaced.
* **Reading is verified**: each shard's size and modification time are compared with the manifest
  (a shard with another time is hashed, once per process); ``dataset.py check`` hashes every file
  and decodes every record. Images were checked when packed (``--skip_bad_images`` leaves bad ones
  out there); a record that still fails to decode stops a run with one line naming it.
* **Reading is sharded** by MindRecord's reader: for training a seeded global shuffle of which shard
  ``k`` of ``n`` takes every ``n``-th record from the ``k``-th (the distributed sampler's rule for a
  folder); for evaluation records ``k, k + n, ...`` without padding.
"""
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..platform.bounds import check_disk_space, format_bytes
from ..platform.errors import ConfigError, DataError, UserError, shown_name
from ..platform.fileio import OutputError, atomic_output, check_name_length, file_sha256
from . import cifar, imagefolder
from .catalog import CIFAR, SPLIT_NAMES, split_folders
from .images import read_image

__all__ = ["SUFFIX", "MANIFEST", "JPEG_QUALITY", "DEFAULT_SHARD_SIZE", "is_packed", "pack", "open_pack",
           "PackedSplit", "check_pack", "decode_record"]

#: The name a pack's folder ends with; a data path ending so is read as a pack.
SUFFIX = ".mindrecord"
MANIFEST = "manifest.json"
FORMAT, VERSION = "convmlp-packed", 1
#: JPEG quality of images re-encoded for ``--max_side``.
JPEG_QUALITY = 95
#: Records per shard by default: about 1 GB of ImageNet's JPEG files (110 kB on average).
DEFAULT_SHARD_SIZE = 10_000
#: Room on disk per record besides its image bytes (MindRecord's header, written at its full size,
#: and index), the share of the image bytes that pages leave unused, and the most a CIFAR record
#: takes as PNG: the free space a pack needs is estimated from these before it starts.
RECORD_OVERHEAD, PAGE_SLACK, CIFAR_PNG_BYTES = 1024, 0.1, 4096
#: The one split of a tree without split folders; it serves as train and as val.
WHOLE = "all"
_SCHEMA = {"image": {"type": "bytes"}, "label": {"type": "int32"}, "name": {"type": "string"}}
_COLUMNS = ["image", "label", "name"]


def is_packed(path):
    """Whether a data path names a pack (it ends with :data:`SUFFIX`)."""
    return bool(path) and os.fspath(path).rstrip("/\\").endswith(SUFFIX)


def _file_facts(path):
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}


# --------------------------------------------------------------------------------------------
# What to pack
# --------------------------------------------------------------------------------------------
@dataclass
class _Split:
    """The records of one split to write: `items` are image files (a tree) or uint8 HWC arrays (CIFAR)."""
    name: str
    items: list
    labels: np.ndarray
    names: List[str]
    shape: Optional[list] = None


def _tree_splits(path, workers, skip_bad, min_side, report):
    splits, classes, first = [], None, None
    for name, root in [(n, os.path.join(path, n)) for n in split_folders(os.listdir(path))] or [(WHOLE, path)]:
        tree = imagefolder.check_images(imagefolder.scan_tree(root), workers, skip_bad=skip_bad, min_side=min_side)
        if tree.bad:
            report(f"warning: {shown_name(root)}: --skip_bad_images: left out {len(tree.bad)} bad image file(s), "
                   f"e.g. {tree.bad[0][1]}")
        if tree.skipped:
            report(f"{shown_name(root)}: skipped {len(tree.skipped)} file(s) without an image extension, "
                   f"e.g. {shown_name(tree.skipped[0])}")
        if classes is None:
            classes, first = list(tree.classes), root
        else:
            imagefolder.check_same_classes(classes, first, tree, f"{name} split")
        names = [_record_name(os.path.relpath(p, path)) for p in tree.files]
        splits.append(_Split(name, list(tree.files), tree.labels, names))
    return "imagefolder", classes, splits


def _record_name(relpath):
    """A file's path under the tree as a record names it (for messages): ``/``-separated, and bytes
    that are not UTF-8 (kept by Python as surrogates) written as ``\\xNN``."""
    return relpath.replace(os.sep, "/").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _cifar_splits(path, dataset):
    splits = []
    for split in ("train", "val"):
        arrays = cifar.read_split(path, dataset, split)
        names = [f"{split}/{i:06d}" for i in range(len(arrays))]
        splits.append(_Split(split, list(arrays.images), arrays.labels, names, shape=list(arrays.images.shape[1:3])))
    return dataset, cifar.class_names(path, dataset), splits


def _sources(path, dataset, workers, skip_bad, min_side, report):
    """``(kind, classes, splits)`` of the folder `path`: a CIFAR folder (.bin files) or an image tree."""
    if not os.path.isdir(path):
        raise DataError(f"--path {shown_name(path)}: " + ("not a folder" if os.path.exists(path) else "does not exist")
                        + "; expected an image tree (root/<class>/<image>) or a CIFAR folder of .bin files")
    if dataset in CIFAR or (dataset is None and any(n.endswith(".bin") for n in os.listdir(path))):
        return _cifar_splits(path, dataset or "cifar10")
    return _tree_splits(path, workers, skip_bad, min_side, report)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _encode(item, max_side):
    """The bytes a record stores for `item`: a file's own bytes (re-encoded when longer than
    `max_side`), or a CIFAR array as PNG."""
    from PIL import Image
    if not isinstance(item, str):
        buf = io.BytesIO()
        Image.fromarray(item).save(buf, format="PNG")
        return buf.getvalue()
    with open(item, "rb") as f:
        data = f.read()
    if max_side is None:
        return data
    with Image.open(io.BytesIO(data)) as im:
        size = im.size
    if max(size) <= max_side:     # small enough: kept as it is (the read rule applies EXIF orientation)
        return data
    rgb = read_image(item, max_side)       # a large JPEG decoded at reduced size, still >= max_side
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    buf = io.BytesIO()
    Image.fromarray(rgb).resize(new, Image.BICUBIC).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _bound(item, max_side):
    """The most bytes a record of `item` stores: the file's size, or for a file re-encoded at most
    `max_side` px the raw RGB size (more than a JPEG of it takes); a CIFAR PNG :data:`CIFAR_PNG_BYTES`."""
    if not isinstance(item, str):
        return CIFAR_PNG_BYTES
    size = os.path.getsize(item)
    return max(size, 3 * max_side * max_side + 65536) if max_side else size


def _pow2(n, low, high):
    return min(high, max(low, 1 << (max(1, int(n)) - 1).bit_length()))


def _write_shard(path, records, largest, count):
    """One MindRecord file (and its index ``.db``) at `path` holding the `records` (an iterable of
    `count` dicts whose images take at most `largest` bytes), 500 at a time in memory. MindRecord
    writes its header and pages at their full size: the page is sized to twice the largest image,
    the header to the pages' index."""
    from mindspore.mindrecord import FileWriter
    page = _pow2(2 * largest + 4096, 1 << 15, 1 << 28)
    writer = FileWriter(path, shard_num=1, overwrite=False)
    writer.set_page_size(page)
    writer.set_header_size(_pow2(65536 + 256 * (2 * count + count * largest // page), 1 << 14, 1 << 27))
    writer.add_schema(_SCHEMA, "convmlp packed images")
    chunk = []
    for record in records:
        chunk.append(record)
        if len(chunk) == 500:
            writer.write_raw_data(chunk)
            chunk = []
    if chunk:
        writer.write_raw_data(chunk)
    writer.commit()


def _shard_name(split, k, n):
    return f"{split}-{k:05d}-of-{n:05d}{SUFFIX}"


def _plan(kind, classes, splits, shard_size, max_side):
    """What the pack will hold, as JSON: the same input and options give the same plan (a resumed
    pack continues only a partial pack of the same plan)."""
    def stamp(item):
        if isinstance(item, str):
            st = os.stat(item)
            return [st.st_size, st.st_mtime_ns]
        return hashlib.sha256(item.tobytes()).hexdigest()[:16]
    body = {"format": FORMAT, "version": VERSION, "kind": kind, "classes": classes, "shard_size": shard_size,
            "max_side": max_side, "jpeg_quality": JPEG_QUALITY if max_side else None,
            "splits": {s.name: {"names": s.names, "labels": s.labels.tolist(), "stamps": [stamp(i) for i in s.items]}
                       for s in splits}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write_json(path, obj):
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_OURS = ("plan.json", MANIFEST)


def _ours(name):
    return name in _OURS or name.endswith((SUFFIX, SUFFIX + ".db", ".done")) or ".tmp-" in name


def _remove_ours(folder):
    """Delete a partial or replaced pack folder: only the files a pack writes, then the folder;
    OutputError when it holds anything else."""
    for name in os.listdir(folder):
        if _ours(name) and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    try:
        os.rmdir(folder)
    except OSError:
        others = ", ".join(shown_name(n) for n in sorted(os.listdir(folder))[:3])
        raise OutputError(f"{shown_name(folder)} holds files that a pack does not write: {others}; "
                          "move them away or give another --out") from None


def _partial_of(out):
    folder, name = os.path.split(os.path.abspath(out))
    return os.path.join(folder, f".{name}.partial")


@contextlib.contextmanager
def _one_writer(out):
    """Hold ``.NAME.mindrecord.lock`` beside `out` while packing (a POSIX lock: the kernel releases
    it when the process dies); OutputError when another pack of the same output holds it. A folder
    made for `out` is removed again when the pack fails."""
    folder, name = os.path.split(os.path.abspath(out))
    made, up = [], folder
    while not os.path.lexists(up) and os.path.dirname(up) != up:
        made.append(up)                   # deepest first
        up = os.path.dirname(up)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f".{name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"another dataset.py pack is writing {shown_name(out)} (it holds {shown_name(path)}); "
                          "wait for it to finish "
                          "or give another --out") from None
    ok = False
    try:
        yield
        ok = True
    finally:
        os.remove(path)      # while still locked
        os.close(fd)
        for made_folder in made if not ok else ():
            with contextlib.suppress(OSError):
                os.rmdir(made_folder)      # only when empty (a killed pack's partial folder stays)


def _check_output(out, source):
    """OutputError, before anything is written, when `out` is not a NAME.mindrecord name, is inside
    the input (or holds it), or is something other than an earlier pack."""
    if not is_packed(out):
        raise OutputError(f"--out {shown_name(out)}: expected a name ending with {SUFFIX} (the pack's folder)")
    check_name_length(out, "--out")
    real_out, real_src = os.path.realpath(out), os.path.realpath(source)
    if real_out == real_src or real_out.startswith(real_src + os.sep) or real_src.startswith(real_out + os.sep):
        raise OutputError(f"--out {shown_name(out)} is inside the input {shown_name(source)} (or holds it): the pack "
                          "would be read as data; "
                          "give an --out outside the tree (nothing was written)")
    if os.path.lexists(out):
        manifest = _read_json(os.path.join(out, MANIFEST)) if os.path.isdir(out) else None
        if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT):
            raise OutputError(f"--out {shown_name(out)} exists and is not a pack that dataset.py wrote; give another "
                              "--out "
                              "(only an earlier pack is replaced; nothing was written)")
        others = sorted(n for n in os.listdir(out) if not _ours(n) or not os.path.isfile(os.path.join(out, n)))
        if others:
            raise OutputError(f"--out {shown_name(out)} is an earlier pack that also holds "
                              f"{', '.join(shown_name(n) for n in others[:3])}, which "
                              "replacing it would delete; move them away or give another --out (nothing was written)")


def pack(source, out, dataset=None, shard_size=DEFAULT_SHARD_SIZE, max_side=None, workers=2, skip_bad=False,
         min_side=None, report=print):
    """Pack the image tree or CIFAR folder `source` into the folder `out` (``NAME.mindrecord``), as
    the module docstring says; an earlier pack at `out` is replaced, anything else there refused.
    Images are checked as training checks them (:func:`.imagefolder.check_images` with `min_side`).
    Progress and warnings go to `report` (one line each). Returns the manifest."""
    out = os.path.normpath(out)
    _check_output(out, source)
    kind, classes, splits = _sources(source, dataset, workers, skip_bad, min_side, report)
    with _one_writer(out):
        return _pack(source, out, kind, classes, splits, shard_size, max_side, report)


def _pack(source, out, kind, classes, splits, shard_size, max_side, report):
    nbytes = int(sum(RECORD_OVERHEAD + (1 + PAGE_SLACK) * (CIFAR_PNG_BYTES if not isinstance(i, str) else
                                                           os.path.getsize(i)) for s in splits for i in s.items))
    partial = _partial_of(out)
    plan = _plan(kind, classes, splits, shard_size, max_side)
    done = _resume(partial, plan, report)
    if not done:
        check_disk_space(f"packing {shown_name(source)}", nbytes, os.path.dirname(os.path.abspath(out)),
                         "free some space or give another --out")
    os.makedirs(partial, exist_ok=True)
    try:
        _write_json(os.path.join(partial, "plan.json"), {"plan": plan})
        manifest = _write_splits(partial, splits, shard_size, max_side, done, report)
        manifest.update(format=FORMAT, version=VERSION, kind=kind, classes=classes, shard_size=shard_size,
                        max_side=max_side, jpeg_quality=JPEG_QUALITY if max_side else None)
        _write_json(os.path.join(partial, MANIFEST), manifest)
        _commit(partial, out)
        for name in os.listdir(out):     # the partial pack's own notes (kept until here for a resume)
            if name.endswith(".done") or name == "plan.json":
                os.remove(os.path.join(out, name))
    except (UserError, OSError, RuntimeError, ValueError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, UserError):
            raise
        why = _reason(exc, os.path.dirname(os.path.abspath(out)))
        raise OutputError(f"cannot write {shown_name(out)}: {why}; nothing "
                          "was written") from None
    return manifest


def _reason(exc, folder):
    """The cause of a failed write in one phrase: MindRecord's own ``[ERROR]`` line for its writer's
    RuntimeError; "no space left on device" for ENOSPC or when the disk is full afterwards."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device"
    try:
        if shutil.disk_usage(folder).free < (1 << 20):
            return "no space left on device"
    except OSError:
        pass
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln[len("[ERROR]"):].strip() for ln in lines if ln.startswith("[ERROR]")]
    return (errors or lines or [type(exc).__name__])[0]


def _resume(partial, plan, report):
    """The finished shards (name -> checksums) of a partial pack of the same plan that still match
    their checksums; a partial pack of another plan is removed."""
    if not os.path.isdir(partial):
        return {}
    saved = _read_json(os.path.join(partial, "plan.json"))
    if not (isinstance(saved, dict) and saved.get("plan") == plan):
        _remove_ours(partial)
        return {}
    done = {}
    for name in sorted(os.listdir(partial)):
        if not name.endswith(".done"):
            continue
        facts = _read_json(os.path.join(partial, name))
        shard = os.path.join(partial, name[:-len(".done")])
        try:
            ok = facts["file"] == _file_facts(shard) and facts["db"] == _file_facts(shard + ".db")
        except (OSError, KeyError, TypeError):
            ok = False
        if ok:
            done[name[:-len(".done")]] = facts
        else:
            os.remove(os.path.join(partial, name))
    report(f"resuming the interrupted pack in {shown_name(partial)}: {len(done)} finished shard(s) verified and kept")
    return done


def _write_splits(partial, splits, shard_size, max_side, done, report):
    manifest = {"splits": {}, "stamps": {}}
    for split in splits:
        if not split.items:
            report(f"{split.name}: no records, left out of the pack")
            continue
        n_shards = -(-len(split.items) // shard_size)
        shards = []
        for k in range(n_shards):
            name = _shard_name(split.name, k, n_shards)
            path = os.path.join(partial, name)
            lo, hi = k * shard_size, min(len(split.items), (k + 1) * shard_size)
            if name not in done:
                for leftover in (path, path + ".db"):
                    if os.path.lexists(leftover):
                        os.remove(leftover)
                records = ({"image": _encode(split.items[i], max_side), "label": int(split.labels[i]),
                            "name": split.names[i]} for i in range(lo, hi))
                _write_shard(path, records, max(_bound(split.items[i], max_side) for i in range(lo, hi)), hi - lo)
                facts = {"file": _file_facts(path), "db": _file_facts(path + ".db")}
                _write_json(path + ".done", facts)
                done[name] = facts
                report(f"{split.name}: shard {k + 1}/{n_shards} written ({hi - lo} records)")
            facts = done[name]
            shards.append({"file": name, "records": hi - lo, "bytes": facts["file"]["bytes"],
                           "sha256": facts["file"]["sha256"], "db_bytes": facts["db"]["bytes"],
                           "db_sha256": facts["db"]["sha256"]})
            manifest["stamps"][name] = [os.stat(path).st_mtime_ns, os.stat(path + ".db").st_mtime_ns]
        counts = np.bincount(split.labels, minlength=int(split.labels.max()) + 1 if len(split.labels) else 0)
        manifest["splits"][split.name] = {"records": len(split.items), "counts": counts.tolist(),
                                          "shape": split.shape, "shards": shards}
    return manifest


def _replaced(out):
    folder, name = os.path.split(os.path.abspath(out))
    return os.path.join(folder, f".{name}.old")


def _commit(partial, out):
    """Put the finished pack at `out` in one rename. An earlier pack there is moved aside first
    (``.NAME.mindrecord.old``), then removed; one that a killed pack left there is removed before."""
    old = _replaced(out)
    if os.path.isdir(old):
        _remove_ours(old)
    if os.path.lexists(out):
        os.replace(out, old)
    os.replace(partial, out)
    if os.path.isdir(old):
        _remove_ours(old)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
class _Named(io.BytesIO):
    """A record's bytes that call themselves by the record's name in error messages."""

    def __init__(self, data, record):
        super().__init__(data)
        self.record = record

    def __str__(self):
        return self.record


def decode_record(image, name, min_side=None):
    """A record's image as uint8 RGB HWC by :func:`.images.read_image` with `min_side` (the rule of
    image files); DataError naming the record when it cannot be decoded."""
    return read_image(_Named(image.tobytes() if hasattr(image, "tobytes") else image, str(name)), min_side)


def record_index(name):
    """A record's stable 64-bit number from its name (the relative path it was packed from): what
    keys its training crop (:mod:`.native`), wherever the shuffle puts it."""
    name = name.tobytes() if hasattr(name, "tobytes") else str(name).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little")


class _Decoder:
    """The decoding map of a pack's pipeline (picklable for worker processes without a `crop`): the
    record's image, or its training crop ``crop(image, record_index(name))``."""

    def __init__(self, where, min_side, crop=None):
        self.where, self.min_side, self.crop = where, min_side, crop

    def __call__(self, image, name):
        decoded = decode_record(image, f"{self.where}:{name}", self.min_side)
        return decoded if self.crop is None else self.crop(decoded, record_index(name))


@dataclass
class PackedSplit:
    """One split of a verified pack, as a pipeline source: `files` (its shards, in order), `classes`,
    `root` (the pack), `shape` (the (height, width) all images share: CIFAR packs; else None) and
    `counts` (records per class). ``labels`` are the split's labels in class order."""
    root: str
    split: str
    classes: List[str]
    files: List[str]
    counts: np.ndarray
    shape: Optional[tuple] = None
    load = None     # the records are decoded in :meth:`dataset`'s own map
    crop = None     # the training crop cut there when set: ``crop(image, record index)``

    def __len__(self):
        return int(self.counts.sum())

    @property
    def labels(self):
        return np.repeat(np.arange(len(self.counts), dtype=np.int32), self.counts)

    def dataset(self, shuffle, num_shards=None, shard_id=None, workers=1, min_side=None):
        """``mindspore.dataset`` of (``image`` uint8 HWC, ``label`` int32): shuffled (seeded by
        MindSpore's dataset seed) and sharded by MindRecord's reader for training; without shuffle,
        shard ``k`` of ``num_shards`` gets records ``k, k + num_shards, ...`` (no padding). Images are
        decoded as files are (:func:`decode_record`; `min_side`: :func:`.transforms.decode_min_side`)
        in `workers` processes, or with the training crop (:attr:`crop`) in `workers` threads (the
        decoder and the crop release Python's lock)."""
        import mindspore.dataset as ds
        if shuffle:
            data = ds.MindDataset(self.files, columns_list=_COLUMNS, shuffle=True, num_shards=num_shards,
                                  shard_id=shard_id, num_parallel_workers=1)
        else:
            sampler = ds.SubsetSampler(list(range(shard_id, len(self), num_shards))) if num_shards else None
            data = ds.MindDataset(self.files, columns_list=_COLUMNS, shuffle=False if sampler is None else None,
                                  sampler=sampler, num_parallel_workers=1)
        crop = self.crop if shuffle else None
        data = data.map(_Decoder(self.root, min_side, crop), input_columns=["image", "name"], output_columns=["image"],
                        num_parallel_workers=workers, python_multiprocessing=workers > 1 and crop is None)
        return data.project(["image", "label"])


def _manifest(path):
    if not os.path.exists(path):
        raise DataError(f"packed data {shown_name(path)} does not exist; write it with: python dataset.py pack "
                        "--path TREE "
                        f"--out {shown_name(path)}")
    manifest = _read_json(os.path.join(path, MANIFEST))
    if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT):
        raise DataError(f"{shown_name(path)} is not a pack that dataset.py wrote (no readable {MANIFEST}); pack the "
                        "data again")
    if manifest.get("version") != VERSION:
        raise DataError(f"{shown_name(path)} is a pack of format version {manifest.get('version')}, this code reads "
                        "version "
                        f"{VERSION}; pack the data again")
    return manifest


def _split_name(manifest, path, split):
    splits = list(manifest["splits"])
    wanted = SPLIT_NAMES[1:] if split == "val" else (split,)
    for name in wanted:
        if name in splits:
            return name
    if splits == [WHOLE]:
        return WHOLE
    raise DataError(f"packed data {shown_name(path)} has the split(s) {', '.join(splits)}, none for {split}; "
                    f"expected {' or '.join(wanted)}")


_HASHED = set()   # (path, size, time, sha256) of the shard files this process hashed and found as recorded


def _verify(path, name, facts, recorded_mtime, full):
    """DataError naming the shard file when it is missing, of another size, or (hashed when `full`
    or when its time is not the recorded one, once per process while it stays so) of another sha256."""
    file = os.path.join(path, name)
    try:
        st = os.stat(file)
    except OSError:
        raise DataError(f"packed shard {shown_name(file)} is missing; restore it or pack the data again") from None
    size, digest = facts
    if st.st_size != size:
        raise DataError(f"packed shard {shown_name(file)} is {st.st_size} bytes, the manifest says {size} "
                        "(truncated or "
                        "changed); restore it or pack the data again")
    key = (os.path.realpath(file), st.st_size, st.st_mtime_ns, digest)
    if not (full or st.st_mtime_ns != recorded_mtime) or (not full and key in _HASHED):
        return
    if file_sha256(file) != digest:
        raise DataError(f"packed shard {shown_name(file)} does not match its sha256 in {MANIFEST} (corrupt or "
                        "changed); "
                        "restore it or pack the data again")
    _HASHED.add(key)


def open_pack(path, split, full=False):
    """The :class:`PackedSplit` `split` ("train" | "val" | a split's own name) of the pack at
    `path`, its shards verified (:func:`_verify`); DataError naming the pack or shard."""
    manifest = _manifest(path)
    name = _split_name(manifest, path, split)
    info = manifest["splits"][name]
    stamps = manifest.get("stamps", {})
    for shard in info["shards"]:
        mtimes = stamps.get(shard["file"], [None, None])
        _verify(path, shard["file"], (shard["bytes"], shard["sha256"]), mtimes[0], full)
        _verify(path, shard["file"] + ".db", (shard["db_bytes"], shard["db_sha256"]), mtimes[1], full)
    counts = np.zeros(len(manifest["classes"]), np.int64)
    counts[:len(info["counts"])] = info["counts"]
    return PackedSplit(path, name, list(manifest["classes"]), [os.path.join(path, s["file"]) for s in info["shards"]],
                       counts, tuple(info["shape"]) if info.get("shape") else None)


def check_pack(path):
    """``dataset.py check`` of a pack: every shard hashed, then every record read and decoded; prints
    each split. DataError naming the first bad shard or record."""
    manifest = _manifest(path)
    print(f"{shown_name(path)}: packed {manifest['kind']} data, {len(manifest['classes'])} classes"
          + (f", images re-encoded at most {manifest['max_side']} px (JPEG quality {manifest['jpeg_quality']})"
             if manifest.get("max_side") else ", the original image bytes"))
    for name in manifest["splits"]:
        part = open_pack(path, name, full=True)
        data = part.dataset(shuffle=False)
        n = 0
        try:
            for _ in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
                n += 1
        except RuntimeError as exc:
            from .pipeline import data_failure
            raise (data_failure(exc) or DataError(f"cannot read the shards of {shown_name(path)} ({name}): "
                                                  f"{str(exc).strip().splitlines()[0]}")) from None
        if n != len(part):
            raise DataError(f"packed data {shown_name(path)} ({name}): read {n} records, the manifest says {len(part)}")
        size = sum(os.path.getsize(f) for f in part.files)
        print(f"  {name}: {n} records in {len(part.files)} shard(s), {format_bytes(size)}, checksums verified; "
              f"per class min {part.counts.min()} max {part.counts.max()}")


def refuse_val_fraction(cfg):
    """ConfigError: ``val_fraction`` splits an image tree, and a pack is not one."""
    raise ConfigError(f"val_fraction {cfg.val_fraction:g} splits an image tree, and train_data_path "
                      f"{shown_name(cfg.train_data_path)} is packed; pack a tree with train/ and val/ folders (or "
                      "pack the "
                      "validation images on their own and give val_data_path)")
