"""The MindSpore ConvMLP: sizes, shapes, gradients, stochastic depth, init, and loading checkpoints
for fine-tuning (``model.load_pretrained``).

Most tests use a tiny configuration (builds in milliseconds); the released variants are built
once per session through the ``built_model`` fixture.
"""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from src.platform.errors import CheckpointError, ConfigError
from model import ConvMLP, DropPath, check_fit, create_model, load_pretrained

TINY = dict(blocks=[1, 2, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2], channels=16, n_conv_blocks=1)


def tiny_net(num_classes=10, **kwargs):
    return ConvMLP(num_classes=num_classes, **{**TINY, **kwargs})


def images(*shape, seed=0):
    return ms.Tensor(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def n_trainable(net):
    return sum(int(np.prod(p.shape)) for p in net.trainable_params())


# ------------------------------------------------------------------------------------------------
# Size and shapes

OFFICIAL_PARAM_COUNTS = {  # trainable parameters of the official models for 10 / 100 / 1000 classes
    "convmlp_s": {10: 8_515_050, 100: 8_561_220, 1000: 9_022_920},
    "convmlp_m": {10: 16_902_634, 100: 16_948_804, 1000: 17_410_504},
    "convmlp_l": {10: 41_967_130, 100: 42_036_340, 1000: 42_728_440},
}


@pytest.mark.parametrize("variant", sorted(OFFICIAL_PARAM_COUNTS))
def test_parameter_counts_equal_the_official_ones(variant, built_model):
    expected = OFFICIAL_PARAM_COUNTS[variant]
    net = built_model(variant, 1000)
    assert n_trainable(net) == expected[1000]
    # Other class counts change only the Dense head (dims[-1] + 1 parameters per class). ConvMLP-S
    # is cheap to build and checks that claim; for M and L the count is derived from the 1000 model.
    features = net.head.weight.shape[1]
    for num_classes in (10, 100):
        if variant == "convmlp_s":
            count = n_trainable(built_model(variant, num_classes))
        else:
            count = expected[1000] - 1000 * (features + 1) + num_classes * (features + 1)
        assert count == expected[num_classes], (variant, num_classes)


def test_create_model_rejects_unknown_arch():
    with pytest.raises(ConfigError, match="unknown arch 'convmlp_xl': expected one of convmlp_s, convmlp_m, convmlp_l"):
        create_model("convmlp_xl")


def test_misspelt_keywords_are_refused_not_ignored():
    with pytest.raises(TypeError, match="drop_path"):
        create_model("convmlp_s", num_classes=10, drop_path=0.2)      # drop_path_rate
    with pytest.raises(TypeError, match="mlp_ratio"):
        tiny_net(mlp_ratio=[2, 2, 2])                                   # mlp_ratios


def test_the_model_package_imports_nothing_from_outside_itself(tmp_path):
    """``import model`` works where only model/ is on the path (the package stands alone)."""
    import os
    import shutil
    import subprocess
    import sys
    import model
    shutil.copytree(os.path.dirname(model.__file__), tmp_path / "model",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = "import model; print(model.__file__); print(model.convmlp_s(num_classes=10).num_classes)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith(str(tmp_path)) and lines[-1] == "10"


# ------------------------------------------------------------------------------------------------
# A plain network: backends are applied to it (model.cpu_kernels), never chosen inside it

def _held_outside_registry(cell):
    """Attributes of `cell` holding Parameters or Custom ops outside MindSpore's registries."""
    bad = []
    for name, value in vars(cell).items():
        items = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, ms.Parameter) for v in items) or any(isinstance(v, ops.Custom) for v in items):
            bad.append(name)
    return bad


def test_create_model_builds_plain_mindspore_cells_only():
    net = create_model("convmlp_s", num_classes=10, drop_path_rate=0.1)
    kinds = {type(cell) for _, cell in net.cells_and_names()}
    foreign = sorted(k.__module__ + "." + k.__name__ for k in kinds
                     if not k.__module__.startswith(("mindspore.nn.", "model.convmlp", "model.drop_path")))
    assert foreign == []                                     # no kernel cell, no fused cell
    assert {k.__name__ for k in kinds if k.__module__.startswith("mindspore.nn.")} == {
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "LayerNorm", "Dense", "GELU", "Dropout", "SequentialCell",
        "CellList"}
    for name, cell in net.cells_and_names():
        assert _held_outside_registry(cell) == [], name     # nothing injected from outside
        assert not hasattr(cell, "use_kernel") and not hasattr(cell, "fused_inference"), name
    registered = {p.name for p in net.get_parameters()}
    assert len(registered) == len(list(net.get_parameters())) and "stages.1.blocks.0.connect.weight" in registered


def test_constructing_a_model_compiles_nothing(monkeypatch):
    from model.cpu_kernels import build
    calls = []

    def no_build(*args):
        calls.append(args)
        raise AssertionError("the C++ kernels must not be built by a constructor")
    monkeypatch.setattr(build, "library_path", no_build)
    monkeypatch.setattr(build, "_build", no_build)
    net = create_model("convmlp_s", num_classes=10)
    net.reset_classifier(7)
    net.set_train(False)
    assert net(images(2, 3, 32, 32)).shape == (2, 7)
    assert calls == []


def test_output_shapes():
    net = tiny_net(num_classes=7)
    net.set_train(False)
    assert net(images(2, 3, 64, 64)).shape == (2, 7)
    assert net.forward_features(images(2, 3, 64, 96)).shape == (2, 2, 3, 64)  # /32, channels-last
    assert net.forward_head(net.forward_features(images(2, 3, 64, 64)), pre_logits=True).shape == (2, 64)


def test_released_variant_output_shape(built_model):
    net = built_model("convmlp_s", 1000)
    net.set_train(False)
    assert net(images(1, 3, 64, 64)).shape == (1, 1000)


def test_without_classifier_head_returns_channels_last_features():
    net = tiny_net(classifier_head=False)
    net.set_train(False)
    assert net(images(2, 3, 64, 64)).shape == (2, 2, 2, 64)
    assert not any(p.name.startswith(("head.", "norm.")) for p in net.get_parameters())


# ------------------------------------------------------------------------------------------------
# Training behaviour

def test_backward_reaches_every_trainable_parameter():
    net = tiny_net(drop_path_rate=0.0)
    net.set_train(True)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    x, y = images(4, 3, 64, 64), ms.Tensor(np.array([0, 3, 5, 9], np.int32))
    params = net.trainable_params()
    def forward(a, b):  # a named function: GRAPH mode (set by other test modules) cannot parse lambdas
        return loss_fn(net(a), b)

    grad_fn = ms.value_and_grad(forward, None, params)
    loss, grads = grad_fn(x, y)
    assert np.isfinite(loss.asnumpy())
    assert len(grads) == len(params) == len(list(net.trainable_params()))
    dead = [p.name for p, g in zip(params, grads) if not np.abs(g.asnumpy()).max() > 0]
    assert dead == [], f"parameters without gradient: {dead}"
    assert all(np.isfinite(g.asnumpy()).all() for g in grads)


def test_drop_path_drops_whole_samples_in_training_only():
    drop = DropPath(0.5)
    x = ops.ones((256, 4, 4, 8), ms.float32)
    drop.set_train(True)
    out = drop(x).asnumpy()
    per_sample = out.reshape(256, -1)
    assert set(np.unique(per_sample)) == {0.0, 2.0}  # kept samples are scaled by 1/keep_prob
    assert all(len(np.unique(row)) == 1 for row in per_sample)  # whole sample kept or dropped
    assert 0.3 < (per_sample[:, 0] == 0).mean() < 0.7
    drop.set_train(False)
    np.testing.assert_array_equal(drop(x).asnumpy(), x.asnumpy())


def test_stochastic_depth_rates_and_model_randomness_only_in_training():
    net = tiny_net(drop_path_rate=0.5)
    rates = [[blk.drop_path.drop_prob for blk in stage.blocks] for stage in net.stages]
    assert rates == [[0.0], [0.0, 0.5], [0.0]]  # linspace(0, rate, blocks) per stage
    x = images(8, 3, 32, 32)
    net.set_train(False)
    np.testing.assert_array_equal(net(x).asnumpy(), net(x).asnumpy())
    net.set_train(True)
    outs = [net(x).asnumpy() for _ in range(3)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_init_statistics_match_the_official_init(built_model):
    net = built_model("convmlp_s", 1000)
    dense = [c for _, c in net.cells_and_names() if isinstance(c, nn.Dense)]
    w = np.concatenate([c.weight.asnumpy().ravel() for c in dense])
    assert 0.0195 < w.std() < 0.0205 and abs(w.mean()) < 1e-3  # trunc_normal(std=0.02)
    assert all(not c.bias.asnumpy().any() for c in dense)  # zero bias
    for name, c in net.cells_and_names():
        if isinstance(c, nn.Conv2d) and c.weight.size >= 4096:  # Kaiming normal, fan_out, ReLU
            fan_out = c.weight.shape[0] * c.weight.shape[2] * c.weight.shape[3]
            ratio = c.weight.asnumpy().std() / np.sqrt(2.0 / fan_out)
            assert 0.9 < ratio < 1.1, (name, ratio)
        if isinstance(c, (nn.LayerNorm, nn.BatchNorm2d)):
            assert (c.gamma.asnumpy() == 1).all() and not c.beta.asnumpy().any(), name


# ------------------------------------------------------------------------------------------------
# Loading a checkpoint for fine-tuning

def save_with_training_state(net, path):
    """A .ckpt as a training run writes it: the weights plus AdamW moments and metadata."""
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    for prefix in ("adam_m", "adam_v"):
        entries += [{"name": f"{prefix}.{p.name}", "data": ops.zeros_like(p)}
                    for p in net.trainable_params()]
    entries.append({"name": "global_step", "data": ms.Tensor([120], ms.int32)})
    ms.save_checkpoint(entries, str(path), append_dict={"epoch": 3})
    return str(path)


def weights(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def test_load_pretrained_same_classes_loads_everything_and_ignores_optimizer_state(tmp_path):
    src = tiny_net()
    path = save_with_training_state(src, tmp_path / "run.ckpt")
    net = tiny_net()
    report = load_pretrained(net, path)
    assert not report["head_reinitialised"]
    assert len(report["loaded"]) == len(list(net.get_parameters()))
    assert "global_step" in report["ignored"] and "epoch" in report["ignored"]
    assert all(k.startswith(("adam_m.", "adam_v.")) for k in report["ignored"]
               if k not in ("global_step", "epoch"))
    got, want = weights(net), weights(src)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_load_pretrained_recreates_head_for_other_num_classes(tmp_path):
    src = tiny_net(num_classes=10)
    path = save_with_training_state(src, tmp_path / "imagenet.ckpt")
    net = tiny_net(num_classes=4)
    fresh_head = net.head.weight.asnumpy().copy()
    report = load_pretrained(net, path)
    assert report["head_reinitialised"]
    assert not any(k.startswith("head.") for k in report["loaded"])
    np.testing.assert_array_equal(net.head.weight.asnumpy(), fresh_head)
    np.testing.assert_array_equal(net.norm.gamma.asnumpy(), src.norm.gamma.asnumpy())
    assert net.head.weight.shape == (4, 64)


def test_create_model_with_pretrained_ckpt(tmp_path, built_model):
    # a converted ConvMLP-S .ckpt without head (pth2ckpt.py --num_classes), fine-tuned to 10 classes
    src = built_model("convmlp_s", 1000)
    path = str(tmp_path / "s_backbone.ckpt")
    ms.save_checkpoint([{"name": p.name, "data": p} for p in src.get_parameters()
                        if not p.name.startswith("head.")], path)
    net = create_model("convmlp_s", num_classes=10, pretrained_ckpt=path)
    assert net.head.weight.shape == (10, 512)
    np.testing.assert_array_equal(net.stages[2].blocks[1].norm2.gamma.asnumpy(),
                                  src.stages[2].blocks[1].norm2.gamma.asnumpy())


@pytest.mark.parametrize("ckpt_kwargs, fragments", [
    (dict(blocks=[1, 2, 2]), ["15 unexpected: stages.2.blocks.1.norm1.gamma"]),
    (dict(blocks=[1, 1, 1]), ["missing: stages.1.blocks.1.norm1.gamma"]),
    (dict(mlp_ratios=[2, 3, 2]),
     ["of another shape: stages.1.blocks.0.channel_mlp1.fc1.weight (96, 32) vs model (64, 32)"]),
], ids=["more-blocks", "fewer-blocks", "other-mlp-ratio"])
def test_load_pretrained_names_the_keys_of_another_arch(tmp_path, ckpt_kwargs, fragments):
    path = save_with_training_state(tiny_net(**ckpt_kwargs), tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not fit the model") as err:
        load_pretrained(tiny_net(), path)
    msg = str(err.value)
    assert "\n" not in msg and f"'{path}'" in msg
    for fragment in fragments:
        assert fragment in msg


def test_check_fit_and_read_errors(tmp_path):
    net = tiny_net()
    params = {p.name: p for p in net.get_parameters() if not p.name.startswith("head.")}
    assert check_fit(net, params, allow_missing_head=True) == ["head.weight", "head.bias"]
    with pytest.raises(CheckpointError, match="2 missing: head.weight, head.bias"):
        check_fit(net, params, "x.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint '{bad}'"):
        load_pretrained(net, str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(net, str(tmp_path / "missing.ckpt"))
