"""MindSpore -> official PyTorch weights: the inverse name mapping and ``pth2ckpt.py --reverse``.

* :func:`src.convert.names.to_torch_name` inverts :func:`src.convert.names.map_name` on every
  official key of S/M/L, and :func:`src.convert.names.to_torch_state_dict` rebuilds the official
  state_dict: the keys of the fixture listings in their order, dtypes and shapes.
* ``.pth -> .ckpt -> .pth`` on the official tiny checkpoint gives the same file content: same keys
  in the same order, same dtypes, bit-identical tensors. The one difference is documented: the
  BatchNorm counters ``num_batches_tracked``, which MindSpore does not keep, come back as int64 0.
* A checkpoint written by train.py converts, loads strictly into the PyTorch reference and gives
  the MindSpore model's logits; its optimizer state and metadata are left out and reported.
* Every refusal is one ``error:`` line and writes nothing.

``pth2ckpt.py`` runs in this process (its ``main`` through ``run_cli``); the train.py checkpoint is
the session's trained run's (conftest ``trained_run``).
"""
import os
import re

import numpy as np
import pytest
import torch

from helpers import TINY_TOPOLOGY, assert_user_error, ok, run_main
from src.convert.names import (convert_state_dict, map_name, official_order, to_torch_name,
                         to_torch_state_dict)
from src.platform.errors import CheckpointError

COUNTER = ".num_batches_tracked"


def pth2ckpt(*args):
    return run_main("pth2ckpt.py", *args, timeout=600)


def verify_diff(stdout):
    line = next(ln for ln in stdout.splitlines() if ln.startswith("verify"))
    print("\n" + line)
    return float(re.search(r"max abs diff (\S+)", line).group(1))


# ------------------------------------------------------------------------------------------------
# The inverse mapping

@pytest.mark.parametrize("variant", ["convmlp_s", "convmlp_m", "convmlp_l"])
def test_to_torch_name_inverts_map_name_on_every_official_key(variant, official_keys):
    for key in official_keys(variant):
        name = map_name(key)
        if name is not None:
            assert to_torch_name(name) == key, (key, name)


def test_entries_outside_the_model_have_no_torch_name():
    for name in ("adam_m.tokenizer.block.0.weight", "adam_v.norm.gamma", "global_step",
                 "learning_rate", "epoch", "config", "moments.head.weight"):
        assert to_torch_name(name) is None, name


@pytest.mark.parametrize("variant", ["convmlp_s", "convmlp_m", "convmlp_l"])
def test_to_torch_state_dict_is_the_official_listing(variant, official_keys, fake_official_state):
    """Keys in the official order, shapes and dtypes of the fixture tsv (num_batches_tracked int64)."""
    listing = official_keys(variant)
    weights = convert_state_dict(fake_official_state(variant))
    # the order of the MindSpore names does not matter: shuffle them
    names = list(weights)
    np.random.RandomState(0).shuffle(names)
    state = to_torch_state_dict({k: weights[k] for k in names})
    assert list(state) == list(listing)
    for key, (shape, dtype, _) in listing.items():
        assert tuple(state[key].shape) == shape and str(state[key].dtype) == f"torch.{dtype}", key
    assert all(state[k].item() == 0 for k in state if k.endswith(COUNTER))


def test_official_order_refuses_a_foreign_key():
    with pytest.raises(CheckpointError, match="'stages.0.blocks.0.attn.weight' is not a ConvMLP"):
        official_order(["norm.weight", "stages.0.blocks.0.attn.weight"])


def test_to_torch_state_dict_copies_and_keeps_dtypes(tiny_state):
    weights = convert_state_dict(tiny_state)
    weights["head.bias"] = weights["head.bias"].astype(np.float16)
    state = to_torch_state_dict(weights)
    assert state["head.bias"].dtype == torch.float16
    state["norm.weight"][:] = 7  # a copy: the MindSpore arrays are untouched
    assert not (weights["norm.gamma"] == 7).any()


# ------------------------------------------------------------------------------------------------
# .pth -> .ckpt -> .pth

def test_round_trip_of_the_official_fixture_is_bit_identical(tmp_path, tiny, tiny_state):
    ckpt, back = tmp_path / "tiny.ckpt", tmp_path / "tiny.pth"
    ok(pth2ckpt("--src", tiny["pth"], "--dst", ckpt, *tiny["flags"]))
    proc = ok(pth2ckpt("--reverse", "--src", ckpt, "--dst", back, "--verify"))
    print(proc.stdout)
    assert verify_diff(proc.stdout) <= 1e-4
    assert "(from the weights' shapes)" in proc.stdout and "restored    : 6 BatchNorm counters" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["tiny.ckpt", "tiny.pth"]  # no temporary left

    state = torch.load(back, map_location="cpu", weights_only=True)
    assert type(state).__name__ == "OrderedDict" and list(state) == list(tiny_state)
    for key, original in tiny_state.items():
        got = state[key]
        assert got.dtype == original.dtype and got.shape == original.shape, key
        if key.endswith(COUNTER):
            assert got.item() == 0  # MindSpore keeps no counter (the fixture's are 1234)
        else:
            assert torch.equal(got, original) and got.numpy().tobytes() == original.numpy().tobytes(), key

    from model.torch_convmlp import TorchConvMLP
    ref = TorchConvMLP(num_classes=tiny["num_classes"], **tiny["topology"]).eval()
    ref.load_state_dict(state, strict=True)
    with torch.no_grad():
        logits = ref(torch.from_numpy(tiny["input"])).numpy()
    np.testing.assert_allclose(logits, tiny["logits"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# A train.py checkpoint

@pytest.fixture
def trained_ckpt(trained_run):
    return str(trained_run["dir"] / "best.ckpt")


def test_train_checkpoint_converts_and_loads_strictly(tmp_path, trained_ckpt):
    import mindspore as ms
    from model.torch_convmlp import TorchConvMLP
    dst = tmp_path / "best.pth"
    proc = ok(pth2ckpt("--reverse", "--src", trained_ckpt, "--dst", dst, "--verify"))
    print(proc.stdout)
    assert verify_diff(proc.stdout) <= 1e-4
    assert "(train.py checkpoint, 85 model parameters)" in proc.stdout
    assert "from the checkpoint's saved config" in proc.stdout
    dropped = next(ln for ln in proc.stdout.splitlines() if ln.startswith("dropped"))
    assert "optimizer state and training metadata" in dropped and "global_step" in dropped \
        and "adam_m." in dropped

    state = torch.load(dst, map_location="cpu", weights_only=True)
    topo = dict(zip(TINY_TOPOLOGY[::2], TINY_TOPOLOGY[1::2]))
    ref = TorchConvMLP(blocks=[int(x) for x in topo["--blocks"].split(",")],
                       dims=[int(x) for x in topo["--dims"].split(",")],
                       mlp_ratios=[int(x) for x in topo["--mlp_ratios"].split(",")],
                       channels=int(topo["--channels"]), n_conv_blocks=int(topo["--n_conv_blocks"]),
                       num_classes=10).eval()
    ref.load_state_dict(state, strict=True)
    assert len(state) == 85 + 6 and not any(k.startswith(("adam", "global_step")) for k in state)
    saved = ms.load_checkpoint(trained_ckpt)
    np.testing.assert_array_equal(state["tokenizer.block.1.running_var"].numpy(),
                                  saved["tokenizer.block.1.moving_variance"].asnumpy())
    np.testing.assert_array_equal(state["head.weight"].numpy(), saved["head.weight"].asnumpy())


# ------------------------------------------------------------------------------------------------
# Refusals: one line, nothing written, the input never overwritten

def test_output_never_overwrites_the_input(tmp_path, trained_ckpt):
    src = tmp_path / "best.ckpt"
    os.link(trained_ckpt, src)
    before = src.read_bytes()
    for dst in (src, f"{tmp_path}/../{tmp_path.name}/best.ckpt"):
        assert_user_error(pth2ckpt("--reverse", "--src", src, "--dst", dst), "is the --src", "nothing was written")
    link = tmp_path / "other_name.ckpt"
    os.link(src, link)  # the same file under another name
    assert_user_error(pth2ckpt("--reverse", "--src", src, "--dst", link), "is the --src", "through a link")
    assert src.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["best.ckpt", "other_name.ckpt"]


def test_reverse_refusals_are_one_line(tmp_path, tiny, trained_ckpt):
    import mindspore as ms
    dst = tmp_path / "out.pth"
    assert_user_error(pth2ckpt("--reverse", "--src", tiny["pth"], "--dst", dst), "is a PyTorch (pickle) file")
    assert_user_error(pth2ckpt("--reverse", "--src", tmp_path / "none.ckpt", "--dst", dst), "does not exist")
    assert_user_error(pth2ckpt("--reverse", "--dst", dst), "--reverse needs --src")
    assert_user_error(pth2ckpt("--reverse", "--src", trained_ckpt, "--dst", dst, "--arch", "convmlp_s"),
               "--reverse takes the model from the checkpoint", "--arch")

    params = {k: v for k, v in ms.load_checkpoint(trained_ckpt).items() if not isinstance(v, str)}
    backbone = tmp_path / "backbone.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items() if not k.startswith("head.")],
                       str(backbone))
    assert_user_error(pth2ckpt("--reverse", "--src", backbone, "--dst", dst), "has no classifier head")

    nan = tmp_path / "nan.ckpt"
    w = params["stages.1.blocks.0.norm1.gamma"].asnumpy().copy()
    w[0] = np.nan
    params["stages.1.blocks.0.norm1.gamma"] = ms.Tensor(w)
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(nan))
    assert_user_error(pth2ckpt("--reverse", "--src", nan, "--dst", dst), "non-finite weights",
               "stages.1.blocks.0.norm1.gamma (1 NaN of")
    assert sorted(os.listdir(tmp_path)) == ["backbone.ckpt", "nan.ckpt"]


def test_failed_verify_writes_nothing(tmp_path, trained_ckpt, monkeypatch):
    import pth2ckpt as cli
    from src.convert import to_torch
    dst = tmp_path / "best.pth"
    dst.write_bytes(b"previous file")
    monkeypatch.setattr(to_torch, "logits_difference", lambda *a, **k: float("nan"))
    with pytest.raises(CheckpointError, match=r"verify failed .* max abs diff nan"):
        cli.main(["--reverse", "--src", trained_ckpt, "--dst", str(dst), "--verify"])
    assert dst.read_bytes() == b"previous file" and os.listdir(tmp_path) == ["best.pth"]
