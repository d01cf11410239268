"""Writing a packed data set (``dataset.py pack``): an image tree or a CIFAR binary folder written as
MindRecord shards in one folder ``NAME.mindrecord`` (MindSpore's own format for large data sets: a
C++ reader that shards and shuffles, no file opened per image), atomically and resumably, one
writer per output; :mod:`.packed_read` reads it back as the same images with the same labels and
class names, and :mod:`.packed_format` holds what both sides share. The format, its splits and how
it is written: docs/architecture.md, "Packed data sets".
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

from ..platform.bounds import check_disk_space
from ..platform.errors import DataError, UserError, shown_name
from ..platform.fileio import OutputError, atomic_output, check_name_length, file_sha256
from . import cifar, imagefolder
from .catalog import CIFAR, split_folders
from .images import read_image
from .packed_format import FORMAT, MANIFEST, SCHEMA, SUFFIX, VERSION, WHOLE, is_packed, read_json, read_manifest

__all__ = ["JPEG_QUALITY", "DEFAULT_SHARD_SIZE", "pack"]

#: JPEG quality of images re-encoded for ``--max_side``.
JPEG_QUALITY = 95
#: Records per shard by default: about 1 GB of ImageNet's JPEG files (110 kB on average).
DEFAULT_SHARD_SIZE = 10_000
#: Room on disk per record besides its image bytes (MindRecord's header, written at its full size,
#: and index), the share of the image bytes that pages leave unused, and the most a CIFAR record
#: takes as PNG: the free space a pack needs is estimated from these before it starts.
RECORD_OVERHEAD, PAGE_SLACK, CIFAR_PNG_BYTES = 1024, 0.1, 4096


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
    writer.add_schema(SCHEMA, "convmlp packed images")
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
        if not os.path.isdir(out) or read_manifest(out) is None:
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
    saved = read_json(os.path.join(partial, "plan.json"))
    if not (isinstance(saved, dict) and saved.get("plan") == plan):
        _remove_ours(partial)
        return {}
    done = {}
    for name in sorted(os.listdir(partial)):
        if not name.endswith(".done"):
            continue
        facts = read_json(os.path.join(partial, name))
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
