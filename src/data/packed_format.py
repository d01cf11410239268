"""The format of a packed data set, shared by its writer (:mod:`.packed_write`, ``dataset.py pack``)
and its reader (:mod:`.packed_read`, the pipeline's source): the folder's name, its manifest and
format version, the fields of a record and the one split of a tree without split folders. The
layout in full: docs/architecture.md, "Packed data sets".
"""
import json
import os

__all__ = ["SUFFIX", "MANIFEST", "FORMAT", "VERSION", "WHOLE", "SCHEMA", "COLUMNS", "is_packed", "read_json",
           "read_manifest"]

#: The name a pack's folder ends with; a data path ending so is read as a pack.
SUFFIX = ".mindrecord"
#: The file in a pack's folder that lists its classes, splits and shards (written last).
MANIFEST = "manifest.json"
#: The manifest's ``format`` and ``version``: a folder is a pack that dataset.py wrote when its
#: manifest names this format; the reader reads this version only.
FORMAT, VERSION = "convmlp-packed", 1
#: The one split of a tree without split folders; it serves as train and as val.
WHOLE = "all"
#: The fields of a record, as MindRecord's schema; the reader reads them in this order.
SCHEMA = {"image": {"type": "bytes"}, "label": {"type": "int32"}, "name": {"type": "string"}}
COLUMNS = list(SCHEMA)


def is_packed(path):
    """Whether a data path names a pack (it ends with :data:`SUFFIX`)."""
    return bool(path) and os.fspath(path).rstrip("/\\").endswith(SUFFIX)


def read_json(path):
    """The JSON value in the file at `path`, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_manifest(folder):
    """The manifest of the pack in `folder` when dataset.py wrote it (a readable :data:`MANIFEST` of
    :data:`FORMAT`, of any version), else None."""
    manifest = read_json(os.path.join(folder, MANIFEST))
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None
