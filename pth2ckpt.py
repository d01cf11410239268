"""Convert official PyTorch ConvMLP weights (``.pth``) into a MindSpore checkpoint (``.ckpt``).

Official code: https://github.com/SHI-Labs/Convolutional-MLPs (``src/convmlp.py``). The MindSpore
model (``model/convmlp.py``) uses the official parameter names, so conversion is a rename of the
norm parameters (:data:`NAME_RULES`, applied by :func:`map_name`); arrays keep their shapes.

Usage::

    python pth2ckpt.py --arch convmlp_s --dst convmlp_s.ckpt --verify         # download release
    python pth2ckpt.py --src IN.pth --dst OUT.ckpt --arch convmlp_s [--num_classes 10] [--ema]
    python pth2ckpt.py --src tiny.pth --dst tiny.ckpt --blocks 1 2 1 --dims 16 32 64 \\
        --mlp_ratios 2 2 2 --channels 16 --n_conv_blocks 1 --verify             # custom topology
    python pth2ckpt.py --reverse --src output/best.ckpt --dst best.pth --verify  # back to PyTorch

Accepted inputs: the released files (plain ``state_dict``) and training checkpoints as the official
(timm-based) training script saves them (``state_dict``, ``state_dict_ema``, ``optimizer``,
``epoch``, ``args`` as an ``argparse.Namespace`` ...), with or without ``module.`` prefixes.
Files are read with ``torch.load(weights_only=True)``: pickled code is never run, and a file that
needs any type beyond tensors, containers and :data:`SAFE_GLOBALS` is refused.

``--reverse`` converts a MindSpore checkpoint (train.py's or this script's) back into the official
PyTorch ``state_dict`` (:mod:`src.to_torch`); the name mapping of both directions is
:mod:`src.convert`.

Every failure the user can fix is one ``error: ...`` line on stderr and exit status 2; the ``.ckpt``
is written atomically and only after the weights were checked against the MindSpore model.
"""
import argparse
import os
import re
from collections import OrderedDict
from typing import Mapping, Optional

import numpy as np

from model.convmlp import HEAD_PREFIX
from src.convert import (DROP_REASONS, NAME_RULES, TOPOLOGY_KEYS, VERIFY_ATOL, convert_state_dict, dropped_keys,
                         infer_topology, map_name)
from src.errors import ArgumentParser, CheckpointError, ConfigError, DataError, first_line, run_cli, short_list
from src.fileio import check_not_input, check_output_path

__all__ = ["NAME_RULES", "DROP_REASONS", "TOPOLOGY_KEYS", "SAFE_GLOBALS", "map_name",
           "convert_state_dict", "dropped_keys",
           "load_torch_checkpoint", "extract_state_dict", "infer_topology", "compare_shapes",
           "release_url", "fetch_release", "save_ckpt_atomic", "verify", "main"]



# ------------------------------------------------------------------------------------------------
# Reading PyTorch files safely

#: Types (beyond tensors, containers and numbers, which ``weights_only`` always allows) that a
#: training checkpoint of the official timm-based script needs: its ``args`` and numpy scalars
#: (e.g. a ``metric``). None of them can run code when unpickled.
def _safe_globals():
    globs = [argparse.Namespace, np.dtype]
    try:
        from numpy.core.multiarray import scalar
        globs.append(scalar)
    except ImportError:  # pragma: no cover - numpy layout change
        pass
    globs += sorted({type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32,
                                                 np.int64, np.bool_)}, key=lambda t: t.__name__)
    return globs


SAFE_GLOBALS = _safe_globals()


def _unsafe_globals(path: str):
    """Globals the pickle in ``path`` refers to that are not allowed (read without running it)."""
    import torch
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: read the globals off the pickle's opcodes
        found = _pickle_globals(path)
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    return [g for g in found if g not in allowed and not g.startswith(("torch.", "collections.OrderedDict"))]


def _pickle_globals(path: str):
    """``module.name`` of the globals that the pickle streams at the start of `path` refer to (the
    legacy torch format is several pickles in a row), read with ``pickletools``, which decodes the
    opcodes and runs nothing; reading stops at the first bytes that are not a pickle."""
    import pickletools
    found, strings = [], []
    try:
        with open(path, "rb") as f:
            while True:
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
    except Exception:  # the end of the pickles (tensor bytes, end of file, a corrupt stream)
        pass
    return list(dict.fromkeys(found))


def _file_kind(path: str) -> str:
    """What the first bytes of ``path`` say it is, for error messages."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    return "other"


def _unpickler_reason(exc: BaseException) -> str:
    """The useful part of torch's long ``weights_only`` error message."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", str(exc))
    return m.group(1).strip()[:200] if m else first_line(exc, 200)


def load_torch_checkpoint(path: str):
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS`, on CPU.

    Raises :class:`CheckpointError` (one line naming the file) when the file is missing, is not a
    PyTorch checkpoint (random bytes, text, truncated), or needs a type that is not allowed -- in
    that case nothing in it was executed.
    """
    import pickle
    import warnings
    import torch
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read '{path}': the file is empty")
    kind = _file_kind(path)
    if kind == "other":
        raise CheckpointError(f"cannot read '{path}': not a PyTorch checkpoint (neither a zip archive "
                              f"saved by torch.save nor a pickle; a text file or random bytes?)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" on foreign pickles
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        match = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
        if not unsafe and match:
            unsafe = [match.group(1)]
        if unsafe:
            raise CheckpointError(
                f"refusing to load '{path}': it needs {', '.join(unsafe)}, which is not an allowed "
                f"type (only tensors, containers and {', '.join(_short_names())}); nothing in it "
                f"was executed") from None
        raise CheckpointError(f"cannot read '{path}': not a PyTorch checkpoint "
                              f"({_unpickler_reason(exc)}); nothing in it was executed") from None
    except Exception as exc:  # zip/stream errors of truncated or foreign files
        what = "a truncated or corrupt zip archive" if kind == "zip" else "a corrupt pickle"
        raise CheckpointError(f"cannot read '{path}': {what}, not a complete PyTorch checkpoint "
                              f"({first_line(exc, 120)})") from None


def _short_names():
    return sorted({g.__name__ for g in SAFE_GLOBALS if not g.__name__.endswith("DType")})


def _is_state_dict(obj) -> bool:
    import torch
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, (torch.Tensor, np.ndarray)) for k, v in obj.items())


def extract_state_dict(obj, path: str = "checkpoint", ema: bool = False):
    """The model weights inside a loaded ``.pth``: ``(state_dict, description)``.

    ``obj`` is a plain state_dict (released files) or a training checkpoint dict holding
    ``state_dict`` / ``state_dict_ema`` (timm) or ``model``. ``ema`` picks ``state_dict_ema`` and is
    an error when there is none. ``module.`` prefixes (DataParallel/DDP) are removed.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, expected a state_dict or a "
                              f"training checkpoint dict")
    if _is_state_dict(obj):
        if ema:
            raise CheckpointError(f"--ema given but '{path}' is a plain state_dict without EMA "
                                  f"weights (no 'state_dict_ema')")
        state, what = obj, "plain state_dict"
    else:
        key = "state_dict_ema" if ema else next((k for k in ("state_dict", "model") if k in obj), None)
        if key is None or key not in obj:
            found = ", ".join(sorted(map(str, obj)))[:300]
            need = "'state_dict_ema' (asked for by --ema)" if ema else "'state_dict' or 'model'"
            raise CheckpointError(f"'{path}' has no {need}; its keys are: {found}")
        state = obj[key]
        if not _is_state_dict(state):
            raise CheckpointError(f"'{path}': '{key}' is not a state_dict of tensors")
        meta = [f"{m} {obj[m]}" for m in ("arch", "epoch") if m in obj and isinstance(
            obj[m], (str, int))]
        what = f"training checkpoint, '{key}'" + (f" ({', '.join(meta)})" if meta else "")
    if any(k.startswith("module.") for k in state):
        state = OrderedDict((k[len("module."):] if k.startswith("module.") else k, v)
                            for k, v in state.items())
        what += ", 'module.' prefix removed"
    return state, what


# ------------------------------------------------------------------------------------------------
# Checking the weights against the model

def describe_topology(topo: Mapping) -> str:
    from model import default_cfgs
    parts = " ".join(f"{k} {list(topo[k]) if isinstance(topo[k], (list, tuple)) else topo[k]}"
                     for k in TOPOLOGY_KEYS if k in topo)
    for arch, cfg in default_cfgs.items():
        if all(k in topo and list(np.atleast_1d(topo[k])) == list(np.atleast_1d(cfg[k]))
               for k in TOPOLOGY_KEYS):
            return f"{parts} (= {arch})"
    return parts


def compare_shapes(weights: Mapping, expected: Mapping):
    """``(missing, unexpected, mismatched)`` name lists between converted weights and the model's
    ``{name: shape}``; ``mismatched`` entries read ``name (ckpt shape) vs model (shape)``."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k} {tuple(weights[k].shape)} vs model {tuple(expected[k])}"
                  for k in weights if k in expected and tuple(weights[k].shape) != tuple(expected[k])]
    return missing, unexpected, mismatched


# ------------------------------------------------------------------------------------------------
# Download of the released weights

def release_url(arch: str) -> str:
    """URL of the released ImageNet weights of ``arch``; ``$CONVMLP_WEIGHTS_URL`` replaces the base."""
    from model import default_cfgs
    url = default_cfgs[arch]["url"]
    base = os.environ.get("CONVMLP_WEIGHTS_URL")
    if base:
        url = base.rstrip("/") + "/" + url.rsplit("/", 1)[-1]
    return url


def fetch_release(arch: str, cache_dir: str) -> str:
    """Path of the released ``.pth`` of ``arch`` in ``cache_dir``, downloaded when not there yet."""
    from src.download import download_url
    url = release_url(arch)
    dst = os.path.join(os.path.expanduser(cache_dir), url.rsplit("/", 1)[-1])
    if os.path.isfile(dst):
        print(f"using cached {dst}", flush=True)
        return dst
    print(f"downloading {url} -> {dst}", flush=True)
    try:
        return download_url(url, dst, desc=os.path.basename(dst))
    except DataError as exc:
        reason = getattr(exc, "reason", str(exc))
        raise CheckpointError(f"cannot download the {arch} weights from {url} ({reason}); download the "
                              f"file by hand and put it at {dst}, or pass --src PATH") from None


# ------------------------------------------------------------------------------------------------
# Writing and verifying

def save_ckpt_atomic(weights: Mapping[str, np.ndarray], dst: str, src: Optional[str] = None):
    """Write ``weights`` as a MindSpore ``.ckpt`` at ``dst`` (:func:`src.checkpoint.save_atomic`):
    ``dst`` is either the old file or the complete new one, never partial, and never ``src``."""
    import mindspore as ms
    from src.checkpoint import save_atomic
    check_not_input(dst, ("--src", src), label="--dst")
    save_atomic([{"name": k, "data": ms.Tensor(v)} for k, v in weights.items()], dst, mode=0o644)


def verify(torch_state: Mapping, weights: Mapping[str, np.ndarray], topo: dict, num_classes: int,
           size: int, batch: int = 1, seed: int = 0) -> float:
    """Max abs difference between the PyTorch reference (``model/torch_convmlp.py``) with
    ``torch_state`` and the MindSpore model with ``weights``, both in inference mode, on the same
    random ``(batch, 3, size, size)`` input (NaN when an output is not finite)."""
    from model.torch_convmlp import TorchConvMLP
    from src.to_torch import logits_difference
    ref = TorchConvMLP(num_classes=num_classes, **topo).eval()
    ref.load_state_dict(dict(torch_state), strict=True)
    return logits_difference(weights, ref, topo, num_classes, size, batch, seed)


# ------------------------------------------------------------------------------------------------
# CLI

def parse_args(argv=None):
    from src.config import path_arg
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=path_arg, help="official .pth (released state_dict or training checkpoint); "
                   "default: download the release of --arch; with --reverse a MindSpore .ckpt")
    p.add_argument("--dst", required=True, type=path_arg, help="output MindSpore .ckpt (with --reverse: .pth)")
    p.add_argument("--reverse", action="store_true", help="MindSpore .ckpt -> official PyTorch .pth "
                   "(topology from the checkpoint's config or its shapes)")
    p.add_argument("--arch", choices=("convmlp_s", "convmlp_m", "convmlp_l"),
                   help="released variant; the topology flags below override its settings")
    p.add_argument("--num_classes", type=int, help="classes of the target model; when it differs "
                   "from the checkpoint's head, the head is left out (re-created at fine-tune time)")
    p.add_argument("--ema", action="store_true", help="use 'state_dict_ema' of a training checkpoint")
    p.add_argument("--verify", action="store_true", help="compare the logits of the PyTorch reference "
                   f"and the MindSpore model; fail above {VERIFY_ATOL:g}")
    p.add_argument("--verify_size", type=int, help="input size for --verify (default 224 for a "
                   "released arch, 64 for a custom topology)")
    p.add_argument("--cache_dir", type=path_arg, default=os.path.join("~", ".cache", "convmlp"),
                   help="where downloaded releases are kept (default ~/.cache/convmlp)")
    # lists as in train.py: "--blocks 2 4 2" or "--blocks 2,4,2"
    p.add_argument("--blocks", nargs="+", metavar="N")
    p.add_argument("--dims", nargs="+", metavar="N")
    p.add_argument("--mlp_ratios", nargs="+", metavar="R")
    p.add_argument("--channels", type=int)
    p.add_argument("--n_conv_blocks", type=int)
    return p.parse_args(argv)


def topology_flags(args) -> dict:
    """The topology flags given, validated with train.py's schema (src/config.py: types and
    bounds, e.g. ``--channels 0`` or a negative dim is refused)."""
    from src.config import convert_value
    given = {}
    for key in TOPOLOGY_KEYS:
        raw = getattr(args, key)
        if raw is not None:
            text = ",".join(map(str, raw)) if isinstance(raw, list) else str(raw)
            given[key] = convert_value(key, text, "command line", shown_as=f"--{key}")
    return given


def resolve_topology(args) -> dict:
    """ConvMLP arguments: those of ``--arch``, with the topology flags given in their place
    (``model.complete_topology``, as train.py does); without ``--arch`` every flag is needed."""
    from model import complete_topology
    given = topology_flags(args)
    if args.arch is None and len(given) < len(TOPOLOGY_KEYS):
        raise ConfigError("give --arch, or all of the topology flags")
    topo = complete_topology(args.arch or "convmlp_s", given)  # without --arch every key is given
    topo["mlp_ratios"] = [int(r) if float(r).is_integer() else r for r in topo["mlp_ratios"]]
    return topo


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reverse:
        from src.to_torch import reverse_main
        return reverse_main(args)
    arch_name = check_arguments(args)
    src, torch_state, what = read_source(args)
    topo = resolve_topology(args)
    weights, dropped, num_classes, ckpt_classes = target_weights(args, torch_state, src)
    report_and_check_fit(src, what, arch_name, torch_state, weights, dropped, topo, num_classes)
    if args.verify:
        verify_phase(args, src, torch_state, topo, arch_name, ckpt_classes or num_classes)
    save_ckpt_atomic(weights, args.dst, src)
    print(f"written     : {args.dst} ({len(weights)} parameters)", flush=True)
    return 0


def check_arguments(args) -> str:
    """Every flag is checked before anything is read or downloaded; returns the target's name
    (the arch, or ``custom ...`` for a topology given by flags)."""
    from src.config import convert_value
    if args.src is None and args.arch is None:
        raise ConfigError("without --src, --arch names the release to download")
    topology_flags(args)
    if args.num_classes is not None:
        convert_value("num_classes", args.num_classes, "command line", shown_as="--num_classes")
    if args.verify_size is not None:
        convert_value("image_size", args.verify_size, "command line", shown_as="--verify_size")
    lacking = [f"--{k}" for k in TOPOLOGY_KEYS if getattr(args, k) is None]
    if args.arch is None and lacking:
        raise ConfigError(f"give --arch convmlp_s|convmlp_m|convmlp_l, or all of the topology "
                          f"flags (missing: {' '.join(lacking)})")
    check_output_path(args.dst, ("--src", args.src), label="--dst")
    return args.arch if args.arch and len(lacking) == len(TOPOLOGY_KEYS) \
        else f"custom{' ' + args.arch if args.arch else ''}"


def read_source(args):
    """The source ``.pth`` (downloaded when --src is not given), read safely before MindSpore is
    even imported; returns ``(path, state_dict, what it was)``."""
    src = args.src if args.src else fetch_release(args.arch, args.cache_dir)
    check_not_input(args.dst, ("--src", src), label="--dst")
    try:
        obj = load_torch_checkpoint(src)
    except CheckpointError as exc:
        if args.src:
            raise
        raise CheckpointError(f"{exc} (a cached download: delete it to download again)") from None
    torch_state, what = extract_state_dict(obj, src, ema=args.ema)
    return src, torch_state, what


def target_weights(args, torch_state, src):
    """The converted weights (finite), the dropped keys with their reasons, and the class counts:
    the target's and the checkpoint's. The head is dropped when the counts differ."""
    from model import check_finite
    weights = convert_state_dict(torch_state)
    try:
        check_finite(weights, src)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; nothing was written") from None
    dropped = dropped_keys(torch_state)
    ckpt_classes = infer_topology(torch_state).get("num_classes")
    num_classes = args.num_classes if args.num_classes is not None else (ckpt_classes or 1000)
    if ckpt_classes is not None and num_classes != ckpt_classes:
        for k in [k for k in weights if k.startswith(HEAD_PREFIX)]:
            del weights[k]
            dropped[k] = (f"head of {ckpt_classes} classes, target has {num_classes}: re-created "
                          f"at fine-tune time (model.load_pretrained)")
    return weights, dropped, num_classes, ckpt_classes


def report_and_check_fit(src, what, arch_name, torch_state, weights, dropped, topo, num_classes):
    """Print what was mapped and dropped; CheckpointError naming the keys when the weights do not
    fit the target model exactly (missing, unexpected, of another shape)."""
    from model import ConvMLP
    net = ConvMLP(num_classes=num_classes, drop_path_rate=0.0, **topo)
    expected = OrderedDict((p.name, tuple(p.shape)) for p in net.get_parameters())
    if not any(k.startswith(HEAD_PREFIX) for k in weights):
        expected = OrderedDict((k, s) for k, s in expected.items() if not k.startswith(HEAD_PREFIX))
    n_params = sum(p.size for p in net.trainable_params())
    missing, unexpected, mismatched = compare_shapes(weights, expected)
    print(f"source      : {src} ({what}, {len(torch_state)} keys)")
    print(f"target      : {arch_name}: {describe_topology(topo)}, num_classes {num_classes}, "
          f"{n_params:,} trainable parameters")
    print(f"mapped      : {len(weights)} keys "
          f"({sum(map_name(k) != k for k in torch_state if map_name(k))} renamed)")
    reasons = OrderedDict()
    for k, why in dropped.items():
        reasons.setdefault(why, []).append(k)
    for why, keys in reasons.items():
        print(f"dropped     : {len(keys)} keys ({why}): {short_list(keys, 4)}")
    problems = [(label, keys) for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                  ("of another shape", mismatched)) if keys]
    if problems:
        found = describe_topology(infer_topology(torch_state))
        found = f"the checkpoint looks like {found}" if found else "its keys are not ConvMLP keys"
        for label, keys in problems:
            print(f"FAIL {'wrong shape' if label == 'of another shape' else label:<11}: {len(keys)}: "
                  f"{short_list(keys, 20)}")
        raise CheckpointError(f"'{src}' does not fit {arch_name} ({describe_topology(topo)}): "
                              + "; ".join(f"{len(keys)} {label}: {short_list(keys, 5)}" for label, keys in problems)
                              + f"; {found}; nothing was written")


def verify_phase(args, src, torch_state, topo, arch_name, num_classes):
    """``--verify``: the source weights through the PyTorch reference and the converted ones
    through the MindSpore model give the same logits (a NaN difference fails)."""
    size = args.verify_size or (224 if arch_name in ("convmlp_s", "convmlp_m", "convmlp_l") else 64)
    diff = verify(torch_state, convert_state_dict(torch_state), topo, num_classes, size)
    ok = diff <= VERIFY_ATOL   # False for a NaN difference, which must fail
    print(f"verify      : max abs diff {diff:.3e} on a (1, 3, {size}, {size}) input, PyTorch "
          f"reference vs MindSpore, inference mode, tolerance {VERIFY_ATOL:g}: {'OK' if ok else 'FAIL'}")
    if not ok:
        raise CheckpointError(f"verify failed for '{src}': max abs diff {diff:.3e} > "
                              f"{VERIFY_ATOL:g}; nothing was written")


if __name__ == "__main__":
    run_cli(main)
