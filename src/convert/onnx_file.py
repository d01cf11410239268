"""ONNX export of a ConvMLP checkpoint through the PyTorch reference model (``export.py --file_format
ONNX``), because MindSpore 2.10's own ONNX exporter cannot convert ConvMLP: the checkpoint's weights
are mapped to the official names, loaded strictly into ``model/torch_convmlp.py`` and written with
``torch.onnx.export`` (opset :data:`OPSET`), through the atomic writer and, with ``verify``, checked
with onnxruntime against the MindSpore model. The graph's input and output: docs/deployment.md.
"""
import warnings
from typing import Mapping, Sequence

import numpy as np

from ..platform.errors import UserError
from ..platform.fileio import atomic_output
from .names import VERIFY_ATOL, infer_topology, max_abs_difference, to_torch_state_dict

__all__ = ["OPSET", "VERIFY_ATOL", "DYNAMIC", "DYNAMIC_VERIFY_BATCHES", "INPUT_NAME", "OUTPUT_NAME",
           "require_packages", "torch_reference", "output_names", "output_arrays", "write_onnx", "verify_onnx", "export_onnx"]

OPSET = 17
DYNAMIC = "dynamic"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
#: Batch sizes the verification runs a dynamic-batch file at.
DYNAMIC_VERIFY_BATCHES = (1, 3)


def require_packages(verify: bool):
    """UserError naming the missing package when torch / onnx (/ onnxruntime for `verify`) is not
    installed."""
    import importlib.util
    needed = ("torch", "onnx") + (("onnxruntime",) if verify else ())
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"file_format ONNX needs {', '.join(missing)}, which is not installed; "
                        "pip install -r requirements.txt")


def torch_reference(weights: Mapping[str, np.ndarray], path: str = "checkpoint", features: bool = False,
                    out_indices=None):
    """The PyTorch reference ConvMLP (eval mode) holding `weights` (MindSpore names); the topology
    and class count are read off the weights' shapes. Refuses non-finite weights (the checkpoint
    was already checked when it was read; this keeps the function safe on its own). With
    `features`, its backbone returning the feature maps ``out_indices`` (``TorchFeatures``)."""
    from model import check_finite
    from model.torch_convmlp import TorchFeatures
    from .to_torch import load_into_reference
    check_finite(weights, path)
    state = to_torch_state_dict(weights)
    if features:
        state = type(state)((k, v) for k, v in state.items() if not k.startswith(("norm.", "head.")))
        topo = infer_topology(state)
        return TorchFeatures(load_into_reference(state, dict(topo, classifier_head=False), 0, path),
                             out_indices).eval()
    topo = infer_topology(state)
    num_classes = topo.pop("num_classes")
    return load_into_reference(state, topo, num_classes, path)


def output_names(levels: int = 0):
    """The ONNX outputs: ``logits``, or ``features_0`` ... for `levels` feature maps."""
    return [f"features_{i}" for i in range(levels)] if levels else [OUTPUT_NAME]


def write_onnx(ref, shape: Sequence, dst: str, levels: int = 0):
    """``torch.onnx.export`` of `ref` for an input of `shape` (``shape[0]`` None = dynamic batch);
    `levels`: the number of feature maps `ref` returns (0: logits)."""
    import torch
    dynamic = shape[0] is None
    x = torch.zeros((2 if dynamic else shape[0],) + tuple(shape[1:]), dtype=torch.float32)
    names = output_names(levels)
    axes = {name: {0: "batch"} for name in [INPUT_NAME] + names} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(ref, (x,), dst, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes=axes, do_constant_folding=True)


def output_arrays(out):
    """A cell's output (a tensor or a tuple of tensors) as a list of numpy arrays."""
    return [o.asnumpy() for o in out] if isinstance(out, (tuple, list)) else [out.asnumpy()]


def verify_onnx(path: str, net, shape: Sequence, seed: int = 0, levels: int = 0) -> float:
    """Max abs difference between onnxruntime (CPU) running `path` and the MindSpore model `net`
    (every output) on random inputs of `shape` (a dynamic batch is checked at
    :data:`DYNAMIC_VERIFY_BATCHES`); NaN when an output is not finite."""
    import mindspore as ms
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((batch,) + tuple(shape[1:])).astype(np.float32)
              for batch in (DYNAMIC_VERIFY_BATCHES if shape[0] is None else (shape[0],))]
    return max_abs_difference(pair for x in inputs for pair in zip(
        session.run(output_names(levels), {INPUT_NAME: x}), output_arrays(net(ms.Tensor(x)))))


def export_onnx(net, shape: Sequence, base: str, verify: bool = False, path: str = "checkpoint", sources=(),
                final: str = None):
    """Write `final` (default ``base + ".onnx"``) for the MindSpore model `net` (its weights through the PyTorch
    reference) through :func:`src.platform.fileio.atomic_output` (verified before it replaces anything when
    `verify`; never one of `sources`); returns ``(final path, max abs diff or None)``. UserError
    when the checkpoint cannot be exported, the file cannot be written, or verification fails (NaN
    fails)."""
    require_packages(verify)
    weights = {p.name: p.asnumpy() for p in net.get_parameters()}
    indices = getattr(net, "out_indices", None)      # a FeatureListNet (export.py --features_only)
    levels = len(indices or ())
    ref = torch_reference(weights, path, features=bool(levels), out_indices=indices)
    final = final or base + ".onnx"
    diff = None

    def check(tmp):
        nonlocal diff
        diff = verify_onnx(tmp, net, shape, levels=levels)
        if not diff <= VERIFY_ATOL:  # NaN fails too
            raise UserError(f"'{final}' would not reproduce the checkpoint model: max abs difference "
                            f"{diff:.3g} > {VERIFY_ATOL:g} (onnxruntime vs MindSpore on a random "
                            "input); nothing was written")
    with atomic_output(final, verify=check if verify else None, inputs=sources, label="ONNX file",
                       suffix=".onnx") as tmp:
        write_onnx(ref, shape, tmp, levels)
    return final, diff
