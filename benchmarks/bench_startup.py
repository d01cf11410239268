"""Start-up cost on large image trees: the listing, the image check and its kept results
(src/data/checked.py), the compact file lists.

    python benchmarks/bench_startup.py                       # N = 1,000 and 200,000
    python benchmarks/bench_startup.py --sizes 1000 20000 --no-train

For each N it makes a tree of N small JPEG files in 10 class folders under a temporary folder (a
few real JPEG files of 48 x 40 px, hard-linked under distinct names: what the listing, the check
and the cache see is N files; the decoding of training reads the same few bytes), with a new empty
image-check cache root per command, and runs each command twice, as a user starts it again:

* ``dataset.py check --path TREE``: to its end;
* ``train.py`` on the tree (``--val_data_path`` a separate 200-image tree, ``--epoch_size 1
  --max_steps_per_epoch 1 --log_interval 1``, tiny topology, 32 px): up to its first training step
  (its first progress line); then it is stopped.

Per run: seconds from the start of the process to the end of the command (check) or to the first
step (train), the CPU seconds (user + system) of the process over the same span (less sensitive to
other load on the machine than the wall time), and the peak resident memory of the process
(``VmHWM``; train.py's main process, read when the first step is logged). The first start checks
every image and compiles the graphs; the second finds the check kept (and the graphs cached). The
trees are deleted at the end.
"""
import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_STEP = re.compile(r"epoch 1/\d+ 1/\d+ ")
TINY = ["--blocks", "1,1,1", "--dims", "32,64,128", "--mlp_ratios", "2,2,2", "--channels", "16",
        "--n_conv_blocks", "1"]


def make_tree(root, n, classes=10, distinct=4):
    """`n` JPEG files ``root/class_<c>/img_<i>.JPEG`` (hard links to `distinct` real files)."""
    from PIL import Image
    import numpy as np
    os.makedirs(root)
    rng = np.random.default_rng(0)
    sources = []
    for k in range(distinct):
        path = os.path.join(root, f".source{k}.jpg")
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        sources.append(path)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class_{c}"))
    for i in range(n):
        os.link(sources[i % distinct], os.path.join(root, f"class_{i % classes}", f"img_{i}.JPEG"))
    for path in sources:
        os.remove(path)


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far (its own, not its children's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(cmd, env, until=None, repo=REPO):
    """``(seconds, CPU seconds, peak MiB)`` of `cmd`: to its end, or to the first line matching `until`
    (then it is stopped)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, seconds, cpu, peak = [], None, None, None
    for line in proc.stdout:
        lines.append(line)
        if until is not None and until.search(line):
            seconds, cpu, peak = time.time() - t0, cpu_seconds(proc.pid), vm_hwm(proc.pid)
            proc.terminate()
            break
    if seconds is None:
        _, status, usage = os.wait4(proc.pid, 0)
        seconds, peak = time.time() - t0, usage.ru_maxrss / 1024
        cpu = usage.ru_utime + usage.ru_stime
        if os.waitstatus_to_exitcode(status) != 0 or until is not None:
            raise SystemExit(f"{' '.join(cmd[1:3])} failed:\n{''.join(lines[-20:])}")
    else:
        proc.stdout.close()
        proc.wait()
    return seconds, cpu, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 200000])
    parser.add_argument("--no-train", action="store_true", help="measure dataset.py check only")
    parser.add_argument("--tmp", default=None, help="where to make the trees (default: the system's temp folder)")
    parser.add_argument("--repo", default=REPO, help="the checkout whose dataset.py and train.py run (default: this "
                        "one; another commit's checkout gives the figures before a change)")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench-startup-", dir=args.tmp)
    try:
        val = os.path.join(tmp, "val")
        make_tree(val, 200)
        for n in args.sizes:
            tree = os.path.join(tmp, f"tree{n}")
            t0 = time.time()
            make_tree(tree, n)
            print(f"N = {n}: tree made in {time.time() - t0:.1f} s", flush=True)
            commands = [("dataset.py check", lambda start: [sys.executable, "dataset.py", "check", "--path", tree],
                         None)]
            if not args.no_train:
                commands.append(("train.py to step 1", lambda start: [
                    sys.executable, "train.py", *TINY, "--dataset_choose", "imagefolder", "--train_data_path", tree,
                    "--val_data_path", val, "--image_size", "32", "--batch_size", "16", "--epoch_size", "1",
                    "--max_steps_per_epoch", "1", "--log_interval", "1", "--num_parallel_workers", "2",
                    "--drop_path_rate", "0", "--save_checkpoint_path", os.path.join(tmp, f"run{n}-{start}")],
                    FIRST_STEP))
            for k, (name, cmd, until) in enumerate(commands):     # each command's first start checks the tree
                env = dict(os.environ, PYTHONUNBUFFERED="1", CONVMLP_IMAGE_CACHE=os.path.join(tmp, f"checks{n}-{k}"),
                           CONVMLP_GRAPH_CACHE=os.path.join(tmp, f"graphs{n}"))
                for start in ("first", "second"):
                    seconds, cpu, peak = run(cmd(start), env, until, args.repo)
                    print(f"N = {n:>7}: {name:<18} {start:<6} start {seconds:6.1f} s (CPU {cpu:6.1f} s), "
                          f"VmHWM {peak:5.0f} MiB", flush=True)
            shutil.rmtree(tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
