"""MINDIR (and AIR) export of a ConvMLP checkpoint model through ``mindspore.export``: the output
name, a static or any-batch input, and the check that the written file, run with
``nn.GraphCell``, gives the model's logits before it replaces anything."""
import os

from ..platform.errors import ConfigError, UserError, short_quote
from ..platform.fileio import atomic_output, is_stream
from .names import VERIFY_ATOL, max_abs_difference
from .onnx_file import DYNAMIC_VERIFY_BATCHES, output_arrays

__all__ = ["FORMATS", "EXTENSIONS", "output_base", "output_path", "check_format", "path_of", "export_graph", "verify_export",
           "verified", "random_inputs"]

FORMATS = ("MINDIR", "AIR", "ONNX")


EXTENSIONS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


def output_base(file_name, checkpoint_path, fmt):
    """The output path without extension: `file_name` (a trailing extension of `fmt` removed), or
    the checkpoint's path without ``.ckpt``."""
    ext = EXTENSIONS[fmt]
    if file_name is None:
        file_name = checkpoint_path[:-5] if checkpoint_path.endswith(".ckpt") else checkpoint_path
    elif file_name.lower().endswith(ext):
        file_name = file_name[:-len(ext)]
    if not os.path.basename(file_name):
        raise ConfigError(f"command line: --file_name {short_quote(file_name)} names a folder; expected a file name")
    return file_name


def output_path(file_name, checkpoint_path, fmt):
    """The file export.py writes: `file_name` as given when it ends with the format's extension (in
    any case) or names a stream (``/dev/stdout``, a FIFO: written in place), else
    :func:`output_base` plus the extension."""
    if file_name is not None and (file_name.lower().endswith(EXTENSIONS[fmt]) or is_stream(file_name)):
        output_base(file_name, checkpoint_path, fmt)   # refuses a folder
        return file_name
    return path_of(output_base(file_name, checkpoint_path, fmt), fmt)


def check_format(fmt, device):
    """Refuse the formats that cannot be written here, before anything is loaded."""
    if fmt == "AIR" and device != "Ascend":
        raise ConfigError(f"file_format AIR needs an Ascend device (MindSpore writes AIR only with the "
                          f"Ascend toolkit); this run's device is {device}; use --file_format MINDIR, "
                          "which MindSpore converts for Ascend as well")


def export_atomic(net, inputs, base, fmt, check=None, sources=(), final=None):
    """``mindspore.export`` to `final` (default ``base + extension``) through
    :func:`src.platform.fileio.atomic_output`, which hands MindSpore a temporary name it accepts: the
    complete temporary file is checked with ``check(tmp)`` (when given) before it replaces an
    existing file, and the output must not be one of `sources` (the checkpoint read)."""
    import mindspore as ms
    ext = EXTENSIONS[fmt]
    final = final or base + ext
    with atomic_output(final, verify=check, inputs=sources, label="export file", suffix=ext) as tmp:
        ms.export(net, *inputs, file_name=tmp[:-len(ext)], file_format=fmt)
    return final


def path_of(base, fmt):
    return base + EXTENSIONS[fmt]


def verify_export(net, path, inputs):
    """Max abs difference between the exported file (loaded back) and `net` on `inputs` (a list of
    input lists, one run each), over every output (the feature maps of a backbone); NaN when an
    output is not finite."""
    import mindspore as ms
    from mindspore import nn
    graph = nn.GraphCell(ms.load(path))
    return max_abs_difference(pair for args in inputs
                              for pair in zip(output_arrays(graph(*args)), output_arrays(net(*args))))


def verified(diff, path, how):
    """UserError unless `diff` is within :data:`VERIFY_ATOL` (NaN is not)."""
    if not diff <= VERIFY_ATOL:
        raise UserError(f"'{path}' would not reproduce the checkpoint model: max abs difference {diff:.3g} "
                        f"> {VERIFY_ATOL:g} on a random input ({how}); nothing was written, an existing "
                        "file of that name is unchanged")
    return diff


def export_graph(net, shape, base, fmt, verify, sources=(), final=None):
    """MINDIR/AIR export of `net` for inputs of `shape` (``shape[0]`` None: dynamic batch) to `final`
    (default ``base + extension``), verified before the rename when `verify`; returns ``(path, max
    abs diff or None)``. The random check inputs are made only when verifying."""
    import mindspore as ms
    dynamic = shape[0] is None
    final = final or path_of(base, fmt)
    checks = random_inputs(shape, DYNAMIC_VERIFY_BATCHES if dynamic else [shape[0]]) if verify else None
    if dynamic:
        inputs = [ms.Tensor(shape=list(shape), dtype=ms.float32)]
    else:
        import numpy as np
        inputs = checks[0] if verify else [ms.Tensor(np.zeros(shape, np.float32))]
    diff = None

    def check(tmp):
        nonlocal diff
        diff = verified(verify_export(net, tmp, checks), final, "nn.GraphCell")
    return export_atomic(net, inputs, base, fmt, check if verify else None, sources, final), diff


def random_inputs(shape, batches, seed=0):
    """One random float32 tensor of `shape` per batch size in `batches` (a list of 1-lists)."""
    import numpy as np
    import mindspore as ms
    rng = np.random.default_rng(seed)
    return [[ms.Tensor(rng.standard_normal((b,) + tuple(shape[1:])).astype(np.float32))] for b in batches]
