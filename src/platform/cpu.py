"""CPU settings for speed, applied by :func:`src.platform.device.configure_runtime` (entry scripts
and benchmarks/bench.py) before the first network runs.

On x86 CPUs :func:`cap_onednn_isa` caps oneDNN at AVX2 when the process runs MindSpore 2.10's own CPU
convolutions: those hand oneDNN plain NCHW memory, and on an AVX-512 CPU oneDNN then picks a
reference (scalar) inner kernel, while capped at AVX2 it picks its GEMM kernel. When every
convolution runs the C++ kernel of ``model/cpu_kernels`` (blocked layouts where the plain ones
would get a reference kernel), the cap is left off, so those convolutions and MindSpore's matrix
products use the CPU's whole vector width. The cap
is set through oneDNN's API (``dnnl_set_max_cpu_isa``), not the environment, so child processes
decide for themselves; an explicit ``ONEDNN_MAX_CPU_ISA`` in the environment is kept. The
measurements behind this and behind ``release_compile_memory()`` are in ``benchmarks/RESULTS.md``.
"""
import ctypes
import os

__all__ = ["cap_onednn_isa", "uses_only_conv_kernel", "onednn_isa", "effective_onednn_isa",
           "release_compile_memory", "ONEDNN_ISA"]

#: oneDNN's ISA cap for MindSpore's own CPU convolutions (see module docstring).
ONEDNN_ISA = "AVX2"
#: dnnl_cpu_isa_t (oneapi/dnnl/dnnl_types.h): name -> code
_DNNL_ISA_CODES = {"SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xf, "AVX2_VNNI_2": 0x1f,
                   "AVX512_CORE": 0x27, "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xe7,
                   "AVX10_1_512": 0x1ef, "AVX10_1_512_AMX": 0xfef, "AVX10_1_512_AMX_FP16": 0x1fef,
                   "AVX10_2": 0x201ff, "AVX10_2_AMX_2": 0x22fff}
_isa_note = "not set (src.platform.device.configure_runtime not called, or not an x86 CPU)"


def onednn_isa():
    """What :func:`cap_onednn_isa` did to oneDNN's ISA, for the run log."""
    return _isa_note


def cap_onednn_isa(own_convolutions=True):
    """Cap oneDNN at :data:`ONEDNN_ISA` when MindSpore's own convolutions will run in this process;
    leave it uncapped when every convolution runs the C++ kernel. Returns what is in effect (also
    kept for :func:`onednn_isa`)."""
    global _isa_note
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):  # the user's (or bench.py --isa's) cap, read by oneDNN itself
        _isa_note = f"{os.environ['ONEDNN_MAX_CPU_ISA']} (from ONEDNN_MAX_CPU_ISA)"
    else:
        _isa_note = _cap(ONEDNN_ISA) if own_convolutions else "not capped (every convolution runs the C++ kernel)"
    return _isa_note


def effective_onednn_isa():
    """The instruction set MindSpore's oneDNN runs with, read back from oneDNN
    (``dnnl_get_effective_cpu_isa``; after it, the cap can no longer change), or ``unknown (why)``."""
    from model.cpu_kernels import mindspore_onednn_library
    try:
        code = ctypes.CDLL(mindspore_onednn_library()).dnnl_get_effective_cpu_isa()
    except (OSError, AttributeError) as exc:
        return f"unknown ({exc})"
    names = {v: k for k, v in _DNNL_ISA_CODES.items()}
    return names.get(code, f"dnnl_cpu_isa {code:#x}")


def _cap(isa):
    """Cap the oneDNN that MindSpore loaded at `isa` for this process. Returns what is in effect,
    for the run log. oneDNN accepts the cap only before its first primitive."""
    from model.cpu_kernels import mindspore_onednn_library
    lib = mindspore_onednn_library()
    try:
        status = ctypes.CDLL(lib).dnnl_set_max_cpu_isa(_DNNL_ISA_CODES[isa])
    except (OSError, AttributeError) as exc:
        return f"not capped ({lib}: {exc})"
    return isa if status == 0 else "not capped (oneDNN was already in use in this process)"


def uses_only_conv_kernel(cpu_kernels_on=True, amp_level="O0", device_target="CPU"):
    """Whether every convolution of a model built with these settings runs the C++ convolution
    kernel (float32 on the CPU, kernels on and built), so that oneDNN may be left
    oneDNN uncapped. Builds the kernels if needed (once per machine)."""
    if device_target != "CPU" or not cpu_kernels_on or amp_level != "O0":
        return False
    from model import cpu_kernels
    return cpu_kernels.conv_library_path() is not None


def release_compile_memory():
    """Return the heap that graph compilation freed to the OS (``gc.collect()`` then glibc's
    ``malloc_trim(0)``), so that the first step's allocations reuse it instead of growing the
    process, and move the objects that survive (the model, MindSpore's modules) out of the cyclic
    garbage collector's sight (``gc.freeze()``): the collections that the steps' short-lived
    objects trigger no longer walk them. Call after ``cell.compile(...)`` and before the first
    step; the trim is a no-op where glibc is not the C library. Returns True when the trim ran."""
    import gc
    gc.collect()
    gc.freeze()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
