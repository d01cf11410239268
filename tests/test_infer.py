"""infer.py: images written from the synthetic CIFAR generator are classified as the checkpoint model
classifies the same preprocessed tensor; names, probabilities, JSON, and the errors for bad paths
and unreadable images. The checkpoint is a random-init tiny model saved as train.py saves.

infer.py runs as a process where its exit status with some images unreadable is the point, else
its ``main`` runs in this process through ``run_cli``."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from src.data import cifar, pipeline, synthetic
from src.data import images as image_files
import infer
from src.platform.errors import DataError
from src.config import parse_command_line
from helpers import assert_user_error, checkpoint_model, ok, run_main, run_script, write_train_checkpoint

PROB_ATOL = 1e-5  # graph mode in the script vs PyNative here; softmax in float64


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("infer") / "tiny.ckpt"
    write_train_checkpoint(path, tiny["topology"], image_size=32,
                           extra=["--train_data_path", str(path.parent / "no-data-here")])
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of generated CIFAR-like pictures in several formats, sizes and modes, one corrupt
    PNG and a text file; returns (folder, good file names, corrupt file name)."""
    folder = tmp_path_factory.mktemp("images")
    pics = synthetic.synthetic_images(np.arange(6) % 10, 10, np.random.default_rng(5))
    Image.fromarray(pics[0]).save(folder / "a_plain.png")
    Image.fromarray(pics[1]).save(folder / "b_photo.jpg", quality=90)
    Image.fromarray(pics[2]).resize((57, 41), Image.BICUBIC).convert("RGBA").save(folder / "c_rgba_57x41.png")
    Image.fromarray(pics[3]).convert("L").save(folder / "d_grey.png")
    Image.fromarray(pics[4]).convert("P").save(folder / "e_palette.png")
    Image.fromarray(pics[5]).save(folder / "f_upper.JPEG")
    (folder / "z_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (folder / "notes.txt").write_text("not an image")
    good = ["a_plain.png", "b_photo.jpg", "c_rgba_57x41.png", "d_grey.png", "e_palette.png", "f_upper.JPEG"]
    return folder, good, "z_corrupt.png"


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    """(net, cfg) of the checkpoint, loaded here as infer.py loads it."""
    return checkpoint_model(tiny_ckpt)


def expected_probs(net, cfg, path):
    import mindspore as ms
    x = image_files.preprocess(image_files.read_image(str(path)), cfg)
    return infer.softmax(net(ms.Tensor(x[None])).asnumpy())[0]


# ------------------------------------------------------------------------------------------------
# The command line

def test_folder_top_k_equals_the_model_on_the_preprocessed_tensor(tmp_path, tiny_ckpt, model, images,
                                                                 tiny_cifar10):
    folder, good, corrupt = images
    out = tmp_path / "pred.json"
    proc = run_script("infer.py", "--checkpoint_path", tiny_ckpt, folder, "--json", out, "--top_k", "10",
                      "--train_data_path", tiny_cifar10, timeout=300)
    # the corrupt file is reported on one line naming it; the others are classified; exit status 2
    assert proc.returncode == 2, proc.stderr + proc.stdout
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and corrupt in err[0] and "cannot read image" in err[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{len(good)} image(s) classified, 1 could not be read" in proc.stdout
    assert "notes.txt" not in proc.stdout + proc.stderr

    res = json.loads(out.read_text())
    assert [os.path.basename(r["file"]) for r in res["results"]] == good
    assert [os.path.basename(e["file"]) for e in res["errors"]] == [corrupt]
    assert res["class_names"].endswith(cifar.META_FILES["cifar10"])  # names from the data folder's meta file
    net, cfg = model
    for r in res["results"]:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 10 and abs(sum(probs) - 1.0) < PROB_ATOL
        assert probs == sorted(probs, reverse=True)
        assert all(t["name"] == f"synthetic_{t['class']}" for t in r["top"])
        want = expected_probs(net, cfg, r["file"])
        assert r["top"][0]["class"] == int(want.argmax()), r["file"]
        np.testing.assert_allclose([want[t["class"]] for t in r["top"]], probs, rtol=0, atol=PROB_ATOL)
        assert f"1. synthetic_{r['top'][0]['class']}" in proc.stdout


def test_single_image_prints_top5_with_the_official_names(tiny_ckpt, model, images):
    folder, good, _ = images
    proc = ok(run_main("infer.py", "--checkpoint_path", tiny_ckpt, folder / good[0]))
    lines = proc.stdout.splitlines()
    i = lines.index(str(folder / good[0]))
    ranked = lines[i + 1:i + 6]
    assert [ln.split()[0] for ln in ranked] == ["1.", "2.", "3.", "4.", "5."]
    assert all(ln.split()[1] in cifar.CIFAR10_CLASSES for ln in ranked)  # no data folder: official names
    net, cfg = model
    top1 = int(expected_probs(net, cfg, folder / good[0]).argmax())
    assert ranked[0].split()[1] == cifar.CIFAR10_CLASSES[top1]


def test_a_corrupt_image_alone_is_one_error_line(tiny_ckpt, images):
    folder, _, corrupt = images
    proc = run_main("infer.py", "--checkpoint_path", tiny_ckpt, folder / corrupt)
    assert_user_error(proc, f"cannot read image '{folder / corrupt}'")


# ------------------------------------------------------------------------------------------------
# Parts

def test_preprocessing_of_a_32px_image_is_the_validation_pipelines(tiny_cifar10, tmp_path):
    """A CIFAR image written as PNG and preprocessed by infer.py gives exactly the tensor that
    evl.py's validation pipeline gives (here with the resize to 48 px, bicubic)."""
    from src.config import load_config
    from src.data.pipeline import create_dataset, load_split
    cfg = load_config(["--train_data_path", tiny_cifar10, "--val_data_path", tiny_cifar10, "--image_size", "48",
                       "--eval_batch_size", "4"])
    batch = next(create_dataset(cfg, "val").create_tuple_iterator(output_numpy=True))[0]
    arrays = load_split(cfg, "val")
    for k in range(2):
        Image.fromarray(arrays.images[k]).save(tmp_path / f"{k}.png")
        got = image_files.preprocess(image_files.read_image(str(tmp_path / f"{k}.png")), cfg)
        assert got.shape == (3, 48, 48) and got.dtype == np.float32
        np.testing.assert_array_equal(got, batch[k])


def test_images_of_any_mode_become_rgb(tmp_path):
    grey16 = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    arr = image_files.read_image(str(tmp_path / "g16.png"))
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8
    assert (arr[..., 0] == arr[..., 2]).all() and arr.max() == round(grey16.max() / 257)
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 1] = 200
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert image_files.read_image(str(tmp_path / "a.png")).shape == (5, 7, 3)


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(DataError, match="no image given"):
        image_files.collect_images([])
    with pytest.raises(DataError, match=f"image path '{tmp_path / 'nope.png'}' does not exist"):
        image_files.collect_images([str(tmp_path / "nope.png")])
    (tmp_path / "only.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    with pytest.raises(DataError, match=f"folder '{tmp_path}' has no image files"):
        image_files.collect_images([str(tmp_path)])
    (tmp_path / "empty.png").write_bytes(b"")
    assert image_files.collect_images([str(tmp_path)]) == [str(tmp_path / "empty.png")]
    with pytest.raises(DataError, match=f"cannot read image '{tmp_path / 'empty.png'}'"):
        image_files.read_image(str(tmp_path / "empty.png"))


def test_image_paths_are_told_from_flag_values():
    argv = ["--checkpoint_path", "a.ckpt", "x.png", "--demo", "y.png", "--image_size=48", "dir/",
            "--is_distributed", "false", "z.jpg", "--", "--odd-name.png"]
    cmd = parse_command_line(argv, infer.OPTIONS, positionals=True)
    assert cmd.positionals == ["x.png", "y.png", "dir/", "z.jpg", "--odd-name.png"]
    assert (cmd.cfg.checkpoint_path, cmd.cfg.demo, cmd.cfg.image_size, cmd.cfg.is_distributed) == \
        ("a.ckpt", True, 48, False)


def test_names_fall_back_when_the_model_has_another_class_count(tmp_path):
    from src.config import load_config
    cfg = load_config(["--train_data_path", str(tmp_path), "--dataset_choose", "cifar100"])
    names, source = pipeline.model_class_names(cfg, 100)
    assert names == list(cifar.CIFAR100_CLASSES) and "official" in source
    names, _ = pipeline.model_class_names(cfg, 7)
    assert names == [f"class_{i}" for i in range(7)]
