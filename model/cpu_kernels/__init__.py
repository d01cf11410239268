"""C++ CPU kernels for ConvMLP as MindSpore ``Custom`` ("aot") ops, with MindSpore's kernels as the
fallback. The kernels (``model/csrc/``) cover exact GELU, LayerNorm, the padded max-pool, the
depthwise "connect" convolution, the channel MLPs' bias, BatchNorm + ReLU, the convolutions,
stochastic depth's scaling and the AdamW update of all parameters at once. The cells run them on the CPU for float32 input while they are switched
on (:func:`set_enabled`, config key ``cpu_kernels``) and built (``g++``, on first use); otherwise,
and for the cases they do not implement, MindSpore's own kernels run. :mod:`.build` compiles and
caches the libraries, :mod:`.ops` registers the primitives, :mod:`.layers` holds the cells,
:mod:`.inference` the fused evaluation path (oneDNN library).
"""
from .build import (KERNEL_ISA_ENV, KERNEL_ISAS, active, conv_library_path, enabled, kernel_isa, library_path,
                    mindspore_onednn_library, set_enabled, status)
from .layers import GELU, BatchNorm2d, Conv2d, Dense, LayerNorm, MaxPool2d
from .ops import adamw_update, depthwise_conv_nhwc, scale_samples
from . import inference

__all__ = ["LayerNorm", "GELU", "MaxPool2d", "Dense", "BatchNorm2d", "Conv2d", "depthwise_conv_nhwc", "scale_samples",
           "mindspore_onednn_library", "set_enabled", "enabled", "active", "library_path", "conv_library_path",
           "status", "kernel_isa", "KERNEL_ISAS", "KERNEL_ISA_ENV", "inference", "adamw_update"]
