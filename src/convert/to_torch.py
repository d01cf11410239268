"""MindSpore checkpoint (``.ckpt``) -> official PyTorch ConvMLP ``state_dict`` (``.pth``).

``python pth2ckpt.py --reverse --src best.ckpt --dst best.pth [--verify]`` runs :func:`reverse_main`.
The input is a checkpoint written by train.py (weights, optimizer state, metadata, the run's
config) or by pth2ckpt.py (weights only). The output is what the official code loads:
``torch.load(path, weights_only=True)`` gives a plain ``OrderedDict`` of tensors with the official
keys in the official order (see :func:`src.convert.names.to_torch_state_dict`), which loads with
``load_state_dict(strict=True)`` into the official ``ConvMLP`` and into ``model/torch_convmlp.py``.

The topology comes from the checkpoint's saved config (train.py) or, without one, from the shapes
of its weights. Before anything is written the state_dict is loaded strictly into the PyTorch
reference model of that topology; with ``--verify`` the logits of the MindSpore model and of the
PyTorch reference must agree on a random input. The ``.pth`` is written under a temporary name in
the destination folder and renamed when complete; it never replaces the input file.
"""
from collections import OrderedDict
from typing import Dict, Mapping, Tuple

import numpy as np

from ..checkpoint.checkpoint import Checkpoint, CheckpointMeta
from ..platform.errors import CheckpointError, ConfigError, short_list
from ..platform.fileio import atomic_output, check_output_path
from .names import (MODEL_ROOTS, TOPOLOGY_KEYS, VERIFY_ATOL, infer_topology, max_abs_difference, to_torch_name,
                    to_torch_state_dict)

__all__ = ["read_ms_checkpoint", "checkpoint_topology", "load_into_reference", "save_pth_atomic", "logits_difference",
           "reverse_main"]

#: pth2ckpt.py options that describe the PyTorch side and have no meaning with --reverse.
FORWARD_ONLY = ("arch", "num_classes", "blocks", "dims", "mlp_ratios", "channels", "n_conv_blocks")
RELEASED_SIZE, CUSTOM_SIZE = 224, 64


def read_ms_checkpoint(path: str, use_ema: bool = False) -> Tuple[Dict[str, np.ndarray], CheckpointMeta, list]:
    """``(weights, meta, other)`` of a MindSpore checkpoint: the model's arrays by MindSpore name
    (with `use_ema`, its EMA weights: :meth:`src.checkpoint.checkpoint.Checkpoint.model_entries`),
    train.py's metadata (:class:`src.checkpoint.checkpoint.CheckpointMeta`), and the names of
    everything else (optimizer state, step counters, metadata), which the conversion leaves out."""
    ckpt = Checkpoint.read(path)
    meta = ckpt.meta
    params = ckpt.model_entries(use_ema)
    weights, other = OrderedDict(), []
    for name, value in params.items():
        if to_torch_name(name) is None or isinstance(value, str):
            other.append(name)
        else:
            weights[name] = value.asnumpy()
    if not weights:
        tensors = [k for k, v in params.items() if not isinstance(v, str)]
        raise CheckpointError(f"'{path}' holds no ConvMLP weights: none of its {len(tensors)} tensors "
                              f"is under {', '.join(MODEL_ROOTS)} (it has {', '.join(tensors[:4])})")
    return weights, meta, other


def _saved_topology(meta: CheckpointMeta, path: str):
    """The topology recorded in a train.py checkpoint's config, or None (no saved config, or one
    that cannot give a complete topology: the caller then reads it off the weights)."""
    from model import complete_topology, default_cfgs
    try:
        saved = meta.saved_config(path)
        if saved is None or saved.get("arch") not in default_cfgs:
            return None
        topo = complete_topology(saved["arch"], saved)
    except (CheckpointError, ConfigError):
        return None
    topo["mlp_ratios"] = [int(r) if float(r).is_integer() else r for r in topo["mlp_ratios"]]
    return topo


def checkpoint_topology(weights: Mapping, meta: CheckpointMeta, path: str) -> Tuple[dict, int, str]:
    """``(topology, num_classes, where from)``: the saved config's topology when there is one, else
    the one read off the weights' shapes; ``num_classes`` from the head."""
    head = weights.get("head.weight")
    if head is None or np.ndim(head) != 2:
        raise CheckpointError(f"'{path}' has no classifier head (head.weight): the official state_dict "
                              "includes the head; convert a checkpoint written by train.py or by "
                              "pth2ckpt.py with its head")
    inferred = infer_topology(weights)
    topo, source = _saved_topology(meta, path), "the checkpoint's saved config"
    if topo is None:
        missing = [k for k in TOPOLOGY_KEYS if k not in inferred]
        if missing:
            raise CheckpointError(f"'{path}': cannot tell the ConvMLP topology from its weights (no "
                                  f"{', '.join(missing)}); is it a complete ConvMLP checkpoint?")
        topo, source = {k: inferred[k] for k in TOPOLOGY_KEYS}, "the weights' shapes"
    return topo, int(head.shape[0]), source


def load_into_reference(state: Mapping, topo: Mapping, num_classes: int, path: str):
    """The PyTorch reference model (``model/torch_convmlp.py``, official keys) with `state` loaded
    strictly, in eval mode; CheckpointError naming the keys when it does not fit."""
    from model.torch_convmlp import TorchConvMLP
    ref = TorchConvMLP(num_classes=num_classes, drop_path_rate=0.0, **topo).eval()
    try:
        ref.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(f"'{path}' does not fit ConvMLP {dict(topo)} with {num_classes} classes: "
                              f"{detail}") from None
    return ref


def save_pth_atomic(state: Mapping, dst: str, src: str = None):
    """``torch.save(state, dst)`` through :func:`src.platform.fileio.atomic_output`: `dst` holds either its
    old content or the complete new file, and is never the checkpoint `src` that was read."""
    import torch
    with atomic_output(dst, inputs=[("--src", src)] if src else (), label="--dst") as tmp:
        torch.save(state, tmp)


def logits_difference(weights: Mapping, ref, topo: Mapping, num_classes: int, size: int,
                      batch: int = 2, seed: int = 0) -> float:
    """Max abs difference between the MindSpore model with `weights` and the PyTorch reference
    module `ref`, both in inference mode, on one random ``(batch, 3, size, size)`` input (NaN when
    either output is not finite). Both directions of the conversion are verified with it."""
    import torch
    import mindspore as ms
    from model import ConvMLP
    x = np.random.RandomState(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
    net = ConvMLP(num_classes=num_classes, drop_path_rate=0.0, **topo)
    not_loaded, _ = ms.load_param_into_net(net, {k: ms.Parameter(ms.Tensor(v), name=k)
                                                 for k, v in weights.items()}, strict_load=True)
    if not_loaded:
        raise CheckpointError(f"verify: MindSpore parameters left unloaded: {short_list(not_loaded, 6)}")
    net.set_train(False)
    got = net(ms.Tensor(x)).asnumpy()
    with torch.no_grad():
        want = ref.eval()(torch.from_numpy(x)).numpy()
    return max_abs_difference([(got, want)])



def reverse_main(args) -> int:
    """``pth2ckpt.py --reverse``: `args` as parsed by pth2ckpt.py (src, dst, verify, verify_size)."""
    if not args.src:
        raise ConfigError("--reverse needs --src FILE.ckpt (a checkpoint of train.py or pth2ckpt.py)")
    given = [f"--{k}" for k in FORWARD_ONLY if getattr(args, k, None) not in (None, False)]
    if given:
        raise ConfigError(f"--reverse takes the model from the checkpoint; {' '.join(given)} "
                          "only applies to .pth -> .ckpt conversion")
    check_output_path(args.dst, ("--src", args.src), label="--dst")
    weights, meta, other = read_ms_checkpoint(args.src, args.ema)   # refuses NaN/inf weights (check_finite)
    topo, num_classes, source = checkpoint_topology(weights, meta, args.src)
    state = to_torch_state_dict(weights)
    ref = load_into_reference(state, topo, num_classes, args.src)
    counters = [k for k in state if k.endswith(".num_batches_tracked")]
    what = "train.py checkpoint" if meta.config is not None else "MindSpore checkpoint"
    print(f"source      : {args.src} ({what}, {len(weights)} model parameters"
          + (", its EMA weights)" if args.ema else ")"))
    print(f"model       : {' '.join(f'{k} {topo[k]}' for k in TOPOLOGY_KEYS)}, num_classes "
          f"{num_classes} (from {source})")
    print(f"mapped      : {len(weights)} parameters to official keys "
          f"({sum(to_torch_name(k) != k for k in weights)} renamed)")
    print(f"restored    : {len(counters)} BatchNorm counters num_batches_tracked (int64, value 0: "
          "MindSpore keeps no counter; the official BatchNorm's fixed momentum does not use it)")
    if other:
        print(f"dropped     : {len(other)} entries (optimizer state and training metadata, not model "
              f"weights): {short_list(other, 6)}")
    if args.verify:
        size = args.verify_size or meta.image_size or (
            RELEASED_SIZE if _is_released(topo) else CUSTOM_SIZE)
        diff = logits_difference(weights, ref, topo, num_classes, size)
        ok = diff <= VERIFY_ATOL  # False for NaN
        print(f"verify      : max abs diff {diff:.3e} on a (2, 3, {size}, {size}) input, MindSpore vs "
              f"PyTorch reference, inference mode, tolerance {VERIFY_ATOL:g}: {'OK' if ok else 'FAIL'}")
        if not ok:
            raise CheckpointError(f"verify failed for '{args.src}': max abs diff {diff:.3e} (tolerance "
                                  f"{VERIFY_ATOL:g}); nothing was written")
    save_pth_atomic(state, args.dst, args.src)
    print(f"written     : {args.dst} ({len(state)} official state_dict entries)", flush=True)
    return 0


def _is_released(topo: Mapping) -> bool:
    from model import default_cfgs
    return any(all(list(np.atleast_1d(topo[k])) == list(np.atleast_1d(cfg[k])) for k in TOPOLOGY_KEYS)
               for cfg in default_cfgs.values())
