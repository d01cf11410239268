"""Runtime settings for speed on the CPU, shared by train.py, evl.py and benchmarks/bench.py.

Call ``configure_runtime()`` once, before the first network runs (importing MindSpore before it is
fine). What it does and why (measurements in ``benchmarks/RESULTS.md``):

* ``ONEDNN_MAX_CPU_ISA=AVX2`` on x86 CPUs. MindSpore 2.10's CPU convolutions call oneDNN 3.10 with
  plain NCHW memory; on an AVX-512 CPU oneDNN then picks ``jit_uni_ncsp:conv+ref:any``, a reference
  (scalar) inner kernel, and a 3x3 convolution runs about 100x slower (2.2 s instead of 25 ms
  for 128x32x16x16). Capped at AVX2 it picks ``gemm:jit``. The variable must be set before
  oneDNN creates its first primitive; an explicit value in the environment is kept.

``release_compile_memory()``: call it between ``cell.compile(...)`` and the first step. Graph
compilation of the training step leaves ~0.4 GB of freed-but-retained glibc heap (convmlp_s,
224 px, batch 16: resident 1646 MiB after compile, 1249 MiB after the trim); the first step's
allocations then reuse part of it instead of growing the process, so the peak resident memory
of 224 px training drops from ~4190 to ~3790 MiB. No effect on speed.
"""
import os
import platform

__all__ = ["configure_runtime", "release_compile_memory", "ONEDNN_ISA"]

#: oneDNN's ISA cap for MindSpore's CPU kernels (see module docstring).
ONEDNN_ISA = "AVX2"


def configure_runtime(threads=None, mode="graph", device_target=None):
    """Set the oneDNN ISA cap, the execution mode and the CPU thread count.

    Args:
        threads: intra-op threads; ``None`` keeps MindSpore's default (every core).
        mode: ``"graph"`` (``GRAPH_MODE``, what train.py uses) or ``"pynative"``.
        device_target: ``"CPU"``, ``"GPU"``, ``"Ascend"`` or ``None`` (MindSpore's default).

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
        ms.set_device(device_target)
        applied["device_target"] = device_target
    return applied


def release_compile_memory():
    """Return the heap that graph compilation freed to the OS (``gc.collect()`` then glibc's
    ``malloc_trim(0)``). Call after ``cell.compile(...)`` and before the first step; a no-op
    where glibc is not the C library. Returns True when the trim ran."""
    import ctypes
    import gc
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
