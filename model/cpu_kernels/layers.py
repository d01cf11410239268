"""The kernel cells: :class:`LayerNorm`, :class:`GELU`, :class:`MaxPool2d`, :class:`Dense`,
:class:`BatchNorm2d` and :class:`Conv2d` are drop-in subclasses of the ``nn`` cells,
:class:`DepthwiseNHWC` of the model's channels-last depthwise cell and :class:`DropPath` of its
stochastic depth (same parameters, names and checkpoints). The network never builds them:
:func:`model.cpu_kernels.apply_cpu_kernels` swaps them in. They run the C++ kernels of :mod:`.ops`
when, at the time the cell is built, the kernels are active (:func:`~.build.active`: the device
target is the CPU, the library compiled), and at run time the input is float32 (under AMP O2/O3 the float16 parts
keep MindSpore's kernels) and the case is the one implemented (LayerNorm over the last axis; exact
GELU; ``pad_mode="pad"`` max-pool and convolution with integer kernel/stride/padding, convolution
with groups 1 and no dilation); otherwise they run as their ``nn`` parent. They replace MindSpore
2.10 CPU kernels that cost far more than their arithmetic (``Erf`` is a scalar loop, the padded
max-pool is lowered to ``MaxPool3DWithArgmax``, the convolutions get im2col + GEMM on plain NCHW
memory); what each costs before and after is measured in ``benchmarks/RESULTS.md``. Numerics: the
same functions; ``tests/test_cpu_kernels.py`` checks each forward and backward against float64
references, PyTorch and MindSpore's kernels, and the official-logits parity fixture holds with the
kernels on or off. A MINDIR export must not contain them (the graph would refer to this machine's
``.so``), so ``export.py`` does not apply them.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ..convmlp import ChannelsLastDepthwise
from ..drop_path import DropPath as PlainDropPath
from .build import active, conv_library_path
from .ops import _conv_primitive, _max_pool_primitive, _primitives

__all__ = ["LayerNorm", "GELU", "MaxPool2d", "Dense", "BatchNorm2d", "Conv2d", "DepthwiseNHWC", "DropPath"]


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that runs the C++ kernel on float32 CPU input (same parameters)."""

    def __init__(self, normalized_shape, begin_norm_axis=-1, begin_params_axis=-1, gamma_init="ones",
                 beta_init="zeros", epsilon=1e-7, dtype=ms.float32):
        super().__init__(normalized_shape, begin_norm_axis, begin_params_axis, gamma_init, beta_init,
                         epsilon, dtype)
        self.use_kernel = (len(tuple(normalized_shape)) == 1 and begin_norm_axis == -1
                           and begin_params_axis == -1 and active())
        if self.use_kernel:
            self.kernel = _primitives()["layer_norm"]
            self.eps = ms.Tensor(np.array([epsilon], np.float32))

    def construct(self, input_x):
        if self.use_kernel and input_x.dtype == ms.float32:
            return self.kernel(input_x, self.gamma, self.beta, self.eps)[0]
        return super().construct(input_x)


class GELU(nn.GELU):
    """Exact ``nn.GELU`` that runs the C++ kernel on float32 CPU input."""

    def __init__(self, approximate=False):
        super().__init__(approximate=approximate)
        self.use_kernel = (not approximate) and active()
        if self.use_kernel:
            self.kernel = _primitives()["gelu"]

    def construct(self, x):
        if self.use_kernel and x.dtype == ms.float32:
            return self.kernel(x)
        return super().construct(x)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that runs the C++ kernel for float32 NCHW CPU input with ``pad_mode="pad"``
    and square integer kernel/stride/padding (MindSpore lowers that case to the slow
    ``MaxPool3DWithArgmax``)."""

    def __init__(self, kernel_size=1, stride=1, pad_mode="valid", padding=0, dilation=1,
                 return_indices=False, ceil_mode=False, data_format="NCHW"):
        super().__init__(kernel_size, stride, pad_mode, padding, dilation, return_indices, ceil_mode,
                         data_format)
        simple = all(isinstance(v, int) and not isinstance(v, bool) for v in (kernel_size, stride, padding))
        self.use_kernel = (simple and pad_mode.lower() == "pad" and dilation == 1 and not return_indices
                           and not ceil_mode and data_format == "NCHW" and 2 * padding <= kernel_size
                           and active())
        if self.use_kernel:
            self.kernel = _max_pool_primitive(kernel_size, stride, padding)
            self.geometry = ms.Tensor(np.array([kernel_size, stride, padding], np.int32))

    def construct(self, x):
        if self.use_kernel and x.dtype == ms.float32 and x.ndim == 4:
            return self.kernel(x, self.geometry)[0]
        return super().construct(x)


class Dense(nn.Dense):
    """``nn.Dense`` whose bias addition runs the C++ kernel (and its gradient the C++ row sum) on
    float32 CPU input; the matrix product stays MindSpore's (oneDNN). With ``fuse_gelu=True`` it is
    the Dense layer and the exact GELU that follows it (a channel MLP's ``fc1`` and ``act``): the
    bias and the GELU as one kernel, forward and backward. Under AMP ``to_float(float16)`` the input
    arrives as float16 and the cell runs as ``nn.Dense`` (then ``nn.GELU``)."""

    def __init__(self, in_channels, out_channels, weight_init=None, bias_init=None, has_bias=True,
                 activation=None, dtype=ms.float32, fuse_gelu=False):
        super().__init__(in_channels, out_channels, weight_init, bias_init, has_bias, activation, dtype)
        self.fuse_gelu = fuse_gelu
        self.gelu = nn.GELU(approximate=False)
        self.use_kernel = has_bias and activation is None and active()
        if self.use_kernel:
            self.bias_kernel = _primitives()["bias_gelu" if fuse_gelu else "bias_add"]

    def construct(self, x):
        if self.use_kernel and x.dtype == ms.float32:
            shape = x.shape
            y = self.matmul(x.reshape(-1, shape[-1]), self.weight)  # nn.Dense's x @ weight.T
            y = self.bias_kernel(y, self.bias)
            return y.reshape(shape[:-1] + (y.shape[-1],))
        y = super().construct(x)
        if self.fuse_gelu:
            y = self.gelu(y)
        return y


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d``, optionally followed by ReLU (``fuse_relu=True``), that runs as one fused
    C++ kernel on float32 CPU input: in training the forward (batch statistics, moving-average
    update) and the backward; in evaluation mode the forward with the moving statistics. Same
    parameters and moving statistics as ``nn.BatchNorm2d`` (unbiased variance in the moving
    average); other devices and dtypes run ``nn.BatchNorm2d`` (then ``ReLU``)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.9, affine=True, gamma_init="ones",
                 beta_init="zeros", moving_mean_init="zeros", moving_var_init="ones",
                 use_batch_statistics=None, data_format="NCHW", dtype=ms.float32, fuse_relu=False):
        super().__init__(num_features, eps, momentum, affine, gamma_init, beta_init, moving_mean_init,
                         moving_var_init, use_batch_statistics, data_format, dtype)
        self.fuse_relu = fuse_relu
        self.relu = nn.ReLU()
        self.old_weight = float(momentum)  # weight of the old moving statistic (MindSpore's convention)
        self.use_kernel = (fuse_relu and affine and use_batch_statistics is None
                           and data_format == "NCHW" and active())
        if self.use_kernel:
            self.kernel = _primitives()["bn_relu"]
            self.infer_kernel = _primitives()["bn_relu_infer"]
            self.eps_tensor = ms.Tensor(np.array([eps], np.float32))

    def construct(self, x):
        if self.use_kernel and self.training and x.dtype == ms.float32 and x.ndim == 4:
            y, mean, _, var = self.kernel(x, self.gamma, self.beta, self.eps_tensor)
            mean = ops.stop_gradient(mean)
            var = ops.stop_gradient(var)
            y = ops.depend(y, ops.assign(self.moving_mean,
                                         self.moving_mean * self.old_weight + mean * (1.0 - self.old_weight)))
            y = ops.depend(y, ops.assign(self.moving_variance,
                                         self.moving_variance * self.old_weight + var * (1.0 - self.old_weight)))
            return y
        if self.use_kernel and not self.training and x.dtype == ms.float32 and x.ndim == 4:
            return self.infer_kernel(x, self.gamma, self.beta, self.moving_mean, self.moving_variance,
                                     self.eps_tensor)
        y = super().construct(x)
        if self.fuse_relu:
            y = self.relu(y)
        return y


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward passes run oneDNN on its own (blocked) memory layouts, for
    float32 CPU input with ``group=1``, ``pad_mode="pad"`` and square integer kernel, stride and
    padding without dilation (``model/csrc/conv_onednn.cc``). MindSpore 2.10's CPU convolution
    gives oneDNN plain NCHW tensors and so gets im2col + GEMM kernels; with blocked layouts oneDNN
    picks its direct kernels, which are faster on ConvMLP's shapes. The forward keeps the plain
    layout (the reorders would cost more than they save). The bias, if any, is added by MindSpore's
    ``BiasAdd``. Same parameters as ``nn.Conv2d``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad_mode="same", padding=0,
                 dilation=1, group=1, has_bias=False, weight_init=None, bias_init=None,
                 data_format="NCHW", dtype=ms.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, pad_mode, padding, dilation, group,
                         has_bias, weight_init, bias_init, data_format, dtype)
        simple = all(isinstance(v, int) and not isinstance(v, bool) for v in (kernel_size, stride, padding))
        self.use_kernel = (simple and group == 1 and dilation == 1 and pad_mode.lower() == "pad"
                           and data_format == "NCHW" and active() and conv_library_path() is not None)
        if self.use_kernel:
            self.kernel = _conv_primitive(stride, padding)
            self.geometry = ms.Tensor(np.array([stride, padding], np.int32))

    def construct(self, x):
        if self.use_kernel and x.dtype == ms.float32 and x.ndim == 4:
            y = self.kernel(x, self.weight, self.geometry)
            if self.has_bias:
                y = self.bias_add(y, self.bias)  # nn.Conv2d's BiasAdd (NCHW)
            return y
        return super().construct(x)


class DepthwiseNHWC(ChannelsLastDepthwise):
    """The model's channels-last depthwise 3x3 (:class:`model.convmlp.ChannelsLastDepthwise`) as the
    C++ kernel on float32 CPU input (no transposes), with the same weight."""

    def __init__(self, channels, weight_init=None):
        super().__init__(channels, weight_init)
        self.use_kernel = active()
        if self.use_kernel:
            self.kernel = _primitives()["depthwise"]

    def construct(self, x):
        if self.use_kernel and x.dtype == ms.float32:
            return self.kernel(x, self.weight)
        return super().construct(x)


class DropPath(PlainDropPath):
    """Stochastic depth whose per-sample scaling runs the C++ kernel on float32 CPU input
    (MindSpore's broadcasting ``Mul`` keeps index vectors of the input's size); the same numbers."""

    def __init__(self, drop_prob=0.0, dropout=None):
        super().__init__(0.0 if dropout is not None else drop_prob)
        if dropout is not None:   # the draws of an existing cell (no new random-op seed taken)
            self.drop_prob = float(drop_prob)
            self.dropout = dropout
        self.use_kernel = self.dropout is not None and active()
        if self.use_kernel:
            self.kernel = _primitives()["scale_samples"]

    def construct(self, x, scale=None):
        if self.dropout is None or not self.training:
            return x
        scale = self.factors(x, scale)
        if self.use_kernel and x.dtype == ms.float32:
            return self.kernel(x, scale)
        return x * scale.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
