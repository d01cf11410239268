"""Reading a packed data set (a ``NAME.mindrecord`` folder that :mod:`.packed_write` wrote): a
split as the pipeline's source, its shards verified against the manifest on every read, its records
read by MindRecord's C++ reader (sharded and shuffled) and decoded by the rule of image files;
``dataset.py check`` of a pack. The format both sides share: :mod:`.packed_format`; in full:
docs/architecture.md, "Packed data sets".
"""
import hashlib
import io
import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..platform.bounds import format_bytes
from ..platform.errors import ConfigError, DataError, shown_name
from ..platform.fileio import file_sha256
from .catalog import SPLIT_NAMES
from .images import read_image
from .packed_format import COLUMNS, MANIFEST, VERSION, WHOLE, read_manifest
from .records import data_failure

__all__ = ["open_pack", "PackedSplit", "check_pack", "decode_record", "record_index", "refuse_val_fraction"]


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
            data = ds.MindDataset(self.files, columns_list=COLUMNS, shuffle=True, num_shards=num_shards,
                                  shard_id=shard_id, num_parallel_workers=1)
        else:
            sampler = ds.SubsetSampler(list(range(shard_id, len(self), num_shards))) if num_shards else None
            data = ds.MindDataset(self.files, columns_list=COLUMNS, shuffle=False if sampler is None else None,
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
    manifest = read_manifest(path)
    if manifest is None:
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
