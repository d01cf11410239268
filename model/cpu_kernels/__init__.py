"""C++ CPU kernels for ConvMLP as MindSpore ``Custom`` ("aot") ops, applied to a built network. The
kernels (``model/csrc/``) cover exact GELU, LayerNorm, the padded max-pool, the depthwise "connect"
convolution, the channel MLPs' bias, BatchNorm + ReLU, the convolutions and stochastic depth's
scaling. :func:`apply_cpu_kernels` swaps the network's cells for the kernel cells (same parameters),
:func:`fuse_for_inference` builds a separate fused evaluation cell; both build the libraries first
(:func:`build_kernels`, ``g++``, cached; without a compiler one warning and the plain network runs).
:mod:`.build` compiles and caches the libraries, :mod:`.ops` registers the primitives,
:mod:`.layers` holds the kernel cells, :mod:`.convert` applies them, :mod:`.inference` the fused
evaluation path (oneDNN library).
"""
from .build import (KERNEL_ISA_ENV, KERNEL_ISAS, active, build_kernels, build_library, built_libraries,
                    conv_library_path, kernel_isa, library_path,
                    mindspore_onednn_library, status)
from .layers import GELU, BatchNorm2d, Conv2d, Dense, DepthwiseNHWC, DropPath, LayerNorm, MaxPool2d
from .ops import depthwise_conv_nhwc, scale_samples
from .convert import KERNEL_CELLS, apply_cpu_kernels
from .inference import FusedConvMLP, fuse_for_inference
from . import inference

__all__ = ["apply_cpu_kernels", "fuse_for_inference", "FusedConvMLP", "KERNEL_CELLS", "build_kernels", "LayerNorm",
           "GELU", "MaxPool2d", "Dense", "BatchNorm2d", "Conv2d", "DepthwiseNHWC", "DropPath", "depthwise_conv_nhwc",
           "scale_samples", "mindspore_onednn_library", "active", "library_path", "conv_library_path", "status",
           "kernel_isa", "KERNEL_ISAS", "KERNEL_ISA_ENV", "inference", "build_library", "built_libraries"]
