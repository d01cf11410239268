"""train.py and evl.py end to end, run as a user runs them (subprocesses on generated CIFAR data).

The runs use a small ConvMLP topology (``TINY_TOPOLOGY``: same cells as S/M/L, ~0.2 M parameters)
at 32 px so that the whole file takes a few minutes on 2 CPU cores. The training runs are background
jobs (``helpers.background``): they start with the test session, while other files' tests run, and
the tests here read what they left. The evaluations of the trained run and the short fine-tuning
run check their output and files only, and run in this process (``helpers.run_main``, through the
same ``run_cli``); evl.py's exit status is checked as a process. Ctrl-C and resume, and a loss that
becomes NaN, are in tests/test_reliability.py.
"""
import json
import os
import time

import numpy as np
import pytest

from helpers import (NO_AUG, TINY_TOPOLOGY, assert_user_error, background, data_flags, learnable, model_weights, ok,
                     override, run_main, run_script)

COMMON = TINY_TOPOLOGY + ["--image_size", "32", "--batch_size", "32", "--num_parallel_workers", "2",
                          "--cooldown_epochs", "0"]


def evaluate_json(ckpt, tmp_path, *extra):
    out = tmp_path / f"eval-{time.time_ns()}.json"
    proc = ok(run_main("evl.py", "--checkpoint_path", ckpt, "--json", out, "--graph_cache", "false", *extra))
    assert "accuracy:{'acc': " in proc.stdout
    with open(out) as f:
        return json.load(f), proc


@background
def trained10(ctx):
    """One from-scratch run on CIFAR-10-format data big enough to learn (``data``) with the full
    augmentation recipe on."""
    data = learnable(ctx.folder, "cifar10")
    out = ctx.folder / "run10"
    t0 = time.time()
    proc = ok(run_script("train.py", *COMMON, *data_flags(data), "--epoch_size", "8",
                         "--warmup_epochs", "1", "--lr", "1e-3", "--mixup", "0", "--cutmix", "0",
                         "--save_checkpoint_path", out, environ=ctx.env))
    return {"dir": str(out), "log": proc.stdout, "seconds": time.time() - t0, "data": data}


def test_train_log_tells_a_person_what_is_running(trained10):
    log = trained10["log"]
    for fragment in ("resolved config:", "device CPU", "mode GRAPH", "rank 0 / world size 1",
                     "train 2000 images", "val 500 images", "steps per epoch", "trainable parameters",
                     "amp_level O0", "FROM SCRATCH"):
        assert fragment in log, fragment
    # the seed's per-epoch line, plus lr, validation, throughput and time
    lines = [ln for ln in log.splitlines() if "epoch:" in ln and "loss is" in ln]
    assert len(lines) == 8
    assert all(" step:62, loss is " in ln and "val top-1" in ln and "img/s" in ln and "lr " in ln
               for ln in lines)


def test_run_folder_has_checkpoints_metrics_and_curves(trained10):
    files = set(os.listdir(trained10["dir"]))
    assert {"last.ckpt", "best.ckpt", "config.yaml", "metrics.csv", "curves.png", "train.log"} <= files
    epochs = sorted(f for f in files if f.startswith("epoch_"))
    assert epochs == [f"epoch_{e:04d}.ckpt" for e in range(4, 9)]      # keep_checkpoint_max 5
    assert not [f for f in files if ".tmp" in f]                          # nothing half-written
    with open(os.path.join(trained10["dir"], "metrics.csv")) as f:
        rows = f.read().strip().splitlines()
    assert rows[0].startswith("epoch,step,train_loss,val_loss,val_top1") and len(rows) == 9


def test_from_scratch_run_learns_far_above_chance(trained10, tmp_path):
    """evl.py on best.ckpt: chance is 10 %; the threshold is 40 % (measured 58-62 % over seeds)."""
    res, proc = evaluate_json(os.path.join(trained10["dir"], "best.ckpt"), tmp_path,
                              *data_flags(trained10["data"]))
    assert res["acc"] >= 0.4, proc.stdout
    assert res["top5"] >= res["acc"] and res["n"] == 500
    assert len(res["per_class"]) == 10 and "top-5 accuracy" in proc.stdout


def test_evl_reads_arch_and_topology_from_a_train_checkpoint(trained10):
    """No topology flags needed: the checkpoint carries its run's config."""
    proc = ok(run_main("evl.py", "--checkpoint_path", os.path.join(trained10["dir"], "last.ckpt"),
                       *data_flags(trained10["data"]), "--image_size", "32", "--graph_cache", "false"))
    assert "from the checkpoint's config" in proc.stdout
    assert "accuracy:{'acc': " in proc.stdout


def test_evl_rejects_checkpoint_for_another_number_of_classes(trained10):
    """As a process: evl.py's exit status (the other refusals run in-process, tests/test_reliability.py)."""
    proc = run_script("evl.py", "--checkpoint_path", os.path.join(trained10["dir"], "best.ckpt"),
                      *data_flags(trained10["data"]), "--num_classes", "100")
    assert_user_error(proc, "best.ckpt", "head.weight")


@background
def trained100(ctx):
    """A from-scratch CIFAR-100-format run (recipe augmentation off), then evl.py --json on its best
    checkpoint."""
    data, out = learnable(ctx.folder, "cifar100"), ctx.folder / "run100"
    train = run_script("train.py", *override([*COMMON, *NO_AUG], "--dataset_choose", "cifar100",
                       *data_flags(data), "--epoch_size", "4", "--warmup_epochs", "1",
                       "--lr", "3e-3", "--batch_size", "64", "--save_checkpoint_path", out), environ=ctx.env)
    evaluation = run_script("evl.py", "--checkpoint_path", out / "best.ckpt", "--json", ctx.folder / "eval.json",
                            "--dataset_choose", "cifar100", *data_flags(data), environ=ctx.env)
    return {"train": train, "evl": evaluation, "json": ctx.folder / "eval.json"}


@pytest.mark.slow
def test_cifar100_format_end_to_end(trained100):
    """100 classes (fine labels of the CIFAR-100 binary format): chance is 1 %, threshold 5 %."""
    ok(trained100["train"])
    assert "accuracy:{'acc': " in ok(trained100["evl"]).stdout
    with open(trained100["json"]) as f:
        res = json.load(f)
    assert res["acc"] >= 0.05 and len(res["per_class"]) == 100


def test_finetune_from_converted_official_checkpoint(tiny, tiny_cifar100, tmp_path):
    """official .pth -> pth2ckpt.py -> train.py --pretrained_ckpt with a new 100-class head (both in this
    process: what is checked is their output and files; a setting of its own, so no graph to share)."""
    ckpt = tmp_path / "tiny.ckpt"
    ok(run_main("pth2ckpt.py", "--src", tiny["pth"], "--dst", ckpt, *tiny["flags"],
                "--num_classes", str(tiny["num_classes"])))
    topo = tiny["flags"]
    proc = ok(run_main("train.py", *topo, "--image_size", "32", "--dataset_choose", "cifar100",
                       *data_flags(tiny_cifar100), "--pretrained_ckpt", ckpt, "--epoch_size", "1",
                       "--max_steps_per_epoch", "3", "--graph_cache", "false", "--save_checkpoint_path", tmp_path / "ft"))
    assert "head re-created for 100 classes" in proc.stdout
    assert "FROM SCRATCH" not in proc.stdout
    start, end = model_weights(str(ckpt)), model_weights(str(tmp_path / "ft" / "last.ckpt"))
    assert end["head.weight"].shape == (100, tiny["topology"]["dims"][-1])
    moved = [k for k in start if not k.startswith("head.") and not np.array_equal(start[k], end[k])]
    assert moved, "the pretrained body was not trained"


#: The mixed-precision levels the CPU runs (float16 emulated), each with a fixed loss scale.
AMP_LEVELS = (("O1", "fixed"), ("O2", "fixed"))


@background
def amp_runs(ctx):
    """One short train.py run per :data:`AMP_LEVELS` entry."""
    return {level: run_script("train.py", *COMMON, *NO_AUG, *data_flags(ctx.tiny_cifar10), "--epoch_size", "1",
                              "--max_steps_per_epoch", "4", "--amp_level", level, "--loss_scale_type", scale,
                              "--save_checkpoint_path", ctx.folder / level, environ=ctx.env)
            for level, scale in AMP_LEVELS}


@pytest.mark.slow
def test_amp_levels_that_the_cpu_supports_train(amp_runs):
    for level, _ in AMP_LEVELS:
        proc = ok(amp_runs[level])
        assert f"amp_level {level}" in proc.stdout and "emulated" in proc.stdout
        loss = float(proc.stdout.split("loss is ")[1].split()[0])
        assert np.isfinite(loss)


def test_dynamic_loss_scale_is_refused_on_cpu_before_anything_runs(tiny_cifar10, tmp_path):
    """As a process: train.py's exit status (the other refusals run in-process, tests/test_reliability.py)."""
    proc = run_script("train.py", *COMMON, *data_flags(tiny_cifar10), "--loss_scale_type", "dynamic",
                      "--save_checkpoint_path", tmp_path / "dyn")
    assert_user_error(proc, "loss_scale_type dynamic", "CPU")
    assert not (tmp_path / "dyn").exists()   # refused before the run folder is made
