"""The fused inference path (``model/csrc/infer_onednn.cc``): :func:`fuse_for_inference` builds, for
a built ConvMLP, a separate evaluation cell (:class:`FusedConvMLP`) over the network's own
parameters; what evaluation, ``evl.py`` and ``infer.py`` run on the CPU (float32, the oneDNN
library built). Training keeps the network; ``export.py`` exports the plain network.

* the tokenizer and the conv stage as one op: every BatchNorm folded into its convolution (moving
  statistics, read at each call), ReLU and the bottlenecks' residual additions fused, oneDNN's
  blocked layout kept from the image to the conv stage's channels-last output;
* a Conv-MLP stage's downsampling convolution on channels-last tokens;
* a Conv-MLP block as one op: ``x + fc2(GELU(fc1(LayerNorm(x))))``, the depthwise "connect"
  convolution of ``LayerNorm(x)`` and ``x + fc2(GELU(fc1(LayerNorm(x))))`` again;
* LayerNorm, mean over positions and the Dense head as one op.

The ops have no backward (evaluation only). Each fused cell keeps the parameters its op reads in a
tuple set in its own constructor, outside MindSpore's registry: they are the network's parameters,
registered under their names by the network, which the fused model holds (so that it loads and
saves as the network does).
"""
import zlib

import numpy as np
import mindspore as ms
from mindspore import nn

from .build import build_kernels, conv_library_path
from .ops import _alias, _op

__all__ = ["available", "fuse_for_inference", "FusedConvMLP", "fused_downsample", "layer_norm_mlp",
           "layer_norm_depthwise", "conv_mlp_block"]

NCHW, NHWC = 0, 1                                 # ConvStackInference's layouts
CONV, MAX_POOL = 1, 2                             # ... layer kinds
BN, RELU, SAVE_INPUT, ADD_SAVED, BIAS = 1, 2, 4, 8, 16   # ... convolution flags

_stack_ops = {}          # configuration -> Custom op
_ops = {}                # name -> Custom op


def available() -> bool:
    """Whether the fused inference path can run here (builds the kernels on first call: the kernels
    are active and the oneDNN library is built)."""
    return build_kernels() and conv_library_path() is not None


def _hold(cell, name, params):
    """Keep `params` (Parameters registered by the network) on `cell` as the tuple `name`, outside
    MindSpore's parameter registry, so that they keep their names. Only called by a cell's own
    constructor."""
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


class _Stack(nn.Cell):
    """A ConvStackInference op over held parameters (see :func:`_stack`)."""

    def __init__(self, stack):
        super().__init__()
        self.op, params, self.eps, self.cfg = stack
        _hold(self, "params", params)

    def construct(self, x):
        return self.op(x, *self.params, self.eps, self.cfg)


def fused_downsample(cell):
    """The evaluation cell of a Conv-MLP stage's downsampling cell (``ConvDownsample``: its
    ``downsample`` convolution on channels-last tokens) as one op over its parameters."""
    layer, params = _conv_bias(cell.downsample)
    return _Stack(_stack([layer], params, 0.0, NHWC, NHWC))


class _Block(nn.Cell):
    """A Conv-MLP block (evaluation): ``x + mlp1(norm1(x))``, ``connect(connect_norm(x))``,
    ``x + mlp2(norm2(x))`` as one op (:func:`conv_mlp_block`)."""

    def __init__(self, block):
        super().__init__()
        self.op = conv_mlp_block()
        self.ln_eps = ms.Tensor(np.array([block.norm1.epsilon], np.float32))
        mlp1, mlp2 = block.channel_mlp1, block.channel_mlp2
        _hold(self, "params", (block.norm1.gamma, block.norm1.beta, mlp1.fc1.weight, mlp1.fc1.bias, mlp1.fc2.weight,
                               mlp1.fc2.bias, block.connect_norm.gamma, block.connect_norm.beta, block.connect.weight,
                               block.norm2.gamma, block.norm2.beta, mlp2.fc1.weight, mlp2.fc1.bias, mlp2.fc2.weight,
                               mlp2.fc2.bias))

    def construct(self, x):
        return self.op(x, *self.params, self.ln_eps)


class _Head(nn.Cell):
    """LayerNorm, mean over positions and the Dense head (with bias) as one op."""

    def __init__(self, norm, head):
        super().__init__()
        self.op = _shared("head", lambda: _op(conv_library_path(), "HeadInference",
                                              lambda x, g, b, w, *rest: [x[0], w[0]], lambda x, *rest: x))
        self.eps = ms.Tensor(np.array([norm.epsilon], np.float32))
        _hold(self, "params", (norm.gamma, norm.beta, head.weight, head.bias))

    def construct(self, x):
        return self.op(x, *self.params, self.eps)


class FusedConvMLP(nn.Cell):
    """Evaluation of a built ConvMLP `net` through the fused ops, reading `net`'s parameters at each
    call (so it follows training, a loaded checkpoint or EMA weights). Holds `net` without a name
    prefix: its parameters, checkpoints and ``load_param_into_net`` are `net`'s. ``construct(x)``
    takes float32 NCHW images and returns what ``net(x)`` returns in evaluation mode; a head the
    ops do not implement (none, or one replaced later by ``reset_classifier``) runs as `net`'s."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net
        self.classifier_head = net.classifier_head
        self.front = _Stack(_front_stack(net.tokenizer, net.conv_stages))
        blocks = []
        for stage in net.stages:
            blocks += [_Block(b) for b in stage.blocks]
            if stage.downsample_mlp is not None:
                blocks.append(fused_downsample(stage.downsample_mlp))
        self.body = nn.SequentialCell(blocks)
        head = net.head
        self.fused_head = (net.classifier_head and isinstance(head, nn.Dense) and head.has_bias
                           and head.activation is None)
        self.head = _Head(net.norm, head) if self.fused_head else None

    def construct(self, x):
        x = self.body(self.front(x))
        if not self.classifier_head:
            return x
        if self.fused_head:
            return self.head(x)
        return self.net.forward_head(x)


def fuse_for_inference(net: nn.Cell) -> nn.Cell:
    """The fused evaluation cell of the ConvMLP `net` (:class:`FusedConvMLP`), or `net` itself where
    the fused ops cannot run (another device, no compiler or no oneDNN headers: one ``warning:``
    line from the build). `net` is left as it is (its training mode included: a training run builds
    its evaluation cell beside the network it trains); the fused cell is for float32 evaluation only
    (mixed precision keeps `net`)."""
    if not available():
        return net
    return FusedConvMLP(net)


def _shared(name, make):
    if name not in _ops:
        _ops[name] = make()
    return _ops[name]


def layer_norm_mlp():
    """The op ``(x, gamma, beta, fc1 weight, fc1 bias, fc2 weight, fc2 bias, eps) -> x +
    fc2(GELU(fc1(LayerNorm(x))))`` on channels-last ``x``."""
    return _shared("mlp", lambda: _op(conv_library_path(), "LayerNormMlpInference", lambda x, *rest: x))


def conv_mlp_block():
    """The op ``(x, norm1 gamma, beta, fc1 weight, bias, fc2 weight, bias, connect_norm gamma, beta,
    connect weight, norm2 gamma, beta, fc1 weight, bias, fc2 weight, bias, eps)`` -> a Conv-MLP
    block of channels-last ``x``: :func:`layer_norm_mlp`, :func:`layer_norm_depthwise` and
    :func:`layer_norm_mlp` again, in one op."""
    return _shared("block", lambda: _op(conv_library_path(), "ConvMlpBlockInference", lambda x, *rest: x))


def layer_norm_depthwise():
    """The op ``(x, gamma, beta, weight (C, 1, K, K), eps) -> depthwise conv of LayerNorm(x)`` on
    channels-last ``x`` (N, H, W, C)."""
    return _shared("dw", lambda: _op(conv_library_path(), "LayerNormDepthwiseInference", lambda x, *rest: x))
