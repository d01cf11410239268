"""A user's file is never destroyed, a run folder belongs to one process, and an output is never
one of the inputs.

The rules live in two places, each tested here first on its own and then through the real entry
scripts:

* ``src/platform/fileio.py``: :func:`atomic_output`, the one writer of every output file (temporary file in
  the same folder, verified, flushed, renamed; on failure the old file is intact, the temporary is
  gone and the message names the user's path), and :func:`check_not_input` (same path, symbolic
  link or hard link).
* ``src/train/run_folder.py``: the lock that makes a run folder belong to one train.py process, and the
  rule that ``--demo`` replaces only a previous demo run.

End-to-end cases check, like tests/test_reliability.py: the exit status, exactly one ``error:``
line naming the culprit, the SHA-256 of every file that was there before, and no temporary file.
They run the scripts' ``main`` through ``run_cli`` in this process, except where processes are the
point (the lock between two runs) and for whole training runs (a demo run replacing another), which
load their graphs from the session's graph cache.
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import (REPO, TRAIN_EPOCHS, TRAIN_FLAGS, Snapshot, assert_user_error, data_flags,
                     expect_clean_failure, leftovers, metrics_epochs, ok, run_main, run_script)
from src.convert import mindir
from src.platform.errors import UserError
from src.platform.fileio import OutputError, atomic_output, check_not_input, temp_name

#: The session's trained run's flags: the runs here load its compiled graphs from the graph cache.
COMMON = TRAIN_FLAGS
EPOCHS = TRAIN_EPOCHS


# ------------------------------------------------------------------------------------------------
# src/platform/fileio.py on its own

def test_atomic_output_replaces_only_a_complete_verified_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with atomic_output(path) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".json") and tmp != str(path)
        with open(tmp, "w") as f:
            f.write("new")
        assert path.read_text() == "old"          # replaced only when the block is done
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["result.json"]

    def reject(tmp):
        assert open(tmp).read() == "bad"        # the callback sees the complete temporary file
        raise UserError(f"'{tmp}' is not what was expected")

    with pytest.raises(UserError) as err:
        with atomic_output(path, verify=reject) as tmp:
            with open(tmp, "w") as f:
                f.write("bad")
    assert str(err.value) == f"'{path}' is not what was expected"   # the user's path, not the temporary
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["result.json"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["full-disk", "ctrl-c"])
def test_atomic_output_failure_keeps_the_old_file_and_names_the_users_path(failure, tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch\n1\n")
    with pytest.raises((OutputError, KeyboardInterrupt)) as err:
        with atomic_output(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            if isinstance(failure, OSError):
                raise OSError(failure.errno, failure.strerror, tmp)
            raise failure
    if isinstance(failure, OSError):
        assert str(err.value) == (f"cannot write '{path}': No space left on device; the previous file (if any) "
                                  "is unchanged")
    assert path.read_text() == "epoch\n1\n" and os.listdir(tmp_path) == ["metrics.csv"]


def test_an_output_that_is_an_input_is_refused_through_links(tmp_path):
    src = tmp_path / "weights.pth"
    src.write_bytes(b"weights")
    os.symlink(src, tmp_path / "soft.ckpt")
    os.link(src, tmp_path / "hard.ckpt")
    check_not_input(tmp_path / "other.ckpt", ("--src", src))
    for out, how in ((src, ""), (tmp_path / "soft.ckpt", " (the same file through a link)"),
                     (tmp_path / "hard.ckpt", " (the same file through a link)")):
        with pytest.raises(OutputError) as err:
            with atomic_output(out, inputs=[("--src", src)], label="--dst"):
                raise AssertionError("nothing may be written")
        assert str(err.value).startswith(f"--dst '{out}' is the --src '{src}'{how}: writing it")
    assert src.read_bytes() == b"weights" and not leftovers(tmp_path)


def test_a_killed_writers_temporary_is_removed_by_the_next_writer(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.ckpt.tmp-{int(dead.stdout)}.ckpt"
    stale.write_bytes(b"half a checkpoint")
    mine = temp_name(tmp_path / "best.ckpt")    # a live process's temporary of another file stays
    open(mine, "wb").close()
    with atomic_output(tmp_path / "last.ckpt") as tmp:
        open(tmp, "wb").close()
    assert sorted(os.listdir(tmp_path)) == sorted(["last.ckpt", os.path.basename(mine)])


# ------------------------------------------------------------------------------------------------
# src/train/run_folder.py: the lock on its own (separate processes: a lock belongs to a process)

HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from src.platform.errors import run_cli
    from src.train.run_folder import hold_run_folder
    def main(argv):
        hold_run_folder(argv[0])
        print("holding", flush=True)
        time.sleep(float(argv[1]))
    run_cli(main, sys.argv[1:])
""").format(repo=REPO)


def completed(proc, out, err):
    """A finished Popen as the CompletedProcess that assert_user_error reads."""
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def hold(folder, seconds):
    return subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_run_folder_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "run"
    first = hold(folder, 60)
    assert first.stdout.readline() == "holding\n"
    second = hold(folder, 0)
    out, err = second.communicate(timeout=60)
    line = assert_user_error(completed(second, out, err), f"save_checkpoint_path {folder} is in use", f"process {first.pid}",
                             str(folder / ".train.lock"))
    assert "holding" not in out, line
    first.send_signal(signal.SIGKILL)           # released by the kernel: the next run is not blocked
    first.wait()
    third = hold(folder, 0)
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0 and out == "holding\n", err
    assert os.listdir(folder) == []             # a run that ends removes its lock file


# ------------------------------------------------------------------------------------------------
# train.py: two runs started at the same moment into one folder

def start_train(run_dir, data, *extra):
    args = [*COMMON, *data_flags(data), "--epoch_size", EPOCHS, "--save_checkpoint_path", run_dir, *extra]
    return subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def same_moment(tiny_cifar10, tmp_path_factory):
    """Two train.py started at the same moment with one save_checkpoint_path."""
    run_dir = tmp_path_factory.mktemp("same_moment") / "run"
    procs = [start_train(run_dir, tiny_cifar10), start_train(run_dir, tiny_cifar10)]
    outs = [p.communicate(timeout=600) for p in procs]
    return {"dir": run_dir, "procs": procs, "outs": outs}


def test_two_runs_into_one_folder_one_is_refused_naming_the_other(same_moment):
    (a, b), (out_a, out_b) = same_moment["procs"], same_moment["outs"]
    winner, loser = (a, b) if a.returncode == 0 else (b, a)
    win_out, lose_out = (out_a, out_b) if winner is a else (out_b, out_a)
    assert sorted([a.returncode, b.returncode]) == [0, 2], (out_a[1][-2000:], out_b[1][-2000:])
    assert_user_error(completed(loser, *lose_out), f"save_checkpoint_path {same_moment['dir']} is in use by another train.py run",
                      f"process {winner.pid}")
    assert "resolved config" not in lose_out[0]          # the refused run wrote nothing, logged nothing
    run_dir = same_moment["dir"]
    assert metrics_epochs(run_dir) == list(range(1, EPOCHS + 1))
    with open(run_dir / "train.log") as f:
        log = f.read()
    assert log.count("resolved config:") == 1 and log.count("done: best val top-1") == 1
    assert {"last.ckpt", "best.ckpt", "config.yaml", "curves.png", f"epoch_{EPOCHS:04d}.ckpt"} <= set(
        os.listdir(run_dir))
    assert not leftovers(run_dir)


@pytest.fixture
def real_run(trained_run, tmp_path):
    """A copy of the session's finished (non-demo) run."""
    out = tmp_path / "real_run"
    shutil.copytree(trained_run["dir"], out)
    return out


# ------------------------------------------------------------------------------------------------
# train.py --demo replaces only a demo run

def test_demo_into_a_real_runs_folder_is_refused(real_run, tiny_cifar10):
    before = Snapshot(real_run, tiny_cifar10)
    proc = run_main("train.py", "--demo", *COMMON, *data_flags(tiny_cifar10), "--epoch_size", 1,
                    "--save_checkpoint_path", real_run)
    expect_clean_failure(proc, before, f"save_checkpoint_path {real_run} holds a run that is not a demo run",
                         str(real_run / "config.yaml"), "--resume auto")
    assert not leftovers(real_run)


def test_demo_replaces_a_previous_demo_run(trained_run, tiny_cifar10, tmp_path):
    """The previous demo run: a copy of the session's run (TRAIN_EPOCHS epochs) whose config.yaml says
    ``demo: true``, as a demo run's does."""
    run_dir = tmp_path / "demo"
    shutil.copytree(trained_run["dir"], run_dir)
    config = (run_dir / "config.yaml").read_text()
    assert "demo: false" in config
    (run_dir / "config.yaml").write_text(config.replace("demo: false", "demo: true"))
    second = ok(run_script("train.py", "--demo", *COMMON, *data_flags(tiny_cifar10), "--epoch_size", 1,
                           "--save_checkpoint_path", run_dir))
    assert f"demo: starting over in {run_dir} (the previous demo run is replaced)" in second.stdout
    # nothing of the first demo run is left beside the second one (its log is appended to)
    assert metrics_epochs(run_dir) == [1]
    assert sorted(f for f in os.listdir(run_dir) if f.endswith(".ckpt")) == ["best.ckpt", "epoch_0001.ckpt",
                                                                             "last.ckpt"]
    assert "demo: true" in (run_dir / "config.yaml").read_text()
    assert not leftovers(run_dir)


# ------------------------------------------------------------------------------------------------
# train.py: the run's files are not its inputs

def test_a_run_folder_whose_files_are_the_pretrained_checkpoint_is_refused(real_run, tiny_cifar10, tmp_path):
    """A fresh run in a folder that holds only the pretrained checkpoint under best.ckpt's name
    would replace it at its first best epoch."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    os.link(real_run / "epoch_0001.ckpt", fresh / "best.ckpt")
    before = Snapshot(fresh, real_run, tiny_cifar10)
    proc = run_main("train.py", *COMMON, *data_flags(tiny_cifar10), "--epoch_size", 1, "--save_checkpoint_path",
                    fresh, "--pretrained_ckpt", real_run / "epoch_0001.ckpt")
    expect_clean_failure(proc, before, f"run file '{fresh / 'best.ckpt'}' is the pretrained_ckpt",
                         str(real_run / "epoch_0001.ckpt"), "through a link")


# ------------------------------------------------------------------------------------------------
# pth2ckpt.py: --dst is never --src

@pytest.mark.parametrize("how", ["same-path", "symlink", "hard-link"])
def test_pth2ckpt_never_writes_over_its_source(how, tiny, tmp_path):
    src = tmp_path / "w.pth"
    shutil.copyfile(tiny["pth"], src)
    dst = {"same-path": src, "symlink": tmp_path / "link.ckpt", "hard-link": tmp_path / "hard.ckpt"}[how]
    if how == "symlink":
        os.symlink(src, dst)
    elif how == "hard-link":
        os.link(src, dst)
    before = Snapshot(tmp_path)
    proc = run_main("pth2ckpt.py", "--src", src, "--dst", dst, *tiny["flags"])
    expect_clean_failure(proc, before, f"--dst '{dst}' is the --src '{src}'", "nothing was written")


# ------------------------------------------------------------------------------------------------
# export.py --verify: replace only after the verification

def test_a_failed_verification_keeps_the_good_export(real_run, tmp_path, monkeypatch):
    good = tmp_path / "model.mindir"
    done = ok(run_main("export.py", "--checkpoint_path", real_run / "best.ckpt", "--file_name", good, "--verify"))
    assert "verified:" in done.stdout
    before = Snapshot(tmp_path)
    monkeypatch.setattr(mindir, "VERIFY_ATOL", -1.0)   # no file can pass this check
    proc = run_main("export.py", "--checkpoint_path", real_run / "best.ckpt", "--file_name", good, "--verify")
    line = expect_clean_failure(proc, before, f"'{good}' would not reproduce the checkpoint model",
                                "an existing file of that name is unchanged")
    assert ".tmp" not in line


# ------------------------------------------------------------------------------------------------
# evl.py / infer.py --json

@pytest.mark.parametrize("target", ["folder", "checkpoint", "under-a-file"])
def test_evl_json_that_cannot_be_a_result_file(target, real_run, tiny_cifar10, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("the user's file")
    ckpt = real_run / "best.ckpt"
    json_path, fragment = {"folder": (folder, "is a folder"),
                           "checkpoint": (ckpt, f"is the checkpoint_path '{ckpt}'"),
                           "under-a-file": (folder / "keep.txt" / "r.json", "is not a folder")}[target]
    before = Snapshot(tmp_path, real_run)
    proc = run_main("evl.py", "--checkpoint_path", ckpt, *data_flags(tiny_cifar10), "--json", json_path)
    line = expect_clean_failure(proc, before, f"--json '{json_path}'", fragment)
    assert ".tmp" not in line and not leftovers(tmp_path) and not leftovers(folder)


def test_infer_json_over_an_image_is_refused(real_run, tmp_path):
    import numpy as np
    from PIL import Image
    image = tmp_path / "cat.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    before = Snapshot(tmp_path)
    proc = run_main("infer.py", "--checkpoint_path", real_run / "best.ckpt", image, "--json", image)
    expect_clean_failure(proc, before, f"--json '{image}' is the image '{image}'")


# ------------------------------------------------------------------------------------------------
# dataset.py generate never replaces data it did not write

def test_generate_into_a_real_dataset_folder_is_refused(tiny_cifar10, tmp_path):
    real = tmp_path / "data" / "cifar-10-batches-bin"
    shutil.copytree(tiny_cifar10, real)
    (real / "batches.meta.txt").write_text("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
    before = Snapshot(tmp_path)
    proc = run_main("dataset.py", "generate", "--out", tmp_path / "data", "--train", 20, "--val", 10)
    expect_clean_failure(proc, before, str(real), "not generated", "--out")
    again = tmp_path / "gen"            # generated data may be generated again
    for _ in range(2):
        ok(run_main("dataset.py", "generate", "--out", again, "--train", 20, "--val", 10))
    assert not leftovers(again / "cifar-10-batches-bin")
