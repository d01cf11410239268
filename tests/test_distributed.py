"""Data-parallel training under msrun on the CPU (MindSpore's ``mccl`` backend), end to end.

``test_two_workers_*`` launches ``msrun --worker_num=2 --local_worker_num=2 --join=True train.py
--is_distributed true`` on generated CIFAR-10 data (512 train / 200 val records, 4 epochs of 8 steps
at 32 images per device) with the training recipe of config.yaml on (:data:`RECIPE`: stochastic
depth, RandomResizedCrop, flip, RandAugment, random erasing, label smoothing, mixup/cutmix) and the
weights' EMA, on a small topology with two blocks per stage, and checks:

* the log says rank 0 / world size 2 and the global batch of 64;
* both ranks end with bit-identical parameters, BatchNorm moving statistics and EMA weights
  included (train.py writes them through the test plugin's ``CONVMLP_TEST_DUMP_WEIGHTS``,
  tests/plugins);
* those equal a single-process computation over the same global batches (tolerance below), with
  the C++ CPU kernels on (the default) and, in a second job, off (``--cpu_kernels false``);
* only rank 0 wrote files: one checkpoint set, one ``train.log`` without other ranks' lines;
* ``evl.py`` on the checkpoint (one process, the whole val split) reports the validation top-1 that
  the two ranks logged from their summed shard counts, and it is above chance by a margin.

How the single-process reference is made equal, and why it is not plain ``python train.py
--batch_size 64``:

* Data and random draws. Every random draw of a rank is a function of the seed, its rank, the
  epoch and the step: its shard of the shuffle (MindSpore's distributed sampler), its per-image
  augmentation, its batch mixer's erasing and mixup/cutmix draws (seeded per shard) and its drop-path
  factors (``DropPathDraws``, seeded per rank). The reference builds each rank's pipeline with the
  very call the rank makes (``create_dataset(epoch_config(cfg, epoch), "train", num_shards=2,
  shard_id=rank)``) and draws each rank's drop-path factors, so rank r's batch of step s is the one
  rank r trained on. A plain single-process train.py draws other numbers (one shard, one mixer, one
  set of factors per batch of 64). That the shards of an epoch are disjoint and cover the records
  is checked on its own, in process, by tests/test_data_parallel_shards.py.
* BatchNorm. In training each rank normalises with the statistics of its own 32 images (as
  PyTorch DDP without SyncBatchNorm does), so one process with batch 64 computes other gradients:
  its weights differ from the 2-rank run by about the size of the updates themselves (measured:
  max |diff| ~0.01 after 16 steps at lr 1e-3), which makes that comparison meaningless.

The reference (:func:`reference_run`, run in its own process: helpers.data_parallel_reference)
therefore does in one process what the two ranks do: for each step it takes the gradient of each
rank's batch with that rank's drop-path factors (BatchNorm statistics per batch), averages them
(DistributedGradReducer's mean), makes one AdamW step with train.py's optimiser and schedule and
then the EMA update; the BatchNorm moving statistics (of the network and of the EMA) are the mean
of the ranks' updates, which equals train.py's epoch-end average because the moving average and
the EMA are linear. Tolerance: ``atol=1e-5, rtol=1e-5`` for the weights and for the EMA weights
(the ring AllReduce and the separate graphs sum in another order; measured max |diff| 2.4e-7 for
the weights and 3.6e-7 for the EMA with the kernels on, 4.8e-7 for both with them off, where the
weights moved by up to 4.1 and the EMA by up to 3.6). The comparison is tight enough to see each
rank's draws: a reference that gave both ranks rank 0's drop-path factors ends 0.16 away, one that
seeded both ranks' batch mixers as shard 0 ends 0.25 away.

The EMA is off in the CIFAR recipe (``model_ema: null``); the jobs switch it on with decay 0.9
instead of the recipe's 0.9998, so that over 32 steps the averages move about as far as the
weights and their comparison is not one of two nearly initial states.

``test_a_dead_rank_ends_the_job`` kills one worker of a running job and checks that the other
ends with a clear one-line error and a non-zero exit status, in the epoch where its peer died.

The jobs are background jobs (``helpers.background``): they start with the test session, while
other files' tests run, and the tests here read what they left.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import (DP_TOPOLOGY, MSRUN, MSRUN_MARKS, NO_AUG, REPO, TINY_TOPOLOGY, VENV_BIN,
                     assert_data_parallel_equal, assert_default_recipe, background, free_port, generated,
                     plugin_env)
from src.checkpoint.checkpoint import EMA_PREFIX

TRAIN = os.path.join(REPO, "train.py")   # run from a temporary folder: MindSpore may write rank_*/ there
N_TRAIN, N_VAL, PER_DEVICE, WORLD, EPOCHS = 512, 200, 32, 2, 4
#: Steps per epoch of the jobs on the long data (the dead rank's and the SIGTERM job): 64 global batches.
LONG_STEPS = 64
# Augmentation off (each switch of the recipe): the jobs that stop and resume, or kill a rank.
SAME_PIXELS = [*NO_AUG, "--smoothing", "0.1", "--drop_path_rate", "0"]
#: The equality jobs: config.yaml's recipe as it is (drop_path_rate, crop, flip, aa, reprob,
#: smoothing, mixup, cutmix: no flag), two blocks per stage so that stochastic depth drops whole
#: blocks, and the EMA on (see the module docstring for its decay).
RECIPE = [*DP_TOPOLOGY, "--model_ema", "true", "--model_ema_decay", "0.9"]
ATOL, RTOL = 1e-5, 1e-5
#: Only against a hang: a job still running after this many seconds is stopped (a loaded machine
#: takes minutes; nothing here asserts a speed).
HANG = 1800

pytestmark = MSRUN_MARKS


def _env(base, **extra):
    # msrun starts plain `python`: the environment's bin must come first on PATH.
    return dict(base, PATH=VENV_BIN + os.pathsep + base.get("PATH", ""), **extra)


def _train_args(data, out, epochs=EPOCHS, lr="2e-3", recipe=(*TINY_TOPOLOGY, *SAME_PIXELS)):
    return ["--train_data_path", data, "--val_data_path", data, "--image_size", "32",
            "--epoch_size", str(epochs), "--warmup_epochs", "0", "--lr", lr, "--min_lr", "1e-4",
            "--batch_size", str(PER_DEVICE), "--save_checkpoint_path", out, "--seed", "0",
            "--log_interval", "1", *recipe]


def _long_data(folder):
    """Like the 2-worker job's data but 64 global batches per epoch, so a stop requested early in
    epoch 2 lands mid-epoch however fast the machine is."""
    return generated(folder, "cifar10", LONG_STEPS * PER_DEVICE * WORLD, N_VAL, seed=6)


def _read(path):
    return open(path).read() if os.path.isfile(path) else ""


def _dp_job(ctx, recipe, evaluate):
    """A 2-worker msrun job with `recipe`: its folders, exit status, wall time and both ranks' logs;
    then, from the same data, the single-process reference (:func:`reference_run`, in its own
    process) and, when `evaluate`, evl.py on the job's last checkpoint (one process, the whole val
    split)."""
    data = generated(ctx.folder / "data", "cifar10", N_TRAIN, N_VAL, seed=5)
    root = ctx.folder / "job"
    root.mkdir()
    out, logs, dump = str(root / "out"), str(root / "logs"), str(root / "dump")
    args = _train_args(data, out, recipe=recipe)
    cmd = [MSRUN, "--worker_num=2", "--local_worker_num=2", "--join=True", f"--log_dir={logs}",
           f"--master_port={free_port()}", TRAIN, "--is_distributed", "true", *args]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(root), env=_env(ctx.env, **plugin_env(ctx.env, CONVMLP_TEST_DUMP_WEIGHTS=dump)),
                          capture_output=True, text=True, timeout=HANG)
    res = {"data": data, "root": root, "out": out, "logs": logs, "dump": dump, "proc": proc, "wall": time.time() - t0,
           "log0": _read(os.path.join(logs, "worker_0.log")), "log1": _read(os.path.join(logs, "worker_1.log"))}
    assert proc.returncode == 0, (f"msrun rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
                                  f"worker_0:\n{res['log0'][-3000:]}\nworker_1:\n{res['log1'][-3000:]}")

    reference = ctx.folder / "reference"
    reference.mkdir()
    res["reference"] = str(reference / "reference.npz")
    t0 = time.time()
    res["reference_proc"] = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "reference", res["reference"],
         *_train_args(data, str(reference / "unused"), recipe=recipe)],
        cwd=str(reference), env=_env(ctx.env), capture_output=True, text=True, timeout=HANG)
    res["reference_wall"] = time.time() - t0
    if not evaluate:
        return res

    evaluation = ctx.folder / "eval"
    evaluation.mkdir()
    res["eval_json"] = str(evaluation / "eval.json")
    res["eval_proc"] = subprocess.run(
        [sys.executable, os.path.join(REPO, "evl.py"), "--checkpoint_path", os.path.join(out, "last.ckpt"),
         "--train_data_path", data, "--val_data_path", data, "--json", res["eval_json"]],
        cwd=str(evaluation), env=_env(ctx.env), capture_output=True, text=True, timeout=HANG)
    return res


@background
def dp_run(ctx):
    """The 2-worker job with the recipe (C++ kernels on, the default), its reference and evl.py."""
    return _dp_job(ctx, RECIPE, evaluate=True)


@background
def dp_run_kernels_off(ctx):
    """The same job and reference with ``--cpu_kernels false`` (MindSpore's own CPU kernels)."""
    return _dp_job(ctx, [*RECIPE, "--cpu_kernels", "false"], evaluate=False)


def _info_lines(log):
    """train.py's own lines of a worker log, time-stamped or ``warning: ...`` (MindSpore's
    [INFO]/[WARNING] lines dropped)."""
    return [ln for ln in log.splitlines() if (ln[:2].isdigit() and ln[2:3] == ":") or ln.startswith("warning: ")]


def test_two_workers_log_rank_world_size_and_global_batch(dp_run):
    print(f"2-worker msrun job: {dp_run['wall']:.1f} s")
    lines = _info_lines(dp_run["log0"])
    assert any("rank 0 / world size 2" in ln for ln in lines), "\n".join(lines)
    assert any(f"batch {PER_DEVICE} per device x 2 = {PER_DEVICE * 2} global, 8 steps per epoch" in ln
               for ln in lines), "\n".join(lines)
    # rank 1 logs warnings only (tagged with its rank), never the per-epoch or progress lines
    lines1 = _info_lines(dp_run["log1"])
    assert lines1 and all("[rank 1]" in ln for ln in lines1), "\n".join(lines1)
    assert not any("epoch:" in ln or "saved" in ln for ln in lines1), "\n".join(lines1)


def test_two_workers_end_with_identical_parameters(dp_run):
    r0 = np.load(os.path.join(dp_run["dump"], "rank0.npz"))
    r1 = np.load(os.path.join(dp_run["dump"], "rank1.npz"))
    assert sorted(r0.files) == sorted(r1.files)
    assert any("moving_mean" in k for k in r0.files) and any(k.startswith(EMA_PREFIX) for k in r0.files)
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)


def test_two_workers_write_one_checkpoint_set_holding_the_shared_weights(dp_run):
    import mindspore as ms
    out = dp_run["out"]
    epochs = [f"epoch_{e:04d}.ckpt" for e in range(1, EPOCHS + 1)]
    assert sorted(os.listdir(out)) == sorted(["best.ckpt", "config.yaml", "curves.png", "last.ckpt",
                                              "metrics.csv", "train.log", *epochs])
    elsewhere = [os.path.join(d, f) for d, _, fs in os.walk(dp_run["root"]) for f in fs
                 if f.endswith(".ckpt") and os.path.abspath(d) != os.path.abspath(out)]
    assert not elsewhere
    with open(os.path.join(out, "metrics.csv")) as f:
        assert [ln.split(",")[0] for ln in f.read().split()[1:]] == [str(e) for e in range(1, EPOCHS + 1)]
    with open(os.path.join(out, "train.log")) as f:
        assert "[rank" not in f.read()
    saved = ms.load_checkpoint(os.path.join(out, "last.ckpt"))
    r0 = np.load(os.path.join(dp_run["dump"], "rank0.npz"))
    for k in r0.files:
        np.testing.assert_array_equal(saved[k].asnumpy(), r0[k], err_msg=k)


def _assert_equal_to_reference(job):
    assert_default_recipe(os.path.join(job["out"], "config.yaml"), "cifar10")
    proc = job["reference_proc"]
    print(f"single-process reference: {job['reference_wall']:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_data_parallel_equal(job["dump"], job["reference"], ATOL, RTOL)


def test_two_workers_equal_a_single_process_over_the_global_batch(dp_run):
    assert "C++ CPU kernels (model/cpu_kernels/): on (" in dp_run["log0"]
    _assert_equal_to_reference(dp_run)


def test_two_workers_equal_a_single_process_with_the_cpu_kernels_off(dp_run_kernels_off):
    log0 = dp_run_kernels_off["log0"]
    assert "C++ CPU kernels (model/cpu_kernels/): off" in log0, [ln for ln in log0.splitlines() if "kernels" in ln]
    _assert_equal_to_reference(dp_run_kernels_off)


def test_two_workers_validation_is_the_whole_split_and_above_chance(dp_run):
    proc = dp_run["eval_proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(dp_run["eval_json"]) as f:
        res = json.load(f)
    assert res["n"] == N_VAL
    # chance 0.10 (10 classes; 200 images: sd 0.021): 0.16 is 3 sd above it. With the recipe on
    # (mixup/cutmix, RandAugment) 32 steps learn less than without: 0.195 measured (0.28 without).
    assert res["acc"] >= 0.16, res["acc"]
    # the ranks' logged val top-1 (shard counts summed) is that of the whole split in one process
    last = [ln for ln in _info_lines(dp_run["log0"]) if ln.split(" ", 1)[1].startswith(f"epoch:{EPOCHS} ")]
    assert len(last) == 1 and f"val top-1 {res['acc']:.4f}" in last[0], (last, res["acc"])


@background
def dead_rank(ctx):
    """Two machines emulated on one (see the test); returns msrun's exit status on node 0, rank 0's
    log and the seconds from the kill to the end of the job."""
    long_data, logs, port = _long_data(ctx.folder / "data"), str(ctx.folder / "logs"), free_port()
    # the setting of the SIGTERM test below, whose ranks then load these ranks' compiled graphs
    args = [TRAIN, "--is_distributed", "true", *_train_args(long_data, str(ctx.folder / "out"), epochs=2),
            "--cooldown_epochs", "0"]
    env = _env(ctx.env, MS_NODE_TIMEOUT="10")
    out0, out1 = open(ctx.folder / "node0.out", "w"), open(ctx.folder / "node1.out", "w")
    node0 = subprocess.Popen([MSRUN, "--worker_num=2", "--local_worker_num=1", "--node_rank=0",
                              "--master_addr=127.0.0.1", f"--master_port={port}", "--join=True",
                              f"--log_dir={logs}", *args], cwd=str(ctx.folder), env=env, stdout=out0,
                             stderr=subprocess.STDOUT, start_new_session=True)
    node1 = subprocess.Popen([sys.executable, *args], cwd=str(ctx.folder), stdout=out1, stderr=subprocess.STDOUT,
                             start_new_session=True,
                             env=dict(env, MS_ROLE="MS_WORKER", MS_SCHED_HOST="127.0.0.1",
                                      MS_SCHED_PORT=str(port), MS_WORKER_NUM="2", MS_NODE_ID="1"))
    log0 = os.path.join(logs, "worker_0.log")
    try:
        deadline = time.time() + HANG   # only against a hang
        while time.time() < deadline and node0.poll() is None:
            if f"epoch 1/2 1/{LONG_STEPS}" in _read(log0):
                break
            time.sleep(0.05)
        assert node0.poll() is None, "the job ended early:\n" + (ctx.folder / "node0.out").read_text()[-3000:]
        assert time.time() < deadline, "training did not start:\n" + _read(log0)[-3000:]
        os.kill(node1.pid, signal.SIGKILL)
        t_kill = time.time()
        try:
            rc = node0.wait(timeout=HANG)   # only against a hang: MS_NODE_TIMEOUT ends it
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rank 0 still runs {HANG} s after rank 1 died") from None
        waited = time.time() - t_kill
    finally:
        for p in (node0, node1):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        out0.close()
        out1.close()
    return {"rc": rc, "log0": _read(log0), "waited": waited}


def test_a_dead_rank_ends_the_job(dead_rank):
    """Two machines emulated on one: node 0 runs ``msrun --worker_num=2 --local_worker_num=1
    --node_rank=0 --master_addr=127.0.0.1`` (scheduler + rank 0); node 1's worker is started with
    the environment msrun would give it there (a second msrun here would start a second scheduler
    on the same port). Rank 1 is killed (SIGKILL) once training runs; rank 0 then waits in the
    gradient AllReduce until the scheduler misses rank 1's heartbeat for MS_NODE_TIMEOUT seconds
    (10 here; MindSpore's default is 30), and must end with one clear error line, not a hang, in
    the epoch where rank 1 died: it trained no further than the step its peer never finished."""
    rc, log0, waited = dead_rank["rc"], dead_rank["log0"], dead_rank["waited"]
    print(f"dead rank: the job ended {waited:.1f} s after the kill (rc {rc})")
    assert rc != 0
    errors = [ln for ln in log0.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, log0[-3000:]
    assert "rank 0 of 2: a collective operation failed, so another rank has died" in errors[0]
    assert "--resume auto" in errors[0]
    assert "Traceback" not in log0
    # rank 1 died after step 1 of epoch 1's 64: rank 0 never ended that epoch, nor saved anything
    lines = _info_lines(log0)
    assert any(f"epoch 1/2 1/{LONG_STEPS}" in ln for ln in lines), "\n".join(lines[-20:])
    assert not any(ln.split(" ", 1)[1].startswith("epoch:") or "saved" in ln or "epoch 2/2" in ln
                   for ln in lines), "\n".join(lines[-20:])


def _worker_pids():
    """PIDs of the msrun workers running train.py (msrun marks them MS_ROLE=MS_WORKER)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if b"train.py" in cmdline and b"MS_ROLE=MS_WORKER" in environ:
            pids.append(int(pid))
    return pids


def _signal_all(pids, sig):
    for pid in pids:
        os.kill(pid, sig)


@background
def sigterm_then_resume(ctx):
    """The stopped 2-worker job (see the test) and its resume: both ranks' logs of the first, the
    resumed msrun and its rank 0 log, and the run's metrics rows."""
    long_data, out, logs = _long_data(ctx.folder / "data"), str(ctx.folder / "out"), str(ctx.folder / "logs")
    args = [TRAIN, "--is_distributed", "true", *_train_args(long_data, out, epochs=2), "--cooldown_epochs", "0"]
    env = _env(ctx.env, MS_NODE_TIMEOUT="10")
    job = subprocess.Popen([MSRUN, "--worker_num=2", "--local_worker_num=2", "--join=True", f"--log_dir={logs}",
                            f"--master_port={free_port()}", *args], cwd=str(ctx.folder), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log0 = os.path.join(logs, "worker_0.log")
    try:
        deadline = time.time() + HANG   # only against a hang
        while time.time() < deadline and job.poll() is None:
            if f"epoch 2/2 2/{LONG_STEPS}" in _read(log0):
                break
            time.sleep(0.05)
        workers = _worker_pids()
        assert len(workers) == 2, f"workers {workers}\n" + _read(log0)[-2000:]
        _signal_all(workers, signal.SIGSTOP)
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.3)
        job.wait(timeout=HANG)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    res = {"text0": _read(log0), "text1": _read(os.path.join(logs, "worker_1.log"))}
    logs2 = str(ctx.folder / "logs2")
    res["resumed"] = subprocess.run([MSRUN, "--worker_num=2", "--local_worker_num=2", "--join=True",
                                     f"--log_dir={logs2}", f"--master_port={free_port()}", *args, "--resume", "auto"],
                                    cwd=str(ctx.folder), env=env, capture_output=True, text=True, timeout=HANG)
    res["text"] = _read(os.path.join(logs2, "worker_0.log"))
    res["metrics"] = [r.split(",")[0] for r in _read(os.path.join(out, "metrics.csv")).strip().splitlines()[1:]]
    return res



@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the worker processes")
def test_sigterm_to_every_rank_stops_them_at_the_same_step_and_resume_completes(sigterm_then_resume):
    """A cluster scheduler's SIGTERM reaches the ranks at different moments. The ranks agree (one
    AllReduce of the stop flag per step) to stop after the same step, rank 0 saves a mid-epoch
    last.ckpt, and ``--resume auto`` under msrun finishes the run from exactly there.

    The workers are frozen (SIGSTOP) as soon as epoch 2 has begun, so where the stop lands does not
    depend on the machine's speed; each then gets its SIGTERM and is thawed 0.3 s after the other.
    The stopped job's scheduler waits MS_NODE_TIMEOUT seconds for the rank that ended first (10
    here; MindSpore's default is 30) before msrun returns."""
    text0 = sigterm_then_resume["text0"]
    assert "interrupted at epoch 2 step" in text0 and "saved resumable" in text0, text0[-3000:]
    assert "Traceback" not in text0 + sigterm_then_resume["text1"]
    stopped_at = int(text0.split("interrupted at epoch 2 step")[1].split()[0].strip(",;:"))
    assert 2 <= stopped_at < LONG_STEPS

    text = sigterm_then_resume["text"]
    assert sigterm_then_resume["resumed"].returncode == 0, text[-3000:]
    assert f"1 epoch(s) done + {stopped_at} step(s) of epoch 2" in text and "done: best val top-1" in text
    assert sigterm_then_resume["metrics"] == ["1", "2"]


# ------------------------------------------------------------------------------------------------
# The single-process reference (run in its own process by the test above)

def reference_run(out, argv):
    """What the two ranks compute, in one process (helpers.data_parallel_reference: each rank's
    batches and drop-path factors, the mean of the ranks' gradients, one AdamW step, the EMA
    update). Writes the final parameters to ``out`` and the initial ones to ``out`` with ``_init``."""
    from helpers import data_parallel_reference
    data_parallel_reference(out, argv, WORLD)


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "reference":
    reference_run(sys.argv[2], sys.argv[3:])
