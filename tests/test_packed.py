"""Packed data (``dataset.py pack``: src/data/packed_write.py; read: src/data/packed_read.py): an image
tree or a CIFAR folder written as MindRecord shards, read by train.py, evl.py and ``dataset.py check``
wherever they read a folder.

* a generated 5-class tree packed with its original bytes trains, and evl.py gives the checkpoint the
  same top-1 and loss on the pack as on the folder (the pipelines' batches are equal, pixel for pixel,
  large JPEGs decoded at the same reduced size); ``--max_side`` re-encodes large images upright;
* CIFAR binaries pack into their train and val splits (lossless PNG) and train;
* a pack killed after its second shard resumes: the finished shards are verified and kept (one that
  was damaged since is written again) and the result equals an uninterrupted pack, byte for byte;
* bad input is one ``error:`` line and nothing written: a bad image (or it is skipped and counted),
  an output inside the tree, an output that is not a pack (or a pack holding other files), a second
  pack of the same output, a full disk (up front, and mid-write), ``val_fraction`` on a pack; a
  truncated or changed shard is one line naming it;
* the train shards are disjoint halves in the seed's order; under msrun two workers on a pack equal
  one process over the same global batches."""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import (MSRUN, MSRUN_MARKS, NO_AUG, REPO, TINY_TOPOLOGY, VENV_BIN, Snapshot, assert_user_error,
                     expect_clean_failure, free_port, generated, ok, override, plugin_env, run_main, run_script, sha)

N_TRAIN, N_VAL, CLASSES = 60, 30, 5
TRAIN = [*TINY_TOPOLOGY, *NO_AUG, "--dataset_choose", "imagefolder", "--image_size", "32", "--batch_size", "10",
         "--epoch_size", "2", "--warmup_epochs", "0", "--cooldown_epochs", "0", "--lr", "2e-3", "--drop_path_rate", "0",
         "--num_parallel_workers", "1", "--graph_cache", "false"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A generated tree (train/ and val/ of JPEG and PNG files) and its pack, 20 records per shard."""
    root = tmp_path_factory.mktemp("packed")
    ok(run_main("dataset.py", "generate", "--format", "imagefolder", "--out", root / "tree", "--classes", CLASSES,
                "--train", N_TRAIN, "--val", N_VAL, "--seed", "2"))
    proc = ok(run_main("dataset.py", "pack", "--path", root / "tree", "--out", root / "tree.mindrecord",
                       "--shard_size", "20"))
    assert "train 60 records in 3 shard(s), val 30 records in 2 shard(s)" in proc.stdout
    return root


def manifest(pack):
    with open(os.path.join(pack, "manifest.json")) as f:
        return json.load(f)


def pack_files(pack):
    """``{name: sha256}`` of a pack's files, and its manifest without the files' recorded times."""
    out = {n: sha(os.path.join(pack, n)) for n in sorted(os.listdir(pack)) if n != "manifest.json"}
    m = manifest(pack)
    m.pop("stamps")
    return out, m


# ------------------------------------------------------------------------------------------------
# The same images, the same numbers
def test_pack_holds_each_split_class_names_and_checksums(tree):
    m = manifest(tree / "tree.mindrecord")
    assert m["classes"] == [f"synthetic_{i}" for i in range(CLASSES)] and m["max_side"] is None
    assert [s["file"] for s in m["splits"]["train"]["shards"]] == [f"train-0000{k}-of-00003.mindrecord" for k in range(3)]
    assert [s["records"] for s in m["splits"]["val"]["shards"]] == [20, 10]
    assert sum(m["splits"]["train"]["counts"]) == N_TRAIN
    proc = ok(run_main("dataset.py", "check", "--path", tree / "tree.mindrecord"))
    assert "train: 60 records in 3 shard(s)" in proc.stdout and "val: 30 records in 2 shard(s)" in proc.stdout
    assert proc.stdout.count("checksums verified") == 2


def _batches(cfg_argv, split, **shard):
    from src.config import load_config
    from src.data.pipeline import create_dataset
    cfg = load_config(cfg_argv)
    data = create_dataset(cfg, split, **shard)
    return [(img, lab) for img, lab in data.create_tuple_iterator(output_numpy=True, num_epochs=1)]


def test_packed_evaluation_batches_equal_the_folders(tree):
    folder = _batches([*TRAIN, "--train_data_path", str(tree / "tree" / "train"), "--val_data_path",
                       str(tree / "tree" / "val")], "val")
    packed = _batches([*TRAIN, "--train_data_path", str(tree / "tree.mindrecord"), "--val_data_path",
                       str(tree / "tree.mindrecord")], "val")
    assert len(folder) == len(packed) == 3
    for (a, la), (b, lb) in zip(folder, packed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_large_jpegs_decode_at_the_folders_reduced_size(tmp_path):
    """640 x 480 photos at image_size 32: both forms decode them at 1/4 (the decoding rule's min_side)."""
    from PIL import Image
    from src.data.images import read_image
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(3):
            small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(tmp_path / "photos" / c / f"{i}.jpg")
    ok(run_main("dataset.py", "pack", "--path", tmp_path / "photos", "--out", tmp_path / "photos.mindrecord"))
    argv = override(TRAIN, "--batch_size", "3")
    folder = _batches([*argv, "--train_data_path", str(tmp_path / "photos"), "--val_data_path",
                       str(tmp_path / "photos")], "val")
    packed = _batches([*argv, "--train_data_path", str(tmp_path / "photos.mindrecord"), "--val_data_path",
                       str(tmp_path / "photos.mindrecord")], "val")
    assert read_image(str(tmp_path / "photos" / "cat" / "0.jpg"), 64).shape == (120, 160, 3)
    assert len(folder) == len(packed) == 2
    for (a, la), (b, lb) in zip(folder, packed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_train_on_the_pack_then_evaluate_gives_the_folders_top1_and_loss(tree):
    out = tree / "run"
    proc = ok(run_main("train.py", *TRAIN, "--train_data_path", tree / "tree.mindrecord", "--val_data_path",
                       tree / "tree.mindrecord", "--save_checkpoint_path", out))
    assert "train 60 images" in proc.stdout and "val 30 images" in proc.stdout
    results = {}
    for name, val in (("pack", tree / "tree.mindrecord"), ("folder", tree / "tree" / "val")):
        train_path = tree / "tree.mindrecord" if name == "pack" else tree / "tree" / "train"
        ok(run_main("evl.py", *TRAIN, "--checkpoint_path", out / "last.ckpt", "--train_data_path", train_path,
                    "--val_data_path", val, "--json", tree / f"{name}.json"))
        with open(tree / f"{name}.json") as f:
            results[name] = json.load(f)
    print(f"\nevaluation: pack top-1 {results['pack']['acc']} loss {results['pack']['loss']}; folder top-1 "
          f"{results['folder']['acc']} loss {results['folder']['loss']}")
    assert results["pack"]["n"] == results["folder"]["n"] == N_VAL
    assert results["pack"]["acc"] == results["folder"]["acc"]
    assert results["pack"]["loss"] == results["folder"]["loss"]
    assert results["pack"]["per_class"] == results["folder"]["per_class"]
    assert list(results["pack"]["per_class"]) == [f"synthetic_{i}" for i in range(CLASSES)]


def test_cifar_binaries_pack_into_train_and_val_and_train(tmp_path):
    folder = generated(str(tmp_path), "cifar10", 40, 20, seed=5)
    ok(run_main("dataset.py", "pack", "--path", folder, "--out", tmp_path / "c10.mindrecord"))
    m = manifest(tmp_path / "c10.mindrecord")
    assert m["kind"] == "cifar10" and list(m["splits"]) == ["train", "val"] and m["splits"]["val"]["shape"] == [32, 32]
    argv = [*TINY_TOPOLOGY, *NO_AUG, "--image_size", "32", "--batch_size", "10", "--num_parallel_workers", "1"]
    binary = _batches([*argv, "--train_data_path", folder, "--val_data_path", folder], "val")
    packed = _batches([*argv, "--train_data_path", str(tmp_path / "c10.mindrecord"), "--val_data_path",
                       str(tmp_path / "c10.mindrecord")], "val")
    for (a, la), (b, lb) in zip(binary, packed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    proc = ok(run_main("train.py", *argv, "--epoch_size", "1", "--warmup_epochs", "0", "--cooldown_epochs", "0",
                       "--graph_cache", "false", "--train_data_path", tmp_path / "c10.mindrecord", "--val_data_path",
                       tmp_path / "c10.mindrecord", "--save_checkpoint_path", tmp_path / "run"))
    assert "train 40 images" in proc.stdout and "val 20 images" in proc.stdout


def test_train_shards_are_disjoint_halves_in_an_order_the_seed_decides(tree):
    argv = [*TRAIN, "--train_data_path", str(tree / "tree.mindrecord"), "--val_data_path", str(tree / "tree.mindrecord")]
    halves = [[img.tobytes() for batch, _ in _batches(argv, "train", num_shards=2, shard_id=k) for img in batch]
              for k in range(2)]
    assert len(halves[0]) == len(halves[1]) == N_TRAIN // 2
    assert not set(halves[0]) & set(halves[1]) and len(set(halves[0]) | set(halves[1])) == N_TRAIN
    again = [img.tobytes() for batch, _ in _batches(argv, "train", num_shards=2, shard_id=0) for img in batch]
    assert again == halves[0]                               # the seed decides the order
    other = [img.tobytes() for batch, _ in _batches(override(argv, "--seed", "7"), "train", num_shards=2, shard_id=0)
             for img in batch]
    assert other != halves[0]


def test_max_side_reencodes_large_images_upright_and_keeps_small_files(tmp_path):
    from PIL import Image
    from src.data import packed_read
    from src.data.images import read_image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "tree" / c).mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6                                   # EXIF orientation: rotate 90 degrees to display
    large = tmp_path / "tree" / "a" / "large.jpg"
    y, x = np.mgrid[0:200, 0:400]
    smooth = np.stack([x * 255 // 399, y * 255 // 199, (x + y) * 255 // 598], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(large, quality=95, exif=exif)    # 400 wide x 200 high, shown 200 x 400
    small = tmp_path / "tree" / "b" / "small.png"
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(small)
    ok(run_main("dataset.py", "pack", "--path", tmp_path / "tree", "--out", tmp_path / "p.mindrecord",
                "--max_side", "100"))
    m = manifest(tmp_path / "p.mindrecord")
    assert (m["max_side"], m["jpeg_quality"]) == (100, 95)
    import mindspore.dataset as ds
    part = packed_read.open_pack(str(tmp_path / "p.mindrecord"), "train")
    raw = {str(r["name"]): r["image"].tobytes() for r in ds.MindDataset(part.files, columns_list=["image", "name"],
           shuffle=False).create_dict_iterator(output_numpy=True, num_epochs=1)}
    assert raw["b/small.png"] == small.read_bytes()
    stored = packed_read.decode_record(raw["a/large.jpg"], "a/large.jpg")
    assert stored.shape == (100, 50, 3)                 # upright, the longer side at 100 px
    want = np.asarray(Image.fromarray(read_image(str(large))).resize((50, 100), Image.BICUBIC), np.float64)
    assert np.abs(stored.astype(np.float64) - want).mean() < 3       # JPEG quality 95 of the same pixels


# ------------------------------------------------------------------------------------------------
# Resuming a killed pack
def test_a_killed_pack_resumes_to_the_same_bytes(tree, tmp_path):
    ref = tree / "tree.mindrecord"
    out = tmp_path / "again.mindrecord"
    proc = run_script("dataset.py", "pack", "--path", tree / "tree", "--out", out, "--shard_size", "20",
                      env=plugin_env(CONVMLP_TEST_KILL_AFTER="train-00001-of-00003.mindrecord.done"))
    assert proc.returncode == -9, proc.stderr[-2000:]
    partial = tmp_path / ".again.mindrecord.partial"
    assert not out.exists() and sorted(os.listdir(partial)) == [
        "plan.json", "train-00000-of-00003.mindrecord", "train-00000-of-00003.mindrecord.db",
        "train-00000-of-00003.mindrecord.done", "train-00001-of-00003.mindrecord",
        "train-00001-of-00003.mindrecord.db", "train-00001-of-00003.mindrecord.done"]
    with open(partial / "train-00001-of-00003.mindrecord", "r+b") as f:   # damaged since: written again
        f.seek(1000)
        f.write(b"\xff" * 16)
    kept = os.stat(partial / "train-00000-of-00003.mindrecord").st_mtime_ns
    proc = ok(run_main("dataset.py", "pack", "--path", tree / "tree", "--out", out, "--shard_size", "20"))
    assert "1 finished shard(s) verified and kept" in proc.stderr + proc.stdout
    assert not partial.exists()
    assert os.stat(out / "train-00000-of-00003.mindrecord").st_mtime_ns == kept
    assert pack_files(out) == pack_files(ref)


def test_a_killed_pack_of_other_options_is_not_continued(tree, tmp_path):
    out = tmp_path / "again.mindrecord"
    proc = run_script("dataset.py", "pack", "--path", tree / "tree", "--out", out, "--shard_size", "10",
                      env=plugin_env(CONVMLP_TEST_KILL_AFTER="train-00001-of-00006.mindrecord.done"))
    assert proc.returncode == -9 and (tmp_path / ".again.mindrecord.partial").is_dir()
    proc = ok(run_main("dataset.py", "pack", "--path", tree / "tree", "--out", out, "--shard_size", "20"))
    assert "resuming" not in proc.stdout and os.listdir(tmp_path) == ["again.mindrecord"]
    assert pack_files(out) == pack_files(tree / "tree.mindrecord")


# ------------------------------------------------------------------------------------------------
# Bad input: one line, nothing written
def test_a_bad_image_is_refused_by_name_or_skipped_and_counted(tree, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tree / "tree" / "train", src)
    bad = src / "synthetic_1" / sorted(os.listdir(src / "synthetic_1"))[0]
    with open(bad, "r+b") as f:
        f.truncate(60)
    before = Snapshot(tmp_path)
    expect_clean_failure(run_main("dataset.py", "pack", "--path", src, "--out", tmp_path / "p.mindrecord"), before,
                         str(bad), "skip_bad_images")
    proc = ok(run_main("dataset.py", "pack", "--path", src, "--out", tmp_path / "p.mindrecord", "--skip_bad_images"))
    assert "left out 1 bad image file(s)" in proc.stdout + proc.stderr
    assert manifest(tmp_path / "p.mindrecord")["splits"]["all"]["records"] == N_TRAIN - 1


def test_outputs_inside_the_tree_or_over_other_files_are_refused(tree, tmp_path):
    (tmp_path / "taken.mindrecord").mkdir()
    (tmp_path / "taken.mindrecord" / "notes.txt").write_text("mine")
    shutil.copytree(tree / "tree.mindrecord", tmp_path / "annotated.mindrecord")
    (tmp_path / "annotated.mindrecord" / "notes.txt").write_text("mine")
    before = Snapshot(tree / "tree", tmp_path)
    for out, fragments in ((tree / "tree" / "train" / "x.mindrecord", ("x.mindrecord", "inside the input")),
                           (tmp_path / "new" / "p.mindrecord", ("--path", "missing", "does not exist")),
                           (tmp_path / "taken.mindrecord", ("taken.mindrecord", "is not a pack that dataset.py wrote")),
                           (tmp_path / "annotated.mindrecord", ("annotated.mindrecord", "also holds 'notes.txt'")),
                           (tmp_path / "plain", ("plain", "expected a name ending with .mindrecord"))):
        path = tmp_path / "missing" if "missing" in fragments else tree / "tree"
        expect_clean_failure(run_main("dataset.py", "pack", "--path", path, "--out", out), before, *fragments)


def test_an_earlier_pack_is_replaced(tree, tmp_path):
    out = tmp_path / "p.mindrecord"
    ok(run_main("dataset.py", "pack", "--path", tree / "tree" / "val", "--out", out))
    assert list(manifest(out)["splits"]) == ["all"]
    ok(run_main("dataset.py", "pack", "--path", tree / "tree", "--out", out, "--shard_size", "20"))
    assert pack_files(out) == pack_files(tree / "tree.mindrecord") and os.listdir(tmp_path) == ["p.mindrecord"]


def test_a_second_pack_of_the_same_output_waits_for_none(tree, tmp_path):
    lock = tmp_path / ".p.mindrecord.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = Snapshot(tmp_path)
        expect_clean_failure(run_main("dataset.py", "pack", "--path", tree / "tree", "--out", tmp_path / "p.mindrecord"),
                             before, "another dataset.py pack is writing", "p.mindrecord")
    finally:
        holder.kill()
        holder.wait()


def test_a_full_disk_is_refused_up_front_and_mid_write(tree, tmp_path, monkeypatch):
    import collections
    from src.data import packed_write
    from src.platform import bounds
    before = Snapshot(tmp_path)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(bounds.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    expect_clean_failure(run_main("dataset.py", "pack", "--path", tree / "tree", "--out",
                                  tmp_path / "new" / "p.mindrecord"),       # the folder made for it goes again
                         before, "needs", "of disk space", "free some space or give another --out")
    monkeypatch.undo()
    write, calls = packed_write._write_shard, []

    def fills_the_disk(path, *args):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, *args)
    monkeypatch.setattr(packed_write, "_write_shard", fills_the_disk)
    expect_clean_failure(run_main("dataset.py", "pack", "--path", tree / "tree", "--out", tmp_path / "p.mindrecord",
                                  "--shard_size", "20"), before, "p.mindrecord", "no space left on device",
                         "nothing was written")
    assert len(calls) == 2


def test_val_fraction_on_a_pack_is_refused(tree, tmp_path):
    proc = run_main("train.py", *TRAIN, "--train_data_path", tree / "tree.mindrecord", "--val_fraction", "0.2",
                    "--save_checkpoint_path", tmp_path / "run")
    assert_user_error(proc, "val_fraction 0.2", "is packed")


def test_skip_bad_images_on_a_pack_is_named_once_not_ignored(tree, capsys):
    """A pack's images were checked when it was packed: skip_bad_images cannot apply to it, and the
    run says so in one warning line instead of ignoring the setting."""
    from src.config import load_config
    from src.data import pipeline
    pack = str(tree / "tree.mindrecord")
    cfg = load_config([*TRAIN, "--train_data_path", pack, "--val_data_path", pack, "--skip_bad_images", "true"])
    pipeline._SKIP_NAMED.discard(pack)
    assert pipeline.dataset_size(cfg, "train") == N_TRAIN and pipeline.dataset_size(cfg, "val") == N_VAL
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "skip_bad_images" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: skip_bad_images applies to image folders; ")
    assert pack in lines[0]


def test_a_truncated_or_changed_shard_is_named(tree, tmp_path):
    pack = tmp_path / "copy.mindrecord"
    shutil.copytree(tree / "tree.mindrecord", pack)          # new times: each shard is hashed once more
    argv = [*TRAIN, "--train_data_path", pack, "--val_data_path", pack, "--save_checkpoint_path", tmp_path / "run"]
    shard = pack / "val-00001-of-00002.mindrecord"
    with open(shard, "r+b") as f:
        f.seek(3000)
        f.write(b"\xff" * 8)
    assert_user_error(run_main("train.py", *argv), str(shard), "does not match its sha256")
    assert_user_error(run_main("dataset.py", "check", "--path", pack), str(shard), "does not match its sha256")
    with open(shard, "r+b") as f:
        f.truncate(5000)
    assert_user_error(run_main("train.py", *argv), str(shard), "truncated")
    assert_user_error(run_main("dataset.py", "check", "--path", pack), str(shard), "truncated")


# ------------------------------------------------------------------------------------------------
# msrun
@pytest.mark.parametrize("world", [pytest.param(2, marks=MSRUN_MARKS)])
def test_two_workers_on_a_pack_each_read_their_half(tree, tmp_path, world):
    """Each rank's MindRecord reader takes its shard of the seeded global shuffle (records r, r + 2, ...
    of it): the two ranks' final weights equal one process that takes each global batch of 20 from the
    one-shard pipeline and averages the gradients of its even and odd rows (tests/helpers.py
    data_parallel_reference), as tests/test_imagefolder_distributed.py shows for a folder."""
    logs, dump, ref = tmp_path / "logs", tmp_path / "dump", str(tmp_path / "reference.npz")
    argv = [*TRAIN, "--train_data_path", str(tree / "tree.mindrecord"), "--val_data_path", str(tree / "tree.mindrecord"),
            "--seed", "0"]
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    cmd = [MSRUN, f"--worker_num={world}", f"--local_worker_num={world}", "--join=True", f"--log_dir={logs}",
           f"--master_port={free_port()}", os.path.join(REPO, "train.py"), "--is_distributed", "true", *argv,
           "--save_checkpoint_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=dict(env, **plugin_env(env, CONVMLP_TEST_DUMP_WEIGHTS=str(dump))),
                          capture_output=True, text=True, timeout=600)
    log0 = (logs / "worker_0.log").read_text() if (logs / "worker_0.log").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{log0[-3000:]}"
    assert "rank 0 / world size 2" in log0 and "batch 10 per device x 2 = 20 global, 3 steps" in log0
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "reference", ref, str(world), *argv],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    want, init = np.load(ref), np.load(ref.replace(".npz", "_init.npz"))
    r0, r1 = np.load(dump / "rank0.npz"), np.load(dump / "rank1.npz")
    assert sorted(r0.files) == sorted(want.files)
    worst = max(float(np.abs(r0[k] - want[k]).max()) for k in r0.files)
    moved = max(float(np.abs(r0[k] - init[k]).max()) for k in r0.files)
    print(f"\n2 ranks on a pack vs one process: max |diff| {worst:.3g} (largest change {moved:.3g})")
    assert moved > 1e-3
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
        np.testing.assert_allclose(r0[k], want[k], atol=1e-5, rtol=1e-5, err_msg=k)


if __name__ == "__main__" and len(sys.argv) > 3 and sys.argv[1] == "reference":
    from helpers import data_parallel_reference
    data_parallel_reference(sys.argv[2], sys.argv[4:], int(sys.argv[3]))
