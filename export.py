"""Export a ConvMLP checkpoint for deployment: MINDIR (MindSpore, MindSpore Lite, Ascend) or ONNX.

    python export.py --checkpoint_path output/best.ckpt --file_name convmlp_s_cifar10 --file_format MINDIR
    python export.py --checkpoint_path output/best.ckpt --batch_size 8 --verify
    python export.py --checkpoint_path output/best.ckpt --batch_size dynamic --verify
    python export.py --checkpoint_path output/best.ckpt --file_format ONNX --verify

Writes ``FILE_NAME.mindir`` or ``FILE_NAME.onnx`` (default: the checkpoint's path without
``.ckpt``). The model is the one of the checkpoint: for a train.py checkpoint the arch, custom
topology and ``image_size`` come from its saved config and ``num_classes`` from its head, unless
given on the command line (for a pth2ckpt.py checkpoint give ``--arch`` / the topology keys and
``--image_size``). Other keys as in train.py (``-h`` lists them).

The exported graph takes a float32 tensor ``(batch_size, 3, image_size, image_size)``, already
resized and normalised with the dataset's mean/std (as evl.py and infer.py do), and returns the
logits ``(batch_size, num_classes)``.

Options of this script (not config keys):

* ``--file_name NAME``: output path without extension (a trailing ``.mindir`` / ``.onnx`` is accepted).
* ``--file_format MINDIR``: MINDIR (default), ONNX, or AIR (needs Ascend).
* ``--batch_size N|dynamic``: batch dimension of the exported input. Only this script's own
  command line sets it (the training ``batch_size`` of config.yaml does not apply); default 1.
  ``dynamic`` exports a graph that takes any batch size (MINDIR input ``[None, 3, H, W]``, ONNX
  input dimension ``batch``); with ``--file_format ONNX`` the default is ``dynamic``.
  ``--export_batch_size`` is the same option under its older name.
* ``--verify``: run the written file (MINDIR: ``nn.GraphCell``; ONNX: onnxruntime on the CPU) on
  a random input and check that it gives the checkpoint model's output (max abs difference
  <= 1e-4; a dynamic batch is checked at batch sizes 1 and 3).

ONNX: MindSpore 2.10's ONNX exporter cannot convert this network (no mapping for ``Erf``, the exact
GELU, nor for the tokenizer's padded max-pool), so the ONNX file is exported from the PyTorch
reference model holding the checkpoint's weights (:mod:`src.onnx_export`).

The file is written under a temporary name in the output folder (and, with ``--verify``, verified
there) before it is renamed, so a crash or a failed verification never leaves a half-written or
unverified file under the final name, and never replaces an existing one.
"""
import os
import sys
from collections import namedtuple

from src.config import option, parse_command_line
from src.errors import ConfigError, UserError, run_cli
from src.fileio import check_output_path
# ``--batch_size dynamic``, the batch sizes a dynamic file is verified at, the tolerance
from src.onnx_export import DYNAMIC, DYNAMIC_VERIFY_BATCHES, VERIFY_ATOL

FORMATS = ("MINDIR", "AIR", "ONNX")
EXTENSIONS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


def _check_batch(value):
    text = value.strip().lower()
    return None if text == DYNAMIC or (text.isdigit() and int(text) >= 1) else f"an integer >= 1 or '{DYNAMIC}'"


#: export.py's own options (everything else is a config key). ``--batch_size`` is this script's:
#: the training batch size of config.yaml does not apply to an export.
OPTIONS = [
    option("file_name", None, "str", "Output path (a trailing .mindir / .onnx is accepted); null = the "
           "checkpoint's path without .ckpt.", nullable=True),
    option("file_format", "MINDIR", "str", "Output format (AIR needs Ascend).", choices=FORMATS),
    option("batch_size", None, "str", f"Batch dimension of the exported input: an integer or '{DYNAMIC}'; "
           "null = 1 (MINDIR, AIR) or dynamic (ONNX).", nullable=True, check=_check_batch),
    option("export_batch_size", None, "str", "The older name of --batch_size.", nullable=True,
           check=_check_batch),
    option("verify", False, "bool", "Run the written file and compare it with the checkpoint model."),
]

#: What export.py was asked to do, besides the config.
ExportOptions = namedtuple("ExportOptions", "file_name file_format batch_size verify")


def parse_options(argv):
    """export.py's command line: ``(cfg, ExportOptions)``; the batch is an int or :data:`DYNAMIC`."""
    cmd = parse_command_line(argv, OPTIONS)
    o = cmd.options
    given = {f"--{k}": getattr(o, k) for k in ("batch_size", "export_batch_size") if getattr(o, k) is not None}
    values = {k: DYNAMIC if v.strip().lower() == DYNAMIC else int(v) for k, v in given.items()}
    if len(set(values.values())) > 1:
        raise ConfigError(f"command line: --batch_size {given['--batch_size']} and --export_batch_size "
                          f"{given['--export_batch_size']} disagree; give one of them")
    batch = next(iter(values.values()), DYNAMIC if o.file_format == "ONNX" else 1)
    return cmd.cfg, ExportOptions(o.file_name, o.file_format, batch, o.verify)


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
    if fmt == "AIR" and device != "Ascend":
        raise ConfigError(f"file_format AIR needs an Ascend device (MindSpore writes AIR only with the "
                          f"Ascend toolkit); this run's device is {device}; use --file_format MINDIR, "
                          "which MindSpore converts for Ascend as well")


def export_atomic(net, inputs, base, fmt, check=None, sources=()):
    """``mindspore.export`` to ``base + extension`` through :func:`src.fileio.atomic_output`: the
    complete temporary file is checked with ``check(tmp)`` (when given) before it replaces an
    existing file, and the output must not be one of `sources` (the checkpoint read)."""
    import mindspore as ms
    from src.fileio import atomic_output
    ext = EXTENSIONS[fmt]
    final = base + ext
    with atomic_output(final, verify=check, inputs=sources, label="export file") as tmp:
        ms.export(net, *inputs, file_name=tmp[:-len(ext)], file_format=fmt)
    return final


def path_of(base, fmt):
    return base + EXTENSIONS[fmt]


def verify_export(net, path, inputs):
    """Max abs difference between the exported file (loaded back) and `net` on `inputs` (a list of
    input lists, one run each); NaN when an output is not finite."""
    import mindspore as ms
    from mindspore import nn
    from src.convert import max_abs_difference
    graph = nn.GraphCell(ms.load(path))
    return max_abs_difference((graph(*args).asnumpy(), net(*args).asnumpy()) for args in inputs)


def verified(diff, path, how):
    """UserError unless `diff` is within :data:`VERIFY_ATOL` (NaN is not)."""
    if not diff <= VERIFY_ATOL:
        raise UserError(f"'{path}' would not reproduce the checkpoint model: max abs difference {diff:.3g} "
                        f"> {VERIFY_ATOL:g} on a random input ({how}); nothing was written, an existing "
                        "file of that name is unchanged")
    return diff


def export_graph(net, shape, base, fmt, verify, sources=()):
    """MINDIR/AIR export of `net` for inputs of `shape` (``shape[0]`` None: dynamic batch), verified
    before the rename when `verify`; returns ``(path, max abs diff or None)``."""
    import mindspore as ms
    dynamic = shape[0] is None
    checks = random_inputs(shape, DYNAMIC_VERIFY_BATCHES if dynamic else [shape[0]])
    inputs = [ms.Tensor(shape=list(shape), dtype=ms.float32)] if dynamic else checks[0]
    diff = None

    def check(tmp):
        nonlocal diff
        diff = verified(verify_export(net, tmp, checks), path_of(base, fmt), "nn.GraphCell")
    return export_atomic(net, inputs, base, fmt, check if verify else None, sources), diff


def random_inputs(shape, batches, seed=0):
    """One random float32 tensor of `shape` per batch size in `batches` (a list of 1-lists)."""
    import numpy as np
    import mindspore as ms
    rng = np.random.default_rng(seed)
    return [[ms.Tensor(rng.standard_normal((b,) + tuple(shape[1:])).astype(np.float32))] for b in batches]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, opts = parse_options(argv)
    fmt, batch_size, verify = opts.file_format, opts.batch_size, opts.verify
    from src.runtime import setup_runtime, load_checkpoint_model, require_checkpoint_path, DEPLOY_KEYS
    from src.run_log import get_logger
    logger = get_logger(0)
    base = output_base(opts.file_name, require_checkpoint_path(cfg), fmt)
    sources = [("checkpoint_path", cfg.checkpoint_path)]
    check_output_path(path_of(base, fmt), *sources, label="export file")
    from src.config import resolve_device
    check_format(fmt, resolve_device(cfg))
    # The exported graph must not call this machine's C++ kernels (a Custom op referring to a
    # local .so): build the model with MindSpore's own LayerNorm/GELU/max-pool/convolutions.
    device, _, _ = setup_runtime(cfg, logger, cpu_kernels_on=False)

    net, meta = load_checkpoint_model(cfg, argv, logger, DEPLOY_KEYS)
    dynamic = batch_size == DYNAMIC
    shape = (None if dynamic else batch_size, 3, cfg.image_size, cfg.image_size)
    if fmt == "ONNX":
        from src.onnx_export import export_onnx
        (path, diff), how = export_onnx(net, shape, base, verify, cfg.checkpoint_path, sources), "onnxruntime (CPU)"
    else:
        (path, diff), how = export_graph(net, shape, base, fmt, verify, sources), "nn.GraphCell"
    size_mb = os.path.getsize(path) / 2 ** 20
    logger.info(f"exported {cfg.checkpoint_path} ({cfg.arch}, {cfg.num_classes} classes"
                + (f", {meta['dataset']}" if "dataset" in meta else "") + f") to {path} ({size_mb:.1f} MB)")
    shown = "(" + ", ".join(["N"] + [str(d) for d in shape[1:]]) + ")" if dynamic else str(shape)
    logger.info(f"input: float32 {shown} (RGB, resized to {cfg.image_size}x{cfg.image_size} with "
                f"{cfg.interpolation}, normalised with mean {cfg.mean} std {cfg.std}); output: logits "
                f"({'N' if dynamic else batch_size}, {cfg.num_classes})"
                + (", N = any batch size" if dynamic else ""))
    if verify:
        batches = ", ".join(map(str, DYNAMIC_VERIFY_BATCHES if dynamic else [batch_size]))
        logger.info(f"verified: {path} run with {how} gives the checkpoint model's logits "
                    f"(max abs difference {diff:.3g} at batch {batches}, tolerance {VERIFY_ATOL:g})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
