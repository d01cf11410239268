"""Name and array mapping between official PyTorch ConvMLP ``state_dict`` keys and MindSpore names,
both ways: the MindSpore model uses the official parameter names except for its norm layers, so the
mapping is a rename (:data:`NAME_RULES`) and arrays keep their shapes. PyTorch -> MindSpore:
:func:`map_name`, :func:`convert_state_dict`, :func:`dropped_keys`; MindSpore -> PyTorch (the
official ``state_dict``, in the official order, BatchNorm statistics and counters restored):
:func:`to_torch_name`, :func:`to_torch_state_dict`; :func:`infer_topology` reads the ConvMLP
arguments off a state_dict. Everything here is pure: no file is read or written, no input modified.
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import numpy as np

from model.configs import TOPOLOGY_KEYS
from model.weights import MODEL_ROOTS

from ..platform.errors import CheckpointError

#: The tolerance of every check that a converted or exported model gives the source model's logits
#: (pth2ckpt.py --verify both ways, export.py --verify for MINDIR and ONNX): max abs difference in
#: float32; a NaN difference fails.
VERIFY_ATOL = 1e-4


def max_abs_difference(pairs) -> float:
    """The largest ``|got - want|`` over ``(got, want)`` array pairs; NaN when two shapes differ or
    an output is not finite, so that ``diff <= VERIFY_ATOL`` fails for it (NaN compares False)."""
    worst = 0.0
    for got, want in pairs:
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape or not (np.isfinite(got).all() and np.isfinite(want).all()):
            return float("nan")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst

__all__ = ["VERIFY_ATOL", "max_abs_difference", "NAME_RULES", "REVERSE_RULES", "DROP_REASONS", "MODEL_ROOTS", "TOPOLOGY_KEYS",
           "map_name", "convert_state_dict", "dropped_keys", "to_torch_name", "to_torch_state_dict",
           "official_order", "infer_topology", "BACKBONE_PREFIX", "split_dense_checkpoint"]


# Norm layers of the official model: BatchNorm at positions 1, 4, 7 of each conv-BN-ReLU x3
# Sequential (tokenizer, conv-stage bottlenecks); LayerNorm ``norm`` (head) and the blocks'
# ``norm1``, ``norm2``, ``connect_norm``.
_BATCH_NORM = r"(?:tokenizer\.block|conv_stages\.conv_blocks\.\d+)\.[147]"
_LAYER_NORM = r"(?:norm|stages\.\d+\.blocks\.\d+\.(?:norm1|norm2|connect_norm))"
_NORM = rf"(?:{_BATCH_NORM}|{_LAYER_NORM})"

#: The whole name mapping, PyTorch key regex -> MindSpore replacement (``None``: dropped). The first
#: matching rule wins; keys that match no rule keep their name (convs and Dense layers keep
#: ``weight``/``bias`` with the same shapes in both frameworks).
NAME_RULES = (
    # A BatchNorm update counter; MindSpore's BatchNorm uses a fixed momentum and has no counter.
    (re.compile(r"^(.+)\.num_batches_tracked$"), None),
    (re.compile(r"^(.+)\.running_mean$"), r"\1.moving_mean"),
    (re.compile(r"^(.+)\.running_var$"), r"\1.moving_variance"),
    (re.compile(rf"^({_NORM})\.weight$"), r"\1.gamma"),
    (re.compile(rf"^({_NORM})\.bias$"), r"\1.beta"),
)

#: The inverse of :data:`NAME_RULES`, MindSpore name regex -> PyTorch key (same rules).
REVERSE_RULES = (
    (re.compile(rf"^({_BATCH_NORM})\.moving_mean$"), r"\1.running_mean"),
    (re.compile(rf"^({_BATCH_NORM})\.moving_variance$"), r"\1.running_var"),
    (re.compile(rf"^({_NORM})\.gamma$"), r"\1.weight"),
    (re.compile(rf"^({_NORM})\.beta$"), r"\1.bias"),
)

#: Why a key is dropped, for the report (keyed by the dropping rule's suffix).
DROP_REASONS = {"num_batches_tracked": "BatchNorm counter, MindSpore has none"}

# The registration order of the official modules, which is the order of its state_dict: one rank
# per name (names at the same depth never share a rank; indices of Sequential/ModuleList sort as
# numbers). The blocks register norm1, channel_mlp1, norm2, connect, connect_norm, channel_mlp2.
_OFFICIAL_RANK = {name: i for i, name in enumerate((
    "tokenizer", "block", "conv_stages", "conv_blocks", "downsample", "stages", "blocks",
    "norm1", "channel_mlp1", "norm2", "connect", "connect_norm", "channel_mlp2", "fc1", "fc2",
    "downsample_mlp", "norm", "head",
    "weight", "bias", "running_mean", "running_var", "num_batches_tracked"))}
_COUNTER = "num_batches_tracked"


# ------------------------------------------------------------------------------------------------
# PyTorch -> MindSpore

def map_name(torch_key: str) -> Optional[str]:
    """MindSpore parameter name of an official PyTorch ``state_dict`` key, ``None`` if dropped."""
    for pattern, replacement in NAME_RULES:
        if pattern.match(torch_key):
            return None if replacement is None else pattern.sub(replacement, torch_key)
    return torch_key


def _to_numpy(value, key: str) -> np.ndarray:
    """The array of one state_dict entry; floating point becomes float32 (the model's dtype)."""
    import torch
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy().copy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value.copy()
    raise CheckpointError(f"state_dict entry '{key}' is a {type(value).__name__}, expected a tensor")


def _renamed(entries: Mapping, rename, convert, what: str) -> "OrderedDict":
    """``{rename(name): convert(value, name)}`` in the order of `entries`, leaving out the names
    `rename` maps to None; CheckpointError when two names map to the same one."""
    out, source = OrderedDict(), {}
    for name, value in entries.items():
        new = rename(name)
        if new is None:
            continue
        if new in out:
            raise CheckpointError(f"{what} '{source[new]}' and '{name}' both map to '{new}'")
        out[new] = convert(value, name)
        source[new] = name
    return out


def convert_state_dict(torch_state: Mapping) -> Dict[str, np.ndarray]:
    """Official PyTorch ``state_dict`` -> ``{MindSpore name: numpy array}``.

    Pure: names go through :func:`map_name` (dropped keys are left out), arrays are copied as
    float32 with unchanged shapes. Two keys that map to the same name are an error.
    """
    return _renamed(torch_state, map_name, _to_numpy, "state_dict keys")


def dropped_keys(torch_state: Mapping) -> Dict[str, str]:
    """``{torch key: reason}`` for the keys :func:`map_name` drops."""
    return {k: DROP_REASONS.get(k.rsplit(".", 1)[-1], "dropped by NAME_RULES")
            for k in torch_state if map_name(k) is None}


#: Prefix of the backbone's keys in an mmdet/mmseg model (the official detection and segmentation
#: checkpoints): ``backbone.*`` beside ``neck.*``, ``rpn_head.*``, ``roi_head.*``, ``bbox_head.*``,
#: ``decode_head.*``, ``auxiliary_head.*``.
BACKBONE_PREFIX = "backbone."


def split_dense_checkpoint(torch_state: Mapping):
    """The prefix-stripping step before :func:`map_name` for a dense-task model's ``state_dict``:
    ``(backbone state_dict with BACKBONE_PREFIX removed, {other top-level part: key count})``, or
    ``None`` when no key starts with :data:`BACKBONE_PREFIX` (a classifier's state_dict). Pure."""
    if not any(k.startswith(BACKBONE_PREFIX) for k in torch_state):
        return None
    backbone, others = OrderedDict(), OrderedDict()
    for key, value in torch_state.items():
        if key.startswith(BACKBONE_PREFIX):
            backbone[key[len(BACKBONE_PREFIX):]] = value
        else:
            part = key.split(".", 1)[0]
            others[part] = others.get(part, 0) + 1
    return backbone, others


# ------------------------------------------------------------------------------------------------
# MindSpore -> PyTorch

def to_torch_name(ms_name: str) -> Optional[str]:
    """Official PyTorch ``state_dict`` key of a MindSpore checkpoint entry; ``None`` for entries
    that are not model parameters (optimizer state such as ``adam_m.*``, ``global_step``, training
    metadata: anything outside :data:`MODEL_ROOTS`)."""
    if ms_name.split(".", 1)[0] not in MODEL_ROOTS:
        return None
    for pattern, replacement in REVERSE_RULES:
        if pattern.match(ms_name):
            return pattern.sub(replacement, ms_name)
    return ms_name


def _official_sort_key(key: str):
    parts = []
    for part in key.split("."):
        if part.isdigit():
            parts.append((0, int(part)))
        elif part in _OFFICIAL_RANK:
            parts.append((1, _OFFICIAL_RANK[part]))
        else:
            raise CheckpointError(f"'{key}' is not a ConvMLP state_dict key ('{part}' is no part of "
                                  "the official model)")
    return tuple(parts)


def official_order(keys):
    """`keys` (official PyTorch names) sorted in the order of the official model's ``state_dict``."""
    return sorted(keys, key=_official_sort_key)


def _to_torch_tensor(value, name: str):
    import torch
    if hasattr(value, "asnumpy"):  # a MindSpore Parameter or Tensor
        value = value.asnumpy()
    if not isinstance(value, np.ndarray):
        raise CheckpointError(f"checkpoint entry '{name}' is a {type(value).__name__}, expected a tensor")
    return torch.from_numpy(np.array(value, copy=True))


def to_torch_state_dict(ms_params: Mapping, num_batches_tracked: int = 0) -> "OrderedDict":
    """MindSpore weights ``{name: Parameter | Tensor | numpy array}`` -> the official PyTorch
    ``state_dict`` (``OrderedDict`` of CPU tensors, official key order).

    Entries that are not model parameters (see :func:`to_torch_name`) are left out. Arrays are
    copied with their dtype and shape; each BatchNorm gets a ``num_batches_tracked`` int64 scalar.
    Two entries that map to the same key are an error.
    """
    import torch
    state = _renamed(ms_params, to_torch_name, _to_torch_tensor, "checkpoint entries")
    for key in [k for k in state if k.endswith(".running_mean")]:
        state[key[:-len("running_mean")] + _COUNTER] = torch.tensor(int(num_batches_tracked),
                                                                   dtype=torch.int64)
    return OrderedDict((k, state[k]) for k in official_order(state))


# ------------------------------------------------------------------------------------------------
# Topology

def infer_topology(state: Mapping) -> dict:
    """ConvMLP arguments (blocks, dims, mlp_ratios, channels, n_conv_blocks, num_classes) read
    from the keys and shapes of an official (or converted) state_dict; missing parts are left out."""
    def shape(key):
        v = state.get(key)
        return tuple(v.shape) if v is not None else None

    topo = {}
    tok = shape("tokenizer.block.6.weight")
    if tok:
        topo["channels"] = tok[0]
    conv = {int(m.group(1)) for k in state for m in [re.match(r"conv_stages\.conv_blocks\.(\d+)\.", k)] if m}
    if conv:
        topo["n_conv_blocks"] = max(conv) + 1
    stages = {}
    for k in state:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            stages.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if stages:
        n = max(stages) + 1
        topo["blocks"] = [max(stages.get(i, {-1})) + 1 for i in range(n)]
        fc1 = [shape(f"stages.{i}.blocks.0.channel_mlp1.fc1.weight") for i in range(n)]
        if all(fc1):
            topo["dims"] = [s[1] for s in fc1]
            ratios = [s[0] / s[1] for s in fc1]
            topo["mlp_ratios"] = [int(r) if float(r).is_integer() else r for r in ratios]
    head = shape("head.weight")
    if head:
        topo["num_classes"] = head[0]
    return topo
