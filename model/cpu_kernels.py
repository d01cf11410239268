"""C++ CPU kernels for ConvMLP, as MindSpore ``Custom`` ("aot") ops, with MindSpore fallbacks.

Why: on the CPU, MindSpore 2.10's own kernels for several of ConvMLP's operations cost far more
than their arithmetic. The kernels here replace exact GELU (``Erf`` is a scalar loop there),
LayerNorm, the tokenizer's padded 3x3/2 max-pool (lowered to ``MaxPool3DWithArgmax`` there), the
depthwise 3x3 "connect" convolution on channels-last tokens (no transposes), the channel MLPs' bias
gradient, BatchNorm + ReLU (training and evaluation), the convolutions (oneDNN's direct kernels on
blocked layouts) and stochastic depth's per-sample scaling (no broadcast index vectors). What each
costs before and after is measured in ``benchmarks/RESULTS.md``.

The convolution library is built against the oneDNN that MindSpore ships (``lib/libdnnl.so.3``)
with the oneDNN 3.x headers of the PyTorch package (``requirements.txt``; or
``$CONVMLP_DNNL_INCLUDE``); without them only the convolutions stay MindSpore's.

:class:`LayerNorm`, :class:`GELU`, :class:`MaxPool2d`, :class:`Dense`, :class:`BatchNorm2d` and
:class:`Conv2d` are drop-in subclasses of the ``nn`` cells (same parameters, names and
checkpoints); :func:`depthwise_conv_nhwc` takes a grouped ``Conv2d``'s weight. They run the C++
kernels when all of the following hold, MindSpore's kernels otherwise:

* the kernels are enabled (:func:`set_enabled`; config key ``cpu_kernels``; environment
  ``CONVMLP_CPU_KERNELS=0`` turns them off) and the device target is the CPU when the cell is built;
* the library compiled: ``g++`` (or ``$CXX``) builds ``model/csrc/*.cc`` once per machine into
  ``$CONVMLP_KERNEL_CACHE`` (default ``~/.cache/convmlp_mindspore/kernels``), keyed by a hash of the
  sources, the compiler and the CPU's feature flags (``-march=native``; a temporary folder when
  that one is not writable); without a compiler, or when the build fails, one warning is logged
  and MindSpore's kernels are used;
* the input is float32 (under AMP O2/O3 the float16 parts keep MindSpore's kernels) and the case
  is the one implemented (LayerNorm over the last axis; exact GELU; ``pad_mode="pad"`` max-pool
  and convolution with integer kernel/stride/padding, convolution with groups 1 and no dilation;
  odd square depthwise kernels, stride 1, padding K // 2).

Shape inference of a MindSpore Custom op is cached by the op's library path and input shapes, so
ops whose output shape depends on a stride or padding (max-pool, convolution) get one path per
geometry (a symbolic link to the same library, see :func:`_alias`).

Numerics: the same functions; ``tests/test_cpu_kernels.py`` checks each forward and backward
against float64 references, PyTorch and MindSpore's kernels, and the official-logits parity fixture
holds with the kernels on or off. A MINDIR export must not contain them (the graph would refer
to this machine's ``.so``), so ``export.py`` builds the model with them off.
"""
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .errors import first_line

__all__ = ["LayerNorm", "GELU", "MaxPool2d", "Dense", "BatchNorm2d", "Conv2d", "depthwise_conv_nhwc", "scale_samples", "mindspore_onednn_library", "set_enabled", "enabled", "active", "library_path", "status"]

_LOG = logging.getLogger(__name__)
_SRC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
#: source file -> extra compile flags. gelu.cc is compiled with -ffast-math so that GCC may
#: vectorise erff/expf via glibc's libmvec; the link step never gets -ffast-math (with it GCC links
#: crtfastmath.o, which would switch the whole process to flush-denormals-to-zero).
_SOURCES = {"layer_norm.cc": [], "gelu.cc": ["-ffast-math"], "max_pool.cc": [], "depthwise_conv.cc": [],
            "bias_add.cc": [], "batch_norm_relu.cc": [], "scale_samples.cc": []}
#: the convolution, built as a library of its own against MindSpore's libdnnl.so.3 (optional)
_CONV_SOURCE = "conv_onednn.cc"
_BASE_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-fopenmp-simd"]

_enabled = os.environ.get("CONVMLP_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "off", "no")
_lock = threading.Lock()
_library = None          # path of the built .so, once built
_failure = None          # one-line reason when the build failed
_conv_library = None     # path of the built oneDNN convolution .so (optional, see _dnnl_paths)
_conv_failure = None     # one-line reason when that one is missing
_ops = None              # dict of Custom primitives, created once per process


def set_enabled(flag: bool):
    """Turn the kernels on or off for cells built from now on (cells already built keep theirs)."""
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    """Whether the kernels are switched on (they may still be unavailable, see :func:`active`)."""
    return _enabled


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cache_root():
    return os.environ.get("CONVMLP_KERNEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "convmlp_mindspore", "kernels")


def _run(cmd):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if proc.returncode != 0:
        last = [l for l in proc.stdout.strip().splitlines() if l.strip()]
        raise RuntimeError(f"{' '.join(cmd[:2])} ... failed: {last[-1] if last else 'exit ' + str(proc.returncode)}")


def mindspore_onednn_library() -> str:
    """Path of the oneDNN library that MindSpore ships and loads (``lib/libdnnl.so.3``)."""
    ms_spec = importlib.util.find_spec("mindspore")
    return os.path.join(list(ms_spec.submodule_search_locations)[0], "lib", "libdnnl.so.3")


def _dnnl_paths():
    """(include folder holding oneapi/dnnl/dnnl.hpp, MindSpore's lib folder holding libdnnl.so.3) for
    the convolution kernel, which drives the oneDNN library MindSpore ships. The headers come from
    ``$CONVMLP_DNNL_INCLUDE``, the PyTorch package (requirements.txt) or the system. Raises
    RuntimeError with the reason."""
    library = mindspore_onednn_library()
    lib_dir = os.path.dirname(library)
    if not os.path.isfile(library):
        raise RuntimeError(f"MindSpore's oneDNN library not found in {lib_dir}")
    candidates = [os.environ.get("CONVMLP_DNNL_INCLUDE")]
    torch_spec = importlib.util.find_spec("torch")  # located, not imported
    if torch_spec is not None and torch_spec.submodule_search_locations:
        candidates.append(os.path.join(list(torch_spec.submodule_search_locations)[0], "include"))
    candidates += ["/usr/local/include", "/usr/include"]
    for inc in candidates:
        if inc and all(os.path.isfile(os.path.join(inc, "oneapi", "dnnl", h))
                       for h in ("dnnl.hpp", "dnnl_threadpool.hpp", "dnnl_version.h")):
            return inc, lib_dir
    raise RuntimeError("no oneDNN 3.x headers (oneapi/dnnl/dnnl.hpp) found: install torch (requirements.txt) "
                       "or set CONVMLP_DNNL_INCLUDE")


def _build():
    """Compile the sources into the cache (atomically: concurrent processes may race). Returns
    ``(library, conv_library or None, why the convolution library is missing or None)``. Raises
    RuntimeError with a one-line reason when the main library cannot be built."""
    if platform.system() != "Linux":
        raise RuntimeError(f"MindSpore's aot Custom ops need Linux, this is {platform.system()}")
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found; set CXX)")
    try:
        version = subprocess.run([cxx, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=60).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{cxx} --version failed: {exc}") from None
    arch_flags = ["-march=native"] if platform.machine().lower() in ("x86_64", "amd64", "aarch64") else []
    try:
        dnnl = _dnnl_paths()
        with open(os.path.join(dnnl[0], "oneapi", "dnnl", "dnnl_version.h"), "rb") as f:
            dnnl_id = (dnnl, f.read(), os.path.getsize(os.path.join(dnnl[1], "libdnnl.so.3")))
    except RuntimeError as exc:
        dnnl, dnnl_id, conv_failure = None, None, str(exc)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(_SRC_DIR)):  # every source and header
        if not name.endswith((".cc", ".h")):
            continue
        with open(os.path.join(_SRC_DIR, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    digest.update(repr((version, _BASE_FLAGS, arch_flags, _SOURCES, _cpu_flags(), platform.machine(),
                        dnnl_id)).encode())
    roots = [_cache_root(), os.path.join(tempfile.gettempdir(), f"convmlp_mindspore_kernels_{os.getuid()}")]
    for root in roots:  # an unwritable cache folder (read-only home, ...) falls back to /tmp
        folder = os.path.join(root, digest.hexdigest()[:20])
        target = os.path.join(folder, "convmlp_cpu_kernels.so")
        conv_target = os.path.join(folder, "convmlp_cpu_conv.so")
        if os.path.isfile(target) and (dnnl is None or os.path.isfile(conv_target)):
            break
        try:
            os.makedirs(folder, exist_ok=True)
            if os.access(folder, os.W_OK):
                break
        except OSError:
            pass
    else:
        raise RuntimeError(f"no writable folder for the compiled kernels ({roots[0]}; set CONVMLP_KERNEL_CACHE)")

    def compile_library(sources, out, include=(), link=()):
        if os.path.isfile(out):
            return
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
            objects = []
            for name, extra in sources.items():
                obj = os.path.join(tmp, name + ".o")
                cmd = [cxx, "-c", *_BASE_FLAGS, *arch_flags, *extra, *include, os.path.join(_SRC_DIR, name),
                       "-o", obj]
                try:
                    _run(cmd)
                except RuntimeError:
                    if not arch_flags:
                        raise
                    _run([a for a in cmd if a not in arch_flags])  # a compiler without -march=native
                objects.append(obj)
            lib = os.path.join(tmp, os.path.basename(out))
            _run([cxx, "-shared", "-o", lib, *objects, "-lm", *link])
            os.replace(lib, out)

    compile_library(_SOURCES, target)
    if dnnl is None:
        return target, None, conv_failure
    include, lib_dir = dnnl
    try:
        compile_library({_CONV_SOURCE: ["-pthread"]}, conv_target, include=["-I" + include],
                        link=["-pthread", "-L" + lib_dir, "-l:libdnnl.so.3", "-Wl,-rpath," + lib_dir,
                              "-Wl,--no-undefined"])
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return target, None, f"convolution kernel not built: {first_line(exc)}"
    return target, conv_target, None


def library_path():
    """Path of the compiled library (building it on first call), or None when it cannot be built."""
    global _library, _conv_library, _conv_failure, _failure
    with _lock:
        if _library is None and _failure is None:
            try:
                _library, _conv_library, _conv_failure = _build()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                _failure = first_line(exc)
                _LOG.warning("CPU kernels unavailable, using MindSpore's own kernels: %s", _failure)
            if _conv_failure:
                _LOG.warning("CPU convolution kernel unavailable, using MindSpore's Conv2d: %s", _conv_failure)
        return _library


def conv_library_path():
    """Path of the compiled oneDNN convolution library, or None (see :func:`status`)."""
    return _conv_library if library_path() is not None else None


def active() -> bool:
    """Whether cells built now would run the C++ kernels: enabled, CPU target, library built."""
    if not _enabled or ms.get_context("device_target") != "CPU":
        return False
    return library_path() is not None


def status() -> str:
    """One line for the run log."""
    if not _enabled:
        return "off"
    if ms.get_context("device_target") != "CPU":
        return "off (not the CPU)"
    if library_path() is None:
        return f"unavailable ({_failure})"
    conv = "on" if _conv_library else f"MindSpore's ({_conv_failure})"
    return f"on ({os.path.dirname(_library)}); convolutions: {conv}"


# --------------------------------------------------------------------------------------------
# The Custom primitives (created once per process; gradients through their bprop functions)
# --------------------------------------------------------------------------------------------
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


def _bn_fwd_shape(x, gamma, beta, eps):
    return x, gamma, gamma, gamma


def _bn_fwd_type(x, gamma, beta, eps):
    return x, x, x, x


def _bn_bwd_shape(dy, y, x, gamma, mean, rstd):
    return x, gamma, gamma


def _primitives():
    global _ops
    if _ops is None:
        lib = library_path()
        ln_bwd = ops.Custom(f"{lib}:LayerNormBackward", out_shape=_ln_bwd_shape, out_dtype=_ln_bwd_shape,
                            func_type="aot")
        gelu_bwd = ops.Custom(f"{lib}:GeluBackward", out_shape=_grad_x, out_dtype=_grad_x, func_type="aot")

        def ln_bprop(x, gamma, beta, eps, out, dout):
            dx, dgamma, dbeta = ln_bwd(dout[0], x, gamma, out[1], out[2])
            return dx, dgamma, dbeta, ops.zeros_like(eps)

        def gelu_bprop(x, out, dout):
            return (gelu_bwd(dout, x),)

        dw_input = ops.Custom(f"{lib}:DepthwiseConvBackwardInput", out_shape=_same, out_dtype=_same,
                              func_type="aot")
        dw_weight = ops.Custom(f"{lib}:DepthwiseConvBackwardWeight", out_shape=_dw_weight_shape,
                               out_dtype=_dw_weight_shape, func_type="aot")

        def dw_bprop(x, weight, out, dout):
            return dw_input(dout, weight), dw_weight(dout, x, weight)

        bias_bwd = ops.Custom(f"{lib}:BiasAddBackward", out_shape=_bias_grad_shape, out_dtype=_same,
                              func_type="aot")

        def bias_bprop(x, bias, out, dout):
            return dout, bias_bwd(dout)

        bn_bwd = ops.Custom(f"{lib}:BatchNormReluBackward", out_shape=_bn_bwd_shape, out_dtype=_bn_bwd_shape,
                            func_type="aot")

        def bn_bprop(x, gamma, beta, eps, out, dout):
            dx, dgamma, dbeta = bn_bwd(dout[0], out[0], x, gamma, out[1], out[2])
            return dx, dgamma, dbeta, ops.zeros_like(eps)

        def bn_infer_bprop(x, gamma, beta, mean, var, eps, out, dout):
            # (evaluation-mode gradients, e.g. fine-tuning with frozen statistics; MindSpore ops)
            rstd = ops.rsqrt(var + eps)
            g = dout * (out > 0).astype(dout.dtype)
            xhat = (x - mean.reshape(1, -1, 1, 1)) * rstd.reshape(1, -1, 1, 1)
            dx = g * (gamma * rstd).reshape(1, -1, 1, 1)
            return (dx, (g * xhat).sum(axis=(0, 2, 3)), g.sum(axis=(0, 2, 3)), ops.zeros_like(mean),
                    ops.zeros_like(var), ops.zeros_like(eps))

        scale = ops.Custom(f"{lib}:ScaleSamples", out_shape=_same, out_dtype=_same, func_type="aot")

        def scale_bprop(x, s, out, dout):
            return scale(dout, s), ops.zeros_like(s)

        _ops = {
            "scale_samples": ops.Custom(f"{lib}:ScaleSamples", out_shape=_same, out_dtype=_same,
                                        func_type="aot", bprop=scale_bprop),
            "bn_relu_infer": ops.Custom(f"{lib}:BatchNormReluInference", out_shape=_same, out_dtype=_same,
                                        func_type="aot", bprop=bn_infer_bprop),
            "bn_relu": ops.Custom(f"{lib}:BatchNormReluForward", out_shape=_bn_fwd_shape,
                                  out_dtype=_bn_fwd_type, func_type="aot", bprop=bn_bprop),
            "bias_add": ops.Custom(f"{lib}:BiasAddForward", out_shape=_same, out_dtype=_same,
                                   func_type="aot", bprop=bias_bprop),
            "depthwise": ops.Custom(f"{lib}:DepthwiseConvForward", out_shape=_same, out_dtype=_same,
                                    func_type="aot", bprop=dw_bprop),
            "layer_norm": ops.Custom(f"{lib}:LayerNormForward", out_shape=_ln_fwd_shape,
                                     out_dtype=_ln_fwd_type, func_type="aot", bprop=ln_bprop),
            "gelu": ops.Custom(f"{lib}:GeluForward", out_shape=_same, out_dtype=_same, func_type="aot",
                               bprop=gelu_bprop),
        }
    return _ops


#: primitives whose output shape depends on a geometry: (op, geometry...) -> Custom op
_geometry_ops = {}


def _max_pool_primitive(kernel, stride, padding):
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

        backward = ops.Custom(f"{lib}:MaxPoolBackward", out_shape=dx_shape, out_dtype=dx_shape,
                              func_type="aot")

        def bprop(x, cfg, out, dout):
            return backward(dout[0], out[1], x), ops.zeros_like(cfg)

        _geometry_ops[key] = ops.Custom(f"{lib}:MaxPoolForward", out_shape=out_shape, out_dtype=out_type,
                                        func_type="aot", bprop=bprop)
    return _geometry_ops[key]


def depthwise_conv_nhwc(x, weight):
    """Depthwise KxK convolution (stride 1, zero padding K // 2, no bias) of channels-last float32
    ``x`` (N, H, W, C) with a grouped ``Conv2d``'s weight (C, 1, K, K); differentiable. Only call
    where :func:`active` was true when the caller was built."""
    return _primitives()["depthwise"](x, weight)


def scale_samples(x, s):
    """``x * s`` with ``s`` of shape (B,) broadcast over each sample of float32 ``x`` (B, ...);
    differentiable in ``x`` (the gradient in ``s`` is zero: stochastic depth's mask). Only call
    where :func:`active` was true when the caller was built."""
    return _primitives()["scale_samples"](x, s)


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

        backward_data = ops.Custom(f"{lib}:ConvBackwardData", out_shape=dx_shape, out_dtype=dx_shape,
                                   func_type="aot")
        backward_weights = ops.Custom(f"{lib}:ConvBackwardWeights", out_shape=dw_shape, out_dtype=dw_shape,
                                      func_type="aot")

        def bprop(x, w, cfg, out, dout):
            return backward_data(dout, w, x, cfg), backward_weights(dout, x, w, cfg), ops.zeros_like(cfg)

        _geometry_ops[key] = ops.Custom(f"{lib}:ConvForward", out_shape=out_shape, out_dtype=out_type,
                                        func_type="aot", bprop=bprop)
    return _geometry_ops[key]


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------
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
    float32 CPU input; the matrix product stays MindSpore's (oneDNN). Under AMP ``to_float(float16)``
    the input arrives as float16 and the cell runs as ``nn.Dense``."""

    def __init__(self, in_channels, out_channels, weight_init=None, bias_init=None, has_bias=True,
                 activation=None, dtype=ms.float32):
        super().__init__(in_channels, out_channels, weight_init, bias_init, has_bias, activation, dtype)
        self.use_kernel = has_bias and activation is None and active()
        if self.use_kernel:
            self.bias_kernel = _primitives()["bias_add"]

    def construct(self, x):
        if self.use_kernel and x.dtype == ms.float32:
            shape = x.shape
            y = self.matmul(x.reshape(-1, shape[-1]), self.weight)  # nn.Dense's x @ weight.T
            y = self.bias_kernel(y, self.bias)
            return y.reshape(shape[:-1] + (y.shape[-1],))
        return super().construct(x)


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
        self.keep = float(momentum)  # weight of the old moving statistic (MindSpore's convention)
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
            y = ops.depend(y, ops.assign(self.moving_mean, self.moving_mean * self.keep + mean * (1.0 - self.keep)))
            y = ops.depend(y, ops.assign(self.moving_variance,
                                         self.moving_variance * self.keep + var * (1.0 - self.keep)))
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
    picks its direct kernels, 1.15-1.75x faster forward+backward on ConvMLP's shapes. The forward
    keeps the plain layout (the reorders would cost more than they save). The bias, if any, is
    added by MindSpore's ``BiasAdd``. Same parameters as ``nn.Conv2d``."""

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
