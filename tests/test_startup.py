"""A start that does not grow with the tree (src/data/imagefolder.py: the listing and the compact
file lists; src/data/checked.py: the image check kept per version of a tree): the order of the files
is the order of a plain walk, every image is checked once (the next start checks only what changed),
the kept results survive damage and concurrent processes, the cache deletes only what it made, and
the memory per file is bounded. The timings at scale are benchmarks/bench_startup.py's."""
import fcntl
import logging
import os
import pickle
import re
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from model.cache import MARKER
from src.data import checked, imagefolder
from src.data.records import Source
from src.platform.fileio import OutputError
from helpers import REPO, run_main


def jpeg(path, seed=0, size=(20, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A new, empty cache root of the test's own (as a user's first start finds it)."""
    root = tmp_path / "cache"
    monkeypatch.setenv(checked.ENV_ROOT, str(root))
    return root


@pytest.fixture
def tree(tmp_path):
    """Three classes of four JPEG files each."""
    root = tmp_path / "tree"
    for c, name in enumerate(["cat", "dog", "bird"]):
        for i in range(4):
            jpeg(str(root / name / f"{i}.jpg"), seed=10 * c + i)
    return root


@pytest.fixture
def inspected(monkeypatch):
    """The files :func:`src.data.images.inspect_image` is called on (in any thread), in a list."""
    calls = []
    real = checked.inspect_image

    def counting(path, *args):
        calls.append(path)
        return real(path, *args)
    monkeypatch.setattr(checked, "inspect_image", counting)
    return calls


def kept_files(cache):
    """The kept results under the cache root `cache`."""
    return sorted(str(p) for p in cache.rglob("checked.npz"))


def check(root):
    """``python dataset.py check --path ROOT``, in this process: (exit status, its output)."""
    proc = run_main("dataset.py", "check", "--path", root)
    return proc.returncode, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------
# The listing: the order of a plain walk

def reference_walk(root):
    """The files of a tree as ``os.walk`` lists them (links followed, a folder reached again through a
    link not walked twice, hidden entries left out), classes and each folder's entries sorted by
    :func:`natural_key`: the listing as it was before it was made fast."""
    files = []
    for name in sorted((n for n in os.listdir(root) if not n.startswith(".") and os.path.isdir(os.path.join(root, n))),
                       key=imagefolder.natural_key):
        seen = set()
        for here, dirs, names in os.walk(os.path.join(root, name), followlinks=True):
            if os.path.realpath(here) in seen:
                dirs[:] = []
                continue
            seen.add(os.path.realpath(here))
            dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=imagefolder.natural_key)
            files += [os.path.join(here, n) for n in sorted(names, key=imagefolder.natural_key)
                      if not n.startswith(".") and n.lower().endswith((".jpg", ".png"))]
    return files


def test_files_are_listed_in_the_order_of_a_plain_walk(tmp_path):
    """Names that sort differently as text and as numbers (digit runs by value, leading zeros, case,
    runs at the start and the end, a non-ASCII digit), sub-folders, links: the same order."""
    rng = np.random.default_rng(3)
    parts = ["a", "B", "b", "img", "IMG_", "x", "_", "-", "0", "007", "7", "10", "2", "000", "99", "٣", "é"]
    root = tmp_path / "tree"
    for c in ["class10", "class2", "Class1", "z0", "z00"]:
        names = {"".join(rng.choice(parts, rng.integers(1, 6))) + ext for _ in range(60) for ext in (".jpg", ".PNG")}
        for name in names:
            sub = rng.choice(["", "", "sub1/", "sub10/", "Sub2/deeper/"])
            path = root / c / f"{sub}{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    os.symlink(root / "class2", root / "class10" / "linked")          # a link into another class
    os.symlink(root / "class2", root / "class2" / "sub1" / "loop")    # a link back up
    (root / "z0" / ".hidden.jpg").write_bytes(b"")
    scanned = imagefolder.scan_tree(str(root))
    assert list(scanned.files) == reference_walk(str(root)) and len(scanned) > 500
    assert scanned.classes == ["Class1", "class2", "class10", "z0", "z00"]


# ------------------------------------------------------------------------------------------------
# The check, kept

def test_a_second_start_checks_nothing_again(tree, cache, inspected):
    first = check(tree)
    assert first[0] == 0 and "3 classes, 12 good images, 0 bad" in first[1]
    assert sorted(inspected) == sorted(str(p) for p in tree.rglob("*.jpg"))
    inspected.clear()
    assert check(tree) == first and inspected == []
    imagefolder.check_images(imagefolder.scan_tree(str(tree)), min_side=None)
    assert len(inspected) == 12         # another decoding rule (what an image may cost): its own result
    inspected.clear()
    kept = imagefolder.check_images(imagefolder.scan_tree(str(tree)), min_side=None)
    assert inspected == [] and kept.sizes.tolist() == [[20, 16]] * 12 and kept.sizes.dtype == np.int32


def test_a_changed_or_added_file_is_checked_again_a_removed_one_dropped(tree, cache, inspected):
    before = imagefolder.check_images(imagefolder.scan_tree(str(tree)))
    inspected.clear()
    changed = jpeg(str(tree / "dog" / "1.jpg"), seed=99, size=(30, 12))       # same name, another image
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))        # whatever the clock's grain
    added = jpeg(str(tree / "cat" / "9.jpg"), size=(8, 8))
    os.remove(tree / "bird" / "2.jpg")
    after = imagefolder.check_images(imagefolder.scan_tree(str(tree)))
    assert sorted(inspected) == sorted([changed, added])
    sizes = dict(zip(after.files, after.sizes.tolist()))
    assert sizes[changed] == [30, 12] and sizes[added] == [8, 8] and len(after) == len(before) == 12
    assert str(tree / "bird" / "2.jpg") not in list(after.files)
    inspected.clear()
    again = imagefolder.check_images(imagefolder.scan_tree(str(tree)))
    assert inspected == [] and again.sizes.tolist() == after.sizes.tolist()


def test_a_bad_file_is_checked_at_every_start_and_named_as_given(tree, cache, inspected):
    bad = tree / "dog" / "broken.jpg"
    bad.write_bytes(b"not a picture")
    for start in ("first", "second"):
        inspected.clear()
        rc, out = check(tree)
        assert rc == 2 and f"bad: cannot read image '{bad}'" in out and "12 good images, 1 bad" in out
        assert len(inspected) == 13 if start == "first" else inspected == [str(bad)]


def test_a_damaged_cache_file_is_one_warning_and_made_again(tree, cache, inspected, caplog):
    check(tree)
    [kept] = kept_files(cache)
    with open(kept, "r+b") as f:       # cut in the middle, as a full disk or a crash could leave it
        f.truncate(os.path.getsize(kept) // 2)
    inspected.clear()
    caplog.clear()
    assert check(tree)[0] == 0 and len(inspected) == 12
    said = [r for r in caplog.records if kept in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"] and "is unreadable" in said[0].getMessage()
    assert "checking again" in said[0].getMessage() and "\n" not in said[0].getMessage()
    inspected.clear()
    caplog.clear()
    assert check(tree)[0] == 0 and inspected == [] and kept not in caplog.text


def test_a_first_check_of_a_large_tree_shows_its_progress(tree, cache, monkeypatch, caplog):
    monkeypatch.setattr(checked, "PROGRESS_FROM", 10)
    caplog.set_level(logging.INFO)
    assert check(tree)[0] == 0
    assert re.search(rf"checking the images of {re.escape(str(tree))} 12/12 ", caplog.text)
    caplog.clear()
    assert check(tree)[0] == 0 and "checking the images" not in caplog.text


# ------------------------------------------------------------------------------------------------
# A cache deletes only what it made

def test_the_cache_keeps_to_a_folder_of_its_own_and_prunes_only_its_own(tmp_path, monkeypatch):
    root = tmp_path / "my_folder"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    monkeypatch.setenv(checked.ENV_ROOT, str(root))
    monkeypatch.setattr(checked, "KEEP", 2)
    folders = []
    for k in range(3):
        jpeg(str(tmp_path / f"t{k}" / "a" / "0.jpg"))
        imagefolder.check_images(imagefolder.scan_tree(str(tmp_path / f"t{k}")))
        folders.append(os.path.dirname(checked.cache_file(str(tmp_path / f"t{k}"))))
        os.utime(os.path.join(folders[-1], "checked.npz"), (k, k))       # checked in this order
        if k == 0:     # a folder named like the cache's own, not made by it
            foreign = os.path.join(os.path.dirname(folders[0]), "0123456789abcdef0123")
            os.mkdir(foreign)
            with open(os.path.join(foreign, "checked.npz"), "w") as f:
                f.write("mine too")
            os.utime(os.path.join(foreign, "checked.npz"), (0, 0))
    own = root / "convmlp_image_checks"
    assert all(os.path.dirname(f) == str(own) for f in folders) and (own / MARKER).is_file()
    assert not os.path.exists(folders[0]) and os.path.isdir(folders[1]) and os.path.isdir(folders[2])
    assert (root / "notes.txt").read_text() == "mine"
    assert open(os.path.join(foreign, "checked.npz")).read() == "mine too"


# ------------------------------------------------------------------------------------------------
# Two processes (the ranks of a data-parallel run) check once

RANK = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from src.data import checked, imagefolder
    calls, real = [], checked.inspect_image
    def slow(path, *args):
        calls.append(path)
        time.sleep(0.05)
        return real(path, *args)
    checked.inspect_image = slow
    open(sys.argv[1] + ".ready", "w").close()
    while not os.path.exists(sys.argv[2] + ".ready"):      # both start checking at the same time
        time.sleep(0.01)
    tree = imagefolder.check_images(imagefolder.scan_tree({tree!r}), workers=1)
    print(len(calls), len(tree), tree.sizes.sum())
""")


def test_two_processes_on_one_tree_check_it_once(tree, cache, tmp_path):
    code = RANK.format(repo=REPO, tree=str(tree))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    procs = [subprocess.Popen([sys.executable, "-c", code, me, other], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.PIPE, env=dict(os.environ)) for me, other in ((a, b), (b, a))]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    counts = sorted(tuple(map(int, out.split())) for out, _ in outs)
    assert counts == [(0, 12, 12 * 36), (12, 12, 12 * 36)]
    waited = [err for _, err in outs if "waiting for another process that is checking the images" in err]
    assert len(waited) <= 1


# ------------------------------------------------------------------------------------------------
# Memory: no Python object per file

def test_the_file_lists_hold_no_python_object_per_file(tmp_path, cache):
    """Held: the relative path's bytes and 28 bytes per file (start, end, label, size), under 100
    bytes per file for these 20-byte relative paths and less than half of what the same paths take
    as a list of str; at the peak of listing and checking (one class's names at a time), under 400
    bytes per file; the source the pipeline pickles to its worker processes, under 60 bytes per file."""
    n, root = 3000, tmp_path / "tree"
    first = jpeg(str(tmp_path / "one.jpg"))
    for i in range(n):
        folder = root / f"class_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(first, folder / f"img_{i:05d}.jpg")
    imagefolder.check_images(imagefolder.scan_tree(str(root)))                  # the check, kept
    tracemalloc.start()
    try:
        listed = imagefolder.check_images(imagefolder.scan_tree(str(root)))
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        as_str = list(listed.files)
        str_held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(listed) == n and as_str[0] == str(root / "class_0" / "img_00000.jpg")
    assert held / n < 100 and held < str_held / 2 and peak / n < 400, (held / n, str_held / n, peak / n)
    assert len(pickle.dumps(Source(listed.files, listed.labels))) / n < 60
    part = listed.subset(np.arange(1, n, 2))
    assert list(part.files) == as_str[1::2] and part.labels.tolist() == listed.labels[1::2].tolist()


# ------------------------------------------------------------------------------------------------
# A process that holds a tree too long

def test_a_process_that_holds_the_tree_too_long_is_waited_for_within_a_bound(tree, cache, inspected, monkeypatch,
                                                                            caplog):
    """Another process holds the tree's lock and never finishes: this one says that it waits, and after
    WAIT_S checks on its own (with one warning) instead of waiting for ever."""
    imagefolder.check_images(imagefolder.scan_tree(str(tree)))
    lock = os.open(os.path.dirname(checked.cache_file(str(tree))) + ".lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)               # as the other process would hold it
    monkeypatch.setattr(checked, "WAIT_S", 1.0)
    caplog.set_level(logging.INFO)
    inspected.clear()
    try:
        got = imagefolder.check_images(imagefolder.scan_tree(str(tree)))
    finally:
        os.close(lock)                             # as that process's end releases it
    assert len(got) == 12 and len(inspected) == 12
    said = [r for r in caplog.records if str(tree) in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO", "WARNING"] and "waiting for another process" in said[0].getMessage()
    assert "checking them without the cache" in said[1].getMessage()
    inspected.clear()
    imagefolder.check_images(imagefolder.scan_tree(str(tree)))
    assert inspected == []


def test_a_cache_that_cannot_be_used_is_one_warning_and_the_check_goes_on(tree, tmp_path, monkeypatch, inspected,
                                                                         caplog):
    not_a_folder = tmp_path / "cache_file"
    not_a_folder.write_text("mine")
    monkeypatch.setenv(checked.ENV_ROOT, str(not_a_folder))
    got = imagefolder.check_images(imagefolder.scan_tree(str(tree)))
    assert len(got) == 12 and len(inspected) == 12 and not_a_folder.read_text() == "mine"
    said = [r for r in caplog.records if "cannot keep the image check" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"] and str(not_a_folder) in said[0].getMessage()

    monkeypatch.setenv(checked.ENV_ROOT, str(tmp_path / "cache"))          # a disk that fills up

    def full(path, *args):
        raise OutputError(f"cannot write {path}: No space left on device")
    monkeypatch.setattr(checked, "_write", full)
    caplog.clear()
    got = imagefolder.check_images(imagefolder.scan_tree(str(tree)))
    said = [r for r in caplog.records if "cannot keep the image check" in r.getMessage()]
    assert len(got) == 12 and [r.levelname for r in said] == ["WARNING"] and "No space left" in said[0].getMessage()
