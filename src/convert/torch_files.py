"""Reading PyTorch files safely: ``torch.load(weights_only=True)`` with a short list of allowed
types, so that pickled code is never run, and the model weights found inside a released file or a
training checkpoint of the official (timm-based) script."""
import argparse
import os
import re
from collections import OrderedDict
from typing import Mapping

import numpy as np

from ..platform.errors import CheckpointError, first_line

__all__ = ["SAFE_GLOBALS", "load_torch_checkpoint", "extract_state_dict"]


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
