"""A split's records as the dataset engine reads them: a random-access source of decoded arrays or
image files, the training crop's index source and map, the tally of the images
``skip_bad_images`` replaced while decoding (counted whichever thread or process decoded them; in
evaluation a replacement is marked :data:`LEFT_OUT` so that the metrics leave it out), and the
DataError of an image that stopped the engine (:func:`data_failure`)."""
import atexit
import os
import re
import shutil
import tempfile

import numpy as np

from ..platform.errors import DataError

__all__ = ["Source", "RecordIndices", "CropRecords", "SkipTally", "LEFT_OUT", "record_skip", "decode_skips",
           "log_decode_skips", "log_left_out", "data_failure"]

#: The label of an evaluation record that ``skip_bad_images`` replaced: the replacement's image keeps
#: the batch's shape, and the metrics (:func:`src.train.loop.evaluate`) leave the record out.
LEFT_OUT = -1


class SkipTally:
    """Where the pipeline's readers (its threads, a pack's worker processes) record the images that ``skip_bad_images`` replaced
    while decoding (:meth:`Source.__getitem__`): one line each, appended to a file in a folder this
    process made (removed at its exit), so that the count reaches the log whichever process decoded."""

    _path = None

    @classmethod
    def path(cls):
        if cls._path is None:
            folder = tempfile.mkdtemp(prefix="convmlp-skipped-")
            atexit.register(shutil.rmtree, folder, True)
            cls._path, cls._read = os.path.join(folder, "skipped.txt"), 0
            open(cls._path, "w").close()
        return cls._path

    @classmethod
    def take(cls):
        """``(count, first reason)`` of the images recorded since the last call."""
        if cls._path is None:
            return 0, None
        with open(cls._path, "rb") as f:
            f.seek(cls._read)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]       # a line still being written is read next time
        cls._read += len(data)
        lines = data.decode("utf-8", "replace").splitlines()
        return len(lines), (lines[0] if lines else None)


def record_skip(tally, reason):
    """Append one replaced image's reason (one line) to `tally` (:class:`SkipTally`), in one write."""
    line = (" ".join(str(reason).split()) + "\n").encode("utf-8", "backslashreplace")
    fd = os.open(tally, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def decode_skips():
    """``(count, e.g. reason)``: the images that could not be decoded and were replaced since the
    last call (``skip_bad_images``)."""
    return SkipTally.take()


def log_decode_skips(logger, when):
    """One warning line with the images replaced since the last call (:func:`decode_skips`), if any."""
    n, reason = decode_skips()
    if n:
        logger.warning(f"skip_bad_images: {n} image(s) could not be decoded {when} and were replaced by the next "
                       f"good image of their split, e.g. {reason}")


def log_left_out(logger, results, when):
    """One warning line with the images an evaluation left out (``results``: :func:`src.train.loop.evaluate`'s,
    whose ``left_out`` and ``n`` are summed over the ranks), if any; it takes the tally's lines of
    the evaluation (:func:`decode_skips`) for an example."""
    _, reason = decode_skips()
    if results["left_out"]:
        example = f", e.g. {reason}" if reason else ""     # another rank's image: its own log names it
        logger.warning(f"skip_bad_images: {results['left_out']} image(s) could not be decoded {when} and were left "
                       f"out of its metrics ({results['n']} image(s) evaluated){example}")


def data_failure(exc):
    """The DataError that a pipeline worker raised (an image that cannot be decoded), from the
    RuntimeError MindSpore's dataset engine wraps it in; None for any other error."""
    found = re.findall(r"^(?:[\w.]*\.)?DataError: (.+)$", str(exc), flags=re.MULTILINE)
    return DataError(found[-1].strip()) if found else None


class Source:
    """Random-access source over a split's records (MindSpore samples, shuffles and shards it):
    decoded images, or image files read by `load` when asked for (:func:`.encoded.read_encoded`: the
    bytes the engine's ``Decode`` decodes; or :func:`.images.read_image`'s pixels, which `crop`
    (image, record index) cuts into the training crop: :func:`.pipeline._train_crop`, :class:`CropRecords`).
    With a `tally` (``skip_bad_images``) a file that cannot be decoded is recorded there (once per
    record replaced) and replaced by the next record of the split that decodes (the same one whichever
    thread asks, so batches keep their size and a run its seed's result); for `evaluation` the
    replacement's label is :data:`LEFT_OUT`, so that it is not counted as the record it stands in
    for. Without a tally the DataError stops the pipeline."""

    def __init__(self, images, labels, load=None, tally=None, crop=None, evaluation=False):
        self.images, self.labels, self.load, self.tally, self.crop = images, labels, load, tally, crop
        self.evaluation = evaluation

    def __getitem__(self, i):
        if self.load is None:
            return self.images[i], self.labels[i]
        return self.record(i)

    def record(self, i):
        """``(image, label)`` of record `i`, or of its replacement under skip_bad_images (labelled
        :data:`LEFT_OUT` in evaluation)."""
        if self.tally is None:
            return self.load(self.images[i]), self.labels[i]
        first = None
        for k in range(len(self.labels)):
            j = (i + k) % len(self.labels)
            try:
                image = self.load(self.images[j])
            except DataError as exc:
                if first is None:               # record i's own failure: one line per record replaced
                    record_skip(self.tally, exc)
                    first = exc
                continue
            if k and self.evaluation:
                return image, self.labels.dtype.type(LEFT_OUT)
            return image, self.labels[j]
        raise DataError(f"no image of this split could be decoded, e.g. {first}")

    def __len__(self):
        return len(self.labels)


class RecordIndices:
    """The records of a :class:`Source` with a `crop` as ``(index, label)`` rows: the engine samples,
    shuffles and shards these, and :class:`CropRecords` turns each into its training crop in the
    map's threads (a light source: MindSpore's Python source threads poll for results in 0.1 s
    sleeps, so decoding there would leave the cores waiting)."""

    def __init__(self, source):
        self.labels = source.labels

    def __getitem__(self, i):
        return np.asarray(i, np.int64), self.labels[i]

    def __len__(self):
        return len(self.labels)


class CropRecords:
    """Map function ``(index, label) -> (crop, label)``: the record's image decoded
    (:meth:`Source.record`, a replacement's label under skip_bad_images) and cut by the source's
    `crop` with the record's index as its key. Decoding and cropping release Python's lock."""

    def __init__(self, source):
        self.source = source

    def __call__(self, index, label):
        i = int(index)
        image, label = self.source.record(i)
        return self.source.crop(image, i), np.asarray(label)
