"""Settings that cannot work, or would silently change what was asked, are refused at the start in
one ``error:`` line (or named in one ``warning:`` line) before anything is written:

- a config key given on the command line of a script that does not read it (the schema's
  ``Key.scripts``, for every key and script);
- values each within bounds whose combination is impossible: the evaluation resize
  ``image_size / crop_pct``, a warm-up and cool-down that do not fit in ``epoch_size``, an EMA decay
  that freezes or copies the weights; a key given that another setting turns off (one warning);
- splits that leave classes or the validation set empty, or too few images for one batch;
- a ``train_data_path`` that holds the split folders ``train/`` and ``val/`` instead of classes;
- ``--resume`` with settings that change what the saved state means (refused) or how training goes
  on (one warning), class folders added or removed since the run, and an evaluation of a split
  other than the one the run saved;
- ``dataset.py generate`` counts that would leave classes without images.

Every case runs the real entry script's ``main`` through ``run_cli`` in this process.
"""
import os
import shutil

import pytest

from helpers import (TINY_TOPOLOGY, TRAIN_EPOCHS, TRAIN_FLAGS, NO_AUG, Snapshot, data_flags, expect_clean_failure,
                     ok, override, run_main)

#: A train.py command line that would train (the session's trained run's flags).
COMMON = TRAIN_FLAGS


def _written(folder):
    """What a failed fresh train.py run left in its folder besides its log (nothing is expected)."""
    return [f for f in os.listdir(folder) if f not in ("train.log",)] if os.path.isdir(folder) else []


# ------------------------------------------------------------------------------------------------
# A key the script does not read

def _scripts_and_foreign_keys():
    from src.config.schema import SCHEMA, SCRIPTS
    return [(script, key) for key in SCHEMA for script in SCRIPTS if script not in key.scripts]


def _flag_value(key):
    """A valid command-line value of `key` (its default; null for a nullable key without one)."""
    if key.type == "bool":          # a word a boolean flag takes (infer.py reads "null" as an image path)
        return "false" if key.default is False else "true"
    if key.default is None:
        return {"bool": "true", "str": "x", "int": "1", "float": "0.5"}[key.type] if not key.nullable else "null"
    if isinstance(key.default, bool):
        return str(key.default).lower()
    if isinstance(key.default, list):
        return ",".join(str(x) for x in key.default)
    return str(key.default)


FOREIGN = _scripts_and_foreign_keys()


def test_every_training_key_is_foreign_to_the_evaluating_scripts_and_back():
    """The table of which script reads which key is the schema's (one home); it covers the
    training procedure on one side and the checkpoint to evaluate on the other."""
    pairs = set((s, k.name) for s, k in FOREIGN)
    for key in ("lr", "epoch_size", "model_ema", "model_ema_decay", "mixup", "resume", "pretrained_ckpt", "aa"):
        assert {("evl.py", key), ("infer.py", key), ("export.py", key)} <= pairs
    assert {("train.py", "use_ema"), ("train.py", "checkpoint_path")} <= pairs
    for key in ("val_data_path", "val_fraction", "skip_bad_images", "save_checkpoint_path", "graph_cache"):
        assert {("infer.py", key), ("export.py", key)} <= pairs and ("evl.py", key) not in pairs
    assert ("export.py", "eval_batch_size") in pairs and ("infer.py", "eval_batch_size") not in pairs
    assert not [p for p in pairs if p[1] in ("image_size", "arch", "num_classes", "crop_pct", "mean")]


@pytest.mark.parametrize("script, key", FOREIGN, ids=[f"{s}-{k.name}" for s, k in FOREIGN])
def test_a_key_the_script_does_not_read_is_refused_by_train_py_and_named_by_the_others(script, key, tmp_path):
    """train.py refuses an evaluation key (it asks for what training does not do); the evaluating
    scripts name the training keys they leave unread (a training command line reused) in one warning."""
    before = Snapshot(tmp_path)
    positional = [tmp_path / "img.png"] if script == "infer.py" else []
    proc = run_main(script, f"--{key.name}", _flag_value(key), "--save_checkpoint_path" if script == "train.py"
                    else "--checkpoint_path", tmp_path / "missing.ckpt", *positional)
    if script == "train.py":
        line = expect_clean_failure(proc, before, f"--{key.name} is not read by {script}", "leave it out")
        assert all(s in line for s in key.scripts)
        return
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: {script} does not read --{key.name} (keys of {', '.join(key.scripts)}); "
                        "they have no effect here"], proc.stderr
    line = expect_clean_failure(proc, before)     # the run went on to what it does read: the missing input
    assert "missing.ckpt" in line or "img.png" in line


def test_the_training_command_line_given_to_evl_py_is_named_in_one_warning(tmp_path):
    proc = run_main("evl.py", *COMMON, *NO_AUG, "--checkpoint_path", tmp_path / "missing.ckpt")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    for flag in ("--warmup_epochs", "--cooldown_epochs", "--lr", "--drop_path_rate", "--aa", "--mixup"):
        assert flag in warnings[0]
    assert "--image_size" not in warnings[0] and "--batch_size" not in warnings[0]


def test_a_config_file_may_hold_every_key(tmp_path):
    """One config file serves every script: keys of another script in it are not refused."""
    from src.config import parse_command_line
    config = tmp_path / "all.yaml"
    config.write_text("lr: 0.001\nmodel_ema: true\nuse_ema: true\ncheckpoint_path: x.ckpt\n")
    for script in ("train.py", "evl.py", "infer.py", "export.py"):
        cfg = parse_command_line(["--config", str(config)], script=script).cfg
        assert (cfg.lr, cfg.model_ema, cfg.use_ema) == (0.001, True, True)


# ------------------------------------------------------------------------------------------------
# Values that are each within bounds, impossible together

@pytest.mark.parametrize("decay", ["1", "0", "1.0", "0.0", "-0.1", "1.5"])
def test_an_ema_decay_that_freezes_or_copies_the_weights_is_refused(decay, tmp_path, tiny_cifar10):
    before = Snapshot(tiny_cifar10)
    out = tmp_path / "run"
    proc = run_main("train.py", *COMMON, *data_flags(tiny_cifar10), "--model_ema", "true", "--model_ema_decay", decay,
                    "--save_checkpoint_path", out)
    expect_clean_failure(proc, before, f"'{decay}' for 'model_ema_decay'", "(0, 1)")
    assert not os.path.exists(out)


def test_an_ema_decay_inside_the_open_interval_is_kept():
    from src.config import load_config
    for decay in (1e-6, 0.5, 0.9998, 0.99996, 1 - 1e-9):
        cfg = load_config(["--model_ema", "true", "--model_ema_decay", str(decay)], script="train.py")
        assert cfg.model_ema_decay == decay


@pytest.mark.parametrize("image_size, crop_pct, side", [(1024, 0.05, 20480), (512, 0.1, 5120), (224, 0.05, 4480),
                                                        (1000, 0.2, 5000)])
def test_an_evaluation_resize_beyond_the_bound_is_refused_before_any_work(image_size, crop_pct, side, tmp_path,
                                                                         tiny_cifar10):
    from src.platform.bounds import MAX_RESIZE_SIDE
    before = Snapshot(tiny_cifar10)
    for script, extra in (("train.py", [*data_flags(tiny_cifar10), "--save_checkpoint_path", tmp_path / "run"]),
                          ("evl.py", [*data_flags(tiny_cifar10), "--checkpoint_path", tmp_path / "x.ckpt"])):
        proc = run_main(script, "--image_size", image_size, "--crop_pct", crop_pct, *extra)
        expect_clean_failure(proc, before, f"image_size {image_size} / crop_pct {crop_pct:g}", f"to {side} px",
                             f"{MAX_RESIZE_SIDE} px", "crop_pct >=")
    assert not os.path.exists(tmp_path / "run")


def test_the_largest_evaluation_resize_is_accepted():
    from src.config import load_config
    from src.platform.bounds import MAX_IMAGE_SIZE, MAX_RESIZE_SIDE
    cfg = load_config(["--image_size", str(MAX_IMAGE_SIZE), "--crop_pct", str(MAX_IMAGE_SIZE / MAX_RESIZE_SIDE)])
    assert int(cfg.image_size / cfg.crop_pct) == MAX_RESIZE_SIDE


@pytest.mark.parametrize("flags, fragments", [
    (["--epoch_size", "5", "--warmup_epochs", "1", "--cooldown_epochs", "4"],
     ["warmup_epochs 1 + cooldown_epochs 4", "epoch_size 5", "cool-down would be dropped", "--cooldown_epochs 3"]),
    (["--epoch_size", "2", "--warmup_epochs", "1", "--cooldown_epochs", "1"],
     ["warmup_epochs 1 + cooldown_epochs 1", "epoch_size 2", "--cooldown_epochs 0"]),
    (["--epoch_size", "3", "--warmup_epochs", "3", "--cooldown_epochs", "2"],
     ["warmup_epochs 3 + cooldown_epochs 2", "--warmup_epochs 2 --cooldown_epochs 0"]),
    (["--epoch_size", "3", "--warmup_epochs", "5", "--cooldown_epochs", "0"],
     ["warmup_epochs 5 is longer than epoch_size 3", "compressed"]),
    (["--epoch_size", "4", "--cooldown_epochs", "9"], ["cooldown_epochs 9", "epoch_size 4", "--cooldown_epochs 2"]),
])
def test_a_schedule_that_cannot_do_what_was_asked_is_refused(flags, fragments, tmp_path, tiny_cifar10):
    before = Snapshot(tiny_cifar10)
    proc = run_main("train.py", *override(COMMON, *flags), *data_flags(tiny_cifar10),
                    "--save_checkpoint_path", tmp_path / "run")
    expect_clean_failure(proc, before, *fragments)
    assert not os.path.exists(tmp_path / "run")


def test_a_schedule_that_fits_or_is_the_recipes_is_accepted():
    """What fits is kept; the recipe's warm-up or cool-down that a short run changes is the schedule's
    warning to name (src.train.optim.describe_schedule), not an error of a value the user gave."""
    from src.config import load_config
    for flags in (["--epoch_size", "5", "--warmup_epochs", "1", "--cooldown_epochs", "3"],
                  ["--epoch_size", "3", "--warmup_epochs", "3", "--cooldown_epochs", "0"],
                  ["--epoch_size", "1", "--warmup_epochs", "0", "--cooldown_epochs", "0"],
                  ["--epoch_size", "5"],
                  ["--epoch_size", "3", "--warmup_epochs", "0"],       # the recipe's cool-down (10) is the one dropped
                  ["--epoch_size", "3", "--cooldown_epochs", "0"]):    # the recipe's warm-up (10) is the one compressed
        load_config(flags, script="train.py")


def test_a_short_runs_saved_config_loads_again(tmp_path):
    """A run's config.yaml restates the recipe's warm-up and cool-down, which a 3-epoch run drops:
    given back with --config they stay the recipe's (the schedule's warning, not a refusal); the
    same values typed on the command line are the user's and refused."""
    from src.config import load_config
    from src.platform.errors import ConfigError
    cfg = load_config(["--dataset_choose", "cifar10", "--epoch_size", "3"], script="train.py")
    assert cfg.warmup_epochs + cfg.cooldown_epochs >= cfg.epoch_size
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.to_yaml(), encoding="utf-8")
    again = load_config(["--config", str(saved)], script="train.py")
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="cool-down would be dropped"):
        load_config(["--config", str(saved), "--cooldown_epochs", str(cfg.cooldown_epochs)], script="train.py")


@pytest.mark.parametrize("flags, key, why", [
    (["--loss_scale", "512"], "loss_scale", "loss_scale_type is none"),
    (["--model_ema_decay", "0.9", "--model_ema", "false"], "model_ema_decay", "model_ema is off"),
    (["--warmup_lr", "1e-5", "--warmup_epochs", "0"], "warmup_lr", "warmup_epochs is 0"),
    (["--mixup_prob", "0.5", "--mixup", "0", "--cutmix", "0"], "mixup_prob", "mixup and cutmix are 0"),
    (["--mixup_switch_prob", "0.3", "--cutmix", "0"], "mixup_switch_prob", "one of them is 0"),
    (["--crop_ratio", "0.5,2", "--crop_scale", "1,1"], "crop_ratio", "turns the random crop off"),
    (["--train_url", "obs://b/out"], "train_url", "run_modelarts is false"),
])
def test_a_key_given_that_another_setting_turns_off_is_named_in_one_warning(flags, key, why, tmp_path):
    """Given on the command line (the config file holds every key: no warning for its values)."""
    from src.config import load_config
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        load_config(flags, script="train.py")
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: --{key} has no effect: ") and why in lines[0], lines
    with contextlib.redirect_stderr(io.StringIO()) as quiet:     # the same value from the config file: no warning
        config = tmp_path / "c.yaml"
        config.write_text("".join(f"{a[2:]}: {b}\n" for a, b in zip(flags[::2], flags[1::2])))
        load_config(["--config", str(config)], script="train.py")
    assert quiet.getvalue() == ""


def test_an_eval_interval_longer_than_the_run_is_named_in_one_warning(capsys):
    from src.config import load_config
    load_config(["--epoch_size", "20", "--eval_interval", "25"], script="train.py")
    assert capsys.readouterr().err.splitlines() == [
        "warning: eval_interval 25 is more than epoch_size 20: the run is validated only after its last epoch"]
    load_config(["--epoch_size", "20", "--eval_interval", "20"], script="train.py")
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------
# Splits of an image tree

def _tree(folder, counts):
    """A class-per-folder tree: ``folder/<class>/<i>.png`` with `counts` {class: images}."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (folder / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


IMAGEFOLDER = ["--dataset_choose", "imagefolder", "--image_size", "32", *TINY_TOPOLOGY, *NO_AUG,
               "--epoch_size", "1", "--warmup_epochs", "0", "--cooldown_epochs", "0", "--batch_size", "2",
               "--num_parallel_workers", "1", "--graph_cache", "false"]


@pytest.mark.parametrize("counts, fragments", [
    ({"a": 1, "b": 1, "c": 1}, ["3 of the 3 classes", "fewer than 2 images", "validation split would be empty"]),
    ({"a": 1, "b": 1}, ["2 of the 2 classes", "'a', 'b'", "would be empty"]),
    ({"a": 5, "b": 1, "c": 4}, ["1 of the 3 classes", "('b')", "validation would miss them"]),
])
@pytest.mark.parametrize("fraction", ["0.25", "0.5", "0.999"])
def test_val_fraction_on_classes_too_small_to_split_is_refused(counts, fragments, fraction, tmp_path):
    tree = _tree(tmp_path / "photos", counts)
    out = tmp_path / "run"
    before = Snapshot(tree)
    proc = run_main("train.py", *IMAGEFOLDER, "--train_data_path", tree, "--val_fraction", fraction,
                    "--save_checkpoint_path", out)
    expect_clean_failure(proc, before, f"val_fraction {float(fraction):g}", str(tree), "at least 2 images per class",
                         *fragments)
    assert _written(out) == []          # no split lists


@pytest.mark.parametrize("batch, fraction, train_left", [("8", "0.5", 4), ("7", "0.25", 6), ("3", "0.9", 2)])
def test_a_train_split_smaller_than_one_batch_is_refused_before_the_lists_are_written(batch, fraction, train_left,
                                                                                     tmp_path):
    tree = _tree(tmp_path / "photos", {"a": 4, "b": 4} if train_left != 2 else {"a": 2, "b": 2})
    out = tmp_path / "run"
    before = Snapshot(tree)
    proc = run_main("train.py", *override(IMAGEFOLDER, "--batch_size", batch), "--train_data_path", tree,
                    "--val_fraction", fraction, "--save_checkpoint_path", out)
    expect_clean_failure(proc, before, f"leaves {train_left} train images", f"batch_size {batch} x 1 device(s)",
                         f"batch_size <= {train_left}")
    assert _written(out) == []


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_a_train_data_path_holding_split_folders_is_refused_with_the_fix(val_name, tmp_path):
    root = tmp_path / "data"
    _tree(root / "train", {"cat": 2, "dog": 2})
    _tree(root / val_name, {"cat": 1, "dog": 1})
    before = Snapshot(root)
    for flags in (["--train_data_path", root, "--val_fraction", "0.5"],
                  ["--train_data_path", root, "--val_data_path", root]):
        proc = run_main("train.py", *IMAGEFOLDER, *flags, "--save_checkpoint_path", tmp_path / "run")
        expect_clean_failure(proc, before, f"train_data_path {root} holds the split folders", "not class folders",
                             f"--train_data_path {root / 'train'} --val_data_path {root / val_name}")
        assert _written(tmp_path / "run") == []
    proc = run_main("evl.py", *IMAGEFOLDER[:2], "--val_data_path", root, "--checkpoint_path", tmp_path / "x.ckpt")
    expect_clean_failure(proc, before, f"val_data_path {root} holds the split folders")


def test_class_folders_named_like_a_split_beside_others_are_classes(tmp_path):
    from src.config import load_config
    from src.data.pipeline import check_layout
    root = _tree(tmp_path / "photos", {"train": 1, "cat": 1, "val": 1})
    check_layout(load_config(["--dataset_choose", "imagefolder", "--train_data_path", str(root),
                              "--val_fraction", "0.5"]))
    only_train = _tree(tmp_path / "one", {"train": 1})
    check_layout(load_config(["--dataset_choose", "imagefolder", "--train_data_path", str(only_train),
                              "--val_data_path", str(root)]))


# ------------------------------------------------------------------------------------------------
# dataset.py generate reports what it writes

@pytest.mark.parametrize("classes, train, val, split, n", [(5, 2, 100, "train", 2), (5, 4, 0, "train", 4),
                                                            (3, 30, 2, "val", 2), (10, 50, 1, "val", 1)])
def test_generate_refuses_counts_that_leave_classes_without_images(classes, train, val, split, n, tmp_path):
    before = Snapshot(tmp_path)
    proc = run_main("dataset.py", "generate", "--format", "imagefolder", "--out", tmp_path / "gen", "--classes",
                    classes, "--train", train, "--val", val)
    expect_clean_failure(proc, before, f"--{split} {n} is fewer than --classes {classes}", f"--{split} >= {classes}",
                         "nothing was written")


def test_generate_writes_exactly_the_counts_it_reports(tmp_path):
    out = tmp_path / "gen"
    proc = ok(run_main("dataset.py", "generate", "--format", "imagefolder", "--out", out, "--classes", "3",
                       "--train", "3", "--val", "0"))
    assert "wrote 3 train + 0 val synthetic JPEG/PNG images of 3 classes" in proc.stdout
    assert sorted(os.listdir(out / "train")) == ["synthetic_0", "synthetic_1", "synthetic_2"]
    assert sum(len(os.listdir(out / "train" / c)) for c in os.listdir(out / "train")) == 3
    assert not os.path.exists(out / "val")


# ------------------------------------------------------------------------------------------------
# --resume against the run's saved settings

@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the session's finished run (last.ckpt, config.yaml) that a refused resume must leave as it is."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.ckpt", "config.yaml"):
        shutil.copyfile(trained_run["dir"] / name, out / name)
    return out


@pytest.mark.parametrize("flags, key, old, new", [
    (["--model_ema", "true"], "model_ema", "false", "true"),
    (["--batch_size", "16"], "batch_size", "8", "16"),
    (["--max_steps_per_epoch", "5"], "max_steps_per_epoch", "null", "5"),
    (["--num_classes", "12"], "num_classes", "10", "12"),
])
def test_a_resume_that_changes_what_the_saved_state_means_is_refused(flags, key, old, new, run_copy, tiny_cifar10):
    before = Snapshot(run_copy, tiny_cifar10)
    proc = run_main("train.py", *override([*COMMON, *data_flags(tiny_cifar10), "--epoch_size", TRAIN_EPOCHS + 1,
                                           "--resume", "auto", "--save_checkpoint_path", run_copy], *flags))
    expect_clean_failure(proc, before, f"resume: {key} {new} is not the run's {key} {old}",
                         str(run_copy / "config.yaml"), f"give --{key} {old}", "another save_checkpoint_path")


def test_dropping_the_ema_of_an_ema_run_on_resume_is_refused(run_copy, tiny_cifar10):
    """The saved config says model_ema true: --model_ema false would drop the averages and switch
    what best.ckpt ranks."""
    from src.config.runs import read_run_config
    from src.config import Config
    saved = read_run_config(run_copy / "config.yaml")
    Config({**saved, "model_ema": True, "model_ema_decay": 0.9}).save(run_copy / "config.yaml")
    before = Snapshot(run_copy, tiny_cifar10)
    proc = run_main("train.py", *override([*COMMON, *data_flags(tiny_cifar10), "--epoch_size", TRAIN_EPOCHS + 1,
                                           "--resume", "auto", "--save_checkpoint_path", run_copy],
                                          "--model_ema", "false"))
    expect_clean_failure(proc, before, "resume: model_ema false is not the run's model_ema true", "--model_ema true")


def test_a_resume_with_other_training_settings_names_them_in_one_warning(run_copy, tiny_cifar10):
    """The finished run resumed with the same epochs has nothing to do; lr and seed changed are named."""
    before = Snapshot(run_copy, tiny_cifar10)
    proc = ok(run_main("train.py", *override([*COMMON, *data_flags(tiny_cifar10), "--epoch_size", TRAIN_EPOCHS,
                                              "--resume", "auto", "--save_checkpoint_path", run_copy],
                                             "--lr", "1e-3", "--seed", "5", "--log_interval", "7")))
    warnings = [ln for ln in proc.stderr.splitlines() if "resuming with settings" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), proc.stderr
    assert "lr 0.001 (was 0.002)" in warnings[0] and "seed 5 (was 0)" in warnings[0]
    assert "log_interval" not in warnings[0]                     # where and how it runs: free
    assert "nothing to do" in proc.stdout + proc.stderr
    assert Snapshot(run_copy, tiny_cifar10) == before


# ------------------------------------------------------------------------------------------------
# An image-tree run: classes changed before --resume, another split given to evl.py

@pytest.fixture(scope="module")
def tree_run(tmp_path_factory):
    """A one-step imagefolder run with val_fraction 0.25 (pynative, nothing compiled): its folder and tree."""
    root = tmp_path_factory.mktemp("tree_run")
    tree = _tree(root / "photos", {"cat": 4, "dog": 4})
    out = root / "run"
    proc = ok(run_main("train.py", *IMAGEFOLDER, "--mode", "pynative", "--max_steps_per_epoch", "1",
                       "--val_fraction", "0.25", "--train_data_path", tree, "--save_checkpoint_path", out))
    return {"tree": tree, "out": out, "log": proc.stdout + proc.stderr}


def test_a_val_fraction_run_logs_where_its_splits_come_from_and_its_custom_topology(tree_run):
    """Both splits are parts of train_data_path (3 of each class's 4 images to train, 1 to validate),
    and TINY_TOPOLOGY is not convmlp_s, whose name the run's arch still is."""
    log, tree = tree_run["log"], tree_run["tree"]
    assert (f"data: imagefolder train 6 images ({tree} less val_fraction 0.25), "
            f"val 2 images (val_fraction 0.25 of {tree}), 2 classes, 32px") in log
    assert ("model custom ConvMLP (blocks [1, 1, 1], dims [32, 64, 128], mlp_ratios [2, 2, 2], channels 16, "
            "n_conv_blocks 1): ") in log
    assert "model convmlp_s" not in log and "(None)" not in log


def _copy_tree_run(tree_run, tmp_path):
    tree, out = tmp_path / "photos", tmp_path / "run"
    shutil.copytree(tree_run["tree"], tree)
    shutil.copytree(tree_run["out"], out)
    from src.config.runs import read_run_config
    from src.config import Config
    saved = read_run_config(out / "config.yaml")
    Config({**saved, "train_data_path": str(tree), "save_checkpoint_path": str(out)}).save(out / "config.yaml")
    return tree, out


@pytest.mark.parametrize("added, fragments", [
    ({"bird": 2}, ["now has 3 class folders", "trained on 2", "added 'bird'"]),
    ({"ant": 1, "zebra": 3}, ["now has 4 class folders", "trained on 2", "added 'ant', 'zebra'"]),
])
def test_class_folders_added_before_resume_are_named(added, fragments, tree_run, tmp_path):
    """Not "give num_classes N" (which fails too): the classes added since the run, and what to do.
    (A class folder removed is named by the saved split list, whose images are gone.)"""
    tree, out = _copy_tree_run(tree_run, tmp_path)
    _tree(tree, added)
    before = Snapshot(tree, out)
    proc = run_main("train.py", *override(IMAGEFOLDER, "--epoch_size", "2"), "--mode", "pynative",
                    "--max_steps_per_epoch", "1", "--val_fraction", "0.25", "--train_data_path", tree,
                    "--save_checkpoint_path", out, "--resume", "auto")
    line = expect_clean_failure(proc, before, str(tree), "restore the class folders", "another save_checkpoint_path",
                                "--pretrained_ckpt", *fragments)
    assert "num_classes" not in line


@pytest.mark.parametrize("flags, given, runs", [
    (["--val_fraction", "0.5"], "--val_fraction 0.5", "--val_fraction 0.25"),
    (["--val_fraction", "0.25", "--seed", "3"], "--seed 3", "--seed 0"),
    (["--val_fraction", "0.1", "--seed", "1"], "--val_fraction 0.1 --seed 1", "--val_fraction 0.25 --seed 0"),
])
def test_evl_refuses_a_split_other_than_the_one_the_run_saved(flags, given, runs, tree_run, tmp_path):
    tree, out = _copy_tree_run(tree_run, tmp_path)
    before = Snapshot(tree, out)
    proc = run_main("evl.py", "--dataset_choose", "imagefolder", "--train_data_path", tree, "--checkpoint_path",
                    out / "last.ckpt", *flags)
    expect_clean_failure(proc, before, f"{given} asks for another split than the run's", runs,
                         str(out / "config.yaml"), f"validation list in {out}")


def test_download_says_what_an_existing_folder_holds_or_what_is_wrong_with_it(tiny_cifar10, tmp_path):
    """Not "already exists; nothing to do" for any folder of that name: the records it holds, or an
    error naming what is missing."""
    proc = ok(run_main("dataset.py", "download", "--dataset", "cifar10", "--root", os.path.dirname(tiny_cifar10)))
    assert f"{tiny_cifar10} already holds 203 train + 61 val CIFAR-10 records; nothing to do" in proc.stdout
    empty = tmp_path / "cifar-10-batches-bin"
    empty.mkdir()
    before = Snapshot(tmp_path)
    expect_clean_failure(run_main("dataset.py", "download", "--dataset", "cifar10", "--root", tmp_path), before,
                         str(empty))
