"""Side-by-side speed and memory of the MindSpore ConvMLP, the PyTorch reference model and, for
inference, ONNX Runtime and the exported MINDIR.

For every case (training or inference, image size, batch) the script starts one worker process per
framework (``bench_workers.py``): MindSpore (GRAPH mode, the training step of ``src/train/step.py``
that ``train.py`` uses, or the model in evaluation mode), PyTorch (eager, ``model/torch_convmlp.py``,
proven equal to the official model by the parity fixtures) and, for inference, ONNX Runtime on the
repository's ONNX export of the same weights and the MINDIR that ``export.py`` writes, run through
``nn.GraphCell``. It warms them up, then alternates them: MindSpore repetition 1, PyTorch repetition
1, ... so that whatever else runs on the machine slows all alike. It prints the median images/s of
each, the ratios MindSpore/PyTorch and MindSpore/ONNX Runtime, the peak resident memory of each
worker, the graph compile time and the time from process start to the end of the first step.

MindSpore runs with the repository's graph cache (``src/platform/graph_cache.py``, on by default in
train.py and evl.py) in a fresh cache folder per benchmark run: for every case a first MindSpore
process compiles (a miss: the figures of a first run, "cold"), then the timed MindSpore process
loads the compiled graphs (a hit: a second run, "warm"). ``--graph-cache off`` compiles in the timed
process instead (no cold process).

``--isa avx2`` caps both frameworks at AVX2, so that an AVX-512 machine measures what an AVX2-only
CPU gets: MindSpore's oneDNN (``ONEDNN_MAX_CPU_ISA``) and the C++ kernels' build target
(``CONVMLP_KERNEL_ISA``), PyTorch's oneDNN, ATen kernels (``ATEN_CPU_CAPABILITY``) and MKL
(``MKL_ENABLE_INSTRUCTIONS``). ONNX Runtime has no such switch. The header prints the ISA each
framework reports at run time.

    python benchmarks/bench.py                       # the four standard cases, convmlp_s
    python benchmarks/bench.py --isa avx2            # the same, capped at AVX2
    python benchmarks/bench.py --cases train224 --repeats 3 --json bench.json

The last lines printed are ``ms/ort: infer32=X infer224=X`` (MindSpore over ONNX Runtime) and
``ratios: train32=X train224=X infer32=X infer224=X mem224=X`` where ``mem224`` is MindSpore's
peak RSS over PyTorch's in 224 px training (lower is better).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench_workers import TAG, worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (mode, image size, batch)
CASES = {
    "train32": ("train", 32, 128),
    "train224": ("train", 224, 16),
    "infer32": ("infer", 32, 128),
    "infer224": ("infer", 224, 32),
}
#: cases timed over more repetitions than ``--repeats`` (this factor times it), with their spread
#: printed: 32 px training moves most between quiet runs (steps of ~0.2 s, where a few ms of
#: scheduling weigh)
REPEAT_FACTOR = {"train32": 3}
#: the frameworks each mode compares, in the order they alternate
FRAMEWORKS = {"train": ("ms", "pt"), "infer": ("ms", "pt", "ort", "mindir")}
NAMES = {"ms": "MindSpore", "pt": "PyTorch", "ort": "ONNX Runtime", "mindir": "MINDIR (nn.GraphCell)"}
#: --isa -> framework -> environment of its worker
ISA_ENV = {
    "native": {},
    "avx2": {"ms": {"ONEDNN_MAX_CPU_ISA": "AVX2", "CONVMLP_KERNEL_ISA": "avx2"},
             "mindir": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
             "pt": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}},
}


# --------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------

class Worker:
    """A worker process of ``bench_workers.py`` for one framework and case."""

    def __init__(self, fw, mode, size, batch, args):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", fw, "--mode", mode,
               "--size", str(size), "--batch", str(batch), "--variant", args.variant,
               "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--min-time", str(args.min_time), "--export-dir", args.export_dir]
        if fw == "ms" and args.cache_root:
            cmd += ["--cache-root", args.cache_root]
        env = dict(os.environ, **ISA_ENV[args.isa].get(fw, {}))
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
    """One case: (inference) the exported files, (graph cache) the cold MindSpore run, then every
    framework's worker, started one after the other so that start-up times are not disturbed by
    another framework's start-up, and the alternating repetitions."""
    res = {"case": name, "mode": mode, "size": size, "batch": batch}
    fws = FRAMEWORKS[mode]
    if "ort" in fws or "mindir" in fws:
        exporter = Worker("export", mode, size, batch, args)
        exporter.read()
        exporter.proc.wait()
    if args.cache_root:   # a first MindSpore run: compiles and fills this case's cache folder
        cold = Worker("ms", mode, size, batch, args)
        info = cold.read()
        res["ms_cold"] = {"compile_s": info["compile_s"], "first_step_s": info["first_step_s"],
                          "graph_cache": info["graph_cache"], "peak_rss_mib": cold.close()["peak_rss_mib"]}
    workers = {}
    for fw in fws:
        workers[fw] = Worker(fw, mode, size, batch, args)
        info = workers[fw].read()
        res[fw] = {"compile_s": info["compile_s"], "first_step_s": info["first_step_s"], "isa": info["isa"],
                   "graph_cache": info.get("graph_cache"), "runs": []}
    for _ in range(args.repeats * REPEAT_FACTOR.get(name, 1)):
        for fw in fws:
            res[fw]["runs"].append(workers[fw].send("run")["images_per_s"])
    for fw in fws:
        res[fw]["peak_rss_mib"] = workers[fw].close()["peak_rss_mib"]
        res[fw]["images_per_s"] = statistics.median(res[fw]["runs"])
        res[fw]["best_images_per_s"] = max(res[fw]["runs"])
    res["ratio"] = res["ms"]["images_per_s"] / res["pt"]["images_per_s"]
    res["best_ratio"] = res["ms"]["best_images_per_s"] / res["pt"]["best_images_per_s"]
    res["mem_ratio"] = res["ms"]["peak_rss_mib"] / res["pt"]["peak_rss_mib"]
    res["pair_ratios"] = [m / p for m, p in zip(res["ms"]["runs"], res["pt"]["runs"])]
    if "ort" in fws:
        res["ort_ratio"] = res["ms"]["images_per_s"] / res["ort"]["images_per_s"]
    return res


def machine():
    """The CPU, cores and versions (read from the packages' metadata: the driver imports no
    framework)."""
    from importlib.metadata import version
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
            "mindspore": version("mindspore"), "torch": version("torch"), "onnxruntime": version("onnxruntime")}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="train32,train224,infer32,infer224",
                   help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--variant", default="convmlp_s", choices=["convmlp_s", "convmlp_m", "convmlp_l"])
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--size", type=int, default=None, help="override every case's image size")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed repetitions per framework (train32: three times as many, its spread printed)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first one")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="each repetition runs steps until this many seconds have passed")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="intra-op threads of every framework (default: all cores)")
    p.add_argument("--isa", choices=sorted(ISA_ENV), default="native",
                   help="avx2: cap MindSpore and PyTorch at AVX2 (what an AVX2-only CPU runs)")
    p.add_argument("--graph-cache", choices=["on", "off"], default="on",
                   help="MindSpore: a cold (compiling) run, then the timed run from the graph cache")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    # internal: worker mode
    p.add_argument("--worker", choices=["ms", "pt", "ort", "mindir", "export"], help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["train", "infer", "isa"], help=argparse.SUPPRESS)
    p.add_argument("--spawn-time", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--cache-root", default=None, help=argparse.SUPPRESS)
    p.add_argument("--export-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}: expected {', '.join(CASES)}")
    if args.worker is None:
        check_counts(p, args, names)
    return args, names


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


def row(name, batch, r, cold):
    """One line of the table."""
    ort, mindir = r.get("ort"), r.get("mindir")
    text = (f"{name:<9} {batch:>5} {r['ms']['images_per_s']:>9.1f} {r['pt']['images_per_s']:>9.1f} "
            f"{r['ratio']:>6.2f} "
            + (f"{ort['images_per_s']:>9.1f} {r['ort_ratio']:>6.2f} {mindir['images_per_s']:>9.1f} " if ort
               else f"{'-':>9} {'-':>6} {'-':>9} ")
            + f"{r['ms']['peak_rss_mib']:>7.0f} {r['pt']['peak_rss_mib']:>7.0f} {r['mem_ratio']:>5.2f} "
            + (f"{ort['peak_rss_mib']:>7.0f} " if ort else f"{'-':>7} ")
            + f"{r['ms']['compile_s']:>9.1f}s {r['ms']['first_step_s']:>6.1f}s {r['pt']['first_step_s']:>6.1f}s")
    if cold:
        c = r["ms_cold"]
        text += (f" {c['peak_rss_mib']:>8.0f} {c['peak_rss_mib'] / r['pt']['peak_rss_mib']:>8.2f}"
                 f" {c['compile_s']:>8.1f}s {c['first_step_s']:>7.1f}s")
    return text


def spread(name, r):
    """The spread of a case's repetitions: each framework's range of images/s and the range and
    quartiles of the ratios of the repetitions run side by side."""
    pairs = sorted(r["pair_ratios"])
    q1, _, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else (pairs[0],) * 3
    runs = {fw: r[fw]["runs"] for fw in ("ms", "pt")}
    return (f"  {name} spread over {len(pairs)} repetitions: MindSpore {min(runs['ms']):.1f}-{max(runs['ms']):.1f} "
            f"img/s, PyTorch {min(runs['pt']):.1f}-{max(runs['pt']):.1f}; ratio of each pair {pairs[0]:.2f}-"
            f"{pairs[-1]:.2f} (quartiles {q1:.2f}-{q3:.2f})")


def probe_isa(names, args):
    """``{framework: ISA it reports}`` for the frameworks of the cases, each from a short process
    with that framework's worker environment (no model built)."""
    fws = [fw for fw in NAMES if any(fw in FRAMEWORKS[CASES[c][0]] for c in names)]
    found = {}
    for fw in fws:
        probe = Worker(fw, "isa", 0, 0, args)
        found[fw] = probe.read()["isa"]
        probe.proc.wait()
    return found


def print_isa(found, isa):
    print(f"instruction set (--isa {isa}), as each framework reports it:")
    for fw, text in found.items():
        print(f"  {NAMES[fw]}: {text}")


def main(argv=None):
    args, names = parse_args(argv)
    if args.worker:
        return worker(args)
    info = machine()
    workdir = tempfile.mkdtemp(prefix="convmlp_bench_")
    args.export_dir = os.path.join(workdir, "exported")
    args.cache_root = os.path.join(workdir, "graphs") if args.graph_cache == "on" else None
    print(f"machine: {info['cpu']}, {info['cores']} cores; python {info['python']}, "
          f"mindspore {info['mindspore']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}; "
          f"threads {args.threads}; --isa {args.isa}; "
          f"{args.variant}, {args.repeats} repeats x >= {args.min_time:g} s"
          + "".join(f" ({c}: {args.repeats * k})" for c, k in REPEAT_FACTOR.items() if c in names)
          + f", warm-up {args.warmup}", flush=True)
    load_before = os.getloadavg()
    cold = args.cache_root is not None
    header = (f"{'case':<9} {'batch':>5} {'MS img/s':>9} {'PT img/s':>9} {'ms/pt':>6} {'ORT img/s':>9} "
              f"{'ms/ort':>6} {'MINDIR/s':>9} {'MS MiB':>7} {'PT MiB':>7} {'mem':>5} {'ORT MiB':>7} "
              f"{'MS compile':>10} {'MS 1st':>7} {'PT 1st':>7}"
              + (f" {'cold MiB':>8} {'cold mem':>8} {'cold comp':>9} {'cold 1st':>8}" if cold else ""))
    results = []
    try:
        info["isa"] = probe_isa(names, args)
        print_isa(info["isa"], args.isa)
        print(header, flush=True)
        for name in names:
            mode, size, batch = CASES[name]
            size, batch = args.size or size, args.batch or batch
            results.append(run_case(name, mode, size, batch, args))
            print(row(name, batch, results[-1], cold), flush=True)
            r = results[-1]
            if REPEAT_FACTOR.get(name, 1) > 1:
                print(spread(name, r), flush=True)
            if cold and (r["ms_cold"]["graph_cache"], r["ms"]["graph_cache"]) != ("miss", "hit"):
                print(f"  note: graph cache {r['ms_cold']['graph_cache']} then {r['ms']['graph_cache']} "
                      "(expected miss then hit)")
            changed = [fw for fw in FRAMEWORKS[mode] if r[fw]["isa"] != info["isa"][fw]]
            if changed:
                print("  note: the workers reported another ISA: "
                      + "; ".join(f"{NAMES[fw]}: {r[fw]['isa']}" for fw in changed))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary(results, info, args, load_before)


def summary(results, info, args, load_before):
    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on "
          f"{info['cores']} cores: the benchmark itself adds about 1; more means other processes shared the CPU")
    info["loadavg_before_after"] = [load_before[0], load_after[0]]
    if args.json:
        sys.path.insert(0, ROOT)
        from src.platform.fileio import atomic_output
        with atomic_output(args.json) as tmp, open(tmp, "w") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(args).items()
                                                 if k not in ("worker", "mode", "spawn_time", "export_dir")},
                       "results": results}, f, indent=2)
    ratios = {r["case"]: r["ratio"] for r in results}
    best = {r["case"]: r["best_ratio"] for r in results}
    mem = {r["case"]: r["mem_ratio"] for r in results}
    print("best-of-repeats ratios (less sensitive to other load): "
          + " ".join(f"{c}={best[c]:.2f}" for c in CASES if c in best))
    if args.cache_root:
        print("MindSpore columns: the timed run, loading its graphs from the graph cache (a second run); "
              "cold: the first run, which compiled them")
    ort = {r["case"]: r["ort_ratio"] for r in results if "ort_ratio" in r}
    if ort:
        print("ms/ort: " + " ".join(f"{c}={v:.2f}" for c, v in ort.items()))
    fields = [f"{c}={ratios[c]:.2f}" if c in ratios else f"{c}=n/a" for c in CASES]
    fields.append(f"mem224={mem['train224']:.2f}" if "train224" in mem else "mem224=n/a")
    print("ratios: " + " ".join(fields))


if __name__ == "__main__":
    main()
