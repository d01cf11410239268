"""Image-folder data (src/data/imagefolder.py, src/data/images.py, the image-tree path of
src/data/pipeline.py): the tree's rules, one error line or a counted skip for each kind of bad
input, the one decoding rule of training, evaluation and infer.py, the val_fraction split and its
saved lists, class names, and dataset.py's check and generate. In-process; the entry scripts end to
end are in tests/test_imagefolder_e2e.py."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from src.config import load_config
from src.data import images as image_files
from src.data import imagefolder, pipeline, records, split_lists
from src.data.synthetic import TREE_MARKER, write_image_tree
from src.platform.errors import ConfigError, DataError
import dataset as dataset_cli


def save(path, array, mode=None, fmt=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path, format=fmt, **kw)
    return path


def rgb(h=24, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header(width, height):
    """A PNG file that declares `width` x `height` pixels but holds one empty row (a bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def tree_cfg(train, val=None, *extra):
    """The config of an image tree; `extra` flags (pairs) replace the defaults given here."""
    flags = {"--dataset_choose": "imagefolder", "--train_data_path": str(train), "--image_size": "32",
             "--batch_size": "4", "--num_parallel_workers": "1"}
    if val:
        flags["--val_data_path"] = str(val)
    flags.update(zip(extra[::2], extra[1::2]))
    return load_config([x for pair in flags.items() for x in pair])


@pytest.fixture
def small_tree(tmp_path):
    """root/{cat,dog,bird}/ with 4 RGB images each (JPEG and PNG)."""
    root = tmp_path / "tree"
    for c, name in enumerate(["cat", "dog", "bird"]):
        for i in range(4):
            save(str(root / name / f"{i}.{'jpg' if i % 2 else 'png'}"), rgb(seed=10 * c + i))
    return root


# ------------------------------------------------------------------------------------------------
# The tree's layout

def test_classes_are_sorted_as_timm_sorts_them(tmp_path):
    for name in ["class10", "class2", "Beta", "alpha", "class1"]:
        save(str(tmp_path / name / "a.png"), rgb())
    assert imagefolder.find_classes(str(tmp_path)) == ["alpha", "Beta", "class1", "class2", "class10"]
    tree = imagefolder.scan_tree(str(tmp_path))
    assert tree.labels.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist; expected {root}/<class>/<image>"),
    (lambda root: root.mkdir(), "it is empty; expected {root}/<class>/<image>"),
    (lambda root: save(str(root / "a.png"), rgb()), "it holds 1 image file(s) but no class folders"),
    (lambda root: (root.mkdir(), (root / "x").write_text("")), "it has no class folders"),
])
def test_a_tree_without_class_folders_is_one_error_naming_it(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError) as e:
        imagefolder.scan_tree(str(root))
    assert message.format(root=root) in str(e.value) and str(root) in str(e.value)


def test_a_class_folder_without_images_is_an_error_naming_it(small_tree):
    (small_tree / "empty").mkdir()
    (small_tree / "empty" / "readme.txt").write_text("no pictures")
    with pytest.raises(DataError, match=f"class folder {small_tree / 'empty'} has no image files"):
        imagefolder.scan_tree(str(small_tree))


def test_other_files_are_skipped_and_counted_hidden_ones_ignored(small_tree):
    (small_tree / "cat" / "notes.txt").write_text("x")
    (small_tree / "cat" / "Thumbs.db").write_bytes(b"x")
    (small_tree / "cat" / ".DS_Store").write_bytes(b"x")
    save(str(small_tree / "cat" / ".hidden.png"), rgb())
    save(str(small_tree / ".cache" / "a.png"), rgb())       # a hidden folder is no class
    tree = imagefolder.scan_tree(str(small_tree))
    assert tree.classes == ["bird", "cat", "dog"] and len(tree) == 12
    assert sorted(os.path.basename(p) for p in tree.skipped) == ["Thumbs.db", "notes.txt"]


def test_links_to_folders_and_files_are_followed_once_and_names_may_be_any_unicode(tmp_path, small_tree):
    elsewhere = tmp_path / "elsewhere"
    save(str(elsewhere / "été.png"), rgb(seed=5))
    os.symlink(elsewhere, small_tree / "fleur_été")                     # a linked class folder
    os.symlink(small_tree / "cat" / "0.png", small_tree / "dog" / "猫.png")  # a linked file
    os.symlink(small_tree / "cat", small_tree / "cat" / "loop")          # a link back up: walked once
    tree = imagefolder.check_images(imagefolder.scan_tree(str(small_tree)))
    assert tree.classes == ["bird", "cat", "dog", "fleur_été"]
    names = [os.path.relpath(p, small_tree) for p in tree.files]
    assert os.path.join("fleur_été", "été.png") in names and os.path.join("dog", "猫.png") in names
    assert tree.counts().tolist() == [4, 4, 5, 1]


# ------------------------------------------------------------------------------------------------
# Bad images: one error naming the file, or a counted skip

def truncated_jpeg(path):
    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buf, format="JPEG")
    with open(path, "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])


def truncated_png(path):
    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buf, format="PNG")
    with open(path, "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])


BAD = {
    "empty.png": (lambda p: open(p, "wb").close(), "is an empty file (0 bytes)"),
    "garbage.jpg": (lambda p: open(p, "wb").write(b"not an image at all" * 10), "not an image Pillow can read"),
    "half.jpg": (truncated_jpeg, "cannot read image"),
    "half.png": (truncated_png, "cannot read image"),
    "bomb.png": (lambda p: open(p, "wb").write(png_header(10000, 9000)), "more than the limit of 89,478,485"),
    "huge.png": (lambda p: open(p, "wb").write(png_header(100000, 100000)), "decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_image_is_an_error_naming_it_or_a_counted_skip(small_tree, name):
    make, message = BAD[name]
    path = small_tree / "dog" / name
    make(str(path))
    tree = imagefolder.scan_tree(str(small_tree))
    with pytest.raises(DataError) as e:
        imagefolder.check_images(tree)
    assert f"'{path}'" in str(e.value) and message in str(e.value) and "skip_bad_images" in str(e.value)
    assert "\n" not in str(e.value)
    kept = imagefolder.check_images(tree, skip_bad=True)
    assert len(kept) == 12 and [p for p, _ in kept.bad] == [str(path)] and message in kept.bad[0][1]


def test_data_after_the_end_of_a_jpeg_is_no_truncation(tmp_path):
    """Phones append data after a JPEG's end marker (motion photos) or pad it with zeros: such a
    file decodes, so it is accepted; cut before its end it is not."""
    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buf, format="JPEG")
    data = buf.getvalue()
    for name, content in (("trailer.jpg", data + b"MotionPhoto_Data" * 500), ("padded.jpg", data + bytes(300))):
        (tmp_path / name).write_bytes(content)
        assert image_files.inspect_image(str(tmp_path / name))[:2] == (64, 64)
    (tmp_path / "cut.jpg").write_bytes(data[:-200])
    with pytest.raises(DataError, match="cannot read image .*cut.jpg'"):
        image_files.inspect_image(str(tmp_path / "cut.jpg"))


def test_skip_bad_images_is_logged_with_the_count(small_tree, caplog):
    make, _ = BAD["empty.png"]
    make(str(small_tree / "cat" / "empty.png"))
    make(str(small_tree / "dog" / "empty.png"))
    cfg = tree_cfg(small_tree, small_tree, "--skip_bad_images", "true")
    with caplog.at_level("INFO"):
        assert pipeline.dataset_size(cfg, "train") == 12
    assert any("left out 2 bad image file(s)" in r.getMessage() for r in caplog.records)


def test_an_image_that_breaks_after_the_check_stops_the_pipeline_with_its_name(small_tree):
    cfg = tree_cfg(small_tree, small_tree, "--eval_batch_size", "12")
    data = pipeline.create_dataset(cfg, "val")               # the tree is checked here
    victim = small_tree / "bird" / "1.jpg"
    truncated_jpeg(str(victim))
    with pytest.raises(RuntimeError) as e:
        for _ in data.create_tuple_iterator(num_epochs=1, output_numpy=True):
            pass
    err = records.data_failure(e.value)
    assert isinstance(err, DataError) and f"cannot read image '{victim}'" in str(err)
    assert records.data_failure(RuntimeError("something else")) is None


# ------------------------------------------------------------------------------------------------
# One decoding rule for training, evaluation and infer.py

def mode_images(folder):
    """One file per colour mode, with EXIF orientation 6 on the JPEG (rotated 90 degrees)."""
    base = rgb(30, 40, seed=3)
    files = {
        "rgb.png": save(f"{folder}/rgb.png", base),
        "grey.png": save(f"{folder}/grey.png", base[..., 0]),
        "grey16.png": save(f"{folder}/grey16.png", (base[..., 0].astype(np.uint16) * 257)),
        "rgba.png": save(f"{folder}/rgba.png", np.dstack([base, base[..., :1]]), "RGBA"),
        "palette.png": f"{folder}/palette.png",
        "cmyk.jpg": f"{folder}/cmyk.jpg",
        "exif.jpg": f"{folder}/exif.jpg",
    }
    Image.fromarray(base).convert("P", palette=Image.ADAPTIVE).save(files["palette.png"], transparency=0)
    Image.fromarray(base).convert("CMYK").save(files["cmyk.jpg"], quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(base).save(files["exif.jpg"], quality=95, exif=exif)
    return files


def test_every_mode_becomes_rgb_and_exif_orientation_is_applied(tmp_path):
    files = mode_images(str(tmp_path / "modes" / "only"))
    for name, path in files.items():
        arr = image_files.read_image(path)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
        assert arr.shape[:2] == ((40, 30) if name == "exif.jpg" else (30, 40)), name
    grey16 = image_files.read_image(files["grey16.png"])
    np.testing.assert_array_equal(grey16[..., 0], image_files.read_image(files["grey.png"])[..., 0])


def test_the_evaluation_pipeline_decodes_as_infer_does(tmp_path):
    """evl.py's validation batches are exactly infer.py's preprocess(read_image(file)), for every
    mode, both through the resize and centre crop (crop_pct 0.875) at 24 px."""
    root = tmp_path / "modes"
    files = mode_images(str(root / "only"))
    save(str(root / "other" / "x.png"), rgb())
    cfg = tree_cfg(root, root, "--image_size", "24", "--crop_pct", "0.875", "--eval_batch_size", "16")
    batch, labels = next(pipeline.create_dataset(cfg, "val").create_tuple_iterator(num_epochs=1, output_numpy=True))
    tree = pipeline.image_split(cfg, "val")
    assert batch.shape == (len(tree), 3, 24, 24)
    for path, got in zip(tree.files, batch):
        np.testing.assert_array_equal(got, image_files.preprocess(image_files.read_image(path), cfg), err_msg=path)
    assert set(files.values()) <= set(tree.files)


@pytest.mark.parametrize("crop_pct, shape", [(0.875, (375, 500)), (0.9, (500, 333)), (1.0, (32, 32))])
def test_the_evaluation_transform_is_timms(crop_pct, shape):
    """timm's eval transform on Pillow images, written out: Resize(floor(224 / crop_pct)) of the
    shorter side (bicubic), CenterCrop(224), ToTensor, Normalize. Ours equals it to float32 rounding
    (measured max |difference| 1.9e-7)."""
    from src.data.transforms import eval_scale_size
    cfg = load_config(["--dataset_choose", "imagefolder", "--image_size", "224", "--crop_pct", str(crop_pct)])
    assert eval_scale_size(cfg) == int(224 / crop_pct)
    image = np.random.default_rng(1).integers(0, 256, shape + (3,), dtype=np.uint8)
    h, w = shape
    scale = eval_scale_size(cfg)
    size = (scale, int(scale * h / w)) if w < h else (int(scale * w / h), scale)      # Pillow's (width, height)
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), np.float32) / 255
    top, left = int(round((size[1] - 224) / 2.0)), int(round((size[0] - 224) / 2.0))
    want = ((resized[top:top + 224, left:left + 224] - np.float32(cfg.mean)) / np.float32(cfg.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(image_files.preprocess(image, cfg), want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Classes, num_classes, train and val

def test_num_classes_comes_from_the_folders_and_val_must_have_the_same_classes(tmp_path, small_tree):
    cfg = tree_cfg(small_tree, small_tree)
    assert cfg.num_classes is None
    assert pipeline.resolve_classes(cfg) == ["bird", "cat", "dog"] and cfg.num_classes == 3
    with pytest.raises(ConfigError, match="num_classes 2 is smaller than the 3 class folders"):
        pipeline.resolve_classes(tree_cfg(small_tree, small_tree, "--num_classes", "2"))
    val = tmp_path / "val"
    for name in ["cat", "dog", "fish"]:
        save(str(val / name / "a.png"), rgb())
    with pytest.raises(DataError, match=rf"only in {small_tree}: bird; only in {val}: fish"):
        pipeline.resolve_classes(tree_cfg(small_tree, val))


def test_flowers102_layout_and_imagefolder_needs_a_path(tmp_path):
    cfg = load_config(["--dataset_choose", "flowers102"])
    assert (cfg.train_data_path, cfg.val_data_path, cfg.num_classes) == \
        ("data/flowers102/train", "data/flowers102/valid", 102)
    with pytest.raises(ConfigError, match="imagefolder needs train_data_path"):
        pipeline.dataset_size(load_config(["--dataset_choose", "imagefolder"]), "train")
    with pytest.raises(ConfigError, match="val_fraction 0.2 splits an image tree; dataset_choose cifar10"):
        load_config(["--val_fraction", "0.2"])
    with pytest.raises(ConfigError, match="and val_data_path is v; give one of them"):
        load_config(["--dataset_choose", "imagefolder", "--val_fraction", "0.2", "--val_data_path", "v"])


def test_model_class_names_prefer_the_checkpoint_then_the_folders(small_tree):
    cfg = tree_cfg(small_tree)
    assert pipeline.model_class_names(cfg, 3, saved=["a", "b", "c"]) == (["a", "b", "c"], "the checkpoint")
    assert pipeline.model_class_names(cfg, 3) == (["bird", "cat", "dog"], f"the class folders of {small_tree}")
    gone = tree_cfg(str(small_tree) + "_removed")
    assert pipeline.model_class_names(gone, 3) == (["class_0", "class_1", "class_2"], "class_<i>")


# ------------------------------------------------------------------------------------------------
# val_fraction

def test_val_fraction_is_seeded_stratified_and_saved_for_resume(tmp_path):
    paths = write_image_tree(str(tmp_path / "gen"), 4, 60, 0, seed=2)
    root, out = paths["train"], str(tmp_path / "run")
    cfg = tree_cfg(root, None, "--val_fraction", "0.25", "--save_checkpoint_path", out, "--seed", "7")
    tree = imagefolder.load_tree(root)
    train, val = split_lists.split_tree(tree, 0.25, 7)
    assert len(set(train) | set(val)) == 60 and not set(train) & set(val)
    assert np.bincount(tree.labels[val]).tolist() == [4, 4, 4, 4]            # 15 per class: round(3.75)
    assert np.array_equal(split_lists.split_tree(tree, 0.25, 7)[1], val)
    assert not np.array_equal(split_lists.split_tree(tree, 0.25, 8)[1], val)

    class Log:
        def info(self, msg):
            self.last = msg
    pipeline._SPLITS.clear()
    pipeline.prepare_split(cfg, Log(), rank=0, fresh=True)
    lists = split_lists.split_list_paths(out)
    with open(lists["val"], encoding="utf-8") as f:
        saved = f.read().split()
    assert saved == [os.path.relpath(tree.files[i], root) for i in val]
    assert sorted(pipeline.image_split(cfg, "val").files) == sorted(tree.files[i] for i in val)

    # a resumed run and evl.py use the saved lists, also after images were added to the tree
    save(os.path.join(root, "synthetic_0", "new.png"), rgb())
    pipeline._SPLITS.clear()
    pipeline.prepare_split(cfg, Log(), rank=0, fresh=False)
    assert len(pipeline.image_split(cfg, "val")) == 16 and len(pipeline.image_split(cfg, "train")) == 44
    pipeline._SPLITS.clear()
    evl_cfg = tree_cfg(root, None, "--val_fraction", "0.25", "--checkpoint_path", os.path.join(out, "best.ckpt"),
                       "--seed", "99")
    assert sorted(pipeline.image_split(evl_cfg, "val").files) == sorted(tree.files[i] for i in val)
    os.remove(tree.files[val[0]])
    with pytest.raises(DataError, match=f"split list {lists['val']} names 1 file"):
        pipeline.image_split(evl_cfg, "val")
    pipeline._SPLITS.clear()


# ------------------------------------------------------------------------------------------------
# dataset.py generate and check

def test_generate_writes_jpeg_and_png_class_folders_and_never_into_other_data(tmp_path, capsys):
    out = tmp_path / "gen"
    dataset_cli.main(["generate", "--format", "imagefolder", "--out", str(out), "--classes", "5", "--train", "20",
                      "--val", "10"])
    tree = imagefolder.check_images(imagefolder.scan_tree(str(out / "train")))
    assert tree.classes == [f"synthetic_{i}" for i in range(5)] and tree.counts().tolist() == [4] * 5
    assert {os.path.splitext(p)[1] for p in tree.files} == {".jpg", ".png"}
    assert (out / TREE_MARKER).is_file() and len(imagefolder.scan_tree(str(out / "val"))) == 10
    mine = tmp_path / "mine"
    save(str(mine / "a" / "x.png"), rgb())
    with pytest.raises(DataError, match="already holds files that were not generated"):
        dataset_cli.main(["generate", "--format", "imagefolder", "--out", str(mine)])
    assert os.listdir(mine) == ["a"]


def test_check_reports_classes_counts_sizes_and_bad_files(tmp_path, capsys):
    out = tmp_path / "gen"
    write_image_tree(str(out), 3, 12, 6, seed=1)
    dataset_cli.main(["check", "--path", str(out)])
    text = capsys.readouterr().out
    assert f"{out / 'train'}: 3 classes, 12 good images, 0 bad" in text and f"{out / 'val'}: 3 classes, 6 good" in text
    sizes = imagefolder.check_images(imagefolder.scan_tree(str(out / "train"))).sizes
    assert "images per class: min 4 (synthetic_0), max 4" in text and "synthetic_0 4, synthetic_1 4, synthetic_2 4" in text
    assert f"image sizes: width {sizes[:, 0].min()}..{sizes[:, 0].max()}" in text
    BAD["empty.png"][0](str(out / "val" / "synthetic_1" / "empty.png"))
    (out / "val" / "synthetic_1" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"1 bad image file\(s\) in .* is an empty file"):
        dataset_cli.main(["check", "--path", str(out)])
    text = capsys.readouterr().out
    assert "1 bad, 1 other files skipped" in text and "bad: image" in text and "notes.txt" in text
