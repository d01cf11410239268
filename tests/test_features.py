"""ConvMLP as a backbone: ``create_model(..., features_only=True, out_indices=...)``,
``feature_info`` and ``forward_intermediates``, tested as timm and mindcv test feature extraction.

* Levels, channels and reductions of S, M and L are those of the official ``DetConvMLP``.
* The maps equal a hand-written multi-output forward, and the official backbone's maps
  (``tests/fixtures/features_tiny_*``, made by ``make_feature_fixtures.py`` with the official code)
  for inputs of 64x64 and 72x88, in GRAPH and PYNATIVE mode.
* ``out_indices`` selects and orders (negative from the end); a wrong one is a one-line error.
* Gradients reach every backbone parameter; the features cell has no head parameters.
"""
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import ops

from helpers import FIXTURES, TINY_CKPT_FLAGS, ok, run_main
from model import ConvMLP, FeatureListNet, create_model, load_pretrained
from src.convert.names import convert_state_dict
from src.platform.errors import ConfigError

TINY = dict(blocks=[1, 2, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2], channels=16, n_conv_blocks=1)
TOL = 1e-5

OFFICIAL_LEVELS = {   # (channels, reduction) of the four maps of DetConvMLPSmall/Medium/Large
    "convmlp_s": [(64, 4), (128, 8), (256, 16), (512, 32)],
    "convmlp_m": [(64, 4), (128, 8), (256, 16), (512, 32)],
    "convmlp_l": [(96, 4), (192, 8), (384, 16), (768, 32)],
}


@pytest.fixture(params=["PYNATIVE", "GRAPH"])
def mode(request):
    old = ms.get_context("mode")
    ms.set_context(mode=getattr(ms, request.param + "_MODE"))
    yield request.param
    ms.set_context(mode=old)


def images(*shape, seed=0):
    return ms.Tensor(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def tiny_backbone(out_indices=(0, 1, 2, 3)):
    return FeatureListNet(ConvMLP(classifier_head=False, **TINY), out_indices)


def hand_written_maps(net, x):
    """The official DetConvMLP forward, written out on the cells of a head-less ConvMLP."""
    t = net.tokenizer(x)
    c = net.conv_stages(t)
    s = c.transpose(0, 2, 3, 1)
    s0 = net.stages[0](s)
    s2 = net.stages[2](net.stages[1](s0))
    return [t, c, s0.transpose(0, 3, 1, 2), s2.transpose(0, 3, 1, 2)]


@pytest.mark.parametrize("variant", sorted(OFFICIAL_LEVELS))
def test_levels_channels_and_reductions_of_the_released_variants(variant):
    net = create_model(variant, features_only=True)
    expected = OFFICIAL_LEVELS[variant]
    assert net.feature_info.channels() == [c for c, _ in expected]
    assert net.feature_info.reduction() == [r for _, r in expected]
    assert net.feature_info.module_name() == ["tokenizer", "conv_stages", "stages.0", "stages.2"]
    for info in net.feature_info:   # mindcv's words for the same facts
        assert (info["chs"], info["reduction"], info["name"]) == (info["num_chs"], info["reduction"], info["module"])
    names = [p.name for p in net.get_parameters()]
    assert not [n for n in names if n.startswith(("head.", "norm."))]
    classifier = {p.name for p in create_model(variant).get_parameters()}
    assert set(names) == {n for n in classifier if not n.startswith(("head.", "norm."))}


def test_convmlp_s_maps_have_the_stated_shapes_for_an_input_not_a_multiple_of_32():
    net = create_model("convmlp_s", features_only=True)
    net.set_train(False)
    maps = net(images(1, 3, 72, 88))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 18, 22), (1, 128, 9, 11), (1, 256, 5, 6), (1, 512, 3, 3)]
    assert all(np.isfinite(m.asnumpy()).all() for m in maps)


def test_maps_equal_a_hand_written_multi_output_forward(mode):
    net = tiny_backbone()
    net.set_train(False)
    x = images(2, 3, 72, 88)
    got = net(x)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    want = hand_written_maps(net.net, x)
    assert len(got) == 4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=0, atol=TOL)
    # the deepest map is the classifier's forward_features, channels first
    np.testing.assert_allclose(got[3].asnumpy(), net.net.forward_features(x).asnumpy().transpose(0, 3, 1, 2),
                               rtol=0, atol=TOL)


@pytest.mark.parametrize("out_indices, levels", [((1, 3), [1, 3]), ((3, 0), [3, 0]), ((-1, -4), [3, 0]),
                                                  ((2,), [2])])
def test_out_indices_select_and_order_the_levels(out_indices, levels):
    full, part = tiny_backbone(), tiny_backbone(out_indices)
    ms.load_param_into_net(part, {p.name: p for p in full.get_parameters()}, strict_load=True)
    full.set_train(False)
    part.set_train(False)
    x = images(1, 3, 64, 64)
    every, got = full(x), part(x)
    assert len(got) == len(levels)
    assert part.feature_info.channels() == [full.feature_info.channels(i) for i in levels]
    assert part.feature_info.reduction() == [full.feature_info.reduction(i) for i in levels]
    for g, i in zip(got, levels):
        np.testing.assert_array_equal(g.asnumpy(), every[i].asnumpy())


@pytest.mark.parametrize("out_indices, fragment", [
    ((0, 4), "level 4 does not exist; the backbone has 4 levels, 0 to 3"),
    ((-5,), "level -5 does not exist"),
    ((1, 1), "each level may be taken once"),
    ((), "expected a non-empty list of integer level indices"),
    (("a",), "expected a non-empty list of integer level indices"),
])
def test_invalid_out_indices_are_a_one_line_error(out_indices, fragment):
    with pytest.raises(ConfigError) as err:
        create_model("convmlp_s", features_only=True, out_indices=out_indices)
    message = str(err.value)
    assert "out_indices" in message and fragment in message and "\n" not in message


def test_maps_equal_the_official_detection_backbone(mode, tiny_state):
    """Official DetConvMLP (tiny configuration, weights of convmlp_tiny.pth) vs the converted
    backbone, inputs 64x64 and 72x88: max abs diff <= 1e-5 of the map's scale (its largest
    magnitude, at least 1; the conv stage's map reaches about 24, where float32 steps by 2e-6)."""
    weights = {k: v for k, v in convert_state_dict(tiny_state).items() if not k.startswith(("head.", "norm."))}
    net = tiny_backbone()
    not_loaded, unused = ms.load_param_into_net(
        net, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()}, strict_load=True)
    assert not_loaded == [] and unused == []
    net.set_train(False)
    for size in ("64x64", "72x88"):
        x = np.load(os.path.join(FIXTURES, f"features_tiny_input_{size}.npy"))
        got = net(ms.Tensor(x))
        for level, g in enumerate(got):
            want = np.load(os.path.join(FIXTURES, f"features_tiny_{size}_level{level}.npy"))
            diff = float(np.abs(g.asnumpy() - want).max())
            scale = max(1.0, float(np.abs(want).max()))
            print(f"{mode} {size} level {level} {want.shape}: max abs diff {diff:.2e}, scale {scale:.1f}")
            assert g.shape == want.shape and diff <= TOL * scale


def test_gradients_reach_every_backbone_parameter(mode):
    net = tiny_backbone()
    net.set_train(True)
    params = net.trainable_params()

    def loss_fn(x):
        return sum((m * m).mean() for m in net(x))

    grads = ms.value_and_grad(loss_fn, None, params)(images(2, 3, 64, 64))[1]
    without = [p.name for p, g in zip(params, grads) if not float(ops.abs(g).max()) > 0]
    assert len(grads) == len(params) and without == []
    assert not [p.name for p in params if p.name.startswith(("head.", "norm."))]


def test_forward_intermediates_as_timm_defines_it():
    net = ConvMLP(num_classes=10, **TINY)
    net.set_train(False)
    x = images(1, 3, 64, 64)
    maps = hand_written_maps(net, x)
    final, inter = net.forward_intermediates(x)
    np.testing.assert_allclose(final.asnumpy(), net.forward_features(x).asnumpy(), rtol=0, atol=TOL)
    assert len(inter) == 4
    for g, w in zip(inter, maps):
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=0, atol=TOL)
    # an int takes the last n, sorted; NHWC on request; stop_early stops at the deepest asked for
    only = net.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt="NHWC")
    assert [tuple(m.shape) for m in only] == [(1, 4, 4, 32), (1, 2, 2, 64)]
    final, inter = net.forward_intermediates(x, indices=[1], stop_early=True)
    np.testing.assert_allclose(final.asnumpy(), maps[1].asnumpy().transpose(0, 2, 3, 1), rtol=0, atol=TOL)
    # norm: the head's LayerNorm on the last level
    _, inter = net.forward_intermediates(x, indices=[-1], norm=True)
    want = net.norm(maps[3].transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(inter[0].asnumpy(), want.asnumpy(), rtol=0, atol=TOL)
    with pytest.raises(ConfigError, match="output_fmt 'NCWH': expected NCHW or NHWC"):
        net.forward_intermediates(x, output_fmt="NCWH")


# ------------------------------------------------------------------------------------------------
# The official detection/segmentation checkpoints (mmdet/mmseg layout) as backbones

def dense_checkpoint(path, tiny_state, seg=True):
    """An official-layout dense-task checkpoint: ``meta``, ``state_dict`` with the backbone's keys
    (the tiny classifier's minus its ``norm``/``head``) under ``backbone.`` and a neck and heads
    beside them, ``optimizer``."""
    import torch
    state = {"backbone." + k: v for k, v in tiny_state.items() if not k.startswith(("norm.", "head."))}
    state.update({f"neck.lateral_convs.{i}.conv.weight": torch.ones(8, c, 1, 1) for i, c in enumerate((16, 16, 32, 64))})
    state.update({"neck.fpn_convs.0.conv.weight": torch.ones(8, 8, 3, 3), "neck.fpn_convs.0.conv.bias": torch.zeros(8)})
    if seg:
        state.update({"decode_head.conv_seg.weight": torch.ones(4, 8, 1, 1), "decode_head.conv_seg.bias": torch.zeros(4),
                      "auxiliary_head.conv_seg.weight": torch.ones(4, 8, 1, 1)})
    else:
        state.update({"rpn_head.rpn_conv.weight": torch.ones(8, 8, 3, 3), "roi_head.bbox_head.fc_cls.weight": torch.ones(5, 8)})
    torch.save({"meta": {"mmseg_version": "0.11.0", "CLASSES": ("a", "b"), "iter": 40000},
                "state_dict": state,
                "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}},
               path)
    return state


def test_pth2ckpt_takes_the_backbone_of_an_official_dense_checkpoint(tmp_path, tiny, tiny_state, run_pth2ckpt):
    """The backbone is written (the neck and heads left out, counted per part) and a features_only
    model loading it gives the official DetConvMLP maps; a classifier starts from it with a new head."""
    src, dst = tmp_path / "fpn_convmlp_tiny.pth", tmp_path / "backbone.ckpt"
    dense_checkpoint(src, tiny_state)
    proc = run_pth2ckpt("--src", src, "--dst", dst, *tiny["flags"])
    assert proc.returncode == 0, proc.stderr
    print("\n" + proc.stdout)
    for line in ("dropped     : 6 keys (the neck of the dense-task model, not the backbone)",
                 "dropped     : 2 keys (the decode_head of the dense-task model, not the backbone)",
                 "dropped     : 1 keys (the auxiliary_head of the dense-task model, not the backbone)",
                 "backbone (no head)", "mapped      : 96 keys", "dropped     : 6 keys (BatchNorm counter"):
        assert line in proc.stdout
    saved = {k for k in ms.load_checkpoint(str(dst))}
    assert not [k for k in saved if k.startswith(("head.", "norm.", "backbone.", "neck."))]

    net = create_model("convmlp_s", features_only=True, pretrained_ckpt=str(dst), **tiny["topology"])
    net.set_train(False)
    x = np.load(os.path.join(FIXTURES, "features_tiny_input_72x88.npy"))
    for level, g in enumerate(net(ms.Tensor(x))):
        want = np.load(os.path.join(FIXTURES, f"features_tiny_72x88_level{level}.npy"))
        assert float(np.abs(g.asnumpy() - want).max()) <= TOL * max(1.0, float(np.abs(want).max()))

    classifier = create_model("convmlp_s", num_classes=3, **tiny["topology"])
    report = load_pretrained(classifier, str(dst))
    assert report["head_reinitialised"] and len(report["loaded"]) == len(saved)
    assert np.all(classifier.norm.gamma.asnumpy() == 1) and classifier.head.weight.shape == (3, 64)


def test_pth2ckpt_detection_checkpoint_and_flags_that_do_not_apply(tmp_path, tiny, tiny_state, run_pth2ckpt):
    src, dst = tmp_path / "retinanet_convmlp_tiny.pth", tmp_path / "backbone.ckpt"
    dense_checkpoint(src, tiny_state, seg=False)
    proc = run_pth2ckpt("--src", src, "--dst", dst, *tiny["flags"], "--verify")
    assert proc.returncode == 2 and not dst.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --verify does not apply to")
    proc = run_pth2ckpt("--src", src, "--dst", dst, *tiny["flags"])
    assert proc.returncode == 0, proc.stderr
    assert "dropped     : 1 keys (the rpn_head of the dense-task model" in proc.stdout
    assert "dropped     : 1 keys (the roi_head of the dense-task model" in proc.stdout


def test_a_classifier_checkpoint_loads_as_a_backbone_with_one_warning(tmp_path, capsys):
    from src.checkpoint.checkpoint import save_atomic
    classifier = ConvMLP(num_classes=10, **TINY)
    path = str(tmp_path / "classifier.ckpt")
    save_atomic(classifier, path)
    net = create_model("convmlp_s", features_only=True, pretrained_ckpt=path, **TINY)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "left out" in line]
    assert warnings == [f"warning: '{path}': the classifier head (4 parameters: norm.*, head.*) is not part of "
                        "the backbone and is left out"]
    mine = {p.name: p.asnumpy() for p in classifier.get_parameters()}
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), mine[p.name])


def test_split_dense_checkpoint_strips_the_backbone_prefix_before_the_one_name_mapping():
    from src.convert.names import map_name, split_dense_checkpoint
    state = {"backbone.tokenizer.block.1.weight": 1, "backbone.stages.0.blocks.0.norm1.bias": 2,
             "neck.fpn_convs.0.conv.weight": 3, "decode_head.conv_seg.bias": 4, "neck.lateral_convs.0.conv.bias": 5}
    backbone, others = split_dense_checkpoint(state)
    assert backbone == {"tokenizer.block.1.weight": 1, "stages.0.blocks.0.norm1.bias": 2}
    assert others == {"neck": 2, "decode_head": 1}
    assert [map_name(k) for k in backbone] == ["tokenizer.block.1.gamma", "stages.0.blocks.0.norm1.beta"]
    assert split_dense_checkpoint({"tokenizer.block.1.weight": 1, "head.weight": 2}) is None


# ------------------------------------------------------------------------------------------------
# export.py --features_only: MINDIR and ONNX files with the four maps

def export_flags(image_size):
    """The tiny checkpoint's topology flags (helpers.TINY_CKPT_FLAGS) with another image size."""
    at = TINY_CKPT_FLAGS.index("--image_size")
    return TINY_CKPT_FLAGS[:at] + ["--image_size", str(image_size)] + TINY_CKPT_FLAGS[at + 2:]


def checkpoint_backbone(ckpt):
    net = create_model("convmlp_s", features_only=True, pretrained_ckpt=str(ckpt), **TINY)
    net.set_train(False)
    return net


def test_export_features_only_mindir_gives_the_four_maps(tmp_path, tiny_ckpt):
    from mindspore import nn
    path = tmp_path / "backbone.mindir"
    proc = ok(run_main("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", path, "--features_only", "true",
                       "--batch_size", "2", *export_flags(64), "--verify"))
    assert ("output: the backbone's feature maps (2, 16, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2), "
            "NCHW, strides [4, 8, 16, 32]") in proc.stdout
    assert "gives the checkpoint model's feature maps" in proc.stdout
    graph = nn.GraphCell(ms.load(str(path)))
    x = images(2, 3, 64, 64, seed=3)
    got, want = graph(x), checkpoint_backbone(tiny_ckpt)(x)
    assert len(got) == 4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=0, atol=1e-4)


def test_export_features_only_onnx_gives_the_four_maps_at_any_batch(tmp_path, tiny_ckpt):
    import onnxruntime as ort
    path = tmp_path / "backbone.onnx"
    proc = ok(run_main("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", path, "--features_only", "true",
                       "--file_format", "ONNX", *export_flags(72), "--verify"))
    assert "(N, 64, 3, 3), NCHW" in proc.stdout
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features_0", "features_1", "features_2", "features_3"]
    x = np.random.default_rng(4).standard_normal((3, 3, 72, 72)).astype(np.float32)
    got, want = session.run(None, {"input": x}), checkpoint_backbone(tiny_ckpt)(ms.Tensor(x))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.asnumpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("fmt", ["MINDIR", "ONNX"])
def test_export_out_indices_gives_those_levels_in_that_order(tmp_path, tiny_ckpt, fmt):
    """A detector's neck takes strides 8-32: --out_indices 1,2,3 exports those three maps."""
    path = tmp_path / f"neck.{fmt.lower()}"
    proc = ok(run_main("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", path, "--features_only", "true",
                       "--out_indices", "-3,-2,-1", "--file_format", fmt, "--batch_size", "2", *export_flags(64),
                       "--verify"))
    assert "(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2), NCHW, strides [8, 16, 32]" in proc.stdout
    x = images(2, 3, 64, 64, seed=5)
    want = checkpoint_backbone(tiny_ckpt)(x)[1:]
    if fmt == "ONNX":
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.asnumpy()})
    else:
        from mindspore import nn
        got = [g.asnumpy() for g in nn.GraphCell(ms.load(str(path)))(x)]
    assert len(got) == 3
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.asnumpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("flags, fragment", [
    (["--out_indices", "1,2"], "needs --features_only true"),
    (["--features_only", "true", "--out_indices", "1,x"], "comma-separated integer levels"),
    (["--features_only", "true", "--out_indices", "4"], "level 4 does not exist"),
])
def test_export_out_indices_that_cannot_be_taken_are_one_error(tmp_path, tiny_ckpt, flags, fragment):
    path = tmp_path / "neck.mindir"
    proc = run_main("export.py", "--checkpoint_path", tiny_ckpt, "--file_name", path, *flags, *export_flags(64))
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    assert not path.exists()


# ------------------------------------------------------------------------------------------------
# The dense-task example

@pytest.mark.slow
def test_segmentation_fpn_example_beats_chance_clearly():
    """examples/segmentation_fpn.py as a user runs it (default settings): its held-out mIoU is well
    above chance (the better of all-background and class-frequency guessing)."""
    import re
    proc = ok(run_main("examples.segmentation_fpn", timeout=1800))
    print("\n" + proc.stdout)
    miou, chance = map(float, re.search(r"mIoU (\S+) \(chance (\S+)\)", proc.stdout).groups())
    assert miou >= chance + 0.1
