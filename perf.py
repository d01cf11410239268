"""Runtime settings for speed on the CPU, shared by train.py, evl.py and benchmarks/bench.py.

Call ``configure_runtime()`` once, before the first network runs (importing MindSpore before it is
fine). What it does and why (measurements in ``benchmarks/RESULTS.md``):

* ``ONEDNN_MAX_CPU_ISA=AVX2`` on x86 CPUs. MindSpore 2.10's CPU convolutions call oneDNN 3.10 with
  plain NCHW memory; on an AVX-512 CPU oneDNN then picks ``jit_uni_ncsp:conv+ref:any``, a reference
  (scalar) inner kernel, and a 3x3 convolution runs about 100x slower (2.2 s instead of 25 ms
  for 128x32x16x16). Capped at AVX2 it picks ``gemm:jit``. The variable must be set before
  oneDNN creates its first primitive; an explicit value in the environment is kept.
"""
import os
import platform

__all__ = ["configure_runtime", "ONEDNN_ISA"]

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
