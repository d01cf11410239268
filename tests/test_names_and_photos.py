"""File names of every kind, bad images under ``skip_bad_images``, and photos of 100-200 megapixels,
through the entry scripts (in-process through ``run_cli``; a new process where only a process shows
that what it prints can be encoded).

* Names: every name a file system allows (newline, carriage return, tab, backslash, leading or
  trailing spaces, bytes that are not UTF-8, names that look like escapes) round-trips through the
  split lists a ``val_fraction`` run saves (its resume and evl.py read them back), and is printed on
  one line everywhere (error lines, log lines, evl.py's per-class table, infer.py, dataset.py check).
* ``skip_bad_images``: a tree without a usable image, or with a class whose images are all bad, is one
  error line at start; an image that fails to decode during training is replaced by the next good
  image of its split, counted in the log, and the same seed still gives the same weights; in
  evaluation (train.py's validation, evl.py) it is left out of every number, counted in the log.
* Photos: a large JPEG is decoded at reduced size (no less than twice what the transforms ask for),
  so a 200-megapixel photo trains, evaluates and is classified as the same photo reduced by hand;
  a decompression bomb is still refused in one line.
"""
import csv
import io
import json
import os
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from helpers import (NO_AUG, TINY_TOPOLOGY, assert_user_error, checkpoint_model, model_weights, ok, override,
                     run_main, run_script, write_train_checkpoint)
from src.data import imagefolder, split_lists
from src.data.images import (MAX_COMPRESSION, MAX_DECODE_BYTES, decode_plan, inspect_image, preprocess,
                             read_image)
from src.data.transforms import decode_min_side
from src.platform.errors import DataError, shown_name

#: Names a file system allows that a line-per-name list or a UTF-8 print would break.
ODD_CLASSES = ["cat\nnewline", "tab\there ", os.fsdecode(b"\xff\xfe raw"), "back\\slash", " lead"]
ODD_FILES = ["a\rb", "\\n literal", " space ", os.fsdecode(b"caf\xe9"), "\u732b", "plain", "x\\x41", "t\tt"]

TREE_FLAGS = [*TINY_TOPOLOGY, *NO_AUG, "--dataset_choose", "imagefolder", "--image_size", "32", "--batch_size", "4",
              "--warmup_epochs", "0", "--cooldown_epochs", "0", "--graph_cache", "false", "--log_interval", "100"]
TINY_HEAD = {"blocks": [1, 1, 1], "dims": [32, 64, 128], "mlp_ratios": [2, 2, 2], "channels": 16, "n_conv_blocks": 1}


def image(path, seed, fmt=None, size=20, level=None):
    """A small noise image of one brightness (`level`, else from the seed) at `path` (folders made)."""
    rng = np.random.default_rng(seed)
    centre = rng.integers(40, 216) if level is None else level
    arr = np.clip(rng.normal(centre, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def tree(root, classes, files, seed=0):
    """root/<class>/<file>.jpg|png for every class and file name, each class its own brightness."""
    for c, cls in enumerate(classes):
        for i, name in enumerate(files):
            image(os.path.join(root, cls, name + (".png" if i % 2 else ".jpg")), seed + 100 * c + i,
                  level=30 + 50 * c)
    return str(root)


def broken_png(path, seed=0):
    """A PNG whose header and end are intact but whose pixel data is corrupt: it passes the start check
    (which does not decode a complete-looking file) and fails when decoded."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 4
    for k in range(20, 60):
        data[start + k] ^= 0x5A
    with open(path, "wb") as f:
        f.write(data)
    return path


def one_line(text):
    """Every line of `text` is printable UTF-8 (no surrogates) and no message line was split."""
    text.encode("utf-8")
    return text


# ------------------------------------------------------------------------------------------------
# Names: the split lists

@pytest.mark.parametrize("name", ODD_FILES + ODD_CLASSES + ["dir/\x01ctrl\x7f", "\\", "\\\\x41\\u0041", "plain.png"])
def test_every_name_round_trips_through_the_list_encoding_on_one_line(name):
    line = split_lists.encode_name(name)
    assert "\n" not in line and "\r" not in line and line.encode("utf-8")
    assert split_lists.decode_name(line) == name
    if name == "plain.png" or name == "\u732b":        # a plain name is written as it is (old lists read alike)
        assert line == name


def test_a_list_with_an_escape_it_never_writes_is_one_error_naming_it(tmp_path):
    root = tree(tmp_path / "t", ["a", "b"], ["x", "y"])
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train_files.txt").write_text("a/x.jpg\\q\n")
    with pytest.raises(DataError, match=r"train_files.txt line 1: unknown escape '\\\\q'"):
        split_lists.read_split_list(str(lists / "train_files.txt"), imagefolder.load_tree(root))


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A val_fraction run of one epoch on a tree of odd class and file names, then resumed for a
    second epoch from its saved lists, then evl.py on the lists beside the checkpoint."""
    folder = tmp_path_factory.mktemp("odd")
    root = tree(folder / "tree", ODD_CLASSES, ODD_FILES)
    out = str(folder / "run")
    flags = [*TREE_FLAGS, "--train_data_path", root, "--val_fraction", "0.25", "--save_checkpoint_path", out,
             "--num_parallel_workers", "2"]
    first = ok(run_main("train.py", *flags, "--epoch_size", "1"))
    lists = {n: open(os.path.join(out, n), "rb").read() for n in ("train_files.txt", "val_files.txt")}
    resumed = ok(run_main("train.py", *flags, "--epoch_size", "2", "--resume", "auto"))
    evl = ok(run_main("evl.py", *flags, "--checkpoint_path", os.path.join(out, "last.ckpt"), "--json",
                      str(folder / "eval.json")))
    return dict(root=root, out=out, first=first, lists=lists, resumed=resumed, evl=evl,
                json=json.loads((folder / "eval.json").read_text()))


def test_a_run_on_odd_names_saves_lists_that_name_every_file_exactly(odd_run):
    tree_ = imagefolder.load_tree(odd_run["root"])
    named = []
    for name, data in odd_run["lists"].items():
        lines = data.decode("utf-8").split("\n")[:-1]       # plain UTF-8 text, one name per line
        named += [split_lists.decode_name(ln) for ln in lines]
    expected = sorted(os.path.relpath(p, odd_run["root"]) for p in tree_.files)
    assert sorted(named) == expected and len(named) == len(ODD_CLASSES) * len(ODD_FILES)
    assert "30 train / 10 val images (val_fraction 0.25" in odd_run["first"].stdout


def test_a_run_on_odd_names_resumes_and_evaluates_on_its_saved_split(odd_run):
    resumed, evl = odd_run["resumed"].stdout, odd_run["evl"].stdout
    assert "1 epoch(s) done" in resumed and "the saved lists" in resumed and "epoch:2 step:7" in resumed
    last = [ln for ln in resumed.splitlines() if "epoch:2" in ln][0]
    val_top1 = float(last.split("val top-1 ")[1].split()[0])
    assert odd_run["json"]["acc"] == pytest.approx(val_top1, abs=1e-4)
    assert odd_run["json"]["n"] == 2 * len(ODD_CLASSES)                # round(8 x 0.25) per class
    assert f"val (val_fraction 0.25 of {odd_run['root']}) at 32px" in evl
    # the table: one line per class, each name printed as its literal (no raw newline, tab or byte)
    table = [row for row in evl.split("per-class accuracy:\n")[1].splitlines() if row.startswith("  ")]
    assert len(table) == len(ODD_CLASSES)
    for cls in ODD_CLASSES:
        assert sum(shown_name(cls, quoted=False) in row for row in table) == 1
    assert list(odd_run["json"]["per_class"]) == sorted(ODD_CLASSES, key=imagefolder.natural_key)
    for proc in (odd_run["first"], odd_run["resumed"], odd_run["evl"]):
        one_line(proc.stdout + proc.stderr)
    one_line(open(os.path.join(odd_run["out"], "train.log"), encoding="utf-8").read())


@pytest.mark.parametrize("bad_name", ["bad\nname.png", os.fsdecode(b"bad\xff.png"), "bad\ttab .png"])
def test_a_bad_file_with_an_odd_name_is_one_error_line_naming_it(tmp_path, bad_name):
    root = tree(tmp_path / "t", ["a", "b"], ["x", "y", "z", "w"])
    bad = os.path.join(root, "b", bad_name)
    open(bad, "wb").close()
    proc = run_main("train.py", *TREE_FLAGS, "--train_data_path", root, "--val_data_path", root,
                    "--save_checkpoint_path", str(tmp_path / "run"), "--epoch_size", "1")
    line = assert_user_error(proc, f"image {shown_name(bad)} is an empty file (0 bytes)")
    assert "\r" not in line and one_line(line)


def test_infer_and_dataset_check_print_odd_names_in_a_new_process(tmp_path):
    """What only a process shows: its stdout is UTF-8 that the reader decodes (a name that is not
    UTF-8 would otherwise be a UnicodeEncodeError), one line per name."""
    ckpt = tmp_path / "m.ckpt"
    write_train_checkpoint(ckpt, TINY_HEAD)
    photos = tmp_path / "photos"
    names = [os.fsdecode(b"raw\xff"), "new\nline", "tab\t", " lead"]
    for i, n in enumerate(names):
        image(str(photos / f"{n}.png"), i)
    proc = ok(run_script("infer.py", "--checkpoint_path", ckpt, photos, "--json", tmp_path / "p.json", "--top_k", "2"))
    for n in names:
        assert shown_name(os.path.join(photos, f"{n}.png"), quoted=False) in proc.stdout.splitlines()
    res = json.loads((tmp_path / "p.json").read_text())
    assert sorted(r["file"] for r in res["results"]) == sorted(os.path.join(str(photos), f"{n}.png") for n in names)

    root = tree(tmp_path / "t", ODD_CLASSES[:3], ODD_FILES[:2])
    proc = ok(run_script("dataset.py", "check", "--path", root))
    assert "3 classes, 6 good images, 0 bad" in proc.stdout
    assert ", ".join(f"{shown_name(c, quoted=False)} 2" for c in
                     sorted(ODD_CLASSES[:3], key=imagefolder.natural_key)) in proc.stdout


# ------------------------------------------------------------------------------------------------
# skip_bad_images

def empty(path):
    open(path, "wb").close()


def not_an_image(path):
    with open(path, "w") as f:
        f.write("not an image")


def truncated(path):
    image(path, 1, fmt="JPEG", size=64)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


BREAKS = {"empty": empty, "text": not_an_image, "truncated": truncated}


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_a_tree_without_a_usable_image_is_one_error_at_start(tmp_path, how):
    root = tree(tmp_path / "t", ["a", "b"], ["x", "y", "z"])
    for cls in ("a", "b"):
        for f in os.listdir(os.path.join(root, cls)):
            os.remove(os.path.join(root, cls, f))
            BREAKS[how](os.path.join(root, cls, os.path.splitext(f)[0] + ".jpg"))
    proc = run_main("train.py", *TREE_FLAGS, "--train_data_path", root, "--val_data_path", root,
                    "--save_checkpoint_path", str(tmp_path / "run"), "--skip_bad_images", "true", "--epoch_size", "1")
    assert_user_error(proc, f"no usable images in {root}: all 6 image file(s) are bad, e.g. ")


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_a_class_whose_images_are_all_bad_is_refused_naming_it_and_the_count(tmp_path, how):
    root = tree(tmp_path / "t", ["a", "b", "tab\tclass"], ["x", "y", "z", "w"])
    victim = os.path.join(root, "tab\tclass")
    for f in os.listdir(victim):
        os.remove(os.path.join(victim, f))
    for i in range(3):
        BREAKS[how](os.path.join(victim, f"{i}.jpg"))
    BREAKS[how](os.path.join(root, "a", "extra.jpg"))        # a bad file in a class that keeps good ones
    proc = run_main("train.py", *TREE_FLAGS, "--train_data_path", root, "--val_data_path", root,
                    "--save_checkpoint_path", str(tmp_path / "run"), "--skip_bad_images", "true", "--epoch_size", "1")
    assert_user_error(proc, "class 'tab\\tclass' of", "has no usable image: all its 3 image file(s) are bad",
                      "not classes")


@pytest.fixture(scope="module")
def breaks_in_training(tmp_path_factory):
    """Trees whose one image passes the start check but cannot be decoded (its pixel data is
    corrupt), one in the train split, one in the validation split: two runs with skip_bad_images
    (the same seed) and one without; `val_good` is the validation tree without its bad image."""
    folder = tmp_path_factory.mktemp("late")
    train = tree(folder / "train", ["a", "b"], [f"i{k}" for k in range(12)])    # 24 images: 6 batches of 4
    val = tree(folder / "val", ["a", "b"], ["v0", "v1", "v2"])
    val_good = tree(folder / "val_good", ["a", "b"], ["v0", "v1", "v2"])       # the same images
    os.remove(os.path.join(train, "b", "i3.png"))
    bad = broken_png(os.path.join(train, "b", "i3.png"))
    for root in (val, val_good):
        os.remove(os.path.join(root, "a", "v1.png"))
        image(os.path.join(root, "a", "v2.jpg"), 7, level=80)      # labelled a, as bright as b's images
    bad_val = broken_png(os.path.join(val, "a", "v1.png"))      # its replacement is a/v2
    flags = [*TREE_FLAGS, "--train_data_path", train, "--val_data_path", val, "--epoch_size", "2",
             "--num_parallel_workers", "2"]
    runs = [run_main("train.py", *flags, "--skip_bad_images", "true", "--save_checkpoint_path", str(folder / f"r{i}"))
            for i in range(2)]
    stopped = run_main("train.py", *flags, "--save_checkpoint_path", str(folder / "stopped"))
    return dict(bad=bad, bad_val=bad_val, val=val, val_good=val_good, runs=runs, stopped=stopped, folder=folder)


def test_an_image_that_fails_to_decode_in_training_is_replaced_and_counted(breaks_in_training):
    bad = breaks_in_training["bad"]
    for proc in breaks_in_training["runs"]:
        log = ok(proc).stdout
        assert "train 24 images" in log and "6 steps per epoch" in log     # it passed the start check
        for epoch in (1, 2):
            assert f"epoch:{epoch} step:6," in log                        # every batch full
            line = [ln for ln in log.splitlines() if f"could not be decoded in epoch {epoch} " in ln]
            assert len(line) == 1 and "skip_bad_images: 1 image(s)" in line[0], log
            assert f"e.g. cannot read image {shown_name(bad)}" in line[0]
            line = [ln for ln in log.splitlines() if f"could not be decoded in epoch {epoch}'s validation " in ln]
            assert len(line) == 1 and "skip_bad_images: 1 image(s)" in line[0], log
            assert "left out of its metrics (5 image(s) evaluated)" in line[0]
            assert f"e.g. cannot read image {shown_name(breaks_in_training['bad_val'])}" in line[0]
    a, b = (model_weights(breaks_in_training["folder"] / f"r{i}" / "last.ckpt") for i in range(2))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)     # the same seed, the same weights


def evaluate_tree(folder, root, *flags):
    """evl.py's output and JSON for the checkpoint of `folder`'s first run on the tree `root`."""
    out = os.path.join(folder, os.path.basename(root) + ".json")
    proc = ok(run_main("evl.py", *TREE_FLAGS, "--val_data_path", root, "--checkpoint_path",
                       str(folder / "r0" / "last.ckpt"), "--json", out, *flags))
    with open(out) as f:
        return proc.stdout, json.load(f)


def test_an_image_that_fails_to_decode_in_evaluation_is_left_out_of_every_number(breaks_in_training):
    """evl.py on the validation tree with its bad image reports what it reports on the same tree
    without that image: the replacement (the next image, one the model takes for class b) is not
    counted a second time; train.py's validation of the same weights has the same top-1. Two bad
    images in a row are two left out."""
    folder = breaks_in_training["folder"]
    good_log, want = evaluate_tree(folder, breaks_in_training["val_good"])
    assert want["n"] == 5 and want["left_out"] == 0 and "left out" not in good_log
    assert want["acc"] < 1 and want["per_class"]["a"] < 1       # a/v2 is missed: counting it twice would show
    two = shutil.copytree(breaks_in_training["val_good"], folder / "val_two")
    two_bad = [broken_png(os.path.join(two, "b", name)) for name in ("v0a.png", "v0b.png")]   # after b/v0
    for root, bad in ((breaks_in_training["val"], [breaks_in_training["bad_val"]]), (str(two), two_bad)):
        log, got = evaluate_tree(folder, root, "--skip_bad_images", "true")
        assert got["n"] == 5 and got["left_out"] == len(bad)
        for key in ("acc", "top5", "per_class"):
            assert got[key] == want[key], (key, got[key], want[key])
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
        table = [ln for ln in log.splitlines() if ln.startswith("  ")]
        assert table == [ln for ln in good_log.splitlines() if ln.startswith("  ")]
        assert any(" a " in ln and "(2 images)" in ln for ln in table), table
        assert f"images: 5 ({len(bad)} left out: could not be decoded)" in log
        warning = [ln for ln in log.splitlines() if "could not be decoded during the evaluation" in ln]
        assert len(warning) == 1 and warning[0].startswith(f"warning: skip_bad_images: {len(bad)} image(s)"), log
        assert "left out of its metrics (5 image(s) evaluated)" in warning[0]
        assert any(f"e.g. cannot read image {shown_name(b)}" in warning[0] for b in bad)   # the first read
    with open(folder / "r0" / "metrics.csv", newline="") as f:
        assert list(csv.DictReader(f))[-1]["val_top1"] == f"{want['acc']:.4f}"


def test_without_skip_bad_images_a_decode_failure_in_training_is_one_error_line(breaks_in_training):
    assert_user_error(breaks_in_training["stopped"], f"cannot read image {shown_name(breaks_in_training['bad'])}")


# ------------------------------------------------------------------------------------------------
# Photos of 100-200 megapixels, and bombs

PHOTO_SIZE = (16384, 12288)     # 201 megapixels, a 200 MP phone camera's frame


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 16384 x 12288 JPEG with a photo's texture (smooth shapes and fine grain), about 10-20 MB."""
    folder = tmp_path_factory.mktemp("photo")
    rng = np.random.default_rng(0)
    Image.MAX_IMAGE_PIXELS = None
    shapes = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).resize((2048, 1536), Image.BICUBIC)
    grain = rng.integers(-12, 13, (1536, 2048, 3))
    mid = Image.fromarray(np.clip(np.asarray(shapes, np.int16) + grain, 0, 255).astype(np.uint8))
    path = str(folder / "IMG_0001.jpg")
    mid.resize(PHOTO_SIZE, Image.BILINEAR).save(path, quality=85)
    return path


def test_a_large_jpeg_is_decoded_at_reduced_size_no_smaller_than_the_transforms_need(photo):
    w, h = PHOTO_SIZE
    assert 2_000_000 < os.path.getsize(photo) < 40_000_000
    for min_side, reduction in ((72, 8), (1600, 4), (3072, 4), (3073, 2), (6144, 2)):
        assert decode_plan(PHOTO_SIZE, "JPEG", "RGB", os.path.getsize(photo), photo, min_side)[0] == reduction
    with pytest.raises(DataError, match="decoding it would take 1,152 MiB"):    # whole: over the memory bound
        decode_plan(PHOTO_SIZE, "JPEG", "RGB", os.path.getsize(photo), photo, 6145)
    arr = read_image(photo, 72)
    assert arr.shape == (h // 8, w // 8, 3) and arr.std() > 20            # a texture, not a flat colour
    assert inspect_image(photo, 72)[:2] == PHOTO_SIZE


@pytest.mark.parametrize("flags,floor", [([], 501), (["--image_size", "32"], 72),
                                         (["--image_size", "224", "--crop_scale", "0.08,1"], 1584),
                                         (["--image_size", "224", "--crop_scale", "1,1", "--crop_pct", "0.875"], 512)])
def test_the_floor_is_twice_what_the_transforms_ask_for(flags, floor):
    from src.config import load_config
    assert decode_min_side(load_config(["--dataset_choose", "imagefolder", *flags])) == floor


def test_infer_classifies_a_200_megapixel_photo_as_the_same_photo_reduced_by_hand(photo, tmp_path):
    ckpt = tmp_path / "m.ckpt"
    write_train_checkpoint(ckpt, TINY_HEAD, head_scale=3.0)
    by_hand = str(tmp_path / "by_hand.png")
    with Image.open(photo) as im:                                   # full decode, then reduced with Pillow
        im.resize((PHOTO_SIZE[0] // 8, PHOTO_SIZE[1] // 8), Image.BOX).save(by_hand)
    out = tmp_path / "p.json"
    proc = ok(run_main("infer.py", "--checkpoint_path", ckpt, photo, by_hand, "--json", out, "--top_k", "10"))
    assert "IMG_0001.jpg" in proc.stdout
    big, small = (sorted(r["top"], key=lambda t: t["class"]) for r in json.loads(out.read_text())["results"])
    pb, ps = np.array([t["prob"] for t in big]), np.array([t["prob"] for t in small])
    np.testing.assert_allclose(pb, ps, atol=0.02)
    net, cfg = checkpoint_model(str(ckpt))
    import mindspore as ms
    logits = [net(ms.Tensor(preprocess(read_image(p, decode_min_side(cfg)), cfg)[None])).asnumpy()[0]
              for p in (photo, by_hand)]
    assert np.abs(logits[0] - logits[1]).max() < 0.05 * np.abs(logits[1]).max()
    assert np.argmax(logits[0]) == np.argmax(logits[1])


def test_a_200_megapixel_photo_trains_and_evaluates(photo, tmp_path):
    root = tree(tmp_path / "t", ["a", "b"], ["x", "y", "z", "w"])
    os.symlink(photo, os.path.join(root, "b", "IMG_0001.jpg"))
    run = str(tmp_path / "run")
    proc = ok(run_main("train.py", *override(TREE_FLAGS, "--batch_size", "9"), "--train_data_path", root,
                       "--val_data_path", root, "--save_checkpoint_path", run, "--epoch_size", "1",
                       "--num_parallel_workers", "2"))
    assert "9 images in 2 classes" in proc.stdout and "epoch:1 step:1," in proc.stdout
    proc = ok(run_main("evl.py", *TREE_FLAGS, "--val_data_path", root, "--checkpoint_path",
                       os.path.join(run, "last.ckpt")))
    assert "images: 9" in proc.stdout


def jpeg_with_size(path, width, height):
    """A small real JPEG whose header declares `width` x `height` (a forged header: a bomb)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    with open(path, "wb") as f:
        f.write(data)
    return path


BOMBS = {
    "flat.png": (lambda p: Image.new("L", (12000, 12000), 128).save(p), "a decompression bomb"),
    "forged.jpg": (lambda p: jpeg_with_size(p, 30000, 30000), "a decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_small_bomb_is_still_refused_in_one_line(tmp_path, name):
    make, fragment = BOMBS[name]
    root = tree(tmp_path / "t", ["a", "b"], ["x", "y"])
    bomb = os.path.join(root, "a", name)
    make(bomb)
    proc = run_main("train.py", *TREE_FLAGS, "--train_data_path", root, "--val_data_path", root,
                    "--save_checkpoint_path", str(tmp_path / "run"), "--epoch_size", "1")
    assert_user_error(proc, f"image {shown_name(bomb)} is ", fragment, f"more than {MAX_COMPRESSION}")
    proc = run_main("infer.py", "--checkpoint_path", str(write_ckpt(tmp_path)), bomb)
    assert_user_error(proc, f"image {shown_name(bomb)} is ", fragment)


def write_ckpt(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    if not ckpt.exists():
        write_train_checkpoint(ckpt, TINY_HEAD)
    return ckpt


def test_a_huge_png_is_judged_by_its_decoded_size(tmp_path):
    """A PNG cannot be decoded at reduced size: over the memory bound it is refused, a JPEG of the
    same size is reduced; a photo-like file of the same size under the bound is accepted."""
    size, file_bytes = (20000, 15000), 300_000_000                     # 300 MP, compressed 3 times
    with pytest.raises(DataError, match=f"would take 1,717 MiB, more than the limit of {MAX_DECODE_BYTES >> 20:,}"):
        decode_plan(size, "PNG", "RGB", file_bytes, "big.png", 72)
    assert decode_plan(size, "JPEG", "RGB", file_bytes // 10, "big.jpg", 72) == (8, (2500, 1875))
    with pytest.raises(DataError, match="at 1/2 size would take"):       # a floor that forbids more reduction
        decode_plan((40000, 30000), "JPEG", "RGB", 100_000_000, "huge.jpg", 10000)
    assert decode_plan((12000, 9000), "PNG", "RGB", 150_000_000, "108mp.png", 72) == (1, (12000, 9000))
