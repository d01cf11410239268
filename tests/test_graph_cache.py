"""The compiled-graph cache (src/platform/graph_cache.py): a second identical run loads its graphs instead of
compiling them and ends with the same weights; any change that reaches a graph gets its own
folder; a damaged folder is compiled again, never loaded.

End-to-end tests run train.py / evl.py on the tiny topology at 32 px with the cache root in a
temporary folder (``CONVMLP_GRAPH_CACHE``); the unit tests build keys and folders in-process
without compiling anything.
"""
import hashlib
import logging
import os
import re

import numpy as np
import pytest

from helpers import NO_AUG, TINY_TOPOLOGY, data_flags, ok, override, run_script
from src.platform import graph_cache
from src.config import SCHEMA, load_config
from model.cache import MARKER
from src.platform.graph_cache import MANIFEST, NOT_IN_GRAPH, cache_key, graph_fingerprint, open_graph_cache

COMMON = TINY_TOPOLOGY + NO_AUG + ["--image_size", "32", "--batch_size", "32", "--epoch_size", "1",
                                   "--warmup_epochs", "0", "--cooldown_epochs", "0", "--num_parallel_workers", "1"]


def cache_lines(proc):
    return [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if " graph cache: " in ln]


def checkpoint_arrays(path):
    """Every tensor of a train.py checkpoint (weights, BatchNorm statistics, optimiser state)."""
    import mindspore as ms
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items() if not isinstance(v, str)}


def assert_bit_exact(a, b):
    a, b = checkpoint_arrays(a), checkpoint_arrays(b)
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k].tobytes() != b[k].tobytes()]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def cached_files(root):
    """``{relative path: (size, mtime_ns)}`` of the graph files under `root`."""
    out = {}
    for base, _, names in os.walk(root):
        for n in names:
            if n.endswith(".mindir") or n.endswith(".hash"):
                st = os.stat(os.path.join(base, n))
                out[os.path.relpath(os.path.join(base, n), root)] = (st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def first_run(tiny_cifar10, tmp_path_factory):
    """One train.py run with an empty cache root: a miss that fills the cache."""
    root = tmp_path_factory.mktemp("graphs")
    base = tmp_path_factory.mktemp("runs")

    def train(name, *extra, cache_root=root):
        return run_script("train.py", *override(COMMON, *extra), *data_flags(tiny_cifar10),
                          "--save_checkpoint_path", base / name, env={"CONVMLP_GRAPH_CACHE": str(cache_root)})

    proc = ok(train("first"))
    return {"root": root, "base": base, "train": train, "proc": proc, "files": cached_files(root)}


def test_first_run_misses_and_fills_the_cache(first_run):
    lines = cache_lines(first_run["proc"])
    assert len(lines) == 1 and re.fullmatch(r"graph cache: miss \(.*/train-[0-9a-f]{20}\)", lines[0]), lines
    names = sorted(os.path.basename(p) for p in first_run["files"])
    # the training step and the evaluation graph, plus MindSpore's hash of the sources
    assert names == ["compile_cache_0.mindir", "compile_cache_1.mindir", "compile_dependency.hash"]


def test_same_command_twice_loads_the_graphs_and_gives_bit_exact_weights(first_run):
    proc = ok(first_run["train"]("second"))
    folder = re.search(r"graph cache: miss \((.*)\)", first_run["proc"].stdout).group(1)
    assert cache_lines(proc) == [f"graph cache: hit ({folder})"]
    # MindSpore loaded the files instead of compiling and writing them again
    assert cached_files(first_run["root"]) == first_run["files"]
    assert_bit_exact(first_run["base"] / "first" / "last.ckpt", first_run["base"] / "second" / "last.ckpt")
    val = re.compile(r"val top-1 \S+ top-5 \S+ loss \S+")
    assert val.search(proc.stdout).group(0) == val.search(first_run["proc"].stdout).group(0)


def test_another_batch_size_misses_and_trains_like_an_uncached_run(first_run):
    """Batch 16 must not load the batch-32 graphs (MindSpore alone would: its check only hashes the
    sources); the result equals a run without the cache."""
    cached = ok(first_run["train"]("b16", "--batch_size", "16"))
    assert [ln.split(" (")[0] for ln in cache_lines(cached)] == ["graph cache: miss"]
    assert "epoch:1 step:12," in cached.stdout   # 203 images // 16
    plain = ok(first_run["train"]("b16-plain", "--batch_size", "16", "--graph_cache", "false"))
    assert cache_lines(plain) == ["graph cache: off (graph_cache: false)"]
    assert_bit_exact(first_run["base"] / "b16" / "last.ckpt", first_run["base"] / "b16-plain" / "last.ckpt")


def test_another_image_size_misses(first_run):
    proc = ok(first_run["train"]("px48", "--image_size", "48"))
    assert [ln.split(" (")[0] for ln in cache_lines(proc)] == ["graph cache: miss"]
    assert "48px" in proc.stdout and "epoch:1 step:6," in proc.stdout
    folders = {n for n in os.listdir(first_run["root"]) if not n.endswith(".lock")}
    px32, px48 = (os.path.basename(re.search(r"graph cache: miss \((.*)\)", p.stdout).group(1))
                  for p in (first_run["proc"], proc))
    assert px48 != px32 and {px32, px48} <= folders   # its own folder; the 32 px folder is still there


def test_damaged_cache_recompiles_with_one_warning(first_run, tmp_path):
    """A truncated graph file: one warning, the folder is cleared and compiled again, exit 0 and
    the same weights as the first run."""
    import shutil
    root = tmp_path / "graphs"
    name = os.path.basename(re.search(r"graph cache: miss \((.*)\)", first_run["proc"].stdout).group(1))
    shutil.copytree(first_run["root"] / name, root / name)
    graph = str(root / name / "rank_0" / "graph_cache" / "compile_cache_0.mindir")
    size = os.path.getsize(graph)
    os.chmod(graph, 0o600)
    with open(graph, "r+b") as f:
        f.truncate(size // 2)
    proc = ok(first_run["train"]("damaged", cache_root=root))
    lines = cache_lines(proc)
    assert len(lines) == 2, lines
    assert lines[0] == (f"graph cache: {root / name} is damaged (rank_0/graph_cache/compile_cache_0.mindir has "
                        f"{size // 2} bytes, {size} expected); cleared, compiling again")
    assert lines[1] == f"graph cache: miss ({root / name})"
    assert proc.stderr.count("graph cache") == 0 and "Traceback" not in proc.stderr
    assert_bit_exact(first_run["base"] / "first" / "last.ckpt", first_run["base"] / "damaged" / "last.ckpt")
    with open(graph, "rb") as f, open(root / name / MANIFEST) as m:
        assert hashlib.sha256(f.read()).hexdigest() in m.read()   # recompiled, recorded again


def test_evl_has_its_own_folder_and_hits_the_second_time(first_run, tiny_cifar10):
    ckpt = first_run["base"] / "first" / "best.ckpt"
    env = {"CONVMLP_GRAPH_CACHE": str(first_run["root"])}
    runs = [ok(run_script("evl.py", "--checkpoint_path", ckpt, *data_flags(tiny_cifar10), env=env))
            for _ in range(2)]
    states = [cache_lines(p)[0].split(" (")[0] for p in runs]
    assert states == ["graph cache: miss", "graph cache: hit"]
    assert "/eval-" in cache_lines(runs[0])[0]
    assert runs[0].stdout.split("accuracy:")[1] == runs[1].stdout.split("accuracy:")[1]


# ------------------------------------------------------------------------------ the key
@pytest.fixture(scope="module")
def base_cfg():
    return load_config(["--cpu_kernels", "false"])


def key_of(cfg, **kw):
    args = dict(purpose="train", device="CPU", rank=0, world=1, data={"train": 203, "val": 61})
    args.update(kw)
    return cache_key(graph_fingerprint(cfg, **args))


def changed(cfg, **values):
    out = load_config(["--cpu_kernels", "false"])
    for k, v in cfg.to_dict().items():
        setattr(out, k, v)
    for k, v in values.items():
        setattr(out, k, v)
    return out


@pytest.mark.parametrize("values", [
    {"batch_size": 64}, {"eval_batch_size": 100}, {"image_size": 32}, {"num_classes": 100},
    {"arch": "convmlp_m"}, {"dims": [32, 64, 128]}, {"amp_level": "O2"}, {"loss_scale_type": "fixed"},
    {"loss_scale": 128.0}, {"drop_path_rate": 0.0}, {"weight_decay": 0.0}, {"epoch_size": 5},
    {"max_steps_per_epoch": 3}, {"warmup_epochs": 0}, {"lr": 1e-3}, {"cpu_kernels": True},
    {"mode": "pynative"}, {"is_distributed": True}, {"seed": 1}])
def test_a_change_that_reaches_the_graph_changes_the_key(base_cfg, values):
    assert key_of(changed(base_cfg, **values)) != key_of(base_cfg)


@pytest.mark.parametrize("values", [
    {"save_checkpoint_path": "/elsewhere"}, {"log_interval": 1}, {"resume": "auto"},
    {"pretrained_ckpt": "w.ckpt"}, {"checkpoint_path": "b.ckpt"}, {"train_data_path": "/d"},
    {"mixup": 0.0}, {"aa": None}, {"smoothing": 0.0}, {"num_parallel_workers": 8},
    {"keep_checkpoint_max": 1}, {"eval_interval": 5}, {"device_id": 3}, {"graph_cache": False}])
def test_a_change_that_never_reaches_a_graph_keeps_the_key(base_cfg, values):
    assert key_of(changed(base_cfg, **values)) == key_of(base_cfg)


def test_every_config_key_counts_unless_listed_as_outside_the_graph(base_cfg):
    """A new config key changes the key until it is listed in NOT_IN_GRAPH: at worst a recompile."""
    assert NOT_IN_GRAPH <= {k.name for k in SCHEMA}
    for k in SCHEMA:
        same = key_of(changed(base_cfg, **{k.name: f"changed-{k.name}"})) == key_of(base_cfg)
        assert same == (k.name in NOT_IN_GRAPH), k.name


@pytest.mark.parametrize("kw", [{"purpose": "eval"}, {"rank": 1}, {"world": 2}, {"device": "GPU"},
                                {"data": {"train": 204, "val": 61}}, {"data": {"train": 203, "val": 60}}])
def test_process_and_data_facts_change_the_key(base_cfg, kw):
    assert key_of(base_cfg, **kw) != key_of(base_cfg)
    assert key_of(base_cfg, **kw).startswith(kw.get("purpose", "train") + "-")


def test_mindspore_version_and_sources_change_the_key(base_cfg, monkeypatch, tmp_path):
    before = key_of(base_cfg)
    import mindspore
    monkeypatch.setattr(mindspore, "__version__", "0.0.1")
    assert key_of(base_cfg) != before
    monkeypatch.undo()
    (tmp_path / "model" / "csrc").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    kernel = tmp_path / "model" / "csrc" / "k.cc"
    kernel.write_text("int f() { return 1; }")
    monkeypatch.setattr(graph_cache, "REPO_ROOT", str(tmp_path))
    one = graph_cache._sources_digest()
    kernel.write_text("int f() { return 2; }")
    assert graph_cache._sources_digest() != one


# ------------------------------------------------------------------------------ the folder
@pytest.fixture
def fresh(monkeypatch, tmp_path, base_cfg, caplog):
    """``open_(cfg)``: open_graph_cache as a new process would, without touching the real
    environment (MindSpore's variables and the per-process folder are restored after the test).
    The previous "process" ends first (its lock is released) unless ``end_previous=False``; `env`:
    the new process's environment variables."""
    logger = logging.getLogger("test_graph_cache")
    caplog.set_level(logging.INFO, logger="test_graph_cache")
    opened = []
    # open_graph_cache sets MindSpore's variables in this process. Recording their state now (set,
    # then removed) makes monkeypatch restore exactly this state at the end, so the entry scripts
    # that later tests start do not inherit a test's cache folder.
    for var in ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)

    def open_(cfg=base_cfg, end_previous=True, env=None, **kw):
        if end_previous:
            for cache in opened:
                cache.close()
        for var in ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH"):
            monkeypatch.delenv(var, raising=False)
        for var, value in (env or {}).items():
            monkeypatch.setenv(var, value)
        monkeypatch.setattr(graph_cache, "_process_folder", None)
        opened.append(open_graph_cache(cfg, "train", logger, "CPU", root=str(tmp_path / "root"), **kw))
        return opened[-1]
    yield open_, caplog
    for cache in opened:
        cache.close()


def fake_compile(folder, content=b"graph"):
    """What MindSpore writes: rank_0/graph_cache/compile_cache_0.mindir, read-only."""
    path = os.path.join(folder, "rank_0", "graph_cache", "compile_cache_0.mindir")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.chmod(path, 0o600)
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, 0o400)
    return path


def test_miss_sets_mindspores_cache_path_then_commit_makes_a_hit(fresh):
    open_, log = fresh
    cache = open_()
    assert cache.state == "miss" and os.environ["MS_COMPILER_CACHE_PATH"] == cache.folder
    assert os.environ["MS_COMPILER_CACHE_ENABLE"] == "1"
    fake_compile(cache.folder)
    assert cache.commit() and not cache.commit()   # unchanged files: the manifest is not rewritten
    again = open_()
    assert (again.state, again.folder) == ("hit", cache.folder)
    assert [r.getMessage() for r in log.records] == [f"graph cache: miss ({cache.folder})",
                                                     f"graph cache: hit ({cache.folder})"]


def test_a_folder_without_manifest_is_a_miss_and_is_emptied(fresh):
    open_, _ = fresh
    stale = fake_compile(open_().folder)   # a run killed before commit()
    assert open_().state == "miss" and not os.path.exists(stale)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "swap", "delete", "manifest"])
def test_a_damaged_folder_is_cleared_with_one_warning(fresh, damage):
    open_, log = fresh
    cache = open_()
    graph = fake_compile(cache.folder, b"graph for batch 32" * 100)
    cache.commit()
    os.chmod(graph, 0o600)
    if damage == "truncate":
        with open(graph, "r+b") as f:
            f.truncate(100)
    elif damage == "garbage":
        with open(graph, "wb") as f:
            f.write(os.urandom(1800))
    elif damage == "swap":   # a valid file of the same size from another setting
        with open(graph, "wb") as f:
            f.write(b"graph for batch 64" * 100)
    elif damage == "delete":
        os.unlink(graph)
    else:
        with open(os.path.join(cache.folder, MANIFEST), "w") as f:
            f.write("{not json")
    log.clear()
    again = open_()
    warnings = [r.getMessage() for r in log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "compiling again" in warnings[0]
    assert again.state == "miss" and os.listdir(again.folder) == [MARKER]   # emptied but for the cache's mark


def test_files_written_after_the_manifest_are_not_trusted(fresh):
    open_, _ = fresh
    cache = open_()
    fake_compile(cache.folder)
    cache.commit()
    late = os.path.join(cache.folder, "rank_0", "graph_cache", "compile_cache_1.mindir")
    with open(late, "wb") as f:
        f.write(b"half-written evaluation graph")
    assert open_().state == "hit" and not os.path.exists(late)


def test_off_switches_leave_mindspore_alone(fresh, base_cfg):
    open_, log = fresh
    assert open_(changed(base_cfg, graph_cache=False)).state == "off"
    assert open_(changed(base_cfg, mode="pynative")).state == "off"
    assert open_(env={"MS_COMPILER_CACHE_PATH": "/users/own/cache"}).state == "off"
    assert os.environ["MS_COMPILER_CACHE_PATH"] == "/users/own/cache"
    assert "MS_COMPILER_CACHE_ENABLE" not in os.environ
    assert [r.getMessage().split(" (")[1].split(")")[0].split(":")[0] for r in log.records] == \
        ["graph_cache", "mode pynative", "MS_COMPILER_CACHE_ENABLE / MS_COMPILER_CACHE_PATH set in the environment"]


def test_a_second_setting_in_the_same_process_switches_caching_off(fresh, base_cfg):
    """MindSpore reads its cache path once per process: later graphs must not land in the
    first setting's folder."""
    open_, log = fresh
    first = open_()
    second = open_graph_cache(changed(base_cfg, batch_size=7), "train", logging.getLogger("test_graph_cache"),
                              "CPU", root=os.path.dirname(first.folder))
    assert second.state == "off" and os.environ["MS_COMPILER_CACHE_ENABLE"] == "0"
    assert log.records[-1].getMessage() == f"graph cache: off (this process already cached its graphs in {first.folder})"


def test_a_folder_in_use_by_another_process_is_not_shared(fresh):
    open_, log = fresh
    running = open_()
    assert running.state == "miss"
    second = open_(end_previous=False)
    assert second.state == "off" and second.folder is None
    assert log.records[-1].getMessage() == f"graph cache: off ({running.folder} is in use by another process)"


def test_only_the_most_recently_used_folders_are_kept(fresh, base_cfg, tmp_path):
    open_, _ = fresh
    folders = []
    for bs in (8, 16, 24, 32):
        cache = open_(changed(base_cfg, batch_size=bs), keep=3)
        fake_compile(cache.folder)
        cache.commit()
        os.utime(os.path.join(cache.folder, MANIFEST), (1000 + bs, 1000 + bs))
        folders.append(cache.folder)
    open_(changed(base_cfg, batch_size=40), keep=3)
    left = sorted(os.path.join(tmp_path / "root", n) for n in os.listdir(tmp_path / "root") if not n.endswith(".lock"))
    assert folders[0] not in left and folders[1] not in left and folders[2] in left and folders[3] in left
    assert np.sum([n.endswith(".lock") for n in os.listdir(tmp_path / "root")]) == 3
