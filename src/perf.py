"""Runtime settings for speed on the CPU, shared by the entry scripts and benchmarks/bench.py.

Call ``configure_runtime()`` once, before the first network runs (importing MindSpore before it is
fine). ``ONEDNN_MAX_CPU_ISA`` is capped at AVX2 on x86 CPUs: MindSpore 2.10's CPU convolutions call
oneDNN with plain NCHW memory, and on an AVX-512 CPU oneDNN then picks a reference (scalar) inner
kernel; capped at AVX2 it picks its GEMM kernel. The variable must be set before oneDNN creates its
first primitive; an explicit value in the environment is kept. The measurements behind this and
behind ``release_compile_memory()`` are in ``benchmarks/RESULTS.md``.
"""
import os
import platform

__all__ = ["configure_runtime", "release_compile_memory", "ONEDNN_ISA"]

#: oneDNN's ISA cap for MindSpore's CPU kernels (see module docstring).
ONEDNN_ISA = "AVX2"


def configure_runtime(threads=None, mode="graph", device_target=None, device_id=None):
    """Set the oneDNN ISA cap, the execution mode, the device and the CPU kernels' thread count.
    This is the one place where the device is set.

    Args:
        threads: threads of MindSpore's CPU kernels; ``None`` keeps MindSpore's default.
        mode: ``"graph"`` (``GRAPH_MODE``, what train.py uses) or ``"pynative"``.
        device_target: ``"CPU"``, ``"GPU"``, ``"Ascend"`` or ``None`` (MindSpore's default).
        device_id: the device index (GPU/Ascend); ``None`` leaves it to MindSpore (and to msrun).

    Returns the dict of what was set, for the run log.
    """
    applied = {}
    if platform.machine().lower() in ("x86_64", "amd64") and (device_target or "CPU") == "CPU":
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", ONEDNN_ISA)
        applied["ONEDNN_MAX_CPU_ISA"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    import mindspore as ms  # after the environment is set, in case this is the first import
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


def release_compile_memory():
    """Return the heap that graph compilation freed to the OS (``gc.collect()`` then glibc's
    ``malloc_trim(0)``), so that the first step's allocations reuse it instead of growing the
    process. Call after ``cell.compile(...)`` and before the first step; a no-op where glibc is not
    the C library. Returns True when the trim ran."""
    import ctypes
    import gc
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
