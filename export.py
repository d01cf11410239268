"""Export a ConvMLP checkpoint for deployment: MINDIR (MindSpore, MindSpore Lite, Ascend) or ONNX.

    python export.py --checkpoint_path output/best.ckpt --file_name convmlp_s_cifar10 --file_format MINDIR
    python export.py --checkpoint_path output/best.ckpt --batch_size dynamic --verify
    python export.py --checkpoint_path output/best.ckpt --file_format ONNX --verify

The model (arch, topology, image size, classes) is the checkpoint's; the exported graph takes the
resized, normalised float32 batch and returns the logits, or with ``--features_only true`` the
backbone's feature maps (``--out_indices``: the levels chosen). The file is written under a
temporary name and, with ``--verify``, checked against the checkpoint model before it takes its
name. The script's options and the ONNX route (through the PyTorch reference,
:mod:`src.convert.onnx_file`): docs/deployment.md.
"""
import src  # noqa: F401  (first: it keeps MindSpore's C++ log quiet, see src/__init__.py)
import os
import sys
from collections import namedtuple

from src.checkpoint.load import DEPLOY_KEYS, describe_model, load_checkpoint_model, require_checkpoint_path
from src.config import option, parse_command_line
from src.convert.mindir import FORMATS, check_format, export_graph, output_path
from src.convert.onnx_file import DYNAMIC, DYNAMIC_VERIFY_BATCHES, export_onnx
from src.convert.names import VERIFY_ATOL
from src.data.transforms import eval_scale_size
from src.platform.console import get_logger
from src.platform.device import resolve_device, setup_runtime
from src.platform.bounds import check_batch
from src.platform.errors import ConfigError, run_cli
from src.platform.fileio import check_output_path


def _check_batch(value):
    text = value.strip().lower()
    return None if text == DYNAMIC or (text.isdigit() and int(text) >= 1) else f"an integer >= 1 or '{DYNAMIC}'"


def _check_levels(value):
    try:
        levels = [int(v) for v in value.split(",")]
    except ValueError:
        levels = []
    return None if levels else "comma-separated integer levels, e.g. 1,2,3"


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
    option("features_only", False, "bool", "Export the backbone: the feature maps of every level (strides 4, "
           "8, 16, 32) instead of the logits."),
    option("out_indices", None, "str", "With --features_only true: the levels to export, comma-separated "
           "(0 = stride 4 ... 3 = stride 32, negative from the end), e.g. 1,2,3; null = every level.",
           nullable=True, check=_check_levels),
]

#: What export.py was asked to do, besides the config.
ExportOptions = namedtuple("ExportOptions", "file_name file_format batch_size verify features_only out_indices")


def parse_options(argv):
    """export.py's command line: ``(cfg, ExportOptions)``; the batch is an int or :data:`DYNAMIC`."""
    cmd = parse_command_line(argv, OPTIONS, script="export.py")
    options = cmd.options
    given = {f"--{k}": getattr(options, k) for k in ("batch_size", "export_batch_size")
             if getattr(options, k) is not None}
    values = {k: DYNAMIC if v.strip().lower() == DYNAMIC else int(v) for k, v in given.items()}
    if len(set(values.values())) > 1:
        raise ConfigError(f"command line: --batch_size {given['--batch_size']} and --export_batch_size "
                          f"{given['--export_batch_size']} disagree; give one of them")
    batch = next(iter(values.values()), DYNAMIC if options.file_format == "ONNX" else 1)
    levels = None
    if options.out_indices is not None:
        if not options.features_only:
            raise ConfigError(f"command line: --out_indices {options.out_indices} selects feature levels; it needs "
                              "--features_only true")
        levels = tuple(int(v) for v in options.out_indices.split(","))
    return cmd.cfg, ExportOptions(options.file_name, options.file_format, batch, options.verify,
                                  options.features_only, levels)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, opts = parse_options(argv)
    logger = get_logger(0)
    final, sources = check_request(cfg, opts)
    # The exported graph must not call this machine's C++ kernels (a Custom op referring to a
    # local .so): the plain network, with MindSpore's own LayerNorm/GELU/max-pool/convolutions.
    setup_runtime(cfg, logger, cpu_kernels_on=False)
    net, meta = load_checkpoint_model(cfg.checkpoint_path, cfg, logger, DEPLOY_KEYS,
                                      features_only=opts.features_only, out_indices=opts.out_indices,
                                      kernels=False)
    if opts.batch_size != DYNAMIC:   # the image size is the checkpoint's now
        check_batch("--batch_size", opts.batch_size, cfg.image_size)
    shape = (None if opts.batch_size == DYNAMIC else opts.batch_size, 3, cfg.image_size, cfg.image_size)
    if opts.file_format == "ONNX":
        (path, diff), how = export_onnx(net, shape, None, opts.verify, cfg.checkpoint_path, sources, final), \
            "onnxruntime (CPU)"
    else:
        (path, diff), how = export_graph(net, shape, None, opts.file_format, opts.verify, sources, final), \
            "nn.GraphCell"
    report(cfg, meta, logger, path, shape, diff if opts.verify else None, how,
           net.feature_info if opts.features_only else None)
    return 0


def check_request(cfg, opts):
    """Before anything is loaded: the output name (never the checkpoint), a format this device can
    write. Returns ``(output path, the inputs it must not replace)``."""
    final = output_path(opts.file_name, require_checkpoint_path(cfg), opts.file_format)
    sources = [("checkpoint_path", cfg.checkpoint_path)]
    check_output_path(final, *sources, label="export file")
    check_format(opts.file_format, resolve_device(cfg))
    return final, sources


def report(cfg, meta, logger, path, shape, diff, how, feature_info=None):
    """What was written, the input and output it expects, and the verification's difference."""
    dynamic = shape[0] is None
    size_mb = os.path.getsize(path) / 2 ** 20
    n = "N" if dynamic else shape[0]
    if feature_info is not None:
        maps = ", ".join(f"({n}, {c}, {-(-shape[2] // r)}, {-(-shape[3] // r)})"
                         for c, r in zip(feature_info.channels(), feature_info.reduction()))
        output = f"the backbone's feature maps {maps}, NCHW, strides {feature_info.reduction()}"
    else:
        output = f"logits ({n}, {cfg.num_classes})"
    logger.info(f"exported {cfg.checkpoint_path} ({describe_model(cfg)}, "
                + ("backbone" if feature_info is not None else f"{cfg.num_classes} classes")
                + (f", {meta.dataset}" if meta.dataset is not None else "") + f") to {path} ({size_mb:.1f} MB)")
    shown = "(" + ", ".join(["N"] + [str(d) for d in shape[1:]]) + ")" if dynamic else str(shape)
    logger.info(f"input: float32 {shown} (RGB, shorter side resized to {eval_scale_size(cfg)} with "
                f"{cfg.interpolation}, centre {cfg.image_size}x{cfg.image_size} crop, normalised with mean "
                f"{cfg.mean} std {cfg.std}, as src.data.images.preprocess does); output: {output}"
                + (", N = any batch size" if dynamic else ""))
    if diff is not None:
        batches = ", ".join(map(str, DYNAMIC_VERIFY_BATCHES if dynamic else [shape[0]]))
        logger.info(f"verified: {path} run with {how} gives the checkpoint model's "
                    f"{'feature maps' if feature_info is not None else 'logits'} "
                    f"(max abs difference {diff:.3g} at batch {batches}, tolerance {VERIFY_ATOL:g})")
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
