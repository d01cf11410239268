"""Runtime settings for speed on the CPU, shared by the entry scripts and benchmarks/bench.py.

Call ``configure_runtime()`` once, before the first network runs (importing MindSpore before it is
fine). On x86 CPUs it caps oneDNN at AVX2 when the process runs MindSpore 2.10's own CPU
convolutions: those hand oneDNN plain NCHW memory, and on an AVX-512 CPU oneDNN then picks a
reference (scalar) inner kernel, while capped at AVX2 it picks its GEMM kernel. When every
convolution runs the C++ kernel of ``model/cpu_kernels.py`` (blocked layouts where the plain ones
would get a reference kernel), the cap is left off, so those convolutions and MindSpore's matrix
products use the CPU's whole vector width (224 px training ~1.5x faster on an AVX-512 CPU). The cap
is set through oneDNN's API (``dnnl_set_max_cpu_isa``), not the environment, so child processes
decide for themselves; an explicit ``ONEDNN_MAX_CPU_ISA`` in the environment is kept. The
measurements behind this and behind ``release_compile_memory()`` are in ``benchmarks/RESULTS.md``.
"""
import ctypes
import os
import platform

__all__ = ["configure_runtime", "uses_only_conv_kernel", "onednn_isa", "release_compile_memory", "ONEDNN_ISA"]

#: oneDNN's ISA cap for MindSpore's own CPU convolutions (see module docstring).
ONEDNN_ISA = "AVX2"
_DNNL_ISA_CODES = {"AVX2": 0x7}   # dnnl_cpu_isa_t (oneapi/dnnl/dnnl_types.h)
_isa_note = "not set (configure_runtime not called, or not an x86 CPU)"


def onednn_isa():
    """What ``configure_runtime`` did to oneDNN's ISA, for the run log."""
    return _isa_note


def _cap_onednn_isa(isa=ONEDNN_ISA):
    """Cap the oneDNN that MindSpore loaded at `isa` for this process. Returns what is in effect,
    for the run log. oneDNN accepts the cap only before its first primitive."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        return f"{os.environ['ONEDNN_MAX_CPU_ISA']} (from ONEDNN_MAX_CPU_ISA)"
    from model.cpu_kernels import mindspore_onednn_library
    lib = mindspore_onednn_library()
    try:
        status = ctypes.CDLL(lib).dnnl_set_max_cpu_isa(_DNNL_ISA_CODES[isa])
    except (OSError, AttributeError) as exc:
        return f"not capped ({lib}: {exc})"
    return isa if status == 0 else "not capped (oneDNN was already in use in this process)"


def configure_runtime(threads=None, mode="graph", device_target=None, device_id=None, own_convolutions=True):
    """Set the oneDNN ISA cap, the execution mode, the device and the CPU kernels' thread count.
    This is the one place where the device is set.

    Args:
        threads: threads of MindSpore's CPU kernels; ``None`` keeps MindSpore's default.
        mode: ``"graph"`` (``GRAPH_MODE``, what train.py uses) or ``"pynative"``.
        device_target: ``"CPU"``, ``"GPU"``, ``"Ascend"`` or ``None`` (MindSpore's default).
        device_id: the device index (GPU/Ascend); ``None`` leaves it to MindSpore (and to msrun).
        own_convolutions: whether MindSpore's own CPU convolutions will run in this process; False
            when every convolution runs the C++ kernel (:func:`uses_only_conv_kernel`), which
            leaves oneDNN uncapped.

    Returns the dict of what was set, for the run log.
    """
    applied = {}
    if platform.machine().lower() in ("x86_64", "amd64") and (device_target or "CPU") == "CPU":
        global _isa_note
        _isa_note = _cap_onednn_isa() if own_convolutions else "not capped (every convolution runs the C++ kernel)"
        applied["oneDNN ISA"] = _isa_note
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    applied["mode"] = mode
    if device_target:
        try:
            if device_id is None or device_target == "CPU":
                ms.set_device(device_target)
            else:
                ms.set_device(device_target, device_id)
        except RuntimeError:
            # MindSpore refuses set_device once its runtime ran (a second call in one process,
            # e.g. in tests); that is fine when the device is already the one asked for.
            if ms.get_context("device_target") != device_target:
                raise
        applied["device_target"] = device_target
    if threads is not None:
        ms.device_context.cpu.op_tuning.threads_num(int(threads))
        applied["threads"] = int(threads)
    return applied


def uses_only_conv_kernel(cpu_kernels_on=True, amp_level="O0", device_target="CPU"):
    """Whether every convolution of a model built with these settings runs the C++ convolution
    kernel (float32 on the CPU, kernels on and built), so that ``configure_runtime`` may leave
    oneDNN uncapped. Builds the kernels if needed (once per machine)."""
    if device_target != "CPU" or not cpu_kernels_on or amp_level != "O0":
        return False
    from model import cpu_kernels
    return cpu_kernels.enabled() and cpu_kernels.conv_library_path() is not None


def release_compile_memory():
    """Return the heap that graph compilation freed to the OS (``gc.collect()`` then glibc's
    ``malloc_trim(0)``), so that the first step's allocations reuse it instead of growing the
    process. Call after ``cell.compile(...)`` and before the first step; a no-op where glibc is not
    the C library. Returns True when the trim ran."""
    import gc
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
