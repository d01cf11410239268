"""ModelArts support (``run_modelarts: true``): data_url is copied to the node before training, the
outputs go to train_url after every epoch and at the end.

The ModelArts SDK (``moxing``) is replaced by a stand-in package written into a temporary folder:
its ``moxing.file.copy_parallel`` copies between local folders (the "OBS" paths are folders here)
and appends one JSON line per call to ``$FAKE_MOXING_LOG`` (source, destination, the files it
copied, the data rows of each ``.csv``), so the tests can see what arrived when.
"""
import filecmp
import json
import logging
import os
import sys
import threading
import time

import pytest

from helpers import NO_AUG, TINY_TOPOLOGY, assert_user_error, ok, run_main, run_script
from src.data import cifar, synthetic
from src.config import load_config
from src.platform.errors import ConfigError, DataError

FAKE_MOXING = '''"""Stand-in for the ModelArts SDK: copy_parallel between local folders, every call logged."""
import json
import os
import shutil


def copy_parallel(src_url, dst_url):
    if not os.path.exists(src_url):
        raise RuntimeError(f"moxing: source {src_url} does not exist\\n(second line of detail)")
    if os.path.isdir(src_url):
        shutil.copytree(src_url, dst_url, dirs_exist_ok=True)
    else:
        shutil.copy2(src_url, dst_url)
    files, csv_rows = [], {}
    for root, _, names in os.walk(dst_url):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), dst_url)
            files.append(rel)
            if name.endswith(".csv"):
                with open(os.path.join(root, name)) as f:
                    csv_rows[rel] = len(f.read().strip().splitlines()) - 1
    with open(os.environ["FAKE_MOXING_LOG"], "a") as f:
        f.write(json.dumps({"src": src_url, "dst": dst_url, "files": sorted(files), "csv_rows": csv_rows}) + "\\n")
'''


@pytest.fixture(scope="module")
def moxing_dir(tmp_path_factory):
    """A folder holding the stand-in ``moxing`` package (put it on PYTHONPATH / sys.path)."""
    root = tmp_path_factory.mktemp("fake_sdk")
    (root / "moxing").mkdir()
    (root / "moxing" / "__init__.py").write_text('"""Stand-in ModelArts SDK."""\nfrom . import file  # noqa: F401\n')
    (root / "moxing" / "file.py").write_text(FAKE_MOXING)
    return str(root)


def read_calls(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def sdk(moxing_dir, tmp_path, monkeypatch):
    """The stand-in SDK importable in this process (only during the test); yields the path of its call log."""
    monkeypatch.syspath_prepend(moxing_dir)
    log = str(tmp_path / "moxing_calls.jsonl")
    monkeypatch.setenv("FAKE_MOXING_LOG", log)
    yield log
    for name in ("moxing.file", "moxing"):    # later tests must not find the stand-in
        sys.modules.pop(name, None)


def modelarts_cfg(data_url, train_url, local, *extra):
    return load_config(["--run_modelarts", "true", "--data_url", str(data_url), "--train_url", str(train_url),
                        "--modelarts_data_path", str(local), *extra])


LOG = logging.getLogger("test_modelarts")


# ------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("missing", ["data_url", "train_url"])
def test_run_modelarts_requires_data_url_and_train_url(sdk, missing):
    given = {"data_url": "obs://bucket/cifar", "train_url": "obs://bucket/out"}
    del given[missing]
    argv = ["--run_modelarts", "true"] + [a for k, v in given.items() for a in (f"--{k}", v)]
    with pytest.raises(ConfigError, match=f"run_modelarts: true needs {missing} "):
        load_config(argv)
    load_config(argv + [f"--{missing}", "obs://bucket/x"])             # complete: accepted
    assert load_config([]).data_url is None                               # off: not needed


def test_train_py_without_data_url_is_a_one_line_error(sdk, tmp_path):
    proc = run_main("train.py", "--run_modelarts", "true", "--train_url", tmp_path / "obs_out")
    assert_user_error(proc, "run_modelarts: true needs data_url", "--data_url")


# ------------------------------------------------------------------------------------ prepare_data
def test_data_url_holding_the_cifar_folder_is_copied_and_the_paths_point_inside(sdk, tiny_cifar10, tmp_path):
    obs = tmp_path / "obs_data"
    synthetic.write_synthetic(str(obs / "cifar-10-batches-bin"), "cifar10", n_train=20, n_val=10, seed=0)
    local = tmp_path / "cache" / "data"
    cfg = modelarts_cfg(obs, tmp_path / "obs_out", local)
    from src.train.modelarts import prepare_data
    folder = prepare_data(cfg, LOG, rank=0)
    assert folder == cfg.train_data_path == cfg.val_data_path == str(local / "cifar-10-batches-bin")
    cmp = filecmp.dircmp(str(obs / "cifar-10-batches-bin"), folder)
    assert cmp.left_list == cmp.right_list and not cmp.diff_files
    assert [(c["src"], c["dst"]) for c in read_calls(sdk)] == [(str(obs), str(local))]
    # a second run on the same machine finds the finished copy of the same data_url: no new copy
    cfg2 = modelarts_cfg(obs, tmp_path / "obs_out", local)
    assert prepare_data(cfg2, LOG, rank=0) == folder and len(read_calls(sdk)) == 1


def test_data_url_that_is_the_bin_folder_itself_is_used_as_is(sdk, tmp_path):
    obs = synthetic.write_synthetic(str(tmp_path / "obs" / "my-cifar100"), "cifar100", n_train=20, n_val=10, seed=0)
    local = tmp_path / "cache"
    cfg = modelarts_cfg(obs, tmp_path / "obs_out", local, "--dataset_choose", "cifar100")
    from src.train.modelarts import prepare_data
    assert prepare_data(cfg, LOG) == cfg.train_data_path == str(local)
    assert cifar.count_records(cfg.train_data_path, "cifar100", "train") == 20


def test_data_url_without_a_dataset_names_the_url(sdk, tmp_path):
    obs = tmp_path / "obs_data"
    (obs / "cifar-100-binary").mkdir(parents=True)
    from src.train.modelarts import prepare_data
    cfg = modelarts_cfg(obs, tmp_path / "out", tmp_path / "cache")
    with pytest.raises(DataError, match=f"data_url {obs} .*neither a cifar-10-batches-bin/ folder nor .bin "
                                        r"files \(found: cifar-100-binary\)"):
        prepare_data(cfg, LOG)


def test_a_failed_copy_is_one_line_naming_data_url(sdk, tmp_path):
    from src.train.modelarts import ModelArtsError, prepare_data
    missing = tmp_path / "no_such_bucket"
    cfg = modelarts_cfg(missing, tmp_path / "out", tmp_path / "cache")
    with pytest.raises(ModelArtsError) as info:
        prepare_data(cfg, LOG)
    assert str(info.value) == (f"cannot copy data_url {missing} to {tmp_path / 'cache'}: moxing: source "
                               f"{missing} does not exist")


def test_other_local_ranks_wait_for_local_rank_0_and_use_its_copy(sdk, tmp_path, monkeypatch):
    """Rank 1 (LOCAL_RANK=1) of a data-parallel job copies nothing: it waits for local rank 0's
    completion marker, then points at the same folder; a failure of rank 0 reaches it too."""
    from src.train import modelarts
    monkeypatch.setattr(modelarts, "_POLL_S", 0.05)
    monkeypatch.setenv("LOCAL_RANK", "1")
    obs = tmp_path / "obs_data"
    synthetic.write_synthetic(str(obs / "cifar-10-batches-bin"), "cifar10", n_train=20, n_val=10, seed=0)
    local = tmp_path / "cache"
    waiter = modelarts_cfg(obs, tmp_path / "out", local, "--is_distributed", "true")
    copier = modelarts_cfg(obs, tmp_path / "out", local)          # a single process: local rank 0

    def copy_later():
        time.sleep(0.5)                     # the waiter is polling by then
        modelarts.prepare_data(copier, LOG, rank=0)
    thread = threading.Thread(target=copy_later)
    thread.start()
    folder = modelarts.prepare_data(waiter, LOG, rank=1)
    copies_when_it_returned = len(read_calls(sdk))
    thread.join()
    assert copies_when_it_returned == 1                             # it returned only after rank 0's copy
    assert folder == str(local / "cifar-10-batches-bin") == waiter.val_data_path
    assert len(read_calls(sdk)) == 1                                 # only local rank 0 copied

    bad = tmp_path / "missing"
    waiter = modelarts_cfg(bad, tmp_path / "out", tmp_path / "cache2", "--is_distributed", "true")
    copier = modelarts_cfg(bad, tmp_path / "out", tmp_path / "cache2")
    copier_error = []

    def copy_fails():
        try:
            modelarts.prepare_data(copier, LOG, rank=0)
        except modelarts.ModelArtsError as exc:
            copier_error.append(str(exc))
    thread = threading.Thread(target=copy_fails)
    thread.start()
    with pytest.raises(modelarts.ModelArtsError) as info:
        modelarts.prepare_data(waiter, LOG, rank=1)
    thread.join()
    assert copier_error == [str(info.value)] and str(info.value).startswith(f"cannot copy data_url {bad} ")


# ------------------------------------------------------------------------------------ sync_outputs
def test_sync_outputs_rank_0_only_and_failures_name_train_url(sdk, tmp_path, caplog):
    from src.train.modelarts import ModelArtsError, sync_outputs
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_text("hello\n")
    cfg = modelarts_cfg(tmp_path, tmp_path / "obs_out", tmp_path / "cache", "--save_checkpoint_path", str(out))
    assert sync_outputs(cfg, LOG, rank=1) is False and not read_calls(sdk)
    assert sync_outputs(cfg, LOG, rank=0) is True
    assert (tmp_path / "obs_out" / "train.log").read_text() == "hello\n"

    blocked = tmp_path / "a_file"
    blocked.write_text("x")                     # train_url is a file: the copy fails
    cfg.train_url = str(blocked)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert sync_outputs(cfg, LOG, rank=0, final=False) is False     # one epoch: a warning
    assert f"cannot copy the outputs {out} to train_url {blocked}" in caplog.text
    with pytest.raises(ModelArtsError, match=f"cannot copy the outputs {out} to train_url {blocked}: "):
        sync_outputs(cfg, LOG, rank=0)                                  # the end: an error


def test_nothing_happens_without_run_modelarts(tmp_path):
    from src.train.modelarts import prepare_data, sync_outputs
    cfg = load_config(["--save_checkpoint_path", str(tmp_path)])
    assert prepare_data(cfg, LOG) is None and sync_outputs(cfg, LOG) is False
    assert cfg.train_data_path == "data/cifar-10-batches-bin"


# ------------------------------------------------------------------------------------ train.py end to end
@pytest.fixture(scope="module")
def modelarts_run(moxing_dir, tmp_path_factory):
    """train.py as a ModelArts job runs it: 2 epochs, data_url = an "OBS" folder holding the CIFAR-10
    folder, train_url = another; the local copy and the outputs in temporary folders."""
    root = tmp_path_factory.mktemp("modelarts_job")
    obs_data, obs_out = root / "obs" / "cifar10", root / "obs" / "job_output"
    synthetic.write_synthetic(str(obs_data / "cifar-10-batches-bin"), "cifar10", n_train=96, n_val=40, seed=5)
    local_data, local_out = root / "cache" / "data", root / "output"
    log = str(root / "moxing_calls.jsonl")
    proc = run_script("train.py", *TINY_TOPOLOGY, *NO_AUG, "--image_size", "32", "--batch_size", "32",
                      "--epoch_size", "2", "--warmup_epochs", "1", "--cooldown_epochs", "0",
                      "--device_target", "CPU", "--run_modelarts", "true", "--data_url", obs_data,
                      "--train_url", obs_out, "--modelarts_data_path", local_data,
                      "--save_checkpoint_path", local_out,
                      env={"PYTHONPATH": moxing_dir, "FAKE_MOXING_LOG": log})
    ok(proc)
    return {"proc": proc, "calls": read_calls(log), "obs_data": str(obs_data), "obs_out": str(obs_out),
            "local_data": str(local_data), "local_out": str(local_out)}


def test_training_reads_the_copied_data(modelarts_run):
    r = modelarts_run
    first = r["calls"][0]
    assert (first["src"], first["dst"]) == (r["obs_data"], r["local_data"])
    copied = os.path.join(r["local_data"], "cifar-10-batches-bin")
    assert f"data: cifar10 train 96 images ({copied}), val 40 images ({copied})" in r["proc"].stdout


def test_outputs_arrive_in_train_url_after_each_epoch_and_at_the_end(modelarts_run):
    r = modelarts_run
    syncs = r["calls"][1:]
    # the outputs go through a staging folder inside the run folder, which holds only them
    assert [(os.path.dirname(c["src"]), c["dst"]) for c in syncs] == [(r["local_out"], r["obs_out"])] * 2
    assert not any(".train.lock" in c["files"] for c in syncs)
    after_epoch1, at_end = syncs
    assert {"epoch_0001.ckpt", "last.ckpt", "best.ckpt", "metrics.csv", "train.log", "config.yaml"} \
        <= set(after_epoch1["files"])
    assert after_epoch1["csv_rows"] == {"metrics.csv": 1} and "epoch_0002.ckpt" not in after_epoch1["files"]
    assert {"epoch_0002.ckpt", "last.ckpt", "best.ckpt"} <= set(at_end["files"])
    assert at_end["csv_rows"] == {"metrics.csv": 2}
    # train_url ends with the same bytes as the local run folder, the log including its last line
    for name in ("last.ckpt", "best.ckpt", "metrics.csv", "config.yaml"):
        assert filecmp.cmp(os.path.join(r["local_out"], name), os.path.join(r["obs_out"], name), shallow=False)
    with open(os.path.join(r["obs_out"], "train.log")) as f:
        assert "done: best val top-1" in f.read()


def test_train_log_states_the_learning_rate_plan(modelarts_run):
    out = modelarts_run["proc"].stdout
    assert ("lr plan (2 epochs): 1 warm-up epoch from 1e-06 to 3e-04, 1 cosine epoch to 1e-05, "
            "no cool-down") in out
    assert not [ln for ln in out.splitlines() if "cool-down" in ln and ln.startswith("warning:")]
