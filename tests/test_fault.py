"""Fault tests: train.py killed with SIGKILL at random moments, resumed each time with
``--resume auto``, still finishes every epoch with a loadable best checkpoint, leaves no temporary
file, and repeats at most the one epoch that was running when it was killed.

SIGKILL cannot be caught: nothing is saved at the kill, so a restart resumes from the last epoch
that finished (its checkpoint was written atomically) and repeats the rest of the killed epoch.
Kill number i lands in epoch i + 1 (the first before any checkpoint exists), at a moment drawn from
a seeded generator: a step of that epoch (the progress line train.py prints with
``--log_interval 1``) and a delay of up to 60 ms after that line, so the kill lands anywhere in a
step, including the end-of-epoch evaluation and checkpoint writes.

A second test kills train.py deterministically right after each file written at an epoch end
(``CONVMLP_TEST_KILL_AFTER``, tests/plugins): whichever was written last, the resumed run has exactly
one metrics row per finished epoch.

The runs have the flags of the session's trained run (``helpers.TRAIN_FLAGS``). They are
background jobs (``helpers.background``): they start with the test session, while other files'
tests run, keep a copy of ``last.ckpt`` after every kill, and the tests here read what they left.
"""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from helpers import (REPO, TRAIN_FLAGS, TRAIN_STEPS, background, checkpoint_meta, data_flags, leftovers,
                     metrics_epochs, ok, plugin_env, run_script)

pytestmark = pytest.mark.slow

EPOCHS = 4
STEPS = TRAIN_STEPS              # 203 train records / batch 8
KILLS = 3
ARGS = [*TRAIN_FLAGS, "--epoch_size", str(EPOCHS), "--resume", "auto"]


def start(run_dir, data, env):
    cmd = [sys.executable, os.path.join(REPO, "train.py"), *ARGS, *data_flags(data),
           "--save_checkpoint_path", str(run_dir)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(env, PYTHONUNBUFFERED="1"), start_new_session=True)


def kill_during(proc, first_epoch, step, delay):
    """Read `proc`'s log until the progress line of (epoch, step), then SIGKILL its process group
    after `delay` seconds; the epoch is `first_epoch`, or the first one the run still has to train
    when it resumed past it. Returns (log, target epoch, epochs saved, epoch running at the kill)."""
    watchdog = threading.Timer(240, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    lines, saved, running, killer, epoch = [], 0, 0, None, first_epoch
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"resumed from .*: (\d+) epoch\(s\) done", line)
            if m:
                epoch = min(max(first_epoch, int(m.group(1)) + 1), EPOCHS)
            m = re.search(r"epoch (\d+)/%d (\d+)/%d" % (EPOCHS, STEPS), line)
            if m:
                running = int(m.group(1))
            m = re.search(r"saved .*epoch_(\d+)\.ckpt", line)
            if m:
                saved = int(m.group(1))
            if f"epoch {epoch}/{EPOCHS} {step}/{STEPS} " in line and killer is None:
                killer = threading.Timer(delay, lambda: os.killpg(proc.pid, signal.SIGKILL))
                killer.start()
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
    return "".join(lines), epoch, saved, running


def resumed_epochs(log):
    m = re.search(r"resumed from .*: (\d+) epoch\(s\) done", log)
    return int(m.group(1)) if m else 0


def finished_epochs(last):
    """Epochs finished according to a copy of ``last.ckpt`` (what ``--resume auto`` starts from);
    0 when there was none."""
    return checkpoint_meta(last).epoch if os.path.exists(last) else 0


def keep_last(run_dir, copy):
    """A copy of the run's last.ckpt as it is now (``copy`` names a missing file when there is none)."""
    if os.path.exists(run_dir / "last.ckpt"):
        shutil.copyfile(run_dir / "last.ckpt", copy)
    return copy


@background
def killed_at_random_moments(ctx):
    """The kills, each with its target (epoch, step, delay), log, the epoch running and the last
    logged save at the kill and a copy of last.ckpt after it; then the restart and evl.py on its
    best checkpoint. Kill number i targets epoch i + 1 (or the first epoch its run still trains)."""
    rng = random.Random(20240607)
    run_dir = ctx.folder / "run"
    kills = []
    for attempt in range(KILLS):
        step, delay = rng.randint(1, STEPS), rng.uniform(0.0, 0.06)
        proc = start(run_dir, ctx.tiny_cifar10, ctx.env)
        log, epoch, saved, running = kill_during(proc, attempt + 1, step, delay)
        kills.append({"target": (epoch, step, round(delay, 3)), "rc": proc.returncode, "log": log, "saved": saved,
                      "running": running, "last": keep_last(run_dir, ctx.folder / f"last_after_kill_{attempt}.ckpt")})
        if attempt == 0:
            # what a kill in the middle of a checkpoint write leaves: a temporary of the dead process
            (run_dir / f".last.ckpt.tmp-{proc.pid}.ckpt").write_bytes(b"half a checkpoint")
    final = run_script("train.py", *ARGS, *data_flags(ctx.tiny_cifar10), "--save_checkpoint_path", run_dir,
                       timeout=300, environ=ctx.env)
    evaluation = run_script("evl.py", "--checkpoint_path", run_dir / "best.ckpt", *data_flags(ctx.tiny_cifar10),
                            environ=ctx.env)
    return {"run_dir": run_dir, "kills": kills, "final": final, "evl": evaluation}


def test_kill_9_at_random_moments_then_resume_auto_completes(killed_at_random_moments):
    run = killed_at_random_moments
    run_dir = run["run_dir"]
    done = 0                      # epochs finished, read from last.ckpt before each start
    history = []                  # (target epoch, step, delay, epoch running at the kill, last logged save, done after)
    for attempt, kill in enumerate(run["kills"]):
        log, saved, running = kill["log"], kill["saved"], kill["running"]
        assert kill["rc"] == -signal.SIGKILL, f"attempt {attempt}: not killed (rc {kill['rc']})\n{log[-3000:]}"
        assert "Traceback" not in log
        assert resumed_epochs(log) == done, log[-3000:]
        after = finished_epochs(kill["last"])
        history.append((*kill["target"], running, saved, after))
        # every epoch whose save was logged is on disk; at most the killed epoch is lost
        assert saved <= after <= running and running - after <= 1, history
        done = after

    print("kills (epoch, step, delay, running, last logged save, finished):", history)
    final = ok(run["final"])
    assert "Traceback" not in final.stdout + final.stderr
    assert resumed_epochs(final.stdout) == done, (history, final.stdout[-3000:])
    if done < EPOCHS:   # the restart trained the epochs left
        assert "done: best val top-1" in final.stdout, final.stdout[-3000:]
    else:               # the kills left nothing to train
        assert f"nothing to do: the run already finished its {EPOCHS} epochs" in final.stdout, final.stdout[-3000:]

    # every restart resumed from the last finished epoch, as the log says
    with open(run_dir / "train.log") as f:
        full_log = f.read()
    starts = [int(n) for n in re.findall(r"resumed from .*: (\d+) epoch\(s\) done", full_log)]
    assert starts == [h[5] for h in history if h[5] > 0], (starts, history)
    assert "removed 1 temporary file(s) left by a killed run" in full_log

    epochs = metrics_epochs(run_dir)
    assert epochs == list(range(1, EPOCHS + 1)), epochs
    assert finished_epochs(run_dir / "last.ckpt") == EPOCHS
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f], os.listdir(run_dir)
    assert {"last.ckpt", "best.ckpt", f"epoch_{EPOCHS:04d}.ckpt"} <= set(os.listdir(run_dir))

    ev = ok(run["evl"])
    assert "accuracy:{'acc': " in ev.stdout and "images: 61" in ev.stdout


# ------------------------------------------------------------------------------------------------
# kill -9 right after each file an epoch end writes: exactly one metrics row per finished epoch

#: What train.py writes at the end of an epoch, in order: the metrics row (metrics.csv, then
#: curves.png), the epoch's checkpoint, then last.ckpt and best.ckpt pointing to it.
EPOCH_END_WRITES = ["metrics.csv", "curves.png", "epoch_0001.ckpt", "last.ckpt", "best.ckpt"]


#: Epochs of the runs killed at an epoch end (the kill is at the end of epoch 1).
KILL_AFTER_EPOCHS = 2


@background
def killed_after_epoch_end_writes(ctx):
    """For each of :data:`EPOCH_END_WRITES`: train.py killed right after writing it, a copy of
    last.ckpt and whether epoch_0001.ckpt exists after the kill, then the resumed run."""
    out = {}
    for written in EPOCH_END_WRITES:
        run_dir = ctx.folder / written / "run"
        args = [*TRAIN_FLAGS, "--epoch_size", KILL_AFTER_EPOCHS, "--resume", "auto", *data_flags(ctx.tiny_cifar10),
                "--save_checkpoint_path", run_dir]
        killed = run_script("train.py", *args, env=plugin_env(ctx.env, CONVMLP_TEST_KILL_AFTER=written),
                            timeout=300, environ=ctx.env)
        out[written] = {"run_dir": run_dir, "killed": killed, "epoch_saved": os.path.isfile(run_dir / "epoch_0001.ckpt"),
                        "last": keep_last(run_dir, ctx.folder / written / "last_after_kill.ckpt"),
                        "resumed": run_script("train.py", *args, timeout=300, environ=ctx.env)}
    return out


@pytest.mark.parametrize("written", EPOCH_END_WRITES)
def test_kill_9_right_after_an_epoch_end_write_then_resume_keeps_one_metrics_row_per_epoch(
        written, killed_after_epoch_end_writes):
    """The test plugin's ``CONVMLP_TEST_KILL_AFTER`` (tests/plugins) makes train.py SIGKILL itself right after it has
    replaced `written` at the end of epoch 1. ``--resume auto`` then finishes the run, and
    metrics.csv has rows 1 and 2, once each, whichever file was the last one written."""
    run = killed_after_epoch_end_writes[written]
    run_dir, killed = run["run_dir"], run["killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    epoch_saved = written.endswith(".ckpt")           # epoch_0001.ckpt marks the epoch finished
    assert finished_epochs(run["last"]) == (1 if written in ("last.ckpt", "best.ckpt") else 0)
    assert run["epoch_saved"] == epoch_saved

    resumed = ok(run["resumed"])
    assert resumed_epochs(resumed.stdout) == (1 if written in ("last.ckpt", "best.ckpt") else 0), resumed.stdout[-3000:]
    epochs = metrics_epochs(run_dir)
    assert epochs == list(range(1, KILL_AFTER_EPOCHS + 1)), (written, epochs)
    assert finished_epochs(run_dir / "last.ckpt") == KILL_AFTER_EPOCHS and os.path.isfile(run_dir / "curves.png")
    assert not leftovers(run_dir), os.listdir(run_dir)
