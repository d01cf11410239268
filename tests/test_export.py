"""export.py: the MINDIR round trip, the refused formats, options and atomic output.

The checkpoint is a random-init model of the tiny parity topology, saved the way train.py saves
(weights + metadata + the run's config), so export.py takes the topology from the checkpoint.
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import export
from src.errors import ConfigError, CheckpointError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# MindSpore's own files are bit-exact here (max difference 0.0); the bound leaves room for another
# backend's kernel choice between the graph run of the MINDIR and the PyNative checkpoint model.
ROUND_TRIP_ATOL = 1e-5


def run(script, *args, timeout=300):
    """``python SCRIPT ARGS`` from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def write_train_checkpoint(path, topology, image_size=32, dataset="cifar10", head_scale=20.0, extra=()):
    """A checkpoint laid out as train.py writes it (weights, metadata, the run's config) for a
    random-init model of `topology`; the head is scaled so that predictions are confident.
    Returns the config of the run."""
    import mindspore as ms
    from src.config import load_config
    from src.runtime import build_model
    flags = sum(([f"--{k}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
                 for k, v in topology.items()), [])
    cfg = load_config(flags + ["--image_size", str(image_size), "--dataset_choose", dataset, *extra])
    net = build_model(cfg)
    w = net.head.weight
    w.set_data(ms.Tensor(w.asnumpy() * head_scale))
    meta = {"epoch": 3, "global_step": 30, "arch": cfg.arch, "num_classes": cfg.num_classes,
            "image_size": cfg.image_size, "dataset": cfg.dataset_choose, "config": cfg.to_yaml()}
    ms.save_checkpoint(net, str(path), append_dict=meta)
    return cfg


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("export") / "tiny.ckpt"
    write_train_checkpoint(path, tiny["topology"])
    return str(path)


def checkpoint_model(ckpt, *argv):
    """The model of `ckpt` as export.py/infer.py load it (topology from the saved config)."""
    from src.runtime import load_checkpoint_model, DEPLOY_KEYS
    from src.config import load_config
    argv = ["--checkpoint_path", ckpt, *argv]
    cfg = load_config(argv)
    net, _ = load_checkpoint_model(cfg, argv, logging.getLogger("test"), DEPLOY_KEYS)
    return net, cfg


# ------------------------------------------------------------------------------------------------
# The round trip

def test_mindir_round_trip_gives_the_checkpoint_models_output(tmp_path, tiny_ckpt, tiny):
    import mindspore as ms
    from mindspore import nn
    out_dir = tmp_path / "deploy"
    proc = run("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", out_dir / "tiny.mindir",
               "--file_format", "MINDIR", "--export_batch_size", "2", "--verify")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    path = out_dir / "tiny.mindir"
    assert f"wrote {path}" in proc.stdout
    assert "verified" in proc.stdout and "(2, 3, 32, 32)" in proc.stdout
    assert sorted(os.listdir(out_dir)) == ["tiny.mindir"]  # the suffix is not doubled, no temp file left
    # portable: MindSpore's own operators only, no reference to this machine's C++ CPU kernels
    blob = path.read_bytes()
    assert b"convmlp_cpu_kernels" not in blob and b"Custom" not in blob

    graph = nn.GraphCell(ms.load(str(path)))
    net, cfg = checkpoint_model(tiny_ckpt)
    assert (cfg.blocks, cfg.dims, cfg.image_size) == (tiny["topology"]["blocks"], tiny["topology"]["dims"], 32)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    got, want = graph(x).asnumpy(), net(x).asnumpy()
    assert got.shape == (2, tiny["num_classes"])
    np.testing.assert_allclose(got, want, rtol=0, atol=ROUND_TRIP_ATOL)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_topology_flags_override_and_missing_head_is_named(tmp_path, tiny_ckpt):
    import mindspore as ms
    with pytest.raises(CheckpointError, match="does not fit the model"):
        checkpoint_model(tiny_ckpt, "--dims", "16,32,128")  # a flag wins over the saved config
    with pytest.raises(CheckpointError, match="is a convmlp_s checkpoint but arch is convmlp_m"):
        checkpoint_model(tiny_ckpt, "--arch", "convmlp_m")
    backbone = tmp_path / "backbone.ckpt"
    params = {k: v for k, v in ms.load_checkpoint(tiny_ckpt).items()
              if not k.startswith("head.") and not isinstance(v, str)}
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(backbone))
    with pytest.raises(CheckpointError, match="has no classifier head"):
        checkpoint_model(str(backbone), "--blocks", "1,2,1", "--dims", "16,32,64", "--mlp_ratios",
                         "2,2,2", "--channels", "16", "--n_conv_blocks", "1")


# ------------------------------------------------------------------------------------------------
# Refused formats and options

def test_onnx_is_refused_with_the_reason_and_the_alternative(tmp_path, tiny_ckpt, user_error):
    proc = run("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", tmp_path / "m",
               "--file_format", "onnx")
    user_error(proc, "ONNX is not supported", "Erf", "--file_format MINDIR")
    assert os.listdir(tmp_path) == []


def test_air_needs_ascend():
    with pytest.raises(ConfigError, match="AIR needs an Ascend device.*device is CPU"):
        export.check_format("AIR", "CPU")
    export.check_format("AIR", "Ascend")
    export.check_format("MINDIR", "CPU")


def test_options_are_parsed_apart_from_the_config():
    argv = ["--checkpoint_path", "a.ckpt", "--file_name=out/m", "--export_batch_size", "4",
            "--file_format", "mindir", "--verify", "--image_size", "64"]
    cfg, opts = export.parse_options(argv)
    assert (opts.file_name, opts.file_format, opts.export_batch_size, opts.verify) == ("out/m", "MINDIR", 4, True)
    assert (cfg.checkpoint_path, cfg.image_size) == ("a.ckpt", 64)
    _, opts = export.parse_options([])
    assert (opts.file_name, opts.file_format, opts.export_batch_size, opts.verify) == (None, "MINDIR", 1, False)
    for bad, msg in ((["--file_format", "tflite"], "expected one of MINDIR, AIR, ONNX"),
                     (["--export_batch_size", "0"], "integer >= 1"),
                     (["--export_batch_size", "two"], "integer >= 1"),
                     (["--file_name"], "--file_name needs")):
        with pytest.raises(ConfigError, match=msg):
            export.parse_options(bad)


def test_output_name_defaults_to_the_checkpoints():
    assert export.output_base(None, "output/best.ckpt", "MINDIR") == "output/best"
    assert export.output_base("deploy/m.mindir", "x.ckpt", "MINDIR") == "deploy/m"
    assert export.output_base("deploy/m", "x.ckpt", "MINDIR") == "deploy/m"
    with pytest.raises(ConfigError, match="names a folder"):
        export.output_base("deploy/", "x.ckpt", "MINDIR")


# ------------------------------------------------------------------------------------------------
# Atomic output

def test_failed_export_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import mindspore as ms
    final = tmp_path / "m.mindir"
    final.write_bytes(b"previous export")

    def half_write(net, *inputs, file_name, file_format):
        with open(file_name + ".mindir", "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ms, "export", half_write)
    with pytest.raises(UserError, match=r"cannot write '.*m\.mindir': No space left on device"):
        export.export_atomic(None, [], str(tmp_path / "m"), "MINDIR")
    assert sorted(os.listdir(tmp_path)) == ["m.mindir"]
    assert final.read_bytes() == b"previous export"
