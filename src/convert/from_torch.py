"""Official PyTorch weights -> a MindSpore checkpoint (``pth2ckpt.py``), in named phases: check
the arguments, read the source safely, convert and drop what does not belong, report and check
the fit against the MindSpore model, verify the logits, write the file atomically."""
import os
from collections import OrderedDict
from typing import Mapping, Optional

import numpy as np

from model import (HEAD_PREFIX, TOPOLOGY_KEYS, ConvMLP, check_finite, complete_topology, default_cfgs, fit_problems,
                   list_models)

from ..checkpoint.checkpoint import save_atomic
from ..config import convert_value
from ..platform.download import download_url
from ..platform.errors import CheckpointError, ConfigError, DataError, short_list
from ..platform.fileio import check_not_input, check_output_path
from .names import (BACKBONE_PREFIX, VERIFY_ATOL, convert_state_dict, dropped_keys, infer_topology, map_name,
                    split_dense_checkpoint)
from .to_torch import logits_difference
from .torch_files import extract_state_dict, load_torch_checkpoint

__all__ = ["convert", "dense_backbone", "describe_topology", "release_url", "fetch_release", "save_ckpt_atomic", "verify",
           "topology_flags", "resolve_topology"]


def convert(args) -> int:
    """``pth2ckpt.py`` without ``--reverse``: the phases below, in order."""
    arch_name = check_arguments(args)
    src, torch_state, what = read_source(args)
    topo = resolve_topology(args)
    torch_state, what, left_out = dense_backbone(args, torch_state, what, src)
    weights, dropped, num_classes, ckpt_classes = target_weights(args, torch_state, src)
    if left_out is not None:
        dropped = OrderedDict(list(left_out.items()) + list(dropped.items()))
    report_and_check_fit(src, what, arch_name, torch_state, weights, dropped, topo, num_classes,
                         backbone_only=left_out is not None)
    if args.verify:
        verify_phase(args, src, torch_state, topo, arch_name, ckpt_classes or num_classes)
    save_ckpt_atomic(weights, args.dst, src)
    print(f"written     : {args.dst} ({len(weights)} parameters)", flush=True)
    return 0


def describe_topology(topo: Mapping) -> str:
    parts = " ".join(f"{k} {list(topo[k]) if isinstance(topo[k], (list, tuple)) else topo[k]}"
                     for k in TOPOLOGY_KEYS if k in topo)
    for arch, cfg in default_cfgs.items():
        if all(k in topo and list(np.atleast_1d(topo[k])) == list(np.atleast_1d(cfg[k]))
               for k in TOPOLOGY_KEYS):
            return f"{parts} (= {arch})"
    return parts


def release_url(arch: str) -> str:
    """URL of the released ImageNet weights of ``arch``; ``$CONVMLP_WEIGHTS_URL`` replaces the base."""
    url = default_cfgs[arch]["url"]
    base = os.environ.get("CONVMLP_WEIGHTS_URL")
    if base:
        url = base.rstrip("/") + "/" + url.rsplit("/", 1)[-1]
    return url


def fetch_release(arch: str, cache_dir: str) -> str:
    """Path of the released ``.pth`` of ``arch`` in ``cache_dir``, downloaded when not there yet."""
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


def save_ckpt_atomic(weights: Mapping[str, np.ndarray], dst: str, src: Optional[str] = None):
    """Write ``weights`` as a MindSpore ``.ckpt`` at ``dst`` (:func:`src.checkpoint.checkpoint.save_atomic`):
    ``dst`` is either the old file or the complete new one, never partial, and never ``src``."""
    import mindspore as ms
    check_not_input(dst, ("--src", src), label="--dst")
    save_atomic([{"name": k, "data": ms.Tensor(v)} for k, v in weights.items()], dst, mode=0o644, label="--dst")


def verify(torch_state: Mapping, weights: Mapping[str, np.ndarray], topo: dict, num_classes: int,
           size: int, batch: int = 1, seed: int = 0) -> float:
    """Max abs difference between the PyTorch reference (``model/torch_convmlp.py``) with
    ``torch_state`` and the MindSpore model with ``weights``, both in inference mode, on the same
    random ``(batch, 3, size, size)`` input (NaN when an output is not finite)."""
    from model.torch_convmlp import TorchConvMLP   # imports torch: only when verifying
    ref = TorchConvMLP(num_classes=num_classes, **topo).eval()
    ref.load_state_dict(dict(torch_state), strict=True)
    return logits_difference(weights, ref, topo, num_classes, size, batch, seed)


def topology_flags(args) -> dict:
    """The topology flags given, validated with train.py's schema (src.config: types and
    bounds, e.g. ``--channels 0`` or a negative dim is refused)."""
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
    given = topology_flags(args)
    if args.arch is None and len(given) < len(TOPOLOGY_KEYS):
        raise ConfigError("give --arch, or all of the topology flags")
    topo = complete_topology(args.arch or "convmlp_s", given)  # without --arch every key is given
    topo["mlp_ratios"] = [int(r) if float(r).is_integer() else r for r in topo["mlp_ratios"]]
    return topo


def check_arguments(args) -> str:
    """Every flag is checked before anything is read or downloaded; returns the target's name
    (the arch, or ``custom ...`` for a topology given by flags)."""
    if args.src is None and args.arch is None:
        raise ConfigError("without --src, --arch names the release to download")
    topology_flags(args)
    if args.num_classes is not None:
        convert_value("num_classes", args.num_classes, "command line", shown_as="--num_classes")
    if args.verify_size is not None:
        convert_value("image_size", args.verify_size, "command line", shown_as="--verify_size")
    lacking = [f"--{k}" for k in TOPOLOGY_KEYS if getattr(args, k) is None]
    if args.arch is None and lacking:
        raise ConfigError(f"give --arch {'|'.join(list_models())}, or all of the topology "
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


def dense_backbone(args, torch_state, what, src):
    """An official detection/segmentation checkpoint (mmdet/mmseg: ``backbone.*`` keys beside the
    neck and heads): its backbone, the prefix removed (:func:`split_dense_checkpoint`). Returns
    ``(state_dict, description, {key left out: why})``, ``left out`` None for a classifier's."""
    split = split_dense_checkpoint(torch_state)
    if split is None:
        return torch_state, what, None
    for flag in ("num_classes", "verify"):
        if getattr(args, flag):
            raise ConfigError(f"--{flag} does not apply to '{src}': it holds a detection/segmentation model, "
                              "whose backbone is converted without a classifier head")
    backbone, _ = split
    left_out = OrderedDict((k, f"the {k.split('.', 1)[0]} of the dense-task model, not the backbone")
                           for k in torch_state if not k.startswith(BACKBONE_PREFIX))
    return backbone, f"{what}, dense-task model: its 'backbone.*' keys", left_out


def target_weights(args, torch_state, src):
    """The converted weights (finite), the dropped keys with their reasons, and the class counts:
    the target's and the checkpoint's. The head is dropped when the counts differ."""
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


def report_and_check_fit(src, what, arch_name, torch_state, weights, dropped, topo, num_classes,
                         backbone_only=False):
    """Print what was mapped and dropped; CheckpointError naming the keys when the weights do not
    fit the target model exactly (missing, unexpected, of another shape). A backbone is checked
    against the model without its head (``norm`` and ``head``)."""
    net = ConvMLP(num_classes=num_classes, drop_path_rate=0.0, classifier_head=not backbone_only, **topo)
    model = OrderedDict((p.name, p) for p in net.get_parameters())
    n_params = sum(p.size for p in net.trainable_params())
    without_head = not any(k.startswith(HEAD_PREFIX) for k in weights)
    missing, unexpected, mismatched = fit_problems(model, weights, HEAD_PREFIX if without_head else None)
    print(f"source      : {src} ({what}, {len(torch_state)} keys)")
    print(f"target      : {arch_name}: {describe_topology(topo)}, "
          f"{'backbone (no head)' if backbone_only else f'num_classes {num_classes}'}, "
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
    size = args.verify_size or (224 if arch_name in list_models() else 64)
    diff = verify(torch_state, convert_state_dict(torch_state), topo, num_classes, size)
    ok = diff <= VERIFY_ATOL   # False for a NaN difference, which must fail
    print(f"verify      : max abs diff {diff:.3e} on a (1, 3, {size}, {size}) input, PyTorch "
          f"reference vs MindSpore, inference mode, tolerance {VERIFY_ATOL:g}: {'OK' if ok else 'FAIL'}")
    if not ok:
        raise CheckpointError(f"verify failed for '{src}': max abs diff {diff:.3e} > "
                              f"{VERIFY_ATOL:g}; nothing was written")
