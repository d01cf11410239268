"""pth2ckpt.py: the name mapping, safe loading of PyTorch files, and the command line.

The command-line tests run ``pth2ckpt.py``'s ``main`` through ``run_cli`` in this process (one of
them as a subprocess, for the exit status of a process) and check the exit status, the message and
that no traceback is printed. Full-size checkpoints are built from the official key/shape lists
(zeros), so nothing is downloaded.
"""
import argparse
import os
import socket

import numpy as np
import pytest
import torch

import pth2ckpt
from helpers import assert_user_error, ok, run_main, run_script
from src.platform.errors import CheckpointError
from src.convert.names import convert_state_dict, infer_topology, map_name
from src.convert.torch_files import extract_state_dict
from src.convert import from_torch, torch_files


# ------------------------------------------------------------------------------------------------
# The name mapping

@pytest.mark.parametrize("torch_key, ms_key", [
    # BatchNorm in the tokenizer and the conv-stage bottlenecks (Sequential positions 1, 4, 7)
    ("tokenizer.block.1.weight", "tokenizer.block.1.gamma"),
    ("tokenizer.block.4.bias", "tokenizer.block.4.beta"),
    ("tokenizer.block.7.running_mean", "tokenizer.block.7.moving_mean"),
    ("conv_stages.conv_blocks.1.4.running_var", "conv_stages.conv_blocks.1.4.moving_variance"),
    ("conv_stages.conv_blocks.12.7.weight", "conv_stages.conv_blocks.12.7.gamma"),
    ("tokenizer.block.1.num_batches_tracked", None),
    # LayerNorms of the blocks and of the head
    ("stages.0.blocks.1.norm1.weight", "stages.0.blocks.1.norm1.gamma"),
    ("stages.2.blocks.0.norm2.bias", "stages.2.blocks.0.norm2.beta"),
    ("stages.1.blocks.10.connect_norm.weight", "stages.1.blocks.10.connect_norm.gamma"),
    ("norm.weight", "norm.gamma"),
    ("norm.bias", "norm.beta"),
    # Convolutions and Dense layers keep their names (same shapes in both frameworks)
    ("tokenizer.block.0.weight", "tokenizer.block.0.weight"),
    ("conv_stages.conv_blocks.0.3.weight", "conv_stages.conv_blocks.0.3.weight"),
    ("conv_stages.downsample.bias", "conv_stages.downsample.bias"),
    ("stages.0.blocks.0.connect.weight", "stages.0.blocks.0.connect.weight"),
    ("stages.0.blocks.0.channel_mlp1.fc1.weight", "stages.0.blocks.0.channel_mlp1.fc1.weight"),
    ("stages.1.downsample_mlp.downsample.weight", "stages.1.downsample_mlp.downsample.weight"),
    ("head.weight", "head.weight"),
    ("head.bias", "head.bias"),
])
def test_map_name(torch_key, ms_key):
    assert map_name(torch_key) == ms_key


def test_convert_state_dict_renames_drops_counters_and_keeps_arrays(tiny_state):
    converted = convert_state_dict(tiny_state)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in converted.values())
    assert not any("num_batches_tracked" in k for k in converted)
    assert len(converted) == sum(1 for k in tiny_state if not k.endswith("num_batches_tracked"))
    np.testing.assert_array_equal(converted["tokenizer.block.1.moving_variance"],
                                  tiny_state["tokenizer.block.1.running_var"].numpy())
    np.testing.assert_array_equal(converted["norm.beta"], tiny_state["norm.bias"].numpy())
    np.testing.assert_array_equal(converted["head.weight"], tiny_state["head.weight"].numpy())


def test_convert_state_dict_is_pure_and_casts_half_to_float32():
    state = {"head.weight": torch.ones(3, 4, dtype=torch.float16), "norm.weight": torch.ones(4)}
    out = convert_state_dict(state)
    assert out["head.weight"].dtype == np.float32 and set(out) == {"head.weight", "norm.gamma"}
    out["norm.gamma"][:] = 7  # the result is a copy: the source is untouched
    assert state["norm.weight"].sum().item() == 4


def test_convert_state_dict_refuses_two_keys_for_one_name():
    with pytest.raises(CheckpointError, match="both map to 'norm.gamma'"):
        convert_state_dict({"norm.weight": torch.ones(2), "norm.gamma": torch.ones(2)})


def test_infer_topology_reads_the_fixture_config(tiny, tiny_state):
    assert infer_topology(tiny_state) == {**tiny["topology"], "num_classes": tiny["num_classes"]}


# ------------------------------------------------------------------------------------------------
# Plain state_dicts and training checkpoints

def training_checkpoint(state, ema_offset=0.5):
    """A checkpoint as the official timm-based train.py saves it under DataParallel."""
    model_params = [torch.nn.Parameter(v.clone()) for v in state.values() if v.is_floating_point()]
    opt = torch.optim.SGD(model_params, lr=0.1, momentum=0.9)
    model_params[0].grad = torch.ones_like(model_params[0])
    opt.step()  # the optimizer state then holds momentum buffers
    return {
        "epoch": 299,
        "arch": "convmlp_s",
        "state_dict": {"module." + k: v for k, v in state.items()},
        "state_dict_ema": {"module." + k: (v + ema_offset if v.is_floating_point() else v)
                           for k, v in state.items()},
        "optimizer": opt.state_dict(),
        "args": argparse.Namespace(model="convmlp_s", lr=0.1, epochs=300, model_ema=True,
                                   input_size=(3, 224, 224), mean=None, amp=True),
        "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                       "growth_interval": 2000, "_growth_tracker": 17},
        "metric": 76.76,
        "version": 2,
    }


def test_extract_state_dict_plain_wrapper_and_ema(tiny_state):
    state, what = extract_state_dict(tiny_state, "x.pth")
    assert state is tiny_state and what == "plain state_dict"
    ckpt = training_checkpoint(tiny_state)
    state, what = extract_state_dict(ckpt, "x.pth")
    assert set(state) == set(tiny_state) and "'state_dict'" in what and "module." in what
    assert torch.equal(state["norm.weight"], tiny_state["norm.weight"])
    state, what = extract_state_dict(ckpt, "x.pth", ema=True)
    assert "'state_dict_ema'" in what
    assert torch.equal(state["norm.weight"], tiny_state["norm.weight"] + 0.5)


def test_extract_state_dict_errors_name_the_file(tiny_state):
    with pytest.raises(CheckpointError, match=r"--ema given but 'x.pth' is a plain state_dict"):
        extract_state_dict(tiny_state, "x.pth", ema=True)
    ckpt = training_checkpoint(tiny_state)
    del ckpt["state_dict_ema"]
    with pytest.raises(CheckpointError, match=r"'x.pth' has no 'state_dict_ema'.*keys are: amp_scaler"):
        extract_state_dict(ckpt, "x.pth", ema=True)
    with pytest.raises(CheckpointError, match=r"'x.pth' holds a list"):
        extract_state_dict([1, 2], "x.pth")


# ------------------------------------------------------------------------------------------------
# Command line: conversion of training checkpoints, head handling, validation before writing

def load_ckpt(path):
    import mindspore as ms
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def test_cli_converts_training_checkpoint_and_ema(tmp_path, tiny, tiny_state):
    src = tmp_path / "train_ckpt.pth"
    torch.save(training_checkpoint(tiny_state), src)

    dst = tmp_path / "model.ckpt"
    proc = ok(run_main("pth2ckpt.py", "--src", src, "--dst", dst, *tiny["flags"]))
    print(proc.stdout)
    assert "training checkpoint, 'state_dict' (arch convmlp_s, epoch 299), 'module.' prefix removed" \
        in proc.stdout
    assert "dropped     : 6 keys (BatchNorm counter" in proc.stdout
    weights = load_ckpt(dst)
    assert len(weights) == 100
    np.testing.assert_array_equal(weights["norm.gamma"], tiny_state["norm.weight"].numpy())

    dst_ema = tmp_path / "model_ema.ckpt"
    proc = ok(run_main("pth2ckpt.py", "--src", src, "--dst", dst_ema, *tiny["flags"], "--ema"))
    assert "'state_dict_ema'" in proc.stdout
    np.testing.assert_allclose(load_ckpt(dst_ema)["norm.gamma"], tiny_state["norm.weight"].numpy() + 0.5)
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt", "model_ema.ckpt", "train_ckpt.pth"]


def test_cli_num_classes_drops_head_and_load_pretrained_recreates_it(tmp_path, tiny):
    from model import ConvMLP, load_pretrained
    dst = tmp_path / "backbone.ckpt"
    proc = ok(run_main("pth2ckpt.py", "--src", tiny["pth"], "--dst", dst, *tiny["flags"], "--num_classes", 5))
    assert "dropped     : 2 keys (head of 10 classes, target has 5" in proc.stdout
    assert "head.weight, head.bias" in proc.stdout
    assert not any(k.startswith("head.") for k in load_ckpt(dst))

    net = ConvMLP(num_classes=5, **tiny["topology"])
    report = load_pretrained(net, str(dst))
    assert report["head_reinitialised"] and len(report["loaded"]) == 98 and report["ignored"] == []


@pytest.fixture(scope="module")
def fake_s_and_m(tmp_path_factory, fake_official_state):
    """Full-size official-format S and M state_dicts (zeros from the tsv shapes), saved once
    under the names of the released files."""
    folder = tmp_path_factory.mktemp("fake_release")
    paths = {}
    for variant in ("convmlp_s", "convmlp_m"):
        paths[variant] = folder / f"{variant}_imagenet.pth"
        torch.save(fake_official_state(variant), paths[variant])
    return paths


def test_cli_s_checkpoint_for_arch_m_fails_naming_keys(tmp_path, fake_s_and_m):
    dst = tmp_path / "m.ckpt"
    dst.write_bytes(b"previous file")  # must survive a failed conversion
    proc = run_main("pth2ckpt.py", "--src", fake_s_and_m["convmlp_s"], "--dst", dst, "--arch", "convmlp_m")
    line = assert_user_error(proc, "does not fit convmlp_m", "missing: conv_stages.conv_blocks.2.0.weight",
                      "of another shape: stages.0.blocks.0.channel_mlp1.fc1.weight (256, 128) vs "
                      "model (384, 128)", "looks like", "(= convmlp_s)", "nothing was written")
    print(line[:300])
    assert "FAIL missing" in proc.stdout and "FAIL wrong shape" in proc.stdout
    assert dst.read_bytes() == b"previous file" and os.listdir(tmp_path) == ["m.ckpt"]


def test_cli_m_checkpoint_for_arch_s_fails_naming_unexpected_keys(tmp_path, fake_s_and_m):
    dst = tmp_path / "s.ckpt"
    proc = run_main("pth2ckpt.py", "--src", fake_s_and_m["convmlp_m"], "--dst", dst, "--arch", "convmlp_s")
    assert_user_error(proc, "does not fit convmlp_s", "unexpected: conv_stages.conv_blocks.2.0.weight",
               "(= convmlp_m)")
    assert not dst.exists() and os.listdir(tmp_path) == []


def test_main_writes_nothing_when_verify_fails(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(from_torch, "verify", lambda *a, **k: 3e-3)
    dst = tmp_path / "x.ckpt"
    with pytest.raises(CheckpointError, match=r"verify failed .* max abs diff 3.000e-03 > 0.0001"):
        pth2ckpt.main(["--src", tiny["pth"], "--dst", str(dst), *tiny["flags"], "--verify"])
    assert os.listdir(tmp_path) == []


def test_cli_needs_arch_or_full_topology_exits_2_as_a_process(tmp_path, tiny):
    proc = run_script("pth2ckpt.py", "--src", tiny["pth"], "--dst", tmp_path / "x.ckpt", "--dims", 16, 32, 64,
                      timeout=300)
    assert_user_error(proc, "--arch", "missing: --blocks --mlp_ratios --channels --n_conv_blocks")


# ------------------------------------------------------------------------------------------------
# Security and broken files: nothing in a file is executed, every failure is one line

class WritesFile:
    """Unpickling this calls ``os.system`` -- what a malicious .pth would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


class OpensAndWrites:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("payload, zip_format, needs", [
    (WritesFile, True, "posix.system"),
    (OpensAndWrites, False, "eval"),
], ids=["zip-os.system", "legacy-open.write"])
def test_cli_refuses_pickled_code_and_does_not_run_it(tmp_path, tiny_state, payload, zip_format, needs):
    marker = tmp_path / "pwned.txt"
    src = tmp_path / "evil.pth"
    torch.save({"state_dict": dict(tiny_state), "args": payload(marker)}, src,
               _use_new_zipfile_serialization=zip_format)
    dst = tmp_path / "out.ckpt"
    proc = run_main("pth2ckpt.py", "--src", src, "--dst", dst, "--arch", "convmlp_s")
    assert_user_error(proc, f"refusing to load '{src}'", needs, "not an allowed type", "nothing in it was executed")
    assert not marker.exists(), "the pickled code ran"
    assert not dst.exists()


def _random_bytes(path, _):
    path.write_bytes(np.random.RandomState(0).bytes(4096))


def _text(path, _):
    path.write_text("ConvMLP weights are at https://shi-labs.com/projects/convmlp/\n")


def _truncated(path, tiny_path):
    data = open(tiny_path, "rb").read()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("make, fragment", [
    (_random_bytes, "not a PyTorch checkpoint"),
    (_text, "not a PyTorch checkpoint"),
    (_truncated, "truncated or corrupt zip archive"),
], ids=["random-bytes", "text", "truncated"])
def test_cli_refuses_broken_files_with_one_line(tmp_path, tiny, make, fragment):
    src = tmp_path / "broken.pth"
    make(src, tiny["pth"])
    proc = run_main("pth2ckpt.py", "--src", src, "--dst", tmp_path / "out.ckpt", *tiny["flags"])
    assert_user_error(proc, f"cannot read '{src}'", fragment)
    assert os.listdir(tmp_path) == ["broken.pth"]


def test_safe_globals_allow_only_harmless_types():
    names = {f"{g.__module__}.{g.__qualname__}" for g in torch_files.SAFE_GLOBALS}
    assert "argparse.Namespace" in names
    assert not any(n.split(".")[-1] in {"system", "eval", "exec", "open", "getattr", "__import__"}
                   for n in names)


# ------------------------------------------------------------------------------------------------
# Download of the released weights (against a local server; offline error)

def test_cli_downloads_the_release_into_the_cache(tmp_path, http_root, fake_s_and_m):
    root, base_url = http_root  # a local HTTP server (conftest) stands in for shi-labs.com
    os.symlink(fake_s_and_m["convmlp_s"], os.path.join(root, "convmlp_s_imagenet.pth"))
    cache, dst = tmp_path / "cache", tmp_path / "convmlp_s.ckpt"
    proc = ok(run_main("pth2ckpt.py", "--arch", "convmlp_s", "--dst", dst, "--cache_dir", cache,
                       env={"CONVMLP_WEIGHTS_URL": base_url}, timeout=120))
    assert f"downloading {base_url}convmlp_s_imagenet.pth" in proc.stdout
    assert os.listdir(cache) == ["convmlp_s_imagenet.pth"]  # no .part left
    assert len(load_ckpt(dst)) == 175


def test_cli_offline_says_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    proc = run_main("pth2ckpt.py", "--arch", "convmlp_m", "--dst", tmp_path / "m.ckpt", "--cache_dir", cache,
                    env={"CONVMLP_WEIGHTS_URL": f"http://127.0.0.1:{port}"}, timeout=120)
    assert_user_error(proc, f"http://127.0.0.1:{port}/convmlp_m_imagenet.pth",
               f"put it at {cache / 'convmlp_m_imagenet.pth'}", "--src")
    assert not (tmp_path / "m.ckpt").exists()
    assert os.listdir(cache) == []  # no partial download left (the folder was made for it)
