"""Side-by-side speed and memory of the MindSpore ConvMLP and the PyTorch reference model.

For every case (training or inference, image size, batch) the script starts one worker process per
framework, builds the model in it (MindSpore: GRAPH mode, the training step of ``train_step.py``
that ``train.py`` uses; PyTorch: eager, ``model/torch_convmlp.py``, proven equal to the official
model by the parity fixtures), warms both up, then alternates them: MindSpore repetition 1,
PyTorch repetition 1, MindSpore repetition 2 ... so that whatever else runs on the machine slows
both alike. It prints the median images/s of each, the ratio MindSpore/PyTorch, the peak resident
memory of each worker (each framework in its own process, so the figures do not mix), the graph
compile time and the time from process start to the end of the first step.

MindSpore runs with the repository's graph cache (``src/platform/graph_cache.py``, on by default in
train.py and evl.py) in a fresh cache folder per benchmark run: for every case a first MindSpore
process compiles (a miss: the figures of a first run, "cold"), then the timed MindSpore process
loads the compiled graphs (a hit: a second run, "warm"), as a user's runs after the first do.
Both processes' peak memory and time to the first step are reported; ``--graph-cache off``
compiles in the timed process instead (no cold process).

    python benchmarks/bench.py                       # the four standard cases, convmlp_s
    python benchmarks/bench.py --cases train224 --repeats 3 --json bench.json

The last line printed is ``ratios: train32=X train224=X infer32=X infer224=X mem224=X`` where
``mem224`` is MindSpore's peak RSS over PyTorch's in 224 px training (lower is better).
"""
import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (mode, image size, batch)
CASES = {
    "train32": ("train", 32, 128),
    "train224": ("train", 224, 16),
    "infer32": ("infer", 32, 128),
    "infer224": ("infer", 224, 32),
}
TAG = "@@BENCH "


# --------------------------------------------------------------------------------------------
# Workers: one process per framework and case, driven line by line over stdin/stdout.
# --------------------------------------------------------------------------------------------

def _emit(obj):
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _data(size, batch, num_classes, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, num_classes, batch)
    soft = np.full((batch, num_classes), 0.1 / num_classes, np.float32)
    soft[np.arange(batch), labels] += 0.9
    return images, soft


def _open_graph_cache(args):
    """The graph cache folder of this case (``--cache-root``), keyed like train.py's."""
    import logging
    from src.config import load_config
    from src.platform.graph_cache import open_graph_cache
    cfg = load_config(["--arch", args.variant, "--num_classes", "1000", "--batch_size", str(args.batch),
                       "--image_size", str(args.size), "--drop_path_rate", "0.1", "--device_target", "CPU"])
    logging.basicConfig(level=logging.WARNING)
    return open_graph_cache(cfg, f"bench-{args.mode}", logging.getLogger("bench"), "CPU", root=args.cache_root)


def _ms_worker(args, t_start):
    sys.path.insert(0, ROOT)
    import mindspore as ms
    from src.platform.cpu import release_compile_memory, uses_only_conv_kernel
    from src.platform.device import configure_runtime
    from model import create_model
    from src.train.optim import AdamW, param_groups_weight_decay
    from src.train.step import DropPathDraws, build_train_step

    configure_runtime(threads=args.threads, mode="graph", own_convolutions=not uses_only_conv_kernel())
    net = create_model(args.variant, num_classes=1000)
    cache = _open_graph_cache(args) if args.cache_root else None
    images, soft = _data(args.size, args.batch, 1000)
    x, y = ms.Tensor(images), ms.Tensor(soft)
    if args.mode == "train":
        opt = AdamW(param_groups_weight_decay(net.trainable_params(), 0.05), learning_rate=1e-4)
        cell = build_train_step(net, opt)
        inputs = (x, y, *DropPathDraws(net, args.batch, seed=0)(0, 0))   # train.py's step inputs
    else:
        net.set_train(False)
        cell = net
        inputs = (x,)
    t0 = time.perf_counter()
    cell.compile(*inputs)
    compile_s = time.perf_counter() - t0
    if cache is not None:
        cache.commit()
    release_compile_memory()  # see src/platform/cpu.py and RESULTS.md
    out = cell(*inputs)
    out.asnumpy()
    first_step_s = time.perf_counter() - t_start
    first_call_s = time.perf_counter() - t0 - compile_s

    def step():
        cell(*inputs).asnumpy()  # .asnumpy() waits for the step to finish

    return step, {"compile_s": compile_s, "first_step_s": first_step_s, "first_call_s": first_call_s,
                  "graph_cache": cache.state if cache is not None else "off"}


def _pt_worker(args, t_start):
    sys.path.insert(0, ROOT)
    import torch
    import torch.nn.functional as F
    from model.torch_convmlp import torch_convmlp

    torch.set_num_threads(args.threads)
    net = torch_convmlp(args.variant, num_classes=1000)
    images, soft = _data(args.size, args.batch, 1000)
    x, y = torch.from_numpy(images), torch.from_numpy(soft)
    t0 = time.perf_counter()
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
    first_step_s = time.perf_counter() - t_start
    return step, {"compile_s": 0.0, "first_step_s": first_step_s,
                  "first_call_s": time.perf_counter() - t0}


def worker(args):
    # perf_counter-based start: the spawn moment (wall clock, from the driver) mapped onto it.
    t_start = time.perf_counter() - (time.time() - args.spawn_time)
    build = _ms_worker if args.worker == "ms" else _pt_worker
    step, info = build(args, t_start)
    for _ in range(args.warmup):
        step()
    info["rss_after_warmup_mib"] = _peak_rss_mib()
    _emit({"ready": True, **info})
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
            _emit({"steps": n, "seconds": dt, "images_per_s": n * args.batch / dt})
        elif cmd == "quit":
            _emit({"peak_rss_mib": _peak_rss_mib()})
            return


# --------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------

class Worker:
    def __init__(self, fw, mode, size, batch, args):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", fw, "--mode", mode,
               "--size", str(size), "--batch", str(batch), "--variant", args.variant,
               "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--min-time", str(args.min_time)]
        if fw == "ms" and args.cache_root:
            cmd += ["--cache-root", args.cache_root]
        env = dict(os.environ)
        env.setdefault("GLOG_v", "3")  # keep MindSpore's warnings out of the benchmark output
        cmd += ["--spawn-time", repr(time.time())]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None if args.verbose else subprocess.DEVNULL,
                                     text=True, env=env, cwd=ROOT)
        self.fw = fw

    def read(self):
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
            if line.strip():
                sys.stderr.write(f"[{self.fw}] {line}")
        raise RuntimeError(f"{self.fw} worker exited (rc={self.proc.wait()}); "
                           f"rerun with --verbose to see its errors")

    def send(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        out = self.send("quit")
        self.proc.wait()
        return out


def run_case(name, mode, size, batch, args):
    # Start MindSpore first and let it finish compiling alone, then PyTorch: the start-up times
    # are not disturbed by the other framework's start-up.
    res = {"case": name, "mode": mode, "size": size, "batch": batch}
    if args.cache_root:   # a first MindSpore run: compiles and fills this case's cache folder
        cold = Worker("ms", mode, size, batch, args)
        info = cold.read()
        res["ms_cold"] = {"compile_s": info["compile_s"], "first_step_s": info["first_step_s"],
                          "graph_cache": info["graph_cache"], "peak_rss_mib": cold.close()["peak_rss_mib"]}
    workers = {}
    for fw in ("ms", "pt"):
        w = Worker(fw, mode, size, batch, args)
        info = w.read()
        workers[fw] = w
        res[fw] = {"compile_s": info["compile_s"], "first_step_s": info["first_step_s"],
                   "graph_cache": info.get("graph_cache"), "runs": []}
    for _ in range(args.repeats):
        for fw in ("ms", "pt"):
            res[fw]["runs"].append(workers[fw].send("run")["images_per_s"])
    for fw in ("ms", "pt"):
        res[fw]["peak_rss_mib"] = workers[fw].close()["peak_rss_mib"]
        res[fw]["images_per_s"] = statistics.median(res[fw]["runs"])
        res[fw]["best_images_per_s"] = max(res[fw]["runs"])
    res["ratio"] = res["ms"]["images_per_s"] / res["pt"]["images_per_s"]
    res["best_ratio"] = res["ms"]["best_images_per_s"] / res["pt"]["best_images_per_s"]
    res["mem_ratio"] = res["ms"]["peak_rss_mib"] / res["pt"]["peak_rss_mib"]
    return res


def machine():
    import torch
    import mindspore
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "mindspore": mindspore.__version__, "torch": torch.__version__}


def check_counts(p, args, names):
    """--batch, --size, --repeats, --threads in range, and every case's batch within the memory the
    machine has, before a worker starts (one ``error:`` line, exit status 2)."""
    sys.path.insert(0, ROOT)
    from src.config import MAX_IMAGE_SIZE
    from src.platform.bounds import check_batch
    from src.platform.errors import ConfigError
    for flag, value, lo, hi in (("--batch", args.batch, 1, None), ("--size", args.size, 8, MAX_IMAGE_SIZE),
                                ("--repeats", args.repeats, 1, None), ("--threads", args.threads, 1, None)):
        if value is not None and (value < lo or (hi is not None and value > hi)):
            p.error(f"{flag} {value}: expected an integer >= {lo}" + (f" and <= {hi}" if hi else ""))
    for name in names:
        try:
            check_batch("--batch" if args.batch else f"the batch of {name}", args.batch or CASES[name][2],
                        args.size or CASES[name][1])
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="train32,train224,infer32,infer224",
                   help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--variant", default="convmlp_s", choices=["convmlp_s", "convmlp_m", "convmlp_l"])
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--size", type=int, default=None, help="override every case's image size")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per framework")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first one")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="each repetition runs steps until this many seconds have passed")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="intra-op threads of both frameworks (default: all cores)")
    p.add_argument("--graph-cache", choices=["on", "off"], default="on",
                   help="MindSpore: a cold (compiling) run, then the timed run from the graph cache")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    # internal: worker mode
    p.add_argument("--worker", choices=["ms", "pt"], help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["train", "infer"], help=argparse.SUPPRESS)
    p.add_argument("--spawn-time", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--cache-root", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}: expected {', '.join(CASES)}")
    check_counts(p, args, names)
    info = machine()
    if args.graph_cache == "on":
        import tempfile
        args.cache_root = tempfile.mkdtemp(prefix="convmlp_bench_graphs_")
    print(f"machine: {info['cpu']}, {info['cores']} cores; python {info['python']}, "
          f"mindspore {info['mindspore']}, torch {info['torch']}; threads {args.threads}; "
          f"{args.variant}, {args.repeats} repeats x >= {args.min_time:g} s, warm-up {args.warmup}")
    load_before = os.getloadavg()
    results = []
    header = (f"{'case':<9} {'batch':>5} {'MS img/s':>9} {'PT img/s':>9} {'ratio':>6} "
              f"{'MS MiB':>7} {'PT MiB':>7} {'mem':>5} {'MS compile':>10} {'MS 1st':>7} {'PT 1st':>7}"
              + (f" {'cold MiB':>8} {'cold mem':>8} {'cold comp':>9} {'cold 1st':>8}" if args.cache_root else ""))
    print(header)
    for name in names:
        mode, size, batch = CASES[name]
        size = args.size or size
        batch = args.batch or batch
        r = run_case(name, mode, size, batch, args)
        results.append(r)
        print(f"{name:<9} {batch:>5} {r['ms']['images_per_s']:>9.1f} {r['pt']['images_per_s']:>9.1f} "
              f"{r['ratio']:>6.2f} {r['ms']['peak_rss_mib']:>7.0f} {r['pt']['peak_rss_mib']:>7.0f} "
              f"{r['mem_ratio']:>5.2f} {r['ms']['compile_s']:>9.1f}s {r['ms']['first_step_s']:>6.1f}s "
              f"{r['pt']['first_step_s']:>6.1f}s"
              + (f" {r['ms_cold']['peak_rss_mib']:>8.0f} {r['ms_cold']['peak_rss_mib'] / r['pt']['peak_rss_mib']:>8.2f}"
                 f" {r['ms_cold']['compile_s']:>8.1f}s {r['ms_cold']['first_step_s']:>7.1f}s" if args.cache_root else ""),
              flush=True)
        if args.cache_root and (r["ms_cold"]["graph_cache"], r["ms"]["graph_cache"]) != ("miss", "hit"):
            print(f"  note: graph cache {r['ms_cold']['graph_cache']} then {r['ms']['graph_cache']} "
                  "(expected miss then hit)")
    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on "
          f"{info['cores']} cores: the benchmark itself adds about 1; more means other processes shared the CPU")
    info["loadavg_before_after"] = [load_before[0], load_after[0]]
    ratios = {r["case"]: r["ratio"] for r in results}
    mem = {r["case"]: r["mem_ratio"] for r in results}
    if args.json:
        sys.path.insert(0, ROOT)
        from src.platform.fileio import atomic_output
        with atomic_output(args.json) as tmp, open(tmp, "w") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(args).items()
                                                 if k not in ("worker", "mode", "spawn_time")},
                       "results": results}, f, indent=2)
    best = {r["case"]: r["best_ratio"] for r in results}
    print("best-of-repeats ratios (less sensitive to other load): "
          + " ".join(f"{c}={best[c]:.2f}" for c in CASES if c in best))
    fields = [f"{c}={ratios[c]:.2f}" if c in ratios else f"{c}=n/a" for c in CASES]
    fields.append(f"mem224={mem['train224']:.2f}" if "train224" in mem else "mem224=n/a")
    if args.cache_root:
        shutil.rmtree(args.cache_root, ignore_errors=True)
        print("MindSpore columns: the timed run, loading its graphs from the graph cache (a second run); "
              "cold: the first run, which compiled them")
    print("ratios: " + " ".join(fields))


if __name__ == "__main__":
    main()
