"""The MindSpore ``Custom`` ("aot") primitives over the libraries that :mod:`.build` compiles: each
forward op with its shape and type inference functions and a bprop that calls the matching backward
op, created once per process (:func:`_primitives`; per geometry for the max-pool and the
convolution). Shape inference of a Custom op is cached by the op's library path and input shapes,
so the ops whose output shape depends on a stride or padding get one path per geometry, a symbolic
link to the same library (:func:`_alias`). :func:`depthwise_conv_nhwc` and :func:`scale_samples`
are the functional forms the model calls directly; like every op here they may only be used where
:func:`~.build.active` was true when the caller was built.
"""
import os

import mindspore as ms
from mindspore import ops

from .build import conv_library_path, library_path

__all__ = ["depthwise_conv_nhwc", "scale_samples"]

_ops = None              # dict of Custom primitives, created once per process
#: primitives whose output shape depends on a geometry: (op, geometry...) -> Custom op
_geometry_ops = {}


def _op(lib, name, out_shape, out_dtype=None, bprop=None):
    """The Custom op calling `name` in library `lib`; `out_dtype` defaults to `out_shape` (for the
    inference functions that return an input's shape and so, given types, that input's type)."""
    return ops.Custom(f"{lib}:{name}", out_shape=out_shape, out_dtype=out_dtype or out_shape,
                      func_type="aot", bprop=bprop)


def _same(*args):
    return args[0]


def _ln_fwd_shape(x, gamma, beta, eps):
    return x, x[:-1], x[:-1]


def _ln_fwd_type(x, gamma, beta, eps):
    return x, x, x


def _ln_bwd_shape(dy, x, gamma, mean, rstd):
    return x, gamma, gamma


def _grad_x(dy, x):
    return x


def _dw_weight_shape(dy, x, weight):
    return weight


def _bias_grad_shape(dy):
    return dy[-1:]


def _bias_gelu_bwd_shape(dy, x, bias):
    return x, bias


def _bn_fwd_shape(x, gamma, beta, eps):
    return x, gamma, gamma, gamma


def _bn_fwd_type(x, gamma, beta, eps):
    return x, x, x, x


def _bn_bwd_shape(dy, y, x, gamma, mean, rstd):
    return x, gamma, gamma


def _layer_norm_ops(lib):
    backward = _op(lib, "LayerNormBackward", _ln_bwd_shape)

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = backward(dout[0], x, gamma, out[1], out[2])
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    return {"layer_norm": _op(lib, "LayerNormForward", _ln_fwd_shape, _ln_fwd_type, bprop)}


def _gelu_ops(lib):
    backward = _op(lib, "GeluBackward", _grad_x)

    def bprop(x, out, dout):
        return (backward(dout, x),)

    return {"gelu": _op(lib, "GeluForward", _same, bprop=bprop)}


def _depthwise_ops(lib):
    backward_input = _op(lib, "DepthwiseConvBackwardInput", _same)
    backward_weight = _op(lib, "DepthwiseConvBackwardWeight", _dw_weight_shape)

    def bprop(x, weight, out, dout):
        return backward_input(dout, weight), backward_weight(dout, x, weight)

    return {"depthwise": _op(lib, "DepthwiseConvForward", _same, bprop=bprop)}


def _bias_add_ops(lib):
    backward = _op(lib, "BiasAddBackward", _bias_grad_shape, _same)

    def bprop(x, bias, out, dout):
        return dout, backward(dout)

    return {"bias_add": _op(lib, "BiasAddForward", _same, bprop=bprop)}


def _bias_gelu_ops(lib):
    backward = _op(lib, "BiasGeluBackward", _bias_gelu_bwd_shape)

    def bprop(x, bias, out, dout):
        return backward(dout, x, bias)

    return {"bias_gelu": _op(lib, "BiasGeluForward", _same, bprop=bprop)}


def _batch_norm_relu_ops(lib):
    backward = _op(lib, "BatchNormReluBackward", _bn_bwd_shape)

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = backward(dout[0], out[0], x, gamma, out[1], out[2])
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    def infer_bprop(x, gamma, beta, mean, var, eps, out, dout):
        # (evaluation-mode gradients, e.g. fine-tuning with frozen statistics; MindSpore ops)
        rstd = ops.rsqrt(var + eps)
        g = dout * (out > 0).astype(dout.dtype)
        xhat = (x - mean.reshape(1, -1, 1, 1)) * rstd.reshape(1, -1, 1, 1)
        dx = g * (gamma * rstd).reshape(1, -1, 1, 1)
        return (dx, (g * xhat).sum(axis=(0, 2, 3)), g.sum(axis=(0, 2, 3)), ops.zeros_like(mean),
                ops.zeros_like(var), ops.zeros_like(eps))

    return {"bn_relu": _op(lib, "BatchNormReluForward", _bn_fwd_shape, _bn_fwd_type, bprop),
            "bn_relu_infer": _op(lib, "BatchNormReluInference", _same, bprop=infer_bprop)}


def _scale_samples_ops(lib):
    scale = _op(lib, "ScaleSamples", _same)

    def bprop(x, s, out, dout):
        return scale(dout, s), ops.zeros_like(s)

    return {"scale_samples": _op(lib, "ScaleSamples", _same, bprop=bprop)}


def _primitives():
    """The Custom primitives of the main library by name (created on first call)."""
    global _ops
    if _ops is None:
        lib = library_path()
        primitives = {}
        for make in (_layer_norm_ops, _gelu_ops, _depthwise_ops, _bias_add_ops, _bias_gelu_ops, _batch_norm_relu_ops,
                     _scale_samples_ops):
            primitives.update(make(lib))
        _ops = primitives
    return _ops


def _alias(lib, tag):
    """A symbolic link ``<lib>_<tag>.so`` to `lib`, for a Custom op whose output shape depends on
    a geometry (stride, padding ...) that is not in its inputs' shapes: MindSpore caches a Custom
    op's shape inference by function path and input shapes, so two geometries sharing one path
    would share the first one's output shape. One path per geometry keeps them apart (the library
    is loaded once: same file)."""
    folder, name = os.path.split(lib)
    link = os.path.join(folder, f"{name[:-3]}_{tag}.so")
    if not os.path.exists(link):
        tmp = f"{link}.{os.getpid()}.tmp"
        try:
            os.symlink(name, tmp)
            os.replace(tmp, link)
        except OSError:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            if not os.path.exists(link):
                raise
    return link


def _max_pool_primitive(kernel, stride, padding):
    """The max-pool (with its argmax, for the backward) for one kernel/stride/padding; created once
    per process and geometry."""
    key = ("max_pool", kernel, stride, padding)
    if key not in _geometry_ops:
        lib = _alias(library_path(), f"k{kernel}s{stride}p{padding}")

        def out_shape(x, cfg):
            shape = [x[0], x[1]] + [(d + 2 * padding - kernel) // stride + 1 for d in x[2:]]
            return shape, shape

        def out_type(x, cfg):
            return x, ms.int32

        def dx_shape(dy, argmax, x):
            return x

        backward = _op(lib, "MaxPoolBackward", dx_shape)

        def bprop(x, cfg, out, dout):
            return backward(dout[0], out[1], x), ops.zeros_like(cfg)

        _geometry_ops[key] = _op(lib, "MaxPoolForward", out_shape, out_type, bprop)
    return _geometry_ops[key]


def _conv_primitive(stride, padding):
    """The oneDNN convolution (groups 1, no bias) for one stride/padding, with its two backward
    passes as the bprop; created once per process and geometry."""
    key = ("conv", stride, padding)
    if key not in _geometry_ops:
        lib = _alias(conv_library_path(), f"s{stride}p{padding}")

        def out_shape(x, w, cfg):
            return [x[0], w[0]] + [(d + 2 * padding - k) // stride + 1 for d, k in zip(x[2:], w[2:])]

        def out_type(x, w, cfg):
            return x

        def dx_shape(dy, w, x, cfg):
            return x

        def dw_shape(dy, x, w, cfg):
            return w

        backward_data = _op(lib, "ConvBackwardData", dx_shape)
        backward_weights = _op(lib, "ConvBackwardWeights", dw_shape)

        def bprop(x, w, cfg, out, dout):
            return backward_data(dout, w, x, cfg), backward_weights(dout, x, w, cfg), ops.zeros_like(cfg)

        _geometry_ops[key] = _op(lib, "ConvForward", out_shape, out_type, bprop)
    return _geometry_ops[key]


def depthwise_conv_nhwc(x, weight):
    """Depthwise KxK convolution (stride 1, zero padding K // 2, no bias) of channels-last float32
    ``x`` (N, H, W, C) with a grouped ``Conv2d``'s weight (C, 1, K, K); differentiable. Only call
    where :func:`~.build.active` was true when the caller was built."""
    return _primitives()["depthwise"](x, weight)


def scale_samples(x, s):
    """``x * s`` with ``s`` of shape (B,) broadcast over each sample of float32 ``x`` (B, ...);
    differentiable in ``x`` (the gradient in ``s`` is zero: stochastic depth's mask). Only call
    where :func:`~.build.active` was true when the caller was built."""
    return _primitives()["scale_samples"](x, s)
