"""Building models by name and loading (pretrained or fine-tuned) checkpoints into them."""
import os
from typing import Dict, Optional

import mindspore as ms
from mindspore import nn

from errors import CheckpointError
from .convmlp import model_entrypoints

__all__ = ["create_model", "list_models", "load_pretrained", "read_checkpoint", "check_fit",
           "HEAD_PREFIX"]

HEAD_PREFIX = "head."


def list_models():
    """Names accepted by :func:`create_model`."""
    return sorted(model_entrypoints)


def create_model(name: str, num_classes: int = 1000, pretrained_ckpt: Optional[str] = None,
                 **kwargs) -> nn.Cell:
    """Build a registered ConvMLP variant; ``pretrained_ckpt`` loads a (converted) checkpoint with
    :func:`load_pretrained`, re-creating the head when its class count differs."""
    if name not in model_entrypoints:
        raise CheckpointError(f"unknown arch '{name}': expected one of {', '.join(list_models())}")
    return model_entrypoints[name](pretrained_ckpt=pretrained_ckpt, num_classes=num_classes, **kwargs)


def read_checkpoint(path: str) -> Dict[str, ms.Parameter]:
    """Load a MindSpore ``.ckpt`` into a name -> Parameter dict, with one clear error when the file
    is missing, truncated or not a checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with multi-line text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint '{path}' (truncated or not a MindSpore "
                              f".ckpt): {first}") from None


def _model_params(net: nn.Cell) -> Dict[str, ms.Parameter]:
    return {p.name: p for p in net.get_parameters()}


def check_fit(net: nn.Cell, params: Dict[str, ms.Parameter], path: str = "checkpoint",
              allow_missing_head: bool = False):
    """Compare a checkpoint's weights with the model's parameters.

    Returns the names that would stay unloaded. Raises :class:`CheckpointError` naming the keys when
    a parameter is missing (other than the head, when ``allow_missing_head``) or has another shape.
    Keys of the checkpoint that the model does not have (optimizer state, metadata) are ignored
    only when they are not model-like (``moments``, ``global_step`` ...); see callers.
    """
    model = _model_params(net)
    missing = [k for k in model if k not in params]
    mismatched = [f"{k} {tuple(params[k].shape)} vs model {tuple(model[k].shape)}"
                  for k in model if k in params and tuple(params[k].shape) != tuple(model[k].shape)]
    if allow_missing_head:
        missing = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    if mismatched:
        raise CheckpointError(f"'{path}' does not fit the model: {len(mismatched)} parameter(s) of "
                              f"another shape: {_short(mismatched)}")
    if missing:
        raise CheckpointError(f"'{path}' does not fit the model: {len(missing)} parameter(s) "
                              f"missing: {_short(missing)}")
    return missing


def _short(names, n=6):
    names = list(names)
    more = f" ... (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_pretrained(net: nn.Cell, ckpt_path: str, params: Optional[Dict] = None) -> Dict[str, list]:
    """Load a converted/pretrained checkpoint for fine-tuning.

    The head is re-created (freshly initialised) when its number of classes differs from the
    checkpoint's; every other model parameter must be present with the same shape. Returns a report
    ``{"loaded": [...], "head_reinitialised": bool, "ignored": [...]}``. Raises
    :class:`CheckpointError` naming the keys otherwise (MindSpore's ``load_param_into_net`` only
    warns).
    """
    params = read_checkpoint(ckpt_path) if params is None else params
    model = _model_params(net)
    head_w = params.get(HEAD_PREFIX + "weight")
    reinit = False
    if (head_w is not None and HEAD_PREFIX + "weight" in model
            and tuple(head_w.shape) != tuple(model[HEAD_PREFIX + "weight"].shape)):
        reinit = True
    to_load = {k: v for k, v in params.items()
               if k in model and not (reinit and k.startswith(HEAD_PREFIX))}
    head_missing = not any(k.startswith(HEAD_PREFIX) for k in params)
    check_fit(net, {**to_load, **({k: model[k] for k in model if k.startswith(HEAD_PREFIX)}
                                  if (reinit or head_missing) else {})}, ckpt_path)
    not_loaded, _ = ms.load_param_into_net(net, to_load, strict_load=True)
    left = [k for k in not_loaded if not k.startswith(HEAD_PREFIX)]
    if left:
        raise CheckpointError(f"'{ckpt_path}': parameters left unloaded: {_short(left)}")
    ignored = sorted(k for k in params if k not in model)
    return {"loaded": sorted(to_load), "head_reinitialised": reinit or head_missing,
            "ignored": ignored}
