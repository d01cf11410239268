"""The checkpoint file (src/checkpoint/checkpoint.py): the metadata train.py records beside the weights
reads back as it was written, a checkpoint written by an earlier version of the code reads, evaluates
and resumes, and the scripts take the model a checkpoint describes from it unless the command line
says otherwise."""
import dataclasses
import json
import os
import shutil

import numpy as np

from helpers import FIXTURES, checkpoint_meta, data_flags, ok, run_main

FIXTURE = os.path.join(FIXTURES, "train_checkpoint_interrupted.ckpt")
FIXTURE_META = os.path.join(FIXTURES, "train_checkpoint_interrupted.json")
#: The settings of the run that wrote FIXTURE (tests/fixtures/README.md), less its data and folder.
FIXTURE_FLAGS = ["--blocks", "1,1,1", "--dims", "8,16,32", "--mlp_ratios", "1,1,1", "--channels", "8",
                 "--n_conv_blocks", "1", "--image_size", "32", "--batch_size", "4", "--max_steps_per_epoch", "2",
                 "--epoch_size", "2", "--model_ema", "true", "--num_parallel_workers", "1", "--mode", "pynative",
                 "--aa", "null", "--mixup", "0", "--cutmix", "0", "--reprob", "0"]
FIXTURE_MODEL = ("custom ConvMLP (blocks [1, 1, 1], dims [8, 16, 32], mlp_ratios [1, 1, 1], channels 8, "
                 "n_conv_blocks 1)")


def _write(path, meta_entries, step=17):
    """A checkpoint of one weight and the optimiser's global step, with `meta_entries` beside them."""
    import mindspore as ms
    from src.checkpoint.checkpoint import save_atomic
    save_atomic([{"name": "head.weight", "data": ms.Tensor(np.ones((3, 4), np.float32))},
                 {"name": "global_step", "data": ms.Tensor(np.array([step], np.int32))}], str(path), meta_entries)
    return path


def test_metadata_reads_back_as_it_was_written(tmp_path):
    from src.checkpoint.checkpoint import Checkpoint, CheckpointMeta
    from src.config import load_config
    cfg = load_config(["--dataset_choose", "cifar100", "--dims", "16,32,64"])
    meta = CheckpointMeta.of_run(cfg, epoch=2, global_step=17, best_acc=0.5, best_epoch=1, step_in_epoch=3,
                                 epoch_losses=[0.5, 0.25, 2.0], class_names=["cat", "dög", "42"])
    back = Checkpoint.read(_write(tmp_path / "mid-epoch.ckpt", meta.to_entries()))
    assert back.meta == meta and back.checksum_verified and not back.has_ema
    assert back.meta.saved_config(back.path)["dims"] == [16, 32, 64]
    # at an epoch's end no losses are recorded: the next epoch starts from its first step
    end = CheckpointMeta.of_run(cfg, epoch=3, global_step=17, best_acc=0.5, best_epoch=3, epoch_losses=[0.5])
    assert "epoch_losses" not in end.to_entries()
    assert Checkpoint.read(_write(tmp_path / "end.ckpt", end.to_entries())).meta.epoch_losses == []


def test_a_checkpoint_of_the_first_format_reads_with_the_defaults_of_what_it_lacks(tmp_path):
    """The first train.py checkpoints recorded neither epoch_losses nor class_names; pth2ckpt.py's
    record no metadata at all."""
    from src.checkpoint.checkpoint import Checkpoint
    first = {"epoch": 3, "step_in_epoch": 0, "best_acc": 0.25, "best_epoch": 2, "arch": "convmlp_s",
             "num_classes": 3, "image_size": 32, "dataset": "cifar10", "config": "arch: convmlp_s\n"}
    meta = Checkpoint.read(_write(tmp_path / "first.ckpt", first, step=30)).meta
    assert (meta.epoch, meta.global_step, meta.step_in_epoch, meta.best_acc, meta.best_epoch) == (3, 30, 0, 0.25, 2)
    assert meta.epoch_losses == [] and meta.class_names is None
    bare = Checkpoint.read(_write(tmp_path / "converted.ckpt", {})).meta
    assert bare.epoch is None and bare.config is None and bare.saved_config("converted.ckpt") is None


def test_a_checkpoint_written_by_an_earlier_version_reads_as_it_did():
    from src.checkpoint.checkpoint import Checkpoint
    ckpt = Checkpoint.read(FIXTURE)
    with open(FIXTURE_META, encoding="utf-8") as f:
        recorded = json.load(f)
    got = dataclasses.asdict(ckpt.meta)
    assert got.pop("class_names") == json.loads(recorded.pop("class_names")) == [f"synthetic_{i}" for i in range(10)]
    assert got == recorded
    assert (ckpt.meta.epoch, ckpt.meta.step_in_epoch, len(ckpt.meta.epoch_losses)) == (1, 1, 1)
    assert ckpt.checksum_verified and ckpt.has_ema
    weights, ema = ckpt.model_entries(), ckpt.model_entries(use_ema=True)
    assert not np.array_equal(weights["head.weight"].asnumpy(), ema["head.weight"].asnumpy())
    assert ckpt.meta.saved_config(FIXTURE)["dims"] == [8, 16, 32]


def test_evl_takes_the_model_from_the_checkpoint_and_the_command_line_keeps_what_it_gives(tiny_cifar10):
    proc = ok(run_main("evl.py", "--checkpoint_path", FIXTURE, *data_flags(tiny_cifar10), "--mode", "pynative"))
    log = proc.stdout + proc.stderr
    assert "from the checkpoint's config: blocks=[1, 1, 1], dims=[8, 16, 32], mlp_ratios=[1.0, 1.0, 1.0], " \
           "channels=8, n_conv_blocks=1, image_size=32" in log
    assert f"evaluating {FIXTURE} ({FIXTURE_MODEL}, 10 classes, epoch 1) on cifar10 val ({tiny_cifar10}) at 32px" in log
    assert "per-class accuracy:" in proc.stdout and "synthetic_9" in proc.stdout
    given = ok(run_main("evl.py", "--checkpoint_path", FIXTURE, *data_flags(tiny_cifar10), "--mode", "pynative",
                        "--image_size", "40"))
    log = given.stdout + given.stderr
    assert "n_conv_blocks=1\n" in log and "image_size=32" not in log and ") at 40px" in log


def test_resuming_a_checkpoint_written_by_an_earlier_version(tiny_cifar10, tmp_path):
    """The run goes on from step 1 of epoch 2 with the recorded losses, global step and best result."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(FIXTURE, run / "last.ckpt")
    proc = ok(run_main("train.py", *FIXTURE_FLAGS, *data_flags(tiny_cifar10), "--save_checkpoint_path", run,
                       "--resume", "auto"))
    assert f"resumed from {run / 'last.ckpt'}: 1 epoch(s) done + 1 step(s) of epoch 2, global step 3" in proc.stdout
    assert f"model {FIXTURE_MODEL}: " in proc.stdout
    meta = checkpoint_meta(run / "last.ckpt")
    assert (meta.epoch, meta.global_step, meta.step_in_epoch, meta.epoch_losses) == (2, 4, 0, [])
    assert meta.best_acc >= 0.15 and meta.best_epoch in (1, 2)
    assert meta.class_names == [f"synthetic_{i}" for i in range(10)]
