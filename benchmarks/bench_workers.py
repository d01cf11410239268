"""The worker processes of ``bench.py``: one per framework and case, driven line by line over
stdin/stdout (``run`` -> one timed repetition, ``quit`` -> peak memory), and the one-shot exporter
that writes the case's ONNX and MINDIR files for the ONNX Runtime and MINDIR workers.

* ``ms``: MindSpore, GRAPH mode, ``configure_runtime()`` and the training step of
  ``src/train/step.py`` (what ``train.py`` runs) or the model in evaluation mode, with the graph
  cache when ``--cache-root`` is given.
* ``pt``: the PyTorch reference (``model/torch_convmlp.py``), eager; ``torch.inference_mode()``.
* ``ort``: ONNX Runtime (CPU) on the repository's ONNX export of the MindSpore model's weights
  (``src/convert/onnx_file.py``), the same intra-op threads.
* ``mindir``: the MINDIR that ``export.py`` writes (the model built with the C++ kernels off), run
  through ``nn.GraphCell``.

Each worker reports the instruction set its libraries run with, read back from them (oneDNN's
``dnnl_get_effective_cpu_isa`` for MindSpore's, the verbose header of PyTorch's oneDNN,
``torch.backends.cpu.get_cpu_capability()``).
"""
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "@@BENCH "
SEED = 0   # the MindSpore model's weights: the same in the ms worker and in the exported files


def emit(obj):
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def peak_rss_mib():
    """This process's peak resident memory: ``VmHWM`` (its own address space's high-water mark;
    ``ru_maxrss`` keeps the parent's figure across exec, so a worker would report at least the
    driver's size), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def case_data(size, batch, num_classes, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, num_classes, batch)
    soft = np.full((batch, num_classes), 0.1 / num_classes, np.float32)
    soft[np.arange(batch), labels] += 0.9
    return images, soft


def deploy_paths(args):
    """The case's exported files: ``{"onnx": ..., "mindir": ...}`` in ``--export-dir``."""
    stem = os.path.join(args.export_dir, f"{args.variant}_{args.size}px_b{args.batch}")
    return {"onnx": stem + ".onnx", "mindir": stem + ".mindir"}


def _open_graph_cache(args):
    """The graph cache folder of this case (``--cache-root``), keyed like train.py's."""
    import logging
    from src.config import load_config
    from src.platform.graph_cache import open_graph_cache
    cfg = load_config(["--arch", args.variant, "--num_classes", "1000", "--batch_size", str(args.batch),
                       "--image_size", str(args.size), "--drop_path_rate", "0.1", "--device_target", "CPU"])
    logging.basicConfig(level=logging.WARNING)
    return open_graph_cache(cfg, f"bench-{args.mode}", logging.getLogger("bench"), "CPU", root=args.cache_root)


def _ms_isa():
    from model import cpu_kernels
    from src.platform.cpu import effective_onednn_isa, onednn_isa
    kernels = f"C++ kernels built for {cpu_kernels.kernel_isa()}" if cpu_kernels.active() else "C++ kernels off"
    return f"oneDNN {effective_onednn_isa()} (cap: {onednn_isa()}); {kernels}"


def ms_worker(args, t_start):
    import mindspore as ms
    from src.platform.cpu import release_compile_memory, uses_only_conv_kernel
    from src.platform.device import configure_runtime
    from model import create_model
    from model.cpu_kernels import apply_cpu_kernels, fuse_for_inference
    from src.train.optim import AdamW, param_groups_weight_decay
    from src.train.step import DropPathDraws, build_train_step

    configure_runtime(threads=args.threads, mode="graph", own_convolutions=not uses_only_conv_kernel())
    ms.set_seed(SEED)
    net = apply_cpu_kernels(create_model(args.variant, num_classes=1000))   # as train.py / evl.py
    cache = _open_graph_cache(args) if args.cache_root else None
    images, soft = case_data(args.size, args.batch, 1000)
    x, y = ms.Tensor(images), ms.Tensor(soft)
    if args.mode == "train":
        opt = AdamW(param_groups_weight_decay(net.trainable_params(), 0.05), learning_rate=1e-4)
        cell = build_train_step(net, opt)
        inputs = (x, y, *DropPathDraws(net, args.batch, seed=0)(0, 0))   # train.py's step inputs
    else:
        cell = fuse_for_inference(net)   # what evl.py / infer.py run
        inputs = (x,)
    t0 = time.perf_counter()
    cell.compile(*inputs)
    compile_s = time.perf_counter() - t0
    if cache is not None:
        cache.commit()
    release_compile_memory()  # see src/platform/cpu.py and RESULTS.md
    cell(*inputs).asnumpy()
    first_step_s = time.perf_counter() - t_start

    def step():
        cell(*inputs).asnumpy()  # .asnumpy() waits for the step to finish

    return step, {"compile_s": compile_s, "first_step_s": first_step_s, "isa": _ms_isa(),
                  "graph_cache": cache.state if cache is not None else "off"}


def _torch_onednn_isa(torch):
    """The ISA line PyTorch's oneDNN prints in its verbose header and the implementation it picks
    for a small convolution (captured from fd 1 around that convolution), e.g. ``Intel AVX2
    (convolution: jit:avx2)``."""
    import ctypes
    import tempfile
    with tempfile.TemporaryFile(mode="w+") as tmp:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(tmp.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), torch.no_grad():
                torch.nn.functional.conv2d(torch.ones(2, 16, 16, 16), torch.ones(32, 16, 3, 3), padding=1)
            ctypes.CDLL(None).fflush(None)   # oneDNN prints through C stdio
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        isa, impl = "unknown (no oneDNN verbose header)", "?"
        for line in tmp:
            if ",isa:" in line:
                isa = line.split(",isa:", 1)[1].strip()
            elif ",convolution," in line:
                impl = line.split(",convolution,", 1)[1].split(",", 1)[0]
    return f"{isa} (convolution: {impl})"


def pt_isa(torch):
    return (f"ATen {torch.backends.cpu.get_cpu_capability()}; oneDNN {_torch_onednn_isa(torch)}"
            + (f"; MKL_ENABLE_INSTRUCTIONS={os.environ['MKL_ENABLE_INSTRUCTIONS']}"
               if os.environ.get("MKL_ENABLE_INSTRUCTIONS") else ""))


def pt_worker(args, t_start):
    import torch
    import torch.nn.functional as F
    from model.torch_convmlp import torch_convmlp

    torch.set_num_threads(args.threads)
    isa = pt_isa(torch)
    net = torch_convmlp(args.variant, num_classes=1000)
    images, soft = case_data(args.size, args.batch, 1000)
    x, y = torch.from_numpy(images), torch.from_numpy(soft)
    if args.mode == "train":
        net.train()
        params = list(net.parameters())
        opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.05},
                                 {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                                lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            logits = net(x).float()
            loss = -(y * F.log_softmax(logits, dim=-1)).sum(-1).mean()
            loss.backward()
            opt.step()
            loss.item()
    else:
        net.eval()

        def step():
            with torch.inference_mode():
                net(x)
    step()
    return step, {"compile_s": 0.0, "first_step_s": time.perf_counter() - t_start, "isa": isa}


def ort_isa():
    import onnxruntime as ort
    return f"onnxruntime {ort.__version__}: MLAS picks its kernels from CPUID (no cap)"


def ort_worker(args, t_start):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    t0 = time.perf_counter()
    session = ort.InferenceSession(deploy_paths(args)["onnx"], options, providers=["CPUExecutionProvider"])
    compile_s = time.perf_counter() - t0
    feed = {session.get_inputs()[0].name: case_data(args.size, args.batch, 1000)[0]}

    def step():
        session.run(None, feed)
    step()
    return step, {"compile_s": compile_s, "first_step_s": time.perf_counter() - t_start, "isa": ort_isa()}


def mindir_isa():
    from src.platform.cpu import effective_onednn_isa, onednn_isa
    return f"oneDNN {effective_onednn_isa()} (cap: {onednn_isa()}); no C++ kernels (a portable file)"


def mindir_worker(args, t_start):
    import mindspore as ms
    from mindspore import nn
    from src.platform.device import configure_runtime
    configure_runtime(threads=args.threads, mode="graph", own_convolutions=True)  # MindSpore's own convs
    t0 = time.perf_counter()
    graph = nn.GraphCell(ms.load(deploy_paths(args)["mindir"]))
    x = ms.Tensor(case_data(args.size, args.batch, 1000)[0])
    graph(x).asnumpy()
    compile_s = time.perf_counter() - t0

    def step():
        graph(x).asnumpy()
    return step, {"compile_s": compile_s, "first_step_s": time.perf_counter() - t_start, "isa": mindir_isa()}


def export_files(args):
    """Write the case's ONNX file (``src.convert.onnx_file``: the weights through the PyTorch
    reference) and MINDIR (``mindspore.export`` of the model built with the C++ kernels off, as
    export.py does) for the MindSpore model of seed :data:`SEED`, static batch."""
    import mindspore as ms
    from model import create_model
    from src.convert.onnx_file import torch_reference, write_onnx
    from src.platform.device import configure_runtime
    configure_runtime(threads=args.threads, mode="graph", own_convolutions=True)
    ms.set_seed(SEED)
    net = create_model(args.variant, num_classes=1000)
    net.set_train(False)
    os.makedirs(args.export_dir, exist_ok=True)
    paths = deploy_paths(args)
    shape = (args.batch, 3, args.size, args.size)
    write_onnx(torch_reference({p.name: p.asnumpy() for p in net.get_parameters()}), shape, paths["onnx"])
    ms.export(net, ms.Tensor(case_data(args.size, args.batch, 1000)[0]), file_name=paths["mindir"][:-7],
              file_format="MINDIR")
    emit({"exported": paths})


WORKERS = {"ms": ms_worker, "pt": pt_worker, "ort": ort_worker, "mindir": mindir_worker}


def isa_probe(fw, args):
    """What a framework's worker reports as its instruction set, without building a model (for the
    header, before the first case)."""
    if fw == "pt":
        import torch
        return pt_isa(torch)
    if fw == "ort":
        return ort_isa()
    from src.platform.cpu import uses_only_conv_kernel
    from src.platform.device import configure_runtime
    configure_runtime(threads=args.threads, mode="graph",
                      own_convolutions=fw == "mindir" or not uses_only_conv_kernel())
    return _ms_isa() if fw == "ms" else mindir_isa()


def worker(args):
    """The worker loop: build, warm up, report ``ready``, then serve ``run`` / ``quit``."""
    sys.path.insert(0, ROOT)
    if args.worker == "export":
        return export_files(args)
    if args.mode == "isa":
        return emit({"isa": isa_probe(args.worker, args)})
    # perf_counter-based start: the spawn moment (wall clock, from the driver) mapped onto it.
    t_start = time.perf_counter() - (time.time() - args.spawn_time)
    step, info = WORKERS[args.worker](args, t_start)
    for _ in range(args.warmup):
        step()
    info["rss_after_warmup_mib"] = peak_rss_mib()
    emit({"ready": True, **info})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            n, t0 = 0, time.perf_counter()
            while True:
                step()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= args.min_time:
                    break
            emit({"steps": n, "seconds": dt, "images_per_s": n * args.batch / dt})
        elif cmd == "quit":
            emit({"peak_rss_mib": peak_rss_mib()})
            return
