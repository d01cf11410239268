"""Interrupting a compile (Ctrl-C, SIGTERM) prints one line and exits 130: MindSpore's own report of
the exception passing through its compiler stays out of the terminal, and its ``analyze_fail.ir``
goes to the framework folder (``MS_OM_PATH``, set by ``src/__init__.py``), never into the user's
working directory.

The signal arrives at a chosen point inside MindSpore's compiler, deterministically: the test hook
``CONVMLP_TEST_SIGNAL_IN_COMPILE`` (tests/plugins/sitecustomize.py) makes the process send it to
itself from the 20th call of the parser's ``resolve_symbol``, that is while the graph compiles."""
import os
import subprocess
import sys

from helpers import REPO, TINY_CKPT_FLAGS, TINY_TOPOLOGY, plugin_env


def interrupted_in_compile(script, signame, args, tmp_path):
    """Run `script` from an empty working directory with the hook; returns ``(proc, files left in
    the working directory, whether the signal was sent inside the compiler)``."""
    work, sent = tmp_path / "work", tmp_path / "sent"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MS_OM_PATH"}   # the script's own default
    env.update(plugin_env(CONVMLP_TEST_SIGNAL_IN_COMPILE=f"{signame}:{sent}"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    left = sorted(os.path.relpath(os.path.join(b, f), work) for b, _, fs in os.walk(work) for f in fs)
    return proc, left, sent.exists()


def expect_one_line(proc, how):
    assert proc.returncode == 130, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.stderr.splitlines() == [f"error: interrupted ({how})"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout and "analyze_fail" not in proc.stdout + proc.stderr


def test_sigterm_while_train_py_compiles(tiny_cifar10, tmp_path):
    proc, left, sent = interrupted_in_compile(
        "train.py", "TERM", [*TINY_TOPOLOGY, "--image_size", "32", "--batch_size", "16", "--epoch_size", "1",
                             "--device_target", "CPU", "--graph_cache", "false", "--train_data_path", tiny_cifar10,
                             "--val_data_path", tiny_cifar10, "--save_checkpoint_path", tmp_path / "run"], tmp_path)
    assert sent, proc.stdout[-2000:] + proc.stderr[-2000:]
    expect_one_line(proc, "SIGTERM: a kill, or Ctrl-C relayed by MindSpore's runtime")
    assert left == [] and "compiled the training step" not in proc.stdout


def test_ctrl_c_while_evl_py_compiles(tiny_ckpt, tiny_cifar10, tmp_path):
    proc, left, sent = interrupted_in_compile(
        "evl.py", "INT", ["--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, "--graph_cache", "false",
                          "--train_data_path", tiny_cifar10, "--val_data_path", tiny_cifar10], tmp_path)
    assert sent, proc.stdout[-2000:] + proc.stderr[-2000:]
    expect_one_line(proc, "Ctrl-C")
    assert left == [] and "accuracy" not in proc.stdout
