"""Start-up cost of train.py without and with the compiled-graph cache (src/platform/graph_cache.py).

    python benchmarks/startup.py --repeats 3 -- --demo --epoch_size 1 --max_steps_per_epoch 3
    python benchmarks/startup.py -- --image_size 32 --batch_size 128 --epoch_size 1 \\
        --max_steps_per_epoch 3 --demo --drop_path_rate 0.1

Each repetition runs the train.py command twice with a new, empty cache root
(``CONVMLP_GRAPH_CACHE`` in a temporary folder) and a new run folder each time: ``cold`` (a miss:
compile and save) then ``warm`` (a hit: load). Per run it reports the seconds from starting the
process to the end of the first training step (its progress line; ``--log_interval 1`` is
added), the ``compiled the training step in`` seconds of the log, the wall time of the whole
run (which includes the evaluation and its graph) and the process's peak resident memory
(``ru_maxrss`` of the train.py process). Prints one line per run and the ranges at the end.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_STEP = re.compile(r"epoch 1/\d+ 1/\d+ ")
COMPILED = re.compile(r"compiled the training step in ([0-9.]+)s")
CACHE = re.compile(r"graph cache: (hit|miss|off)")


def run_once(flags, cache_root, save_dir):
    """``{"cache", "first_step_s", "compile_s", "wall_s", "peak_mib"}`` of one train.py run."""
    env = dict(os.environ, CONVMLP_GRAPH_CACHE=cache_root, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.join(REPO, "train.py"), *flags, "--log_interval", "1",
           "--save_checkpoint_path", save_dir]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = {"cache": None, "first_step_s": None, "compile_s": None}
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if out["first_step_s"] is None and FIRST_STEP.search(line):
            out["first_step_s"] = time.time() - t0
        m = COMPILED.search(line) or None
        if m:
            out["compile_s"] = float(m.group(1))
        m = CACHE.search(line)
        if m:
            out["cache"] = m.group(1)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"train.py exited with {proc.returncode}:\n{''.join(lines[-20:])}")
    out["wall_s"] = time.time() - t0
    out["peak_mib"] = usage.ru_maxrss / 1024
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="train.py flags (after --)")
    args = parser.parse_args(argv)
    flags = [f for f in args.flags if f != "--"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        for repeat in range(args.repeats):
            root = os.path.join(tmp, f"graphs{repeat}")
            for kind in ("cold", "warm"):
                r = run_once(flags, root, os.path.join(tmp, f"run{repeat}-{kind}"))
                r["kind"] = kind
                rows.append(r)
                print(f"{kind}: cache {r['cache']}, first step after {r['first_step_s']:.1f} s, compile "
                      f"{r['compile_s']:.1f} s, wall {r['wall_s']:.1f} s, peak RSS {r['peak_mib']:.0f} MiB",
                      flush=True)
    for kind in ("cold", "warm"):
        sel = [r for r in rows if r["kind"] == kind]
        rng = {k: f"{min(r[k] for r in sel):.1f}-{max(r[k] for r in sel):.1f}"
               for k in ("first_step_s", "compile_s", "wall_s", "peak_mib")}
        print(f"{kind} x{len(sel)}: first step {rng['first_step_s']} s | compile {rng['compile_s']} s | "
              f"wall {rng['wall_s']} s | peak RSS {rng['peak_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
