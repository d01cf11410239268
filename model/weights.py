"""Reading MindSpore checkpoints and loading their weights into a ConvMLP: the file checks (exists,
is a MindSpore checkpoint, finite), the fit check that names every missing, unexpected or
mis-shaped parameter, and loading pretrained weights with a re-created head."""
import os
import sys
import tempfile
import zlib
from typing import Dict, Optional, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn

from .configs import HEAD_PREFIX
from .errors import CheckpointError, first_line, short_list

__all__ = ["read_checkpoint", "read_checkpoint_entries", "verify_checksum", "CHECKSUM_TRAILER", "check_finite",
           "require_finite_outputs", "fit_problems", "check_fit", "require_convmlp", "load_pretrained", "MODEL_ROOTS"]


#: The end of a checkpoint written with ``mindspore.save_checkpoint(..., crc_check=True)``: these 7
#: bytes, then the CRC-32 of everything before them as a 10-byte big-endian number.
CHECKSUM_TRAILER = b"crc_num"
_TRAILER_SIZE = len(CHECKSUM_TRAILER) + 10
_warned_unchecked = set()   # checkpoints without a checksum already named in a warning


def verify_checksum(path: str) -> bool:
    """Check the CRC-32 that MindSpore's ``crc_check=True`` appends to a checkpoint: True when it
    matches, False when the file carries none (written by another tool or an older run), and
    :class:`CheckpointError` naming the file when it does not match (a damaged file: a flipped
    bit, a zeroed block, a truncated copy)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < _TRAILER_SIZE:
            return False
        f.seek(size - _TRAILER_SIZE)
        trailer = f.read(_TRAILER_SIZE)
        if not trailer.startswith(CHECKSUM_TRAILER):
            return False
        f.seek(0)
        crc, left = 0, size - _TRAILER_SIZE
        while left:
            block = f.read(min(left, 1 << 22))
            if not block:
                break
            crc, left = zlib.crc32(block, crc), left - len(block)
    if left or crc != int.from_bytes(trailer[len(CHECKSUM_TRAILER):], "big"):
        raise CheckpointError(f"checkpoint '{path}' is damaged: its content does not match the checksum "
                              "(CRC-32) written with it; use another copy or an earlier checkpoint")
    return True


def _load(path: str) -> Dict:
    """``mindspore.load_checkpoint``, which reads only names ending in ``.ckpt``: another name is read
    through a link named ``checkpoint.ckpt`` in a temporary folder."""
    if path.endswith(".ckpt"):
        return ms.load_checkpoint(path)
    with tempfile.TemporaryDirectory(prefix="convmlp-read-") as folder:
        link = os.path.join(folder, "checkpoint.ckpt")
        os.symlink(os.path.abspath(path), link)
        try:
            return ms.load_checkpoint(link)
        except Exception as exc:
            raise type(exc)(str(exc).replace(link, path)) from None


def read_checkpoint(path: str) -> Dict[str, ms.Parameter]:
    """Load a MindSpore checkpoint (any file name) into a name -> Parameter dict, with one clear
    error when the file is missing, damaged (its checksum does not match), truncated or not a
    checkpoint. A checkpoint without a checksum is read with one ``warning:`` line."""
    return read_checkpoint_entries(path)[0]


def read_checkpoint_entries(path: str) -> Tuple[Dict[str, ms.Parameter], bool]:
    """:func:`read_checkpoint`, and whether the file carried a checksum (which then matched)."""
    path = os.fspath(path)
    _check_checkpoint_file(path)
    try:
        checked = verify_checksum(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint '{path}': {exc.strerror}") from None
    try:
        params = _load(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with multi-line text
        first = first_line(exc)
        raise CheckpointError(f"cannot read checkpoint '{path}' (truncated or not a MindSpore "
                              f".ckpt): {first}") from None
    if not params:
        raise CheckpointError(f"cannot read checkpoint '{path}': it holds no parameters (truncated or not "
                              "a MindSpore .ckpt)")
    if not checked and os.path.abspath(path) not in _warned_unchecked:
        _warned_unchecked.add(os.path.abspath(path))
        print(f"warning: checkpoint '{path}' carries no checksum (written by another tool or an older version); "
              "it is read without a damage check", file=sys.stderr, flush=True)
    check_finite(params, path)
    return params, checked


def _float_array(value):
    """The floating-point array of a checkpoint entry (Parameter, Tensor, numpy or torch array),
    or None for strings, integers and what cannot be read as an array."""
    if isinstance(value, str):
        return None
    try:
        arr = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
    except Exception:  # e.g. a dtype numpy has no type for
        return None
    return arr if np.issubdtype(arr.dtype, np.floating) else None


def check_finite(params, path: str = "checkpoint"):
    """CheckpointError naming the tensors of `params` (name -> Parameter, Tensor or array) that
    hold NaN or infinity, with their counts. A NaN weight makes every output it reaches NaN, and
    NaN compares False with everything, so such a checkpoint is refused wherever it is read
    (:func:`read_checkpoint`: evaluation, inference, export, fine-tuning, resuming) and converted
    (``pth2ckpt.py``). One pass over the weights; the counting runs only for a bad tensor."""
    bad = []
    for name, value in params.items():
        arr = _float_array(value)
        if arr is None or np.isfinite(arr).all():
            continue
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        counts = ", ".join(f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "inf")) if n)
        bad.append(f"{name} ({counts} of {arr.size})")
    if bad:
        raise CheckpointError(f"'{path}' holds non-finite weights in {len(bad)} tensor(s): {short_list(bad, 4)}; "
                              "a checkpoint of a diverged run or a damaged file cannot be used")


def require_finite_outputs(values, path: str, what: str):
    """CheckpointError when `values` (a number or an array computed by the model of checkpoint
    `path`) hold NaN or infinity: finite weights can still overflow (e.g. weights near the float32
    limit), and a NaN result must never be printed as if it were one."""
    arr = np.asarray(values, dtype=np.float64)
    if np.isfinite(arr).all():
        return
    n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
    counts = ", ".join(f"{n} {w}" for n, w in ((n_nan, "NaN"), (n_inf, "inf")) if n)
    raise CheckpointError(f"'{path}' gives non-finite outputs: {what} has {counts} of {arr.size} value(s); "
                          "its weights overflow float32 on this input (a diverged or damaged checkpoint?)")


def _check_checkpoint_file(path: str):
    """What can be told about `path` before MindSpore parses it (whose messages for these cases
    are about its own arguments): missing, not a file, unreadable, empty, or a PyTorch file."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' is not a file; expected a MindSpore .ckpt file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint '{path}': {exc.strerror}") from None
    if not head:
        raise CheckpointError(f"cannot read checkpoint '{path}': the file is empty (0 bytes)")
    if _is_pytorch_file(path, head):
        raise CheckpointError(f"'{path}' is a PyTorch (pickle) file, not a MindSpore checkpoint; convert it: "
                              f"python pth2ckpt.py --src {path} --dst converted.ckpt (it loads the "
                              "weights without running code from the file)")


def _is_pytorch_file(path: str, head: bytes) -> bool:
    """A torch.save file: a zip archive with a ``data.pkl`` member, or a raw pickle stream (legacy
    format). Only the zip directory or the first byte is looked at; nothing is unpickled."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True                       # a pickle stream: legacy torch.save, plain pickles
    if head.startswith(b"PK\x03\x04"):
        import zipfile
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return False
    return False


def _model_params(net: nn.Cell) -> Dict[str, ms.Parameter]:
    return {p.name: p for p in net.get_parameters()}


def _shape(value):
    return tuple(value.shape) if hasattr(value, "shape") else None


def _model_like(params: Dict, model: Dict) -> Dict:
    """The checkpoint entries that belong to the model: those under one of the model's top-level
    cells (``tokenizer``, ``conv_stages``, ``stages``, ``norm``, ``head``). Everything else --
    optimizer state (``adam_m.*``, ``adam_v.*``, ``moments.*``), ``global_step``, ``epoch`` and
    other metadata -- is not model state and is ignored."""
    roots = {k.split(".", 1)[0] for k in model}
    return {k: v for k, v in params.items() if k.split(".", 1)[0] in roots}


def fit_problems(model: Dict, params: Dict, skip_prefix: Optional[str] = None):
    """``(missing, unexpected, mismatched)`` name lists between the model's parameters and the
    checkpoint's model entries (anything with a ``shape``), leaving out names that start with
    ``skip_prefix``; ``mismatched`` entries read ``name (ckpt shape) vs model (shape)``."""
    def keep(k):
        return not (skip_prefix and k.startswith(skip_prefix))

    missing = [k for k in model if keep(k) and k not in params]
    unexpected = [k for k in params if keep(k) and k not in model]
    mismatched = [f"{k} {_shape(params[k])} vs model {tuple(model[k].shape)}"
                  for k in model if keep(k) and k in params
                  and _shape(params[k]) != tuple(model[k].shape)]
    return missing, unexpected, mismatched


#: The top-level cells of a ConvMLP (the first part of every parameter name).
NORM_PREFIX = "norm."   # the head's LayerNorm
MODEL_ROOTS = ("tokenizer", "conv_stages", "stages", "norm", "head")


def require_convmlp(params: Dict, path: str = "checkpoint"):
    """CheckpointError when no entry of the checkpoint belongs to a ConvMLP (before a model is built
    from it, e.g. to read its class count)."""
    _require_model_entries(path, params, {k: v for k, v in params.items() if k.split(".", 1)[0] in MODEL_ROOTS})


def _require_model_entries(path, params: Dict, own: Dict):
    """CheckpointError when none of the checkpoint's entries belongs to the model (a checkpoint of
    another network), naming a few of its entries instead of every missing parameter."""
    if own:
        return
    tensors = [k for k, v in params.items() if not isinstance(v, str)]
    raise CheckpointError(f"'{path}' holds no ConvMLP weights: none of its {len(tensors)} tensors is a "
                          f"parameter of this model (it has {short_list(tensors, 4)}); a checkpoint of another "
                          "network?")


def _head_only_mismatch(model, params, missing, unexpected, mismatched):
    """(checkpoint classes, model classes) when the only difference is the head's number of
    classes, else None."""
    key = HEAD_PREFIX + "weight"
    if missing or unexpected or key not in params or key not in model:
        return None
    if not mismatched or not all(m.startswith(HEAD_PREFIX) for m in mismatched):
        return None
    ck, md = _shape(params[key]), tuple(model[key].shape)
    if ck is None or len(ck) != 2 or ck[1:] != md[1:] or ck[0] == md[0]:
        return None
    return ck[0], md[0]


def _raise_if_problems(path, missing, unexpected, mismatched):
    parts = [f"{len(keys)} {label}: {short_list(keys)}" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched))
             if keys]
    if parts:
        raise CheckpointError(f"'{path}' does not fit the model (another arch or num_classes?): "
                              + "; ".join(parts))


def check_fit(net: nn.Cell, params: Dict[str, ms.Parameter], path: str = "checkpoint",
              allow_missing_head: bool = False):
    """Check that a checkpoint's weights fit the model's parameters exactly.

    Entries outside the model's top-level cells (optimizer state, ``global_step``, ``epoch``,
    metadata) are ignored. Raises :class:`CheckpointError` naming the keys when a model parameter is
    missing (the head may be, with ``allow_missing_head``), has another shape, or when the checkpoint
    has model-like keys the model lacks (e.g. the extra blocks of a bigger variant). Returns the
    model parameters that would stay unloaded (only head ones, if any).
    """
    model = _model_params(net)
    own = _model_like(params, model)
    _require_model_entries(path, params, own)
    missing, unexpected, mismatched = fit_problems(model, own)
    classes = None if allow_missing_head else _head_only_mismatch(model, own, missing, unexpected, mismatched)
    if classes:
        raise CheckpointError(f"'{path}' is for {classes[0]} classes (head.weight "
                              f"{_shape(own[HEAD_PREFIX + 'weight'])}) but the model is built for "
                              f"{classes[1]} (num_classes {classes[1]}); give num_classes {classes[0]}, or a "
                              f"checkpoint trained for {classes[1]} classes")
    head_missing = [k for k in missing if k.startswith(HEAD_PREFIX)]
    if allow_missing_head:
        missing = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    _raise_if_problems(path, missing, unexpected, mismatched)
    return head_missing if allow_missing_head else []


def load_pretrained(net: nn.Cell, ckpt_path: str, params: Optional[Dict] = None) -> Dict[str, list]:
    """Load a converted/pretrained checkpoint into ``net`` for fine-tuning.

    The head (``head.*``) keeps the fresh initialisation ``net`` was built with when the checkpoint
    has no head (``pth2ckpt.py --num_classes`` left it out) or one of another number of classes;
    every other parameter must be in the checkpoint with the same shape, and the checkpoint must
    not have model parameters the model lacks. Optimizer state and metadata (``adam_m.*``,
    ``global_step``, ``epoch`` ...) are ignored. After loading, it asserts that nothing but the head
    was left unloaded (MindSpore's ``load_param_into_net`` only warns).

    Returns ``{"loaded": [...], "head_reinitialised": bool, "ignored": [...]}``; raises
    :class:`CheckpointError` naming the keys when the checkpoint is of another arch.
    """
    params = read_checkpoint(ckpt_path) if params is None else params
    model = _model_params(net)
    own = _model_like(params, model)
    if not any(k.startswith((NORM_PREFIX, HEAD_PREFIX)) for k in model):
        left_out = sorted(k for k in params if k.startswith((NORM_PREFIX, HEAD_PREFIX)))
        if left_out:   # a classifier's checkpoint into a backbone
            print(f"warning: '{ckpt_path}': the classifier head ({len(left_out)} parameters: norm.*, head.*) is not "
                  "part of the backbone and is left out", file=sys.stderr, flush=True)
    _require_model_entries(ckpt_path, params, own)
    head_keys = [k for k in model if k.startswith(HEAD_PREFIX)]
    ckpt_head = {k: v for k, v in own.items() if k.startswith(HEAD_PREFIX)}
    w_key = HEAD_PREFIX + "weight"
    if not head_keys or not ckpt_head:
        reinit = bool(head_keys)
    else:
        w_ckpt, w_model = _shape(ckpt_head.get(w_key)), tuple(model[w_key].shape)
        if w_ckpt is not None and len(w_ckpt) == 2 and w_ckpt[1:] == w_model[1:]:
            reinit = w_ckpt[0] != w_model[0]  # same features in, other class count: new head
        else:
            reinit = False  # let the shape check below name the head keys
    skip = HEAD_PREFIX if reinit else None
    if reinit and not any(k.startswith(NORM_PREFIX) for k in own):
        skip = (HEAD_PREFIX, NORM_PREFIX)   # a backbone checkpoint: the head's norm is new too (1/0)
    _raise_if_problems(ckpt_path, *fit_problems(model, own, skip))
    to_load = {k: v for k, v in own.items() if not (skip and k.startswith(skip))}
    to_load = {k: v if isinstance(v, ms.Parameter) else ms.Parameter(ms.Tensor(v), name=k)
               for k, v in to_load.items()}
    not_loaded, _ = ms.load_param_into_net(net, to_load, strict_load=True)
    left = [k for k in not_loaded if not (skip and k.startswith(skip))]
    if left:
        raise CheckpointError(f"'{ckpt_path}': parameters left unloaded: {short_list(left)}")
    return {"loaded": sorted(to_load), "head_reinitialised": reinit,
            "ignored": sorted(k for k in params if k not in own)}
