"""Checkpoints carry a checksum that every reader verifies.

The writer (``src.checkpoint.checkpoint.save_atomic``, used by training and ``pth2ckpt.py``) writes
MindSpore's CRC-32 of the whole file (``crc_check=True``); the one reader
(``src.checkpoint.checkpoint.Checkpoint.read``, through ``model.weights.read_checkpoint``, used by
evaluation, inference, export, resuming, fine-tuning and the reverse conversion) verifies it. A damaged file is one ``error:`` naming it; a checkpoint
without a checksum (another tool, an older run) is read with one ``warning:`` line."""
import os

import numpy as np
import pytest

from helpers import TINY_CKPT_FLAGS, assert_user_error, run_main
from src.checkpoint.checkpoint import save_atomic
from model import read_checkpoint
from model.weights import CHECKSUM_TRAILER, verify_checksum
from src.platform.errors import CheckpointError

TINY = dict(blocks=[1, 2, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2], channels=16, n_conv_blocks=1)


def zero_block(path, size=4000):
    """Zero `size` bytes in the middle of the largest tensor's data (the damage a bad sector or a
    broken copy does), keeping the file's length."""
    data = bytearray(open(path, "rb").read())
    start = len(data) // 2
    data[start:start + size] = bytes(size)
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``good``: written by the repository; ``damaged``: the same with 4,000 bytes zeroed;
    ``unchecked``: the same weights written by plain ``mindspore.save_checkpoint``."""
    import mindspore as ms
    from model import ConvMLP
    folder = tmp_path_factory.mktemp("checksums")
    net = ConvMLP(num_classes=10, **TINY)
    paths = {k: str(folder / f"{k}.ckpt") for k in ("good", "damaged", "unchecked")}
    save_atomic(net, paths["good"])
    save_atomic(net, paths["damaged"])
    zero_block(paths["damaged"])
    ms.save_checkpoint(net, paths["unchecked"])
    return paths


def test_every_checkpoint_written_carries_a_checksum_that_verifies(checkpoints, tmp_path):
    from src.convert.from_torch import save_ckpt_atomic
    with open(checkpoints["good"], "rb") as f:
        assert f.read()[-17:-10] == CHECKSUM_TRAILER
    assert verify_checksum(checkpoints["good"]) is True
    converted = str(tmp_path / "converted.ckpt")                   # pth2ckpt.py's writer
    save_ckpt_atomic({"w": np.ones((3, 4), np.float32)}, converted)
    assert verify_checksum(converted) is True
    assert verify_checksum(checkpoints["unchecked"]) is False


def test_a_damaged_checkpoint_is_one_error_naming_it(checkpoints):
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(checkpoints["damaged"])
    assert str(err.value) == (f"checkpoint '{checkpoints['damaged']}' is damaged: its content does not match the "
                              "checksum (CRC-32) written with it; use another copy or an earlier checkpoint")


def test_a_truncated_checkpoint_is_one_error(checkpoints, tmp_path):
    cut = str(tmp_path / "cut.ckpt")
    data = open(checkpoints["good"], "rb").read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) - 1000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(cut)


def test_a_checkpoint_without_a_checksum_is_read_with_one_warning(checkpoints, capsys):
    params = read_checkpoint(checkpoints["unchecked"])
    read_checkpoint(checkpoints["unchecked"])                       # read twice, warned once
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: checkpoint '{checkpoints['unchecked']}' carries no checksum (written by another tool "
                   "or an older version); it is read without a damage check"]
    good = read_checkpoint(checkpoints["good"])
    assert sorted(params) == sorted(good) and capsys.readouterr().err == ""


def test_evl_refuses_the_damaged_checkpoint(checkpoints, tiny_cifar10):
    proc = run_main("evl.py", "--checkpoint_path", checkpoints["damaged"], *TINY_CKPT_FLAGS,
                    "--train_data_path", tiny_cifar10, "--val_data_path", tiny_cifar10)
    assert_user_error(proc, f"checkpoint '{checkpoints['damaged']}' is damaged")
    assert "accuracy" not in proc.stdout


def test_reverse_conversion_refuses_the_damaged_checkpoint(checkpoints, tmp_path):
    proc = run_main("pth2ckpt.py", "--reverse", "--src", checkpoints["damaged"], "--dst", tmp_path / "out.pth",
                    "--verify")
    assert_user_error(proc, f"checkpoint '{checkpoints['damaged']}' is damaged")
    assert "verify" not in proc.stdout and os.listdir(tmp_path) == []
