"""Reliability matrix: every entry script meets bad input with one clear line, exit status 2
and no traceback, and leaves what is already on disk as it was.

Each case runs an entry script (train.py, evl.py, export.py, infer.py, pth2ckpt.py, dataset.py)
through the same ``run_cli`` as a user's process, in this process (``helpers.run_main``), and
checks three things:

* the exit status (2 for an expected error, 130 for Ctrl-C);
* one ``error: ...`` line on stderr that names the culprit (file, key or value), no traceback;
* the SHA-256 of every file that was on disk before (the data folder, the checkpoint given, the
  run folder with its last/best checkpoints, metrics and config) is the same after, and no
  temporary file was left. ``train.log`` is append-only and may grow.

What only a process shows runs the script as a subprocess: Ctrl-C, a file the process may not
read, ``dataset.py``'s exit status.

The data is generated (``tiny_cifar10``: 203 train / 61 val records); the model is the small
``TINY_TOPOLOGY`` at 32 px. The "existing run" that the cases must not damage is a copy of the
session's trained run (conftest ``trained_run``, ``TRAIN_EPOCHS`` epochs). The Ctrl-C case trains
the same run again, interrupts it in epoch 2 and resumes it to the end: it ends with the weights of
the uninterrupted run.
"""
import ctypes
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from helpers import (NO_AUG, REPO, TINY_TOPOLOGY, TRAIN_EPOCHS, TRAIN_FLAGS, TRAIN_STEPS, Snapshot,
                     checkpoint_meta, data_flags, expect_clean_failure, model_weights, ok,
                     override, run_main, run_script, snapshot, temp_files)

# pth2ckpt.py takes the topology lists space-separated
PTH_TOPOLOGY = [t for a in TINY_TOPOLOGY for t in (a.split(",") if not a.startswith("--") else [a])]


# ------------------------------------------------------------------------------------------------
# Ctrl-C in epoch 2, then --resume auto to the end

@pytest.fixture(scope="module")
def interrupted_run(trained_run, tiny_cifar10, tmp_path_factory):
    """The session's trained run started again, interrupted with SIGINT at step 5 of epoch 2, then
    resumed with ``--resume auto``. Returns the folder, both outputs and the hashes of the epoch-1
    files taken before the signal."""
    out = tmp_path_factory.mktemp("ctrl_c") / "run"
    args = [*TRAIN_FLAGS, *data_flags(tiny_cifar10), "--epoch_size", TRAIN_EPOCHS, "--save_checkpoint_path", out]
    err_path = out.parent / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *map(str, args)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        watchdog = threading.Timer(240, proc.kill)
        watchdog.start()
        lines, epoch1 = [], None
        try:
            for line in proc.stdout:
                lines.append(line)
                if f"epoch 2/{TRAIN_EPOCHS} 5/{TRAIN_STEPS}" in line and epoch1 is None:
                    epoch1 = snapshot(out / "epoch_0001.ckpt", out / "best.ckpt")
                    proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
        finally:
            watchdog.cancel()
    first = {"rc": rc, "stdout": "".join(lines), "stderr": err_path.read_text()}
    meta = checkpoint_meta(out / "last.ckpt")
    files_after_stop = set(os.listdir(out))
    epoch1_after_stop = snapshot(*epoch1) if epoch1 is not None else None
    second = run_script("train.py", *args, "--resume", "auto", timeout=300)
    return {"dir": out, "first": first, "second": second, "epoch1": epoch1, "meta_after_stop": meta,
            "files_after_stop": files_after_stop, "epoch1_after_stop": epoch1_after_stop}


def test_ctrl_c_saves_a_resumable_checkpoint_exits_130_and_the_resume_ends_with_the_same_weights(
        interrupted_run, trained_run):
    """Uninterrupted == (Ctrl-C during epoch 2, saved mid-epoch) + --resume auto, bit for bit.

    Augmentation and drop path stay on: each epoch's shuffle and augmentation depend only on (seed,
    epoch), drop path's draws on (seed, epoch, step), and the lr follows the optimiser's global step."""
    first, second = interrupted_run["first"], interrupted_run["second"]
    assert first["rc"] == 130, first["stdout"][-2000:] + first["stderr"][-2000:]
    assert "Traceback" not in first["stderr"] + first["stdout"]
    # (MindSpore's runtime re-raises Ctrl-C as SIGTERM, so the log may name either)
    assert "stopping after the current step" in first["stdout"]
    assert "saved resumable" in first["stdout"] and "--resume auto" in first["stdout"]
    meta = interrupted_run["meta_after_stop"]
    assert meta.epoch == 1 and 5 <= meta.step_in_epoch < TRAIN_STEPS, meta
    assert not [f for f in interrupted_run["files_after_stop"] if ".tmp" in f]
    # the epoch-1 files written before the signal were not touched by the interrupt (the resume
    # may then write a better best.ckpt)
    assert interrupted_run["epoch1"] is not None and interrupted_run["epoch1_after_stop"] == interrupted_run["epoch1"]

    ok(second)
    assert f"1 epoch(s) done + {meta.step_in_epoch} step(s) of epoch 2" in second.stdout
    out = interrupted_run["dir"]
    with open(out / "metrics.csv") as f:
        epochs = [int(r.split(",")[0]) for r in f.read().strip().splitlines()[1:]]
    assert epochs == list(range(1, TRAIN_EPOCHS + 1))
    assert checkpoint_meta(out / "last.ckpt").epoch == TRAIN_EPOCHS
    assert not temp_files(out)

    a, b = model_weights(trained_run["dir"] / "last.ckpt"), model_weights(out / "last.ckpt")
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


# ------------------------------------------------------------------------------------------------
# The existing run the cases must leave as it is

@pytest.fixture
def finished(trained_run):
    """The session's finished run (do not modify it: tests copy what they change)."""
    return trained_run["dir"]


@pytest.fixture
def run_dir(finished, tmp_path):
    """A copy of the finished run (last/best checkpoints, metrics, config) that a failing train.py
    with ``--resume auto`` must leave as it is."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.ckpt", "best.ckpt", "metrics.csv", "config.yaml"):
        shutil.copyfile(finished / name, out / name)
    return out


#: The flags of the cases that train: the run's, augmentation off.
COMMON = override(TRAIN_FLAGS, *NO_AUG)


def train_into(run_dir, *args):
    """train.py continuing the run in `run_dir` for one more epoch, in this process (its graphs
    are compiled without the per-process graph cache)."""
    return run_main("train.py", *override([*COMMON, "--epoch_size", TRAIN_EPOCHS + 1, "--resume", "auto",
                                           "--save_checkpoint_path", run_dir, "--graph_cache", "false"], *args))


# ------------------------------------------------------------------------------------------------
# Data

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def truncated_bin(c10, c100, tmp):
    folder = _copy(c10, tmp / "data")
    path = folder / "data_batch_2.bin"
    os.truncate(path, path.stat().st_size - 100)
    return folder, [str(path), "not a whole number of 3073-byte CIFAR-10 records", "truncated"]


def trailing_garbage(c10, c100, tmp):
    folder = _copy(c10, tmp / "data")
    path = folder / "test_batch.bin"
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    return folder, [str(path), "+ 8 bytes", "trailing bytes"]


def cifar100_folder_as_cifar10(c10, c100, tmp):
    return c100, [str(c100), "looks like CIFAR-100", "dataset_choose: cifar100"]


def cifar100_records_under_cifar10_names(c10, c100, tmp):
    folder = tmp / "data"
    folder.mkdir()
    shutil.copyfile(os.path.join(c100, "train.bin"), folder / "data_batch_1.bin")
    shutil.copyfile(os.path.join(c100, "test.bin"), folder / "test_batch.bin")
    return folder, [str(folder / "data_batch_1.bin"), "3074-byte CIFAR-100 records", "dataset_choose: cifar100"]


def label_out_of_range(c10, c100, tmp):
    folder = _copy(c10, tmp / "data")
    path = folder / "data_batch_3.bin"
    with open(path, "r+b") as f:
        f.seek(5 * 3073)
        f.write(bytes([12]))
    return folder, [str(path), "record 5", "label 12", "0..9"]


def empty_folder(c10, c100, tmp):
    folder = tmp / "data"
    folder.mkdir()
    return folder, [str(folder), "no .bin files"]


def missing_folder(c10, c100, tmp):
    return tmp / "no-such-folder", [str(tmp / "no-such-folder"), "does not exist"]


def zero_byte_files(c10, c100, tmp):
    folder = _copy(c10, tmp / "data")
    for name in os.listdir(folder):
        if name.startswith("data_batch_"):
            os.truncate(folder / name, 0)
    return folder, [str(folder), "train split", "no records"]


def folder_named_like_a_bin(c10, c100, tmp):
    folder = _copy(c10, tmp / "data")
    os.remove(folder / "data_batch_4.bin")
    (folder / "data_batch_4.bin").mkdir()
    return folder, [str(folder / "data_batch_4.bin"), "not a regular file"]


def fifo_named_like_a_bin(c10, c100, tmp):
    """A named pipe: opening it would block forever, so it must be refused before it is read."""
    folder = _copy(c10, tmp / "data")
    os.remove(folder / "data_batch_4.bin")
    os.mkfifo(folder / "data_batch_4.bin")
    return folder, [str(folder / "data_batch_4.bin"), "not a regular file"]


DATA_CASES = [truncated_bin, trailing_garbage, cifar100_folder_as_cifar10, cifar100_records_under_cifar10_names,
              label_out_of_range, empty_folder, missing_folder, zero_byte_files, folder_named_like_a_bin,
              fifo_named_like_a_bin]


@pytest.mark.parametrize("make", DATA_CASES, ids=[m.__name__ for m in DATA_CASES])
def test_bad_data_train(make, tiny_cifar10, tiny_cifar100, tmp_path, run_dir):
    folder, fragments = make(tiny_cifar10, tiny_cifar100, tmp_path)
    before = Snapshot(folder, run_dir, tiny_cifar10, tiny_cifar100)
    proc = train_into(run_dir, *data_flags(folder))
    expect_clean_failure(proc, before, *fragments)


def test_bad_val_data_evl(tiny_cifar10, tmp_path, finished):
    folder, fragments = truncated_bin(tiny_cifar10, None, tmp_path)
    os.rename(folder / "data_batch_2.bin", folder / "test_batch.bin")
    fragments[0] = str(folder / "test_batch.bin")
    before = Snapshot(folder, finished / "best.ckpt")
    proc = run_main("evl.py", "--checkpoint_path", finished / "best.ckpt", *data_flags(folder))
    expect_clean_failure(proc, before, *fragments)


def test_bad_data_cifar_check_exits_2_as_a_process(tiny_cifar10, tmp_path):
    """dataset.py's exit status is that of a process (the other cases run in this one)."""
    folder, fragments = label_out_of_range(tiny_cifar10, None, tmp_path)
    before = Snapshot(folder)
    expect_clean_failure(run_script("dataset.py", "check", "--path", folder, timeout=300), before, *fragments)


def _drop_dac_capabilities():
    """preexec_fn: remove CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that
    the script -- root here -- is refused a file its permission bits forbid, as any user is."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):                                    # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:           # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.fixture
def unprivileged(tmp_path):
    """The preexec_fn that makes a subprocess subject to file permissions (None when not root);
    skips when this machine allows neither."""
    if os.geteuid() != 0:
        return None
    probe = tmp_path / "probe"
    probe.write_text("secret")
    probe.chmod(0)
    try:
        res = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}).read()"], capture_output=True,
                             preexec_fn=_drop_dac_capabilities)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here ({exc}): a mode-000 file "
                    "stays readable, so an unreadable file cannot be made")
    finally:
        probe.unlink()
    if res.returncode == 0:
        pytest.skip("running as root and a mode-000 file stays readable without CAP_DAC_OVERRIDE")
    return _drop_dac_capabilities


def test_unreadable_data_file(tiny_cifar10, tmp_path, run_dir, unprivileged):
    folder = _copy(tiny_cifar10, tmp_path / "data")
    path = folder / "data_batch_2.bin"
    path.chmod(0)
    before = Snapshot(folder, run_dir)
    proc = run_script("train.py", *COMMON, *data_flags(folder), "--resume", "auto", "--save_checkpoint_path",
                      run_dir, preexec_fn=unprivileged, timeout=300)
    line = expect_clean_failure(proc, before, str(path), "cannot be read")
    assert "permission denied" in line.lower()


def test_unreadable_checkpoint(tiny_cifar10, tmp_path, finished, unprivileged):
    ckpt = tmp_path / "best.ckpt"
    shutil.copyfile(finished / "best.ckpt", ckpt)
    ckpt.chmod(0)
    before = Snapshot(ckpt)
    proc = run_script("evl.py", "--checkpoint_path", ckpt, *data_flags(tiny_cifar10), preexec_fn=unprivileged,
                      timeout=300)
    expect_clean_failure(proc, before, str(ckpt), "Permission denied")


# ------------------------------------------------------------------------------------------------
# Checkpoints

@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, tiny, trained_run):
    """Files that are not a checkpoint of the run's model."""
    import mindspore as ms
    import torch
    folder = tmp_path_factory.mktemp("bad_ckpts")
    # a checkpoint of another network (a small conv net)
    ms.save_checkpoint([{"name": "conv1.weight", "data": ms.Tensor(np.zeros((8, 3, 3, 3), np.float32))},
                        {"name": "fc.weight", "data": ms.Tensor(np.zeros((10, 8), np.float32))},
                        {"name": "fc.bias", "data": ms.Tensor(np.zeros(10, np.float32))}],
                       str(folder / "other_network.ckpt"))
    # a ConvMLP of another topology: the official tiny checkpoint converted by pth2ckpt.py
    ok(run_main("pth2ckpt.py", "--src", tiny["pth"], "--dst", folder / "other_convmlp.ckpt", *tiny["flags"],
                "--num_classes", tiny["num_classes"]))
    data = (trained_run["dir"] / "best.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "text.pth").write_text("ConvMLP weights: https://shi-labs.com/projects/convmlp/\n")
    torch.save(torch.load(tiny["pth"], weights_only=True), folder / "tiny_official.pth")
    return folder


class Payload:
    """A pickle that writes `marker` when it is unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


@pytest.fixture
def malicious(tmp_path, tiny):
    """``{kind: path}`` of .pth files whose unpickling runs code that writes ``marker``."""
    import torch
    marker = tmp_path / "pwned"
    state = torch.load(tiny["pth"], weights_only=True)
    paths = {"zip": tmp_path / "evil_zip.pth", "legacy": tmp_path / "evil_legacy.pth",
             "plain": tmp_path / "evil_plain.pth"}
    torch.save({"state_dict": state, "args": Payload(marker)}, paths["zip"])
    torch.save({"state_dict": state, "args": Payload(marker)}, paths["legacy"], _use_new_zipfile_serialization=False)
    paths["plain"].write_bytes(pickle.dumps(Payload(marker)))
    return paths, marker


ARCH_CASES = [  # (entry script and its flags for FILE, checkpoint, fragments)
    ("evl", "other_network.ckpt", ["no ConvMLP weights", "conv1.weight"]),
    ("pretrained", "other_network.ckpt", ["no ConvMLP weights", "conv1.weight"]),
    ("resume", "other_network.ckpt", ["no ConvMLP weights", "conv1.weight"]),
    ("export", "other_network.ckpt", ["no ConvMLP weights", "conv1.weight"]),
    ("evl", "other_convmlp.ckpt", ["does not fit the model", "unexpected: stages.1.blocks.1", "of another shape"]),
    ("pretrained", "other_convmlp.ckpt", ["does not fit the model", "unexpected: stages.1.blocks.1", "of another shape"]),
    ("resume", "other_convmlp.ckpt", ["does not fit the model", "unexpected: stages.1.blocks.1", "of another shape"]),
    ("evl", "truncated.ckpt", ["cannot read checkpoint", "truncated"]),
    ("pretrained", "truncated.ckpt", ["cannot read checkpoint", "truncated"]),
    ("resume", "truncated.ckpt", ["cannot read checkpoint", "truncated"]),
    ("export", "truncated.ckpt", ["cannot read checkpoint", "truncated"]),
    ("evl", "random.pth", ["cannot read checkpoint", "not a MindSpore .ckpt"]),
    ("evl", "text.pth", ["cannot read checkpoint", "not a MindSpore .ckpt"]),
    ("pretrained", "text.pth", ["cannot read checkpoint", "not a MindSpore .ckpt"]),
    ("evl", "tiny_official.pth", ["PyTorch", "pth2ckpt.py"]),
    ("pretrained", "tiny_official.pth", ["PyTorch", "pth2ckpt.py"]),
]


def run_entry(entry, ckpt, run_dir, data, tmp_path):
    """Give `ckpt` to an entry script as a user would (topology flags of the run's model)."""
    if entry == "evl":
        return run_main("evl.py", "--checkpoint_path", ckpt, *TINY_TOPOLOGY, "--image_size", "32", *data_flags(data))
    if entry == "export":
        return run_main("export.py", "--checkpoint_path", ckpt, *TINY_TOPOLOGY, "--image_size", "32",
                        "--file_name", tmp_path / "exported")
    if entry == "pretrained":  # a fresh run (a folder holding a run needs --resume)
        return run_main("train.py", *COMMON, *data_flags(data), "--pretrained_ckpt", ckpt,
                        "--save_checkpoint_path", tmp_path / "fresh_run")
    assert entry == "resume"
    return train_into(run_dir, *data_flags(data), "--resume", ckpt)


@pytest.mark.parametrize("entry, name, fragments", ARCH_CASES,
                         ids=[f"{e}-{n.replace('.', '_')}" for e, n, _ in ARCH_CASES])
def test_bad_checkpoint(entry, name, fragments, bad_checkpoints, run_dir, tiny_cifar10, tmp_path):
    ckpt = bad_checkpoints / name
    before = Snapshot(ckpt, run_dir, tiny_cifar10)
    proc = run_entry(entry, ckpt, run_dir, tiny_cifar10, tmp_path)
    expect_clean_failure(proc, before, str(ckpt), *fragments)
    assert not os.path.exists(tmp_path / "exported.mindir")


def test_fresh_run_into_a_folder_holding_a_run_is_refused(run_dir, tiny_cifar10):
    """Without --resume, train.py does not overwrite another run's checkpoints."""
    before = Snapshot(run_dir, tiny_cifar10)
    proc = run_main("train.py", *COMMON, *data_flags(tiny_cifar10), "--save_checkpoint_path", run_dir)
    expect_clean_failure(proc, before, str(run_dir / "last.ckpt"), "already holds a run", "--resume auto")


def test_truncated_last_ckpt_with_resume_auto(run_dir, tiny_cifar10):
    """A damaged last.ckpt is named; best.ckpt and the rest stay as they are."""
    data = (run_dir / "last.ckpt").read_bytes()
    (run_dir / "last.ckpt").write_bytes(data[: len(data) // 3])
    before = Snapshot(run_dir, tiny_cifar10)
    proc = train_into(run_dir, *data_flags(tiny_cifar10))
    expect_clean_failure(proc, before, str(run_dir / "last.ckpt"), "cannot read checkpoint")


def test_checkpoint_for_another_number_of_classes_to_evl(finished, tiny_cifar100):
    """A 10-class checkpoint evaluated on CIFAR-100: the class counts are named."""
    before = Snapshot(finished, tiny_cifar100)
    proc = run_main("evl.py", "--checkpoint_path", finished / "best.ckpt", "--dataset_choose", "cifar100",
                    *data_flags(tiny_cifar100))
    expect_clean_failure(proc, before, str(finished / "best.ckpt"), "10 classes", "num_classes 100")


PTH_BROKEN = [("random.pth", "not a PyTorch checkpoint"), ("text.pth", "not a PyTorch checkpoint")]


@pytest.mark.parametrize("name, fragment", PTH_BROKEN, ids=[n for n, _ in PTH_BROKEN])
def test_pth_that_is_not_a_checkpoint(name, fragment, bad_checkpoints, finished, tmp_path):
    """pth2ckpt.py refuses it and the existing --dst file is untouched."""
    dst = tmp_path / "converted.ckpt"
    shutil.copyfile(finished / "best.ckpt", dst)
    before = Snapshot(bad_checkpoints / name, dst)
    proc = run_main("pth2ckpt.py", "--src", bad_checkpoints / name, "--dst", dst, *PTH_TOPOLOGY)
    expect_clean_failure(proc, before, str(bad_checkpoints / name), fragment)
    assert not temp_files(tmp_path)


def test_pth_of_another_arch(bad_checkpoints, finished, tmp_path):
    """The official tiny .pth converted for ConvMLP-S: the keys that do not fit are named."""
    dst = tmp_path / "converted.ckpt"
    shutil.copyfile(finished / "best.ckpt", dst)
    src = bad_checkpoints / "tiny_official.pth"
    before = Snapshot(src, dst)
    proc = run_main("pth2ckpt.py", "--src", src, "--dst", dst, "--arch", "convmlp_s")
    expect_clean_failure(proc, before, str(src), "does not fit convmlp_s", "conv_stages")
    assert not temp_files(tmp_path)


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain"])
@pytest.mark.parametrize("entry", ["pth2ckpt", "evl", "pretrained"])
def test_malicious_pickle_never_runs(kind, entry, malicious, run_dir, tiny_cifar10, tmp_path):
    paths, marker = malicious
    src = paths[kind]
    before = Snapshot(src, run_dir, tiny_cifar10)
    if entry == "pth2ckpt":
        proc = run_main("pth2ckpt.py", "--src", src, "--dst", run_dir / "last.ckpt", *PTH_TOPOLOGY)
        fragments = ["refusing to load", "posix.system", "nothing in it was executed"]
    else:
        proc = run_entry(entry, src, run_dir, tiny_cifar10, tmp_path)
        fragments = ["PyTorch", "pth2ckpt.py"]
    expect_clean_failure(proc, before, str(src), *fragments)
    assert not marker.exists(), "the pickled code ran"


# ------------------------------------------------------------------------------------------------
# Configuration

CONFIG_CASES = [  # (script, YAML text or None, flags, fragments)
    ("train", "lr: 1.0e-3\nbatch_sise: 32\n", [], ["config file", "unknown key 'batch_sise'", "batch_size"]),
    ("train", None, ["--batch_sise", "32"], ["command line", "unknown key 'batch_sise'", "batch_size"]),
    ("evl", None, ["--chekpoint_path", "x.ckpt"], ["unknown key 'chekpoint_path'", "checkpoint_path"]),
    ("export", None, ["--imagesize", "32"], ["unknown key 'imagesize'"]),
    ("infer", None, ["--top_k", "0", "x.png"], ["--top_k", "'0'"]),
    ("train", None, ["--batch_size", "-4"], ["'batch_size'", "'-4'", ">= 1"]),
    ("train", "batch_size: -4\n", [], ["config file", "'batch_size'", "-4"]),
    ("train", None, ["--dataset_choose", "svhn"], ["'dataset_choose'", "'svhn'", "cifar10, cifar100"]),
    ("evl", None, ["--dataset_choose", "svhn"], ["'dataset_choose'", "'svhn'"]),
    ("train", None, ["--amp_level", "O4"], ["'amp_level'", "'O4'", "O0, O1, O2, O3"]),
    ("train", "amp_level: O5\n", [], ["config file", "'amp_level'", "O5"]),
    ("train", None, ["--loss_scale_type", "dynamic"], ["loss_scale_type dynamic", "CPU"]),
    ("train", None, ["--loss_scale_type", "fixed", "--loss_scale", "0"], ["'loss_scale'", "'0'"]),
    ("export", None, ["--export_batch_size", "-1"], ["--export_batch_size", "'-1'"]),
    ("dataset", None, ["generate", "--train", "-5"], ["--train", "'-5'"]),
    ("dataset", None, ["check", "--dataset", "svhn", "--path", "."], ["--dataset", "'svhn'"]),
    ("pth2ckpt", None, ["--src", "x.pth", "--dst", "y.ckpt", "--arch", "convmlp_xl"], ["--arch", "'convmlp_xl'"]),
]


@pytest.mark.parametrize("script, yaml_text, flags, fragments", CONFIG_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIG_CASES)])
def test_bad_config(script, yaml_text, flags, fragments, run_dir, tiny_cifar10, tmp_path):
    args = list(flags)
    if yaml_text is not None:
        cfg = tmp_path / "my_config.yaml"
        cfg.write_text(yaml_text)
        args += ["--config", cfg]
        fragments = [f.replace("config file", f"config file {cfg}") for f in fragments]
    if script == "train":
        args = override([*COMMON, *data_flags(tiny_cifar10), "--resume", "auto", "--save_checkpoint_path", run_dir],
                        *args)
    elif script in ("evl", "export", "infer") and "--chekpoint_path" not in flags:
        args = ["--checkpoint_path", run_dir / "best.ckpt", *args]
    if script == "dataset":
        args = [a if a != "." else str(tiny_cifar10) for a in args] + (["--out", tmp_path / "gen"]
                                                                       if "generate" in args else [])
    before = Snapshot(run_dir, tiny_cifar10)
    proc = run_main(f"{script}.py", *args)
    expect_clean_failure(proc, before, *fragments)
    assert not os.path.exists(tmp_path / "gen")


# ------------------------------------------------------------------------------------------------
# Training failures: NaN, a full disk

def test_loss_going_nan_keeps_every_file(run_dir, tiny_cifar10):
    """Resumed with an absurd lr, the loss overflows in the next epoch: one line naming the last
    good checkpoint; checkpoints and metrics unchanged."""
    before = Snapshot(*[run_dir / f for f in ("last.ckpt", "best.ckpt", "metrics.csv")], tiny_cifar10)
    proc = train_into(run_dir, *data_flags(tiny_cifar10), "--lr", "1e30", "--warmup_epochs", "0")
    line = expect_clean_failure(proc, before, "loss became", f"at epoch {TRAIN_EPOCHS + 1} step",
                                str(run_dir / "last.ckpt"))
    assert "last good checkpoint" in line
    assert not temp_files(run_dir)


@pytest.fixture
def small_fs(tmp_path):
    """``mount(free_bytes)``: a tmpfs at ``tmp_path/fs`` with about `free_bytes` free after
    `holds` is copied in; unmounted at the end. Skips when mounting is not allowed."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    mounted = []

    def mount(holds, free_bytes):
        need_kb = sum(os.path.getsize(p) for p in holds) // 1024 + len(holds) * 4 + free_bytes // 1024 + 4
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={need_kb}k", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or res.returncode}); the "
                        "full-disk case needs root or CAP_SYS_ADMIN")
        mounted.append(mnt)
        for p in holds:
            shutil.copyfile(p, mnt / os.path.basename(p))
        # fill what is left beyond `free_bytes`
        st = os.statvfs(mnt)
        extra = st.f_bavail * st.f_frsize - free_bytes
        if extra > 0:
            with open(mnt / "filler", "wb") as f:
                try:
                    f.write(b"\0" * extra)
                except OSError:
                    pass
        return mnt

    yield mount
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


@pytest.mark.parametrize("free, culprit", [(64 * 1024, f"epoch_{TRAIN_EPOCHS + 1:04d}.ckpt"), (0, "config.yaml")],
                         ids=["full-during-checkpoint-save", "full-from-the-start"])
def test_full_disk(free, culprit, small_fs, finished, tiny_cifar10):
    """The run folder on a tiny tmpfs holding last.ckpt: with 64 KiB free the run trains one more
    epoch and cannot save it; with nothing free it cannot even write config.yaml. Either way: one
    line naming the file and the cause, last.ckpt intact, no temporary file left."""
    mnt = small_fs([finished / "last.ckpt"], free)
    before = Snapshot(mnt / "last.ckpt", tiny_cifar10)
    proc = train_into(mnt, *data_flags(tiny_cifar10))
    expect_clean_failure(proc, before, str(mnt / culprit), "No space left on device")
    assert not temp_files(mnt), os.listdir(mnt)
