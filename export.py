"""Export a ConvMLP checkpoint to MINDIR for deployment (MindSpore, MindSpore Lite, Ascend).

    python export.py --checkpoint_path output/best.ckpt --file_name convmlp_s_cifar10 --file_format MINDIR
    python export.py --checkpoint_path output/best.ckpt --export_batch_size 8 --verify

Writes ``FILE_NAME.mindir`` (default: the checkpoint's path without ``.ckpt``). The model is the
one of the checkpoint: for a train.py checkpoint the arch, custom topology and ``image_size`` come
from its saved config and ``num_classes`` from its head, unless given on the command line (for a
pth2ckpt.py checkpoint give ``--arch`` / the topology keys and ``--image_size``). Other keys as in
train.py (``-h`` lists them).

The exported graph takes a float32 tensor ``(export_batch_size, 3, image_size, image_size)``,
already resized and normalised with the dataset's mean/std (as evl.py and infer.py do), and
returns the logits ``(export_batch_size, num_classes)``; the batch size is fixed.

Options of this script (not config keys):

* ``--file_name NAME``: output path without extension (a trailing ``.mindir`` is accepted).
* ``--file_format MINDIR``: MINDIR (default). AIR needs Ascend; ONNX is refused (see below).
* ``--export_batch_size N``: batch dimension of the exported input (default 1).
* ``--verify``: load the written file back (``nn.GraphCell``) and check that it gives the
  checkpoint model's output on a random input (max abs difference <= 1e-4).

ONNX: MindSpore 2.10's ONNX exporter cannot convert this network. It has no mapping for ``Erf``
(the exact GELU of ConvMLP's channel MLPs) nor for the padded max-pool of the tokenizer (lowered to
``MaxPool3DWithArgmax``), and with both rewritten it still fails inside the BatchNorm conversion.
An erf-free GELU would change the numerics of the published model, so ONNX is refused.

The file is written under a temporary name in the output folder (and, with ``--verify``, verified
there) before it is renamed, so a crash or a failed verification never leaves a half-written or
unverified file under the final name, and never replaces an existing one.
"""
import os
import sys

from src.errors import ConfigError, UserError, run_cli

FORMATS = ("MINDIR", "AIR", "ONNX")
EXTENSIONS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}
ONNX_REFUSAL = ("file_format ONNX is not supported: MindSpore 2.10's ONNX exporter has no mapping for "
                "Erf (the exact GELU of ConvMLP) nor for the tokenizer's padded max-pool "
                "(MaxPool3DWithArgmax), and an erf-free GELU would change the model's numerics; use "
                "--file_format MINDIR (runs in MindSpore and MindSpore Lite)")
VERIFY_ATOL = 1e-4


def parse_options(argv):
    """Take export.py's own options out of `argv`; returns ``(file_name, file_format, batch, verify)``."""
    from src.runtime import pop_option
    file_name = pop_option(argv, "--file_name", "an output path")
    fmt = pop_option(argv, "--file_format", "one of " + ", ".join(FORMATS)) or "MINDIR"
    if fmt.upper() not in FORMATS:
        raise ConfigError(f"command line: invalid value {fmt!r} for '--file_format': expected one of "
                          + ", ".join(FORMATS))
    batch = pop_option(argv, "--export_batch_size", "an integer >= 1") or "1"
    try:
        batch_size = int(batch)
    except ValueError:
        batch_size = 0
    if batch_size < 1:
        raise ConfigError(f"command line: invalid value {batch!r} for '--export_batch_size': expected an "
                          "integer >= 1")
    verify = False
    while "--verify" in argv:
        argv.remove("--verify")
        verify = True
    return file_name, fmt.upper(), batch_size, verify


def output_base(file_name, checkpoint_path, fmt):
    """The output path without extension: `file_name` (a trailing extension of `fmt` removed), or
    the checkpoint's path without ``.ckpt``."""
    ext = EXTENSIONS[fmt]
    if file_name is None:
        file_name = checkpoint_path[:-5] if checkpoint_path.endswith(".ckpt") else checkpoint_path
    elif file_name.lower().endswith(ext):
        file_name = file_name[:-len(ext)]
    if not os.path.basename(file_name):
        raise ConfigError(f"command line: --file_name {file_name!r} names a folder; expected a file name")
    return file_name


def check_format(fmt, device):
    """Refuse the formats that cannot be written here, before anything is loaded."""
    if fmt == "ONNX":
        raise ConfigError(ONNX_REFUSAL)
    if fmt == "AIR" and device != "Ascend":
        raise ConfigError(f"file_format AIR needs an Ascend device (MindSpore writes AIR only with the "
                          f"Ascend toolkit); this run's device is {device}; use --file_format MINDIR, "
                          "which MindSpore converts for Ascend as well")


def export_atomic(net, inputs, base, fmt, verify=None, sources=()):
    """``mindspore.export`` to ``base + extension`` through :func:`fileio.atomic_output`: the
    complete temporary file is checked with ``verify(tmp)`` (when given) before it replaces an
    existing file, and it must not be one of `sources` (the checkpoint read)."""
    import mindspore as ms
    from src.fileio import atomic_output
    ext = EXTENSIONS[fmt]
    final = base + ext
    with atomic_output(final, verify=verify, inputs=sources, label="export file") as tmp:
        ms.export(net, *inputs, file_name=tmp[:-len(ext)], file_format=fmt)
    return final


def check_export(net, inputs):
    """The ``verify`` callback of :func:`export_atomic` for ``--verify``: UserError when the file,
    loaded back, does not reproduce `net` on `inputs`; returns the callback and a dict that
    receives the measured difference."""
    measured = {}

    def verify(path):
        diff = verify_export(net, path, inputs)
        measured["diff"] = diff
        if not diff <= VERIFY_ATOL:
            raise UserError(f"'{path}' does not reproduce the checkpoint model: max abs difference {diff:.3g} "
                            f"> {VERIFY_ATOL:g} on a random input; an existing file of that name is unchanged")
    return verify, measured


def verify_export(net, path, inputs):
    """Max abs difference between the exported file (loaded back) and `net` on `inputs`."""
    import numpy as np
    import mindspore as ms
    from mindspore import nn
    graph = nn.GraphCell(ms.load(path))
    got = graph(*inputs).asnumpy()
    want = net(*inputs).asnumpy()
    return float(np.max(np.abs(got - want)))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    file_name, fmt, batch_size, verify = parse_options(argv)
    if fmt == "ONNX":
        check_format(fmt, None)  # before any config or MindSpore work
    from src.runtime import load_run_config, setup_runtime, load_checkpoint_model, DEPLOY_KEYS
    cfg = load_run_config(argv)
    from src.run_log import get_logger
    logger = get_logger(0)
    if not cfg.checkpoint_path:
        raise ConfigError("checkpoint_path is not set; give --checkpoint_path FILE.ckpt (e.g. "
                          f"{cfg.save_checkpoint_path}/best.ckpt)")
    base = output_base(file_name, cfg.checkpoint_path, fmt)
    from src.fileio import check_output_path
    check_output_path(base + EXTENSIONS[fmt], ("checkpoint_path", cfg.checkpoint_path), label="export file")
    from src.config import resolve_device
    check_format(fmt, resolve_device(cfg))
    device, _, _ = setup_runtime(cfg, logger)
    # The exported graph must not call this machine's C++ kernels (a Custom op referring to a
    # local .so): build the model with MindSpore's own LayerNorm/GELU/max-pool.
    from model import cpu_kernels
    cpu_kernels.set_enabled(False)

    import numpy as np
    import mindspore as ms
    net, meta = load_checkpoint_model(cfg, argv, logger, DEPLOY_KEYS)
    shape = (batch_size, 3, cfg.image_size, cfg.image_size)
    inputs = [ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))]
    verify_fn, measured = check_export(net, inputs) if verify else (None, {})
    path = export_atomic(net, inputs, base, fmt, verify=verify_fn, sources=[("checkpoint_path", cfg.checkpoint_path)])
    size_mb = os.path.getsize(path) / 2 ** 20
    logger.info(f"exported {cfg.checkpoint_path} ({cfg.arch}, {cfg.num_classes} classes"
                + (f", {meta['dataset']}" if "dataset" in meta else "") + f") to {path} ({size_mb:.1f} MB)")
    logger.info(f"input: float32 {shape} (RGB, resized to {cfg.image_size}x{cfg.image_size} with "
                f"{cfg.interpolation}, normalised with mean {cfg.mean} std {cfg.std}); output: logits "
                f"({batch_size}, {cfg.num_classes})")
    if verify:
        logger.info(f"verified: {path} loaded with nn.GraphCell gives the checkpoint model's logits "
                    f"(max abs difference {measured['diff']:.3g}, tolerance {VERIFY_ATOL:g})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
