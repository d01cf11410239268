"""Building the C++ kernels and the switch that says whether the cells use them. ``g++`` (or
``$CXX``) compiles ``model/csrc/*.cc`` on first use into shared libraries in the kernel cache
(``$CONVMLP_KERNEL_CACHE``, else :func:`model.cache.cache_dir` ``("kernels")``; a temporary folder
when that one is not writable), in a folder keyed by a hash of the sources, the compiler, the flags
and the CPU's feature flags (``-march=native``), so each machine builds once and concurrent
processes may race safely (each library is moved into place atomically). Each folder is made
with a marker (:func:`model.cache.make_folder`) and only marked folders are used; a cache root
that holds other things gets a subfolder of its own (:func:`model.cache.cache_root`). The convolution is a
library of its own, built against the oneDNN that MindSpore ships (``lib/libdnnl.so.3``) with the
oneDNN 3.x headers of the PyTorch package (``requirements.txt``) or ``$CONVMLP_DNNL_INCLUDE``;
without them only the convolutions stay MindSpore's. Without a compiler, or when the build fails,
one warning is logged and the network keeps MindSpore's kernels. Nothing here is a switch: the
build is an explicit step (:func:`build_kernels`, called by :func:`model.cpu_kernels.apply_cpu_kernels`
and :func:`model.cpu_kernels.fuse_for_inference`); :func:`active` and :func:`status` say whether
the kernels can run here.
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

import mindspore as ms

from ..cache import cache_dir, cache_root, is_marked, make_folder
from ..errors import first_line

__all__ = ["build_kernels", "build_library", "built_libraries", "active", "status", "library_path", "conv_library_path",
           "mindspore_onednn_library", "kernel_isa", "KERNEL_ISAS", "KERNEL_ISA_ENV"]

_LOG = logging.getLogger(__name__)
_SRC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
#: source file -> extra compile flags. gelu.cc and gelu_rows.cc are compiled with -ffast-math so that
#: GCC may vectorise erff/expf via glibc's libmvec; the link step never gets -ffast-math (with it GCC
#: links crtfastmath.o, which would switch the whole process to flush-denormals-to-zero).
_SOURCES = {"layer_norm.cc": [], "gelu.cc": ["-ffast-math"], "max_pool.cc": [], "depthwise_conv.cc": [],
            "bias_add.cc": [], "batch_norm_relu.cc": [], "scale_samples.cc": [], "pool.cc": ["-pthread"]}
#: the convolutions and the fused inference path, built as a library of its own against MindSpore's
#: libdnnl.so.3 (optional)
_CONV_SOURCES = {"conv_onednn.cc": ["-pthread"], "infer_onednn.cc": ["-pthread"], "winograd.cc": ["-pthread"],
                 "gelu_rows.cc": ["-ffast-math"], "pool.cc": ["-pthread"]}
#: the worker pool (``model/csrc/pool.cc``), compiled into both libraries and, on request, into
#: :func:`build_library`'s
_POOL_SOURCE = {"pool.cc": ["-pthread"]}
_BASE_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-fopenmp-simd"]
_LIBRARY_NAME = "convmlp_cpu_kernels.so"
_CONV_LIBRARY_NAME = "convmlp_cpu_conv.so"
#: The subfolder used when the kernel cache root holds things this cache did not make.
_OWN_SUBFOLDER = "convmlp_kernel_cache"

#: ``$CONVMLP_KERNEL_ISA`` value -> g++ target flags (x86-64 micro-architecture levels: v3 is AVX2 +
#: FMA without AVX-512, v4 adds AVX-512); unset or ``native``: the building machine's own.
KERNEL_ISAS = {"native": ["-march=native"], "avx2": ["-march=x86-64-v3"], "avx512": ["-march=x86-64-v4"]}
KERNEL_ISA_ENV = "CONVMLP_KERNEL_ISA"

_lock = threading.Lock()
_library = None          # path of the built .so, once built
_failure = None          # one-line reason when the build failed
_conv_library = None     # path of the built oneDNN convolution .so (optional, see _dnnl_paths)
_conv_failure = None     # one-line reason when that one is missing
_libraries = {}          # build_library: name -> path of the built .so, or None when it failed


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
    return os.environ.get("CONVMLP_KERNEL_CACHE") or cache_dir("kernels")


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


def _onednn():
    """``(dnnl_paths, identity, None)`` for the convolution library (``identity``: what of oneDNN
    goes into the cache key), or ``(None, None, why it cannot be built)``."""
    try:
        dnnl = _dnnl_paths()
        with open(os.path.join(dnnl[0], "oneapi", "dnnl", "dnnl_version.h"), "rb") as f:
            return dnnl, (dnnl, f.read(), os.path.getsize(os.path.join(dnnl[1], "libdnnl.so.3"))), None
    except RuntimeError as exc:
        return None, None, str(exc)


def _compiler():
    """``(compiler, first line of its --version)``: ``$CXX`` or ``g++``. Raises RuntimeError with the
    reason when there is none (or the platform cannot load aot Custom ops)."""
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
    return cxx, version


def kernel_isa() -> str:
    """The instruction set the kernels are built for: ``$CONVMLP_KERNEL_ISA`` (one of
    :data:`KERNEL_ISAS`), default ``native``. RuntimeError for another value."""
    isa = (os.environ.get(KERNEL_ISA_ENV) or "native").strip().lower()
    if isa not in KERNEL_ISAS:
        raise RuntimeError(f"{KERNEL_ISA_ENV}={isa!r} is not one of {', '.join(KERNEL_ISAS)}")
    return isa


def _arch_flags():
    isa = kernel_isa()
    if isa != "native":
        if platform.machine().lower() not in ("x86_64", "amd64"):
            raise RuntimeError(f"{KERNEL_ISA_ENV}={isa} names an x86 target; this machine is {platform.machine()}")
        return list(KERNEL_ISAS[isa])
    return ["-march=native"] if platform.machine().lower() in ("x86_64", "amd64", "aarch64") else []


def _cache_key(version, arch_flags, dnnl_id, more_dirs=()):
    """Name of the cache folder: a hash of every source and header (of ``model/csrc`` and
    `more_dirs`), the compiler's version, the flags, the CPU's feature flags and the oneDNN the
    convolution is built against (`dnnl_id`, or what else identifies the build)."""
    digest = hashlib.sha256()
    for folder in (_SRC_DIR, *more_dirs):
        for name in sorted(os.listdir(folder)):  # every source and header
            if not name.endswith((".cc", ".h")):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    digest.update(repr((version, _BASE_FLAGS, arch_flags, _SOURCES, _CONV_SOURCES, _cpu_flags(), platform.machine(),
                        dnnl_id)).encode())
    return digest.hexdigest()[:20]


def _cache_folder(key, with_conv):
    """The folder for the libraries of cache key `key`: the one that already holds them (both when
    `with_conv`), else the first writable one; an unwritable cache folder (read-only home, ...) falls
    back to the temporary folder. Raises RuntimeError when there is none."""
    roots = [_cache_root(), os.path.join(tempfile.gettempdir(), f"convmlp_mindspore_kernels_{os.getuid()}")]
    for root in roots:
        try:
            folder = os.path.join(cache_root(root, _OWN_SUBFOLDER), key)
            if is_marked(folder) and os.path.isfile(os.path.join(folder, _LIBRARY_NAME)) and (
                    not with_conv or os.path.isfile(os.path.join(folder, _CONV_LIBRARY_NAME))):
                return folder
            folder = make_folder(os.path.dirname(folder), key)
            if is_marked(folder) and os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
    raise RuntimeError(f"no writable folder for the compiled kernels ({roots[0]}; set CONVMLP_KERNEL_CACHE)")


def _compile_object(cxx, arch_flags, source, extra, include, obj, src_dir=_SRC_DIR):
    cmd = [cxx, "-c", *_BASE_FLAGS, *arch_flags, *extra, *include, os.path.join(src_dir, source), "-o", obj]
    try:
        _run(cmd)
    except RuntimeError:
        if arch_flags != KERNEL_ISAS["native"]:
            raise
        _run([a for a in cmd if a not in arch_flags])  # a compiler without -march=native


def _compile_library(cxx, arch_flags, sources, out, include=(), link=(), src_dir=_SRC_DIR, shared=None):
    """Compile `sources` (file in `src_dir` -> extra flags) and `shared` (the same, in
    ``model/csrc``) and link them into the shared library `out`, unless it exists: the objects go to
    a temporary folder beside `out` and the library is moved into place atomically, so a concurrent
    process sees either no library or a whole one."""
    if os.path.isfile(out):
        return
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out), prefix=".build-") as tmp:
        objects = []
        for folder, files in ((src_dir, sources), (_SRC_DIR, shared or {})):
            for name, extra in files.items():
                objects.append(os.path.join(tmp, f"{len(objects)}_{name}.o"))
                _compile_object(cxx, arch_flags, name, extra, include, objects[-1], folder)
        lib = os.path.join(tmp, os.path.basename(out))
        _run([cxx, "-shared", "-o", lib, *objects, "-lm", *link])
        os.replace(lib, out)


def _build():
    """Compile the sources into the cache (atomically: concurrent processes may race). Returns
    ``(library, conv_library or None, why the convolution library is missing or None)``. Raises
    RuntimeError with a one-line reason when the main library cannot be built."""
    cxx, version = _compiler()
    arch_flags = _arch_flags()
    dnnl, dnnl_id, conv_failure = _onednn()
    folder = _cache_folder(_cache_key(version, arch_flags, dnnl_id), with_conv=dnnl is not None)
    target = os.path.join(folder, _LIBRARY_NAME)
    _compile_library(cxx, arch_flags, _SOURCES, target, link=["-pthread"])
    if dnnl is None:
        return target, None, conv_failure
    include, lib_dir = dnnl
    conv_target = os.path.join(folder, _CONV_LIBRARY_NAME)
    try:
        _compile_library(cxx, arch_flags, _CONV_SOURCES, conv_target, include=["-I" + include],
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


def build_library(name: str, src_dir: str, sources: dict, pool: bool = False):
    """A C++ library of another package (e.g. the optimiser's, ``src/train/csrc``), built and cached
    as this package's: `sources` (file in `src_dir` -> extra flags) compiled with ``model/csrc``'s
    shared headers (``common.h``) on the include path (and linked with its worker pool,
    ``pool.cc``, when `pool`: for sources that call ``ParallelRange``), into the kernel cache under a
    key of both folders' sources, the compiler, the flags and the CPU. Path of ``<name>.so``, or None
    when it cannot be built (one ``warning:`` line per process)."""
    with _lock:
        if name not in _libraries:
            try:
                cxx, version = _compiler()
                arch_flags = _arch_flags()
                key = _cache_key(version, arch_flags, (name, sorted(sources.items()), pool), (src_dir,))
                out = os.path.join(_cache_folder(key, with_conv=False), name + ".so")
                _compile_library(cxx, arch_flags, sources, out, include=["-I" + _SRC_DIR], link=["-pthread"],
                                 src_dir=src_dir, shared=_POOL_SOURCE if pool else None)
                _libraries[name] = out
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                _libraries[name] = None
                _LOG.warning("C++ kernel %s unavailable, using MindSpore's ops: %s", name, first_line(exc))
        return _libraries[name]


def built_libraries():
    """Paths of every library built in this process (the kernels', the convolutions', those of
    :func:`build_library`): what a compiled graph that calls them refers to."""
    with _lock:
        paths = [_library, _conv_library] + [_libraries[k] for k in sorted(_libraries)]
    return [p for p in paths if p]


def build_kernels() -> bool:
    """The explicit build step: compile the kernels into the cache unless this process already has
    (or already failed, with one ``warning:`` line). Whether the kernels can run here: the device
    target is the CPU and the library is built."""
    return active()


def conv_library_path():
    """Path of the compiled oneDNN convolution library, or None (see :func:`status`)."""
    return _conv_library if library_path() is not None else None


def active() -> bool:
    """Whether the C++ kernels can run here: CPU target, library built (building it on first call)."""
    if ms.get_context("device_target") != "CPU":
        return False
    return library_path() is not None


def status() -> str:
    """One line for the run log."""
    if ms.get_context("device_target") != "CPU":
        return "off (not the CPU)"
    if library_path() is None:
        return f"unavailable ({_failure})"
    conv = "on" if _conv_library else f"MindSpore's ({_conv_failure})"
    return f"on ({os.path.dirname(_library)}, built for {kernel_isa()}); convolutions: {conv}"
