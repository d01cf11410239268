"""The fused inference path (``model/csrc/infer_onednn.cc``): what evaluation, ``evl.py`` and
``infer.py`` run on the CPU (float32, the C++ kernels on and the oneDNN library built); training
keeps the separate kernels, and a model built for export (kernels off) keeps MindSpore's ops.

* :func:`prepare_front`: the tokenizer and the conv stage as one op: every BatchNorm folded into
  its convolution (moving statistics), ReLU and the bottlenecks' residual additions fused,
  oneDNN's blocked layout kept from the image to the conv stage's channels-last output.
* :func:`prepare_downsample`: a Conv-MLP stage's downsampling convolution on channels-last tokens.
* :func:`prepare_block`: a Conv-MLP block as three ops, ``x + fc2(GELU(fc1(LayerNorm(x))))``
  (twice) and the depthwise "connect" convolution of ``LayerNorm(x)``.
* :func:`prepare_head`: LayerNorm, mean over positions and the Dense head as one op.

Each ``prepare_*`` sets the cell's ``fused_inference`` flag (whether its construct may take the
path: evaluation mode, float32 input) and the ops and parameters the path calls. The ops have no
backward (evaluation only). A cell holds the parameters an op reads in a tuple (:func:`hold`),
outside MindSpore's registry: they are the model's own parameters, already registered under their
names.
"""
import zlib

import numpy as np
import mindspore as ms
from mindspore import nn

from .build import active, conv_library_path
from .ops import _alias, _op

__all__ = ["available", "hold", "prepare_front", "prepare_downsample", "prepare_block", "prepare_head",
           "layer_norm_mlp", "layer_norm_depthwise"]

NCHW, NHWC = 0, 1                                 # ConvStackInference's layouts
CONV, MAX_POOL = 1, 2                             # ... layer kinds
BN, RELU, SAVE_INPUT, ADD_SAVED, BIAS = 1, 2, 4, 8, 16   # ... convolution flags

_stack_ops = {}          # configuration -> Custom op
_ops = {}                # name -> Custom op


def available() -> bool:
    """Whether cells built now can take the fused inference path (the kernels are active and the
    oneDNN library is built)."""
    return active() and conv_library_path() is not None


def hold(cell, name, params):
    """Keep `params` (Parameters registered elsewhere in the model) on `cell` as the tuple `name`,
    outside MindSpore's parameter registry, so that they keep their names."""
    object.__setattr__(cell, name, tuple(params))


def _param_count(flags):
    return 1 + (4 if flags & BN else 0) + (1 if flags & BIAS else 0)


def _stack_shape(layers, in_layout, out_layout):
    """Output-shape inference of a stack: from the input's shape and the convolutions' weights."""
    def out_shape(x, *rest):
        n, c, h, w = (x[0], x[3], x[1], x[2]) if in_layout == NHWC else tuple(x)
        i = 0
        for kind, k, s, p, flags in layers:
            if kind == CONV:
                c, _, kh, kw = rest[i]
                h, w = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
                i += _param_count(flags)
            else:
                h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        return [n, h, w, c] if out_layout == NHWC else [n, c, h, w]
    return out_shape


def _stack(layers, params, eps, in_layout, out_layout):
    """``(op, params, eps tensor, configuration tensor)`` of a ConvStackInference; the op is created
    once per configuration (its library path names the configuration, see ``ops._alias``)."""
    cfg = np.array([in_layout, out_layout, len(layers)] + [v for layer in layers for v in layer], np.int32)
    key = cfg.tobytes()
    if key not in _stack_ops:
        lib = _alias(conv_library_path(), f"stack{zlib.crc32(key):08x}")
        _stack_ops[key] = _op(lib, "ConvStackInference", _stack_shape(layers, in_layout, out_layout),
                              lambda x, *rest: x)
    return (_stack_ops[key], tuple(params), ms.Tensor(np.array([eps], np.float32)), ms.Tensor(cfg))


def _first(v):
    """An nn cell's kernel size / stride / padding as one int (they are square here)."""
    return v if isinstance(v, int) else v[-1]


def _conv_bn_relu(conv, bn, flags=0):
    """A layer and its parameters: ``conv`` with ``bn`` folded in, then ReLU (the model's
    ``_conv_bn_relu`` triple)."""
    layer = (CONV, _first(conv.kernel_size), _first(conv.stride), _first(conv.padding), BN | RELU | flags)
    return layer, [conv.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance]


def _conv_bias(conv):
    flags = BIAS if conv.has_bias else 0
    layer = (CONV, _first(conv.kernel_size), _first(conv.stride), _first(conv.padding), flags)
    return layer, [conv.weight] + ([conv.bias] if conv.has_bias else [])


def _front_stack(tokenizer, conv_stage):
    """The stack of a model's tokenizer (three conv-BN-ReLU, max-pool) and conv stage (bottlenecks
    ``x + conv-BN-ReLU x3``, downsampling convolution): NCHW images in, channels-last tokens out."""
    layers, params = [], []

    def add(layer_params):
        layers.append(layer_params[0])
        params.extend(layer_params[1])

    seq = tokenizer.block
    for i in range(0, 9, 3):
        add(_conv_bn_relu(seq[i], seq[i + 1]))
    pool = seq[9]
    layers.append((MAX_POOL, _first(pool.kernel_size), _first(pool.stride), _first(pool.padding), 0))
    for block in conv_stage.conv_blocks:
        for i in range(0, 9, 3):
            add(_conv_bn_relu(block[i], block[i + 1], SAVE_INPUT if i == 0 else ADD_SAVED if i == 6 else 0))
    add(_conv_bias(conv_stage.downsample))
    return _stack(layers, params, tokenizer.block[1].eps, NCHW, NHWC)


def _attach(cell, stack):
    """``cell.stack_op(x, *cell.stack_params, cell.stack_eps, cell.stack_cfg)`` runs `stack`."""
    cell.stack_op, params, cell.stack_eps, cell.stack_cfg = stack
    hold(cell, "stack_params", params)


def prepare_front(model):
    """Set ``model.fused_inference`` and, when available, what its forward calls instead of the
    tokenizer and the conv stage (``stack_*``, see :func:`_attach`)."""
    model.fused_inference = available()
    if model.fused_inference:
        _attach(model, _front_stack(model.tokenizer, model.conv_stages))


def prepare_downsample(cell):
    """The same for a Conv-MLP stage's downsampling cell (its ``downsample`` convolution on
    channels-last tokens)."""
    cell.fused_inference = available()
    if cell.fused_inference:
        layer, params = _conv_bias(cell.downsample)
        _attach(cell, _stack([layer], params, 0.0, NHWC, NHWC))


def prepare_block(block, eps):
    """The same for a Conv-MLP block: ``block.mlp_op(x, *block.mlp1_params, block.ln_eps)`` is
    ``x + channel_mlp1(norm1(x))`` (``mlp2_params``: the second), ``block.dw_op(x,
    *block.connect_params, block.ln_eps)`` is ``connect(connect_norm(x))``."""
    block.fused_inference = available()
    if not block.fused_inference:
        return
    block.mlp_op, block.dw_op = layer_norm_mlp(), layer_norm_depthwise()
    block.ln_eps = ms.Tensor(np.array([eps], np.float32))
    for name, norm, mlp in (("mlp1_params", block.norm1, block.channel_mlp1),
                            ("mlp2_params", block.norm2, block.channel_mlp2)):
        hold(block, name, (norm.gamma, norm.beta, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias))
    hold(block, "connect_params", (block.connect_norm.gamma, block.connect_norm.beta, block.connect.weight))


def prepare_head(model, eps):
    """The same for a model's classifier head (``norm``, mean over positions, ``head``), after
    :func:`prepare_front` (off where the model's path is off): ``model.fused_head`` and
    ``model.head_op(x, *model.head_params, model.head_eps)``. Call again when the head is replaced."""
    head = getattr(model, "head", None)
    model.fused_head = (getattr(model, "fused_inference", False) and isinstance(head, nn.Dense) and head.has_bias
                        and head.activation is None)
    if model.fused_head:
        model.head_op = _shared("head", lambda: _op(conv_library_path(), "HeadInference",
                                                   lambda x, g, b, w, *rest: [x[0], w[0]], lambda x, *rest: x))
        model.head_eps = ms.Tensor(np.array([eps], np.float32))
        hold(model, "head_params", (model.norm.gamma, model.norm.beta, head.weight, head.bias))


def _shared(name, make):
    if name not in _ops:
        _ops[name] = make()
    return _ops[name]


def layer_norm_mlp():
    """The op ``(x, gamma, beta, fc1 weight, fc1 bias, fc2 weight, fc2 bias, eps) -> x +
    fc2(GELU(fc1(LayerNorm(x))))`` on channels-last ``x``."""
    return _shared("mlp", lambda: _op(conv_library_path(), "LayerNormMlpInference", lambda x, *rest: x))


def layer_norm_depthwise():
    """The op ``(x, gamma, beta, weight (C, 1, K, K), eps) -> depthwise conv of LayerNorm(x)`` on
    channels-last ``x`` (N, H, W, C)."""
    return _shared("dw", lambda: _op(conv_library_path(), "LayerNormDepthwiseInference", lambda x, *rest: x))
