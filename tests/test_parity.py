"""Parity with the official PyTorch ConvMLP (ground truth in ``tests/fixtures``, see its README).

* The official tiny checkpoint, converted, gives the official logits in inference mode
  (max abs diff <= 1e-4), through :func:`convert_state_dict` and through the CLI.
* The PyTorch reference (``model/torch_convmlp.py``, used by ``--verify``) gives them too.
* Every key of the official S/M/L state_dicts maps to exactly one MindSpore parameter of the same
  shape, and every MindSpore parameter is covered.
* A randomly initialised full ConvMLP-S gives the same logits in both frameworks.
"""
import re

import numpy as np
import pytest
import torch

from src.convert.names import convert_state_dict, map_name

TOL = 1e-4


def mindspore_logits(topology, num_classes, weights, x):
    """Logits of the MindSpore model with converted ``weights`` (strict load), inference mode."""
    import mindspore as ms
    from model import ConvMLP
    net = ConvMLP(num_classes=num_classes, **topology)
    not_loaded, _ = ms.load_param_into_net(
        net, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()}, strict_load=True)
    assert not_loaded == []
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def torch_logits(topology, num_classes, state, x):
    from model.torch_convmlp import TorchConvMLP
    ref = TorchConvMLP(num_classes=num_classes, **topology).eval()
    ref.load_state_dict(state, strict=True)
    with torch.no_grad():
        return ref(torch.from_numpy(x)).numpy()


def test_converted_fixture_reproduces_official_logits(tiny, tiny_state):
    got = mindspore_logits(tiny["topology"], tiny["num_classes"], convert_state_dict(tiny_state),
                           tiny["input"])
    diff = float(np.abs(got - tiny["logits"]).max())
    print(f"\nMindSpore (convert_state_dict) vs official logits: max abs diff {diff:.3e}")
    assert got.shape == tiny["logits"].shape and diff <= TOL


def test_torch_reference_reproduces_official_logits(tiny, tiny_state):
    got = torch_logits(tiny["topology"], tiny["num_classes"], tiny_state, tiny["input"])
    diff = float(np.abs(got - tiny["logits"]).max())
    print(f"\nPyTorch reference vs official logits: max abs diff {diff:.3e}")
    assert diff <= 1e-5


def test_cli_converted_fixture_reproduces_official_logits(tmp_path, tiny, run_pth2ckpt):
    import mindspore as ms
    dst = tmp_path / "tiny.ckpt"
    proc = run_pth2ckpt("--src", tiny["pth"], "--dst", dst, *tiny["flags"], "--verify")
    assert proc.returncode == 0, proc.stderr
    print("\n" + proc.stdout)
    cli_diff = float(re.search(r"max abs diff (\S+)", proc.stdout).group(1))
    assert cli_diff <= TOL and "mapped      : 100 keys" in proc.stdout
    weights = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(dst)).items()}
    got = mindspore_logits(tiny["topology"], tiny["num_classes"], weights, tiny["input"])
    diff = float(np.abs(got - tiny["logits"]).max())
    print(f"MindSpore (pth2ckpt.py .ckpt) vs official logits: max abs diff {diff:.3e}")
    assert diff <= TOL


@pytest.mark.parametrize("variant", ["convmlp_s", "convmlp_m", "convmlp_l"])
def test_official_keys_map_one_to_one_onto_mindspore_parameters(variant, official_keys, built_model):
    official = official_keys(variant)
    params = {p.name: p for p in built_model(variant, 1000).get_parameters()}
    mapped = {}
    for key, (shape, dtype, kind) in official.items():
        name = map_name(key)
        if name is None:
            assert key.endswith(".num_batches_tracked") and kind == "buffer"
            continue
        assert name not in mapped, f"{key} and {mapped.get(name)} both map to {name}"
        mapped[name] = key
        assert name in params, f"{key} -> {name}: no such MindSpore parameter"
        assert tuple(params[name].shape) == shape, f"{key} {shape} vs {name} {params[name].shape}"
        # learnable in PyTorch <=> trainable in MindSpore (BatchNorm statistics are not)
        assert params[name].requires_grad == (kind == "param"), key
        assert dtype == "float32"
    uncovered = sorted(set(params) - set(mapped))
    assert uncovered == [], f"MindSpore parameters no official key maps to: {uncovered}"


def test_full_size_state_dict_converts_to_the_model_shapes(fake_official_state, built_model):
    """convert_state_dict on a full-size official ConvMLP-S state_dict (zeros, tsv shapes)."""
    converted = convert_state_dict(fake_official_state("convmlp_s"))
    expected = {p.name: tuple(p.shape) for p in built_model("convmlp_s", 1000).get_parameters()}
    assert {k: v.shape for k, v in converted.items()} == expected


def test_random_init_convmlp_s_same_logits_in_both_frameworks():
    from model import default_cfgs
    from model.torch_convmlp import torch_convmlp
    torch.manual_seed(0)
    ref = torch_convmlp("convmlp_s", num_classes=10)
    for m in ref.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    state = ref.state_dict()
    x = np.random.RandomState(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    topology = {k: default_cfgs["convmlp_s"][k]
                for k in ("blocks", "dims", "mlp_ratios", "channels", "n_conv_blocks")}
    expected = torch_logits(topology, 10, state, x)
    got = mindspore_logits(topology, 10, convert_state_dict(state), x)
    diff = float(np.abs(got - expected).max())
    print(f"\nrandom-init ConvMLP-S at 64px, MindSpore vs PyTorch reference: max abs diff {diff:.3e}")
    assert diff <= TOL
