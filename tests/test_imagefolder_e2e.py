"""Your own images end to end, through the entry scripts as a user runs them: a generated 5-class tree
of JPEG and PNG files (``dataset.py generate --format imagefolder``) trains with model EMA (processes,
in the background), then -- with the training folder removed -- evl.py, infer.py, export.py and
``pth2ckpt.py --reverse`` name its classes from the checkpoint and use the weights or the EMA
weights as asked; a run with ``val_fraction`` killed after its first epoch resumes on the saved
split with its EMA; a bad image stops train.py with one line naming it, or is skipped and counted.

The background jobs (the tree's generation, the training runs) are processes (a kill needs one, and
a job runs only processes); the other commands check their output and files, and run their ``main``
in this process (``helpers.run_main``, through the same ``run_cli``)."""
import json
import os
import shutil

import numpy as np
import pytest

from helpers import (NO_AUG, TINY_TOPOLOGY, assert_user_error, background, ok, override, plugin_env, run_main,
                     run_script)

CLASSES = [f"synthetic_{i}" for i in range(5)]
N_TRAIN, N_VAL, EPOCHS = 300, 100, 4
TRAIN = [*TINY_TOPOLOGY, *NO_AUG, "--dataset_choose", "imagefolder", "--image_size", "32", "--batch_size", "30",
         "--epoch_size", str(EPOCHS), "--warmup_epochs", "0", "--cooldown_epochs", "0", "--lr", "2e-3",
         "--drop_path_rate", "0", "--model_ema", "true", "--model_ema_decay", "0.8", "--log_interval", "1"]


def epoch_lines(text):
    return [ln for ln in text.splitlines() if " epoch:" in ln and "val top-1" in ln]


def logged(line, label):
    """The top-1 after ``<label> top-1`` in an epoch line."""
    return float(line.split(f"{label} top-1 ")[1].split()[0])


@background
def trained(ctx):
    """dataset.py generate, then train.py with EMA; the training folder is then removed."""
    root = ctx.folder
    ok(run_script("dataset.py", "generate", "--format", "imagefolder", "--out", root / "data", "--classes", "5",
                  "--train", N_TRAIN, "--val", N_VAL, "--seed", "3", environ=ctx.env))
    out = root / "run"
    proc = ok(run_script("train.py", *TRAIN, "--train_data_path", root / "data" / "train", "--val_data_path",
                         root / "data" / "val", "--save_checkpoint_path", out, environ=ctx.env))
    shutil.move(str(root / "data" / "train"), str(root / "train_elsewhere"))
    return {"root": root, "out": out, "val": root / "data" / "val", "log": proc.stdout}


def test_training_logs_the_tree_and_learns_with_ema_evaluated_beside_the_weights(trained):
    log = trained["log"]
    assert f"{N_TRAIN} images in 5 classes, checked in" in log and "5 classes, 32px" in log
    assert "model EMA: decay 0.8" in log
    lines = epoch_lines(log)
    assert len(lines) == EPOCHS and all("| EMA top-1" in ln for ln in lines)
    # chance 0.2 (100 images: sd 0.04); ~0.45 seen after these 40 steps
    assert logged(lines[-1], "val") >= 0.35 and logged(lines[-1], "EMA") >= 0.35
    with open(trained["out"] / "metrics.csv") as f:
        header, *rows = f.read().splitlines()
    assert header.endswith("ema_val_loss,ema_val_top1,ema_val_top5") and len(rows) == EPOCHS
    assert float(rows[-1].split(",")[-2]) == pytest.approx(logged(lines[-1], "EMA"), abs=1e-4)


def test_checkpoint_holds_class_names_and_ema_weights_that_differ_from_the_weights(trained):
    import mindspore as ms
    params = ms.load_checkpoint(str(trained["out"] / "last.ckpt"))
    assert json.loads(params["class_names"]) == CLASSES
    weights = {k: v.asnumpy() for k, v in params.items() if k.startswith("stages.")}
    assert weights and all(f"ema.{k}" in params for k in weights)
    # the last epoch's lr is near 0, so the average has almost caught up with the weights: close, not equal
    diff = max(float(np.abs(params[f"ema.{k}"].asnumpy() - v).max()) for k, v in weights.items())
    assert 0 < diff < 0.1, diff


def test_evl_names_the_classes_without_the_data_and_evaluates_weights_or_ema(trained, tmp_path):
    last = epoch_lines(trained["log"])[-1]
    for flag, label in (("false", "val"), ("true", "EMA")):
        out = tmp_path / f"eval_{flag}.json"
        proc = ok(run_main("evl.py", "--checkpoint_path", trained["out"] / "last.ckpt", "--dataset_choose",
                           "imagefolder", "--val_data_path", trained["val"], "--use_ema", flag, "--json", out,
                           "--graph_cache", "false"))
        res = json.loads(out.read_text())
        assert res["n"] == N_VAL and res["acc"] == pytest.approx(logged(last, label), abs=1e-4)
        assert list(res["per_class"]) == CLASSES
        assert all(f" {name} " in proc.stdout for name in CLASSES)


def test_evl_refuses_a_validation_tree_of_other_classes(trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained["val"], other)
    os.rename(other / "synthetic_4", other / "tulip")
    proc = run_main("evl.py", "--checkpoint_path", trained["out"] / "last.ckpt", "--dataset_choose", "imagefolder",
                    "--val_data_path", other)
    assert_user_error(proc, "only in", "synthetic_4", f"only in {other}: tulip")


def test_infer_names_the_classes_from_the_checkpoint(trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in CLASSES:
        first = sorted(os.listdir(trained["val"] / name))[0]
        shutil.copy(trained["val"] / name / first, photos / f"{name}{os.path.splitext(first)[1]}")
    out = tmp_path / "pred.json"
    proc = ok(run_main("infer.py", "--checkpoint_path", trained["out"] / "last.ckpt", photos, "--json", out,
                       "--use_ema", "true"))
    res = json.loads(out.read_text())
    assert res["class_names"] == "the checkpoint" and "names from the checkpoint" in proc.stdout
    assert len(res["results"]) == 5
    for r in res["results"]:                  # the top 5 of 5 classes: every name once, by class index
        assert sorted((t["class"], t["name"]) for t in r["top"]) == list(enumerate(CLASSES))


def test_export_and_reverse_conversion_of_the_ema_weights(trained, tmp_path):
    import torch
    import mindspore as ms
    ckpt = trained["out"] / "last.ckpt"
    proc = ok(run_main("export.py", "--checkpoint_path", ckpt, "--file_name", tmp_path / "m", "--use_ema", "true",
                       "--verify"))
    assert (tmp_path / "m.mindir").is_file() and "verified" in proc.stdout
    ok(run_main("pth2ckpt.py", "--reverse", "--src", ckpt, "--dst", tmp_path / "ema.pth", "--ema", "--verify"))
    state = torch.load(str(tmp_path / "ema.pth"), weights_only=True)
    params = ms.load_checkpoint(str(ckpt))
    np.testing.assert_array_equal(state["head.weight"].numpy(), params["ema.head.weight"].asnumpy())
    assert np.abs(state["head.weight"].numpy() - params["head.weight"].asnumpy()).max() > 0


def test_use_ema_on_a_checkpoint_without_ema_is_one_error(trained, tmp_path):
    import mindspore as ms
    params = ms.load_checkpoint(str(trained["out"] / "last.ckpt"))
    plain = {k: v for k, v in params.items() if not k.startswith("ema.")}
    ms.save_checkpoint([{"name": k, "data": v} for k, v in plain.items() if not isinstance(v, str)],
                       str(tmp_path / "plain.ckpt"), append_dict={k: v for k, v in plain.items() if isinstance(v, str)})
    proc = run_main("evl.py", "--checkpoint_path", tmp_path / "plain.ckpt", "--dataset_choose", "imagefolder",
                    "--val_data_path", trained["val"], "--use_ema", "true")
    assert_user_error(proc, f"'{tmp_path / 'plain.ckpt'}' holds no EMA weights")


# ------------------------------------------------------------------------------------------------
# val_fraction and resume

@background
def val_fraction_runs(ctx):
    """A val_fraction run straight through, and the same run killed (-9) after its first epoch's
    last.ckpt, then resumed: the folder of both and the killed run's and the resume's outputs."""
    from src.data.synthetic import write_image_tree
    tree = write_image_tree(str(ctx.folder / "data"), 5, 200, 0, seed=4)["train"]
    args = override(TRAIN, "--epoch_size", "2", "--train_data_path", tree, "--val_fraction", "0.2")
    ok(run_script("train.py", *args, "--save_checkpoint_path", ctx.folder / "straight", environ=ctx.env))
    killed = run_script("train.py", *args, "--save_checkpoint_path", ctx.folder / "killed", environ=ctx.env,
                        env=plugin_env(ctx.env, CONVMLP_TEST_KILL_AFTER="last.ckpt"))
    resumed = run_script("train.py", *args, "--save_checkpoint_path", ctx.folder / "killed", "--resume", "auto",
                         environ=ctx.env)
    return ctx.folder, killed, resumed


def test_a_killed_val_fraction_run_resumes_on_its_saved_split_with_its_ema(val_fraction_runs):
    tmp_path, killed, resumed = val_fraction_runs
    assert killed.returncode == -9, killed.stdout[-2000:]
    ok(resumed)
    assert "1 epoch(s) done" in resumed.stdout and "the saved lists" in resumed.stdout
    for name in ("train_files.txt", "val_files.txt"):
        assert (tmp_path / "straight" / name).read_text() == (tmp_path / "killed" / name).read_text()
    assert len((tmp_path / "killed" / "val_files.txt").read_text().split()) == 40
    import mindspore as ms
    a = ms.load_checkpoint(str(tmp_path / "straight" / "last.ckpt"))
    b = ms.load_checkpoint(str(tmp_path / "killed" / "last.ckpt"))
    ema = [k for k in a if k.startswith("ema.")]
    assert ema and sorted(ema) == sorted(k for k in b if k.startswith("ema."))
    worst = max(float(np.abs(a[k].asnumpy() - b[k].asnumpy()).max()) for k in ema)
    assert worst <= 1e-4, worst          # as tests/test_train.py's resume of the weights


# ------------------------------------------------------------------------------------------------
# Bad images through train.py

@pytest.fixture
def tree_with_an_empty_image(tmp_path):
    from src.data.synthetic import write_image_tree
    paths = write_image_tree(str(tmp_path / "data"), 3, 60, 30, seed=5)
    bad = os.path.join(paths["train"], "synthetic_1", "broken.jpg")
    open(bad, "wb").close()
    with open(os.path.join(paths["train"], "synthetic_2", "notes.txt"), "w") as f:
        f.write("not an image")
    return paths, bad


def test_a_bad_image_stops_train_with_one_line_naming_it(tree_with_an_empty_image, tmp_path):
    paths, bad = tree_with_an_empty_image
    out = tmp_path / "run"
    proc = run_main("train.py", *override(TRAIN, "--epoch_size", "1"), "--train_data_path", paths["train"],
                    "--val_data_path", paths["val"], "--save_checkpoint_path", out)
    assert_user_error(proc, f"image '{bad}' is an empty file (0 bytes)", "skip_bad_images: true")
    left = os.listdir(out) if out.exists() else []
    assert not [f for f in left if f.endswith(".ckpt") or ".tmp" in f], left


def test_skip_bad_images_trains_and_counts_what_it_skipped(tree_with_an_empty_image, tmp_path):
    paths, bad = tree_with_an_empty_image
    proc = ok(run_main("train.py", *override(TRAIN, "--epoch_size", "1", "--graph_cache", "false"),
                       "--train_data_path", paths["train"], "--val_data_path", paths["val"],
                       "--save_checkpoint_path", tmp_path / "run", "--skip_bad_images", "true"))
    assert "left out 1 bad image file(s), e.g. image" in proc.stdout and bad in proc.stdout
    assert "skipped 1 file(s) without an image extension" in proc.stdout
    assert "train 60 images" in proc.stdout
