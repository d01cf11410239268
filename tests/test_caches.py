"""A cache deletes only what it made: the graph cache (``src/platform/graph_cache.py``) and the C++
kernel cache (``model/cpu_kernels/build.py``) mark every folder they create (``model/cache.py``),
prune and empty only marked folders, and use a subfolder of their own in a root that already
holds other things. Every test puts the user's files and folders in the root first and checks
that each of them is still there, byte for byte, afterwards."""
import hashlib
import logging
import os

import pytest

from model.cache import MARKER, cache_root, is_marked, make_folder
from src.config import load_config
from src.platform import graph_cache


def tree(root):
    """``{relative path: sha256 or 'folder'}`` of everything under `root`."""
    out = {}
    for base, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), root)] = "folder"
        for f in files:
            with open(os.path.join(base, f), "rb") as fh:
                out[os.path.relpath(os.path.join(base, f), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def users_things(root, folders=30):
    """`folders` folders of the user's (one file each, with old times), and two loose files."""
    os.makedirs(root, exist_ok=True)
    for i in range(folders):
        folder = os.path.join(root, f"project_{i:02d}")
        os.makedirs(folder)
        with open(os.path.join(folder, "notes.txt"), "w") as f:
            f.write(f"project {i}")
        os.utime(folder, (1000 + i, 1000 + i))
    loose = ("train-0123456789abcdef0123.lock", "eval-notes.txt")
    for name in loose:
        with open(os.path.join(root, name), "w") as f:
            f.write("mine")
    return {k: v for k, v in tree(root).items() if k.startswith("project_") or k in loose}


@pytest.fixture
def open_cache(monkeypatch):
    """``open_cache(root, batch_size=..., keep=...)``: open_graph_cache as a new process would; the
    MindSpore variables it sets and its per-process folder are restored after the test."""
    for var in ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    opened = []

    def open_(root, batch_size=8, keep=graph_cache.KEEP):
        for cache in opened:
            cache.close()
        for var in ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(graph_cache, "_process_folder", None)
        cfg = load_config(["--device_target", "CPU", "--batch_size", str(batch_size)])
        opened.append(graph_cache.open_graph_cache(cfg, "train", logging.getLogger("test_caches"), "CPU",
                                                   root=str(root), keep=keep))
        return opened[-1]
    yield open_
    for cache in opened:
        cache.close()


def fake_graph(folder):
    path = os.path.join(folder, "rank_0", "graph_cache", "compile_cache_0.mindir")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"graph")


def test_graph_cache_in_a_root_full_of_the_users_folders_touches_none_of_them(open_cache, tmp_path):
    root = tmp_path / "root"
    before = users_things(root)
    made = []
    for bs in range(8, 8 + 4 * 8, 4):        # 8 settings, 3 kept: 5 of its own folders pruned
        cache = open_cache(root, batch_size=bs, keep=3)
        assert cache.state == "miss" and is_marked(cache.folder)
        fake_graph(cache.folder)
        cache.commit()
        made.append(cache.folder)
    own = os.path.dirname(made[0])
    assert own == str(root / "convmlp_graph_cache") and is_marked(own)
    assert {k: v for k, v in tree(root).items() if k in before} == before     # every user's thing, unchanged
    assert sorted(n for n in os.listdir(own) if not n.endswith(".lock") and n != MARKER) == \
        sorted(os.path.basename(f) for f in made[-3:])


def test_pruning_in_its_own_root_skips_what_the_user_put_there(open_cache, tmp_path):
    root = tmp_path / "root"
    first = open_cache(root, batch_size=8, keep=1)       # a new root: the cache's own, marked
    assert os.path.dirname(first.folder) == str(root) and is_marked(root)
    before = users_things(root, folders=5)
    for bs in (12, 16, 20):
        open_cache(root, batch_size=bs, keep=1)
    after = tree(root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not os.path.exists(first.folder)            # its own folders are pruned as before


def test_pruning_keeps_a_folder_that_another_process_holds(open_cache, tmp_path):
    """Pruning (src/platform/cleanup.py: prune_folders, shared with the image checks) takes each
    folder's lock file first: a folder in use elsewhere stays, and goes at a prune after it is free."""
    import fcntl
    root = tmp_path / "root"
    held = open_cache(root, batch_size=8, keep=1)
    fake_graph(held.folder)
    held.close()
    fd = os.open(held.folder + ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)                     # as another process using that setting would
    try:
        other = open_cache(root, batch_size=12, keep=1)
        assert os.path.isdir(held.folder) and is_marked(other.folder)
    finally:
        os.close(fd)
    open_cache(root, batch_size=16, keep=1)
    assert not os.path.exists(held.folder) and not os.path.exists(held.folder + ".lock")
    assert not os.path.exists(other.folder)


def test_a_folder_under_the_caches_name_that_it_did_not_make_is_left_alone(open_cache, tmp_path):
    root = tmp_path / "root"
    probe = open_cache(root, batch_size=8)
    name = os.path.basename(probe.folder)
    probe.close()
    import shutil
    shutil.rmtree(probe.folder)
    os.makedirs(probe.folder)                          # the user's folder, by chance under that name
    with open(os.path.join(probe.folder, "thesis.tex"), "w") as f:
        f.write("years of work")
    before = tree(root)
    cache = open_cache(root, batch_size=8)
    assert cache.state == "off" and tree(root) == before and name in os.listdir(root)


def test_an_empty_root_is_adopted_and_a_file_blocks_only_the_cache(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cache_root(str(empty), "own") == str(empty) and is_marked(str(empty))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "own").write_text("a file of the user's under the subfolder's name")
    with pytest.raises(OSError):
        cache_root(str(busy), "own")
    assert (busy / "own").read_text().startswith("a file of the user's")
    assert make_folder(str(tmp_path), "busy") == str(busy) and not is_marked(str(busy))


def test_kernel_cache_in_a_root_holding_the_users_files(tmp_path, monkeypatch):
    from model.cpu_kernels import build
    root = tmp_path / "kernels"
    before = users_things(root, folders=3)
    monkeypatch.setenv("CONVMLP_KERNEL_CACHE", str(root))
    folder = build._cache_folder("0123456789abcdef0123", with_conv=False)
    assert folder == str(root / "convmlp_kernel_cache" / "0123456789abcdef0123") and is_marked(folder)
    assert {k: v for k, v in tree(root).items() if k in before} == before
    # a folder under a key's name that the cache did not make is never used
    os.makedirs(root / "convmlp_kernel_cache" / "fedcba9876543210fedc")
    monkeypatch.setattr(build.tempfile, "gettempdir", lambda: str(tmp_path / "fallback"))
    other = build._cache_folder("fedcba9876543210fedc", with_conv=False)
    assert other == str(tmp_path / "fallback" / f"convmlp_mindspore_kernels_{os.getuid()}" / "fedcba9876543210fedc")
    assert os.listdir(root / "convmlp_kernel_cache" / "fedcba9876543210fedc") == []
