"""export.py: the MINDIR round trip (fixed and dynamic batch), ONNX, the refused formats, options
and atomic output.

The checkpoints are random-init models (the tiny parity topology, ConvMLP-S), saved the way
train.py saves (weights + metadata + the run's config), so export.py takes the topology from the
checkpoint. export.py's ``main`` runs in this process through ``run_cli``; one refusal runs as a
subprocess, for the exit status of a process.
"""
import os
import re

import numpy as np
import pytest

import export
from helpers import assert_user_error, checkpoint_model, ok, run_main, run_script, write_train_checkpoint
from src.convert import mindir
from src.platform.errors import ConfigError, CheckpointError, UserError

# MindSpore's own files are bit-exact here (max difference 0.0); the bound leaves room for another
# backend's kernel choice between the graph run of the MINDIR and the PyNative checkpoint model.
ROUND_TRIP_ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("export") / "tiny.ckpt"
    write_train_checkpoint(path, tiny["topology"])
    return str(path)


# ------------------------------------------------------------------------------------------------
# The round trip

def test_mindir_round_trip_gives_the_checkpoint_models_output(tmp_path, tiny_ckpt, tiny):
    import mindspore as ms
    from mindspore import nn
    out_dir = tmp_path / "deploy"
    proc = ok(run_main("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", out_dir / "tiny.mindir",
                       "--file_format", "MINDIR", "--export_batch_size", "2", "--verify"))
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


def test_batch_size_sets_the_exported_batch(tmp_path, tiny_ckpt):
    """``--batch_size 4`` (the model-zoo spelling) fixes the input's batch at 4; the training
    ``batch_size`` of config.yaml (128) does not apply."""
    import mindspore as ms
    from mindspore import nn
    proc = ok(run_main("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", tmp_path / "b4",
                       "--batch_size", "4"))
    assert "input: float32 (4, 3, 32, 32)" in proc.stdout and "logits (4, 10)" in proc.stdout
    graph = nn.GraphCell(ms.load(str(tmp_path / "b4.mindir")))
    x = ms.Tensor(np.zeros((4, 3, 32, 32), np.float32))
    assert graph(x).shape == (4, 10)


def test_dynamic_batch_mindir_runs_at_any_batch_size(tmp_path, tiny_ckpt):
    import mindspore as ms
    from mindspore import nn
    proc = ok(run_main("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", tmp_path / "dyn",
                       "--batch_size", "dynamic", "--verify"))
    assert "input: float32 (N, 3, 32, 32)" in proc.stdout and "N = any batch size" in proc.stdout
    verified = next(ln for ln in proc.stdout.splitlines() if "verified" in ln)
    print("\n" + verified)
    assert "at batch 1, 3" in verified
    assert os.listdir(tmp_path) == ["dyn.mindir"]

    graph = nn.GraphCell(ms.load(str(tmp_path / "dyn.mindir")))
    net, _ = checkpoint_model(tiny_ckpt)
    rng = np.random.default_rng(2)
    for batch in (1, 4, 7):
        x = ms.Tensor(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
        got, want = graph(x).asnumpy(), net(x).asnumpy()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=0, atol=ROUND_TRIP_ATOL)


# ------------------------------------------------------------------------------------------------
# ONNX (through the PyTorch reference model, run with onnxruntime)

ONNX_ATOL = 1e-4


@pytest.fixture(scope="module")
def s_ckpt(tmp_path_factory):
    """A random-init ConvMLP-S (the released topology) at 32 px."""
    path = tmp_path_factory.mktemp("export_s") / "s.ckpt"
    write_train_checkpoint(path, {}, head_scale=1.0)
    return str(path)


@pytest.fixture(scope="module")
def tiny224_ckpt(tmp_path_factory, tiny):
    """The tiny custom topology at 224 px."""
    path = tmp_path_factory.mktemp("export_224") / "tiny224.ckpt"
    write_train_checkpoint(path, tiny["topology"], image_size=224)
    return str(path)


@pytest.mark.parametrize("which, size", [("s_ckpt", 32), ("tiny224_ckpt", 224)],
                         ids=["convmlp_s-32px", "custom-224px"])
def test_onnx_dynamic_file_gives_the_checkpoint_models_logits(tmp_path, request, which, size):
    import onnx
    import onnxruntime as ort
    import mindspore as ms
    ckpt = request.getfixturevalue(which)
    old = tmp_path / "m.onnx"
    old.write_bytes(b"previous export")  # replaced only by the complete, verified file
    proc = ok(run_main("export.py", "--checkpoint_path", ckpt, "--file_name", tmp_path / "m",
                       "--file_format", "ONNX", "--verify"))
    verified = next(ln for ln in proc.stdout.splitlines() if "verified" in ln)
    print("\n" + verified)
    assert "onnxruntime (CPU)" in verified and "at batch 1, 3" in verified
    assert float(re.search(r"max abs difference (\S+)", verified).group(1)) <= ONNX_ATOL
    assert f"input: float32 (N, 3, {size}, {size})" in proc.stdout
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary left

    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, size, size]

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    net, cfg = checkpoint_model(ckpt)
    assert cfg.image_size == size
    rng = np.random.default_rng(3)
    for batch in (1, 5):
        x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        got = session.run(None, {"input": x})[0]
        want = net(ms.Tensor(x)).asnumpy()
        assert got.shape == (batch, 10)
        diff = float(np.abs(got - want).max())
        print(f"onnxruntime vs MindSpore checkpoint model, batch {batch}: max abs diff {diff:.3e}")
        assert diff <= ONNX_ATOL


def test_onnx_static_batch(tmp_path, tiny_ckpt):
    import onnx
    proc = ok(run_main("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", tmp_path / "m2.onnx",
                       "--file_format", "onnx", "--batch_size", "2", "--verify"))
    assert "input: float32 (2, 3, 32, 32)" in proc.stdout and "at batch 2," in proc.stdout
    dims = onnx.load(str(tmp_path / "m2.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 32, 32]


def test_onnx_refuses_a_nan_checkpoint_exits_2_as_a_process(tmp_path, tiny):
    ckpt = tmp_path / "nan.ckpt"
    write_train_checkpoint(ckpt, tiny["topology"], head_scale=float("nan"))
    proc = run_script("export.py", "--checkpoint_path", ckpt, "--file_name", tmp_path / "m",
                      "--file_format", "ONNX", timeout=300)
    assert_user_error(proc, f"'{ckpt}' holds non-finite weights", "head.weight", "cannot be used")
    assert os.listdir(tmp_path) == ["nan.ckpt"]


def test_failed_onnx_verify_keeps_the_old_file(tmp_path, tiny_ckpt, monkeypatch):
    from src.convert import onnx_file as onnx_export
    net, cfg = checkpoint_model(tiny_ckpt)
    final = tmp_path / "m.onnx"
    final.write_bytes(b"previous export")
    monkeypatch.setattr(onnx_export, "verify_onnx", lambda *a, **k: float("nan"))
    with pytest.raises(UserError, match=r"max abs difference nan > 0.0001.*nothing was written"):
        onnx_export.export_onnx(net, (None, 3, 32, 32), str(tmp_path / "m"), verify=True)
    assert os.listdir(tmp_path) == ["m.onnx"] and final.read_bytes() == b"previous export"


# ------------------------------------------------------------------------------------------------
# Refused formats and options


def test_air_needs_ascend():
    with pytest.raises(ConfigError, match="AIR needs an Ascend device.*device is CPU"):
        mindir.check_format("AIR", "CPU")
    mindir.check_format("AIR", "Ascend")
    mindir.check_format("MINDIR", "CPU")


def test_options_are_parsed_apart_from_the_config():
    argv = ["--checkpoint_path", "a.ckpt", "--file_name=out/m", "--export_batch_size", "4",
            "--file_format", "mindir", "--verify", "--image_size", "64"]
    cfg, opts = export.parse_options(argv)
    assert tuple(opts) == ("out/m", "MINDIR", 4, True, False, None)
    assert (cfg.checkpoint_path, cfg.image_size) == ("a.ckpt", 64)
    assert tuple(export.parse_options([])[1]) == (None, "MINDIR", 1, False, False, None)
    assert tuple(export.parse_options(["--batch_size", "4"])[1]) == (None, "MINDIR", 4, False, False, None)
    assert tuple(export.parse_options(["--batch_size=dynamic"])[1]) == (None, "MINDIR", "dynamic", False, False, None)
    assert tuple(export.parse_options(["--file_format", "onnx"])[1]) == (None, "ONNX", "dynamic", False, False, None)
    assert export.parse_options(["--batch_size", "3", "--export_batch_size", "3"])[1].batch_size == 3
    assert export.parse_options(["--batch_size", "3"])[0].batch_size == 128   # the config's is untouched
    for bad, msg in ((["--file_format", "tflite"], "expected one of MINDIR, AIR, ONNX"),
                     (["--export_batch_size", "0"], "integer >= 1"),
                     (["--export_batch_size", "two"], "integer >= 1"),
                     (["--batch_size", "-1"], "'--batch_size': expected an integer >= 1 or 'dynamic'"),
                     (["--batch_size", "2", "--export_batch_size", "4"], "disagree"),
                     (["--file_name"], "--file_name needs")):
        with pytest.raises(ConfigError, match=msg):
            export.parse_options(bad)


def test_output_name_defaults_to_the_checkpoints():
    assert mindir.output_base(None, "output/best.ckpt", "MINDIR") == "output/best"
    assert mindir.output_base("deploy/m.mindir", "x.ckpt", "MINDIR") == "deploy/m"
    assert mindir.output_base("deploy/m", "x.ckpt", "MINDIR") == "deploy/m"
    with pytest.raises(ConfigError, match="names a folder"):
        mindir.output_base("deploy/", "x.ckpt", "MINDIR")


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
        mindir.export_atomic(None, [], str(tmp_path / "m"), "MINDIR")
    assert sorted(os.listdir(tmp_path)) == ["m.mindir"]
    assert final.read_bytes() == b"previous export"
