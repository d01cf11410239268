"""The fused inference path (``model/cpu_kernels/inference.py``, ``model/csrc/infer_onednn.cc``).

Each op is checked against a float64 reference (numpy / PyTorch) on shapes that exercise the
edges (row counts that are not a multiple of the tile, a single row, odd channel counts, odd map
sizes), then the model: the fused evaluation cell (``fuse_for_inference``) computes the same
function as the plain network, the network with the kernel cells and the float64 PyTorch reference
with BatchNorm statistics that are not the identity, the official tiny checkpoint gives the official
logits within 1e-5, kept packed weights follow a change of the weights, and training and mixed
precision evaluate the network itself.
"""
import math

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn

from model import ConvMLP, cpu_kernels
from model.cpu_kernels import FusedConvMLP, apply_cpu_kernels, fuse_for_inference, inference

pytestmark = pytest.mark.skipif(not inference.available(),
                                reason=f"fused inference path not available here: {cpu_kernels.status()}")

TOPOLOGY = dict(blocks=[1, 2, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2], channels=16, n_conv_blocks=2)
# the conv stage's 3x3 convolutions at 64 channels: run as Winograd F(2x2, 3x3) (winograd.h), on
# the layout oneDNN picks for the layer before (channels-last after 16 channels, blocked after 64
# on AVX-512); with 64 tokenizer channels its third convolution (32 -> 64) as well
WIDE = dict(TOPOLOGY, dims=[64, 32, 32])
WIDE_FRONT = dict(WIDE, channels=64)
RTOL, ATOL = 1e-5, 1e-5


def rand(*shape, scale=1.0, seed=0):
    return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


def tensor(a):
    return ms.Tensor(np.ascontiguousarray(a, dtype=np.float32))


class Op(nn.Cell):
    """A Custom op with fixed extra inputs, run in GRAPH mode."""

    def __init__(self, op, *extra):
        super().__init__()
        self.op = op
        self.extra = tuple(tensor(e) for e in extra)

    def construct(self, x):
        return self.op(x, *self.extra)


def layer_norm64(x, gamma, beta, eps=1e-5):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * gamma + beta


def gelu64(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


# ------------------------------------------------------------------------------------------------
# The ops

@pytest.mark.parametrize("shape,hidden", [((3, 5, 5, 16), 32), ((1, 1, 1, 64), 128), ((2, 14, 14, 24), 72),
                                          ((4101, 40), 80), ((7, 33), 99)])
def test_layer_norm_mlp_matches_float64(shape, hidden):
    c = shape[-1]
    x = rand(*shape, scale=2.0, seed=1) + 1.0
    gamma, beta = rand(c, seed=2) * 0.5 + 1.0, rand(c, seed=3) * 0.5
    w1, b1 = rand(hidden, c, scale=0.2, seed=4), rand(hidden, seed=5) * 0.1
    w2, b2 = rand(c, hidden, scale=0.2, seed=6), rand(c, seed=7) * 0.1
    got = Op(inference.layer_norm_mlp(), gamma, beta, w1, b1, w2, b2, [1e-5])(tensor(x)).asnumpy()
    h = gelu64(layer_norm64(x, gamma, beta) @ w1.T.astype(np.float64) + b1)
    want = x + h @ w2.T.astype(np.float64) + b2
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape,k", [((2, 4, 4, 128), 3), ((3, 7, 5, 24), 3), ((2, 1, 1, 512), 3), ((1, 9, 6, 16), 5)])
def test_layer_norm_depthwise_matches_float64(shape, k):
    c = shape[-1]
    x = rand(*shape, scale=2.0, seed=8) - 1.0
    gamma, beta = rand(c, seed=9) * 0.5 + 1.0, rand(c, seed=10) * 0.5
    weight = rand(c, 1, k, k, seed=11)
    got = Op(inference.layer_norm_depthwise(), gamma, beta, weight, [1e-5])(tensor(x)).asnumpy()
    xt = torch.tensor(layer_norm64(x, gamma, beta).transpose(0, 3, 1, 2))
    want = torch.nn.functional.conv2d(xt, torch.tensor(weight, dtype=torch.float64), padding=k // 2,
                                      groups=c).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape,ratios", [((3, 4, 4, 32), (2, 3)), ((2, 7, 5, 24), (3, 1)), ((5, 1, 1, 64), (2, 2))])
def test_conv_mlp_block_in_one_op_is_its_three_steps(shape, ratios):
    """The block op gives exactly what its three ops give one after the other (the same code on
    buffers of its own), and the float64 block within the tolerance."""
    c = shape[-1]
    x = rand(*shape, scale=2.0, seed=21) + 0.5
    mlps = []
    for i, ratio in enumerate(ratios):
        h = c * ratio
        mlps.append((rand(c, seed=30 + i) * 0.5 + 1.0, rand(c, seed=40 + i) * 0.5, rand(h, c, scale=0.2, seed=50 + i),
                     rand(h, seed=60 + i) * 0.1, rand(c, h, scale=0.2, seed=70 + i), rand(c, seed=80 + i) * 0.1))
    connect = (rand(c, seed=90) * 0.5 + 1.0, rand(c, seed=91) * 0.5, rand(c, 1, 3, 3, seed=92))
    eps = [1e-5]
    got = Op(inference.conv_mlp_block(), *mlps[0], *connect, *mlps[1], eps)(tensor(x)).asnumpy()
    steps = Op(inference.layer_norm_mlp(), *mlps[0], eps)(tensor(x))
    steps = Op(inference.layer_norm_depthwise(), *connect, eps)(steps)
    steps = Op(inference.layer_norm_mlp(), *mlps[1], eps)(steps).asnumpy()
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, steps)

    def mlp64(t, gamma, beta, w1, b1, w2, b2):
        return t + gelu64(layer_norm64(t, gamma, beta) @ w1.T.astype(np.float64) + b1) @ w2.T.astype(np.float64) + b2

    t = mlp64(x.astype(np.float64), *mlps[0])
    tt = torch.tensor(layer_norm64(t, *connect[:2]).transpose(0, 3, 1, 2))
    t = torch.nn.functional.conv2d(tt, torch.tensor(connect[2], dtype=torch.float64), padding=1,
                                   groups=c).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, mlp64(t, *mlps[1]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,cout", [((2, 4, 4, 32), 64), ((3, 7, 9, 16), 24), ((2, 2, 2, 256), 512)])
def test_downsampling_convolution_on_channels_last_tokens_matches_float64(shape, cout):
    from model.convmlp import ConvDownsample
    cell = ConvDownsample(shape[-1], cout)
    cell.downsample.bias.set_data(tensor(rand(cout, seed=12)))
    cell.set_train(False)
    x = rand(*shape, seed=13)
    got = inference.fused_downsample(cell)(tensor(x)).asnumpy()
    conv = cell.downsample
    want = torch.nn.functional.conv2d(torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64),
                                      torch.tensor(conv.weight.asnumpy(), dtype=torch.float64),
                                      torch.tensor(conv.bias.asnumpy(), dtype=torch.float64), stride=2, padding=1)
    np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------------
# The model

def _model(seed=0, drop_path_rate=0.1, topology=TOPOLOGY):
    """A small model whose norms and BatchNorm statistics are not the identity (folding them in is
    then visible)."""
    ms.set_seed(seed)
    net = ConvMLP(num_classes=10, drop_path_rate=drop_path_rate, **topology)
    rng = np.random.RandomState(seed + 1)
    for p in net.get_parameters():
        if p.name.endswith(("moving_mean", "beta", "bias")):
            p.set_data(tensor(rng.normal(0, 0.2, p.shape)))
        elif p.name.endswith(("moving_variance", "gamma")):
            p.set_data(tensor(rng.uniform(0.5, 1.5, p.shape)))
    net.set_train(False)
    return net


def _separate(net, num_classes=10):
    """A copy of `net` (same parameter values) with the kernel cells (``apply_cpu_kernels``)."""
    other = apply_cpu_kernels(ConvMLP(num_classes=num_classes, drop_path_rate=0.0, **TOPOLOGY))
    ms.load_param_into_net(other, {p.name: ms.Parameter(p.value(), name=p.name) for p in net.get_parameters()})
    other.set_train(False)
    return other


def _torch64(net, topology=TOPOLOGY):
    from model.torch_convmlp import TorchConvMLP
    from src.convert.names import to_torch_state_dict
    ref = TorchConvMLP(num_classes=10, **topology).double().eval()
    state = to_torch_state_dict({p.name: p.asnumpy() for p in net.get_parameters()})
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return ref


@pytest.mark.parametrize("size,batch", [(32, 5), (64, 3), (45, 2)])
def test_fused_cell_is_the_same_function_as_the_plain_network_the_kernels_and_float64(size, batch):
    net = _model()
    fused = fuse_for_inference(net)
    assert isinstance(fused, FusedConvMLP) and fused.fused_head
    assert [p.name for p in fused.get_parameters()] == [p.name for p in net.get_parameters()]
    x = rand(batch, 3, size, size, seed=14)
    got = fused(tensor(x)).asnumpy()
    plain = net(tensor(x)).asnumpy()
    separate = _separate(net)(tensor(x)).asnumpy()
    with torch.no_grad():
        want = _torch64(net)(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(plain, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(separate, want, rtol=RTOL, atol=ATOL)
    features = net.forward_features(tensor(x)).asnumpy()
    assert features.shape == (batch, -(-size // 32), -(-size // 32), TOPOLOGY["dims"][-1])


def winograd_runs():
    """How many convolutions the fused path has run as Winograd F(2x2, 3x3), as its library counts
    them."""
    import ctypes
    lib = ctypes.CDLL(cpu_kernels.build.conv_library_path())
    lib.WinogradConvolutionsRun.restype = ctypes.c_int64
    return lib.WinogradConvolutionsRun()


@pytest.mark.parametrize("topology,size,batch,winograd",
                         [(WIDE, 36, 3, 2), (WIDE, 64, 5, 2), (WIDE_FRONT, 40, 2, 3), (WIDE, 8, 4, 2)],
                         ids=["odd-map", "chunks", "wide-front", "2x2-map"])
def test_a_conv_stage_of_64_channels_runs_winograd_and_is_still_the_float64_function(topology, size, batch,
                                                                                    winograd):
    """The 3x3 convolutions of 32 channels or more in and 64 or more out (BatchNorm folded, ReLU)
    run as Winograd convolutions: the conv stage's, one per bottleneck, and the tokenizer's third of
    a 64-channel front. The model still matches float64 PyTorch with F(4x4, 3x3) on an odd map
    (36 px: the conv stage at 9x9), where the chunks of tiles do not divide the tiles (64 px,
    batch 5) and after a 64-channel front (another layout), and with F(2x2, 3x3) on a 2x2 map
    (8 px)."""
    net = _model(topology=topology)
    fused = fuse_for_inference(net)
    x = rand(batch, 3, size, size, seed=19)
    runs = winograd_runs()
    got = fused(tensor(x)).asnumpy()
    assert winograd_runs() - runs == winograd
    with torch.no_grad():
        want = _torch64(net, topology)(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    runs = winograd_runs()
    fuse_for_inference(_model())(tensor(x))                # 16 channels: the direct kernel
    assert winograd_runs() == runs


def test_official_tiny_checkpoint_gives_the_official_logits_within_1e_5(tiny, tiny_state):
    from src.convert.names import convert_state_dict
    net = ConvMLP(num_classes=tiny["num_classes"], **tiny["topology"])
    ms.load_param_into_net(net, {k: ms.Parameter(tensor(v), name=k)
                                 for k, v in convert_state_dict(tiny_state).items()}, strict_load=True)
    fused = fuse_for_inference(net)
    assert isinstance(fused, FusedConvMLP)
    got = fused(tensor(tiny["input"])).asnumpy()
    assert float(np.abs(got - tiny["logits"]).max()) <= 1e-5


@pytest.mark.parametrize("topology", [TOPOLOGY, WIDE], ids=["direct", "winograd"])
def test_kept_packed_weights_follow_a_change_of_the_weights(topology):
    """The ops keep weights in their own layouts (the products' packed matrices, the convolutions'
    BatchNorm-folded or Winograd-transformed weights) while the parameters are unchanged: a change
    of any of them (a weight, a BatchNorm statistic) is in the next result."""
    net = _model(topology=topology)
    fused = fuse_for_inference(net)
    x = tensor(rand(4, 3, 32, 32, seed=15))
    before = fused(x).asnumpy()
    np.testing.assert_array_equal(fused(x).asnumpy(), before)    # the kept copies: the same numbers
    bottleneck = net.conv_stages.conv_blocks[1]                   # 1x1, 3x3, 1x1 conv-BN-ReLU
    for p in (net.stages[2].blocks[0].channel_mlp1.fc1.weight, net.stages[0].downsample_mlp.downsample.weight,
              net.tokenizer.block[1].moving_mean, bottleneck[3].weight, bottleneck[4].moving_variance):
        p.set_data(tensor(p.asnumpy() * 1.5))                      # the network's tensors, new values
    after = fused(x).asnumpy()
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, net(x).asnumpy(), rtol=RTOL, atol=ATOL)


def test_a_replaced_head_is_the_one_evaluated():
    net = _model()
    net.reset_classifier(7)
    net.head.bias.set_data(tensor(rand(7, seed=17)))
    fused = fuse_for_inference(net)
    assert fused.fused_head
    x = tensor(rand(3, 3, 64, 64, seed=18))
    got = fused(x).asnumpy()
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, _separate(net, 7)(x).asnumpy(), rtol=RTOL, atol=ATOL)
    pooled = net.forward_head(net.forward_features(x), pre_logits=True).asnumpy()   # the separate cells
    np.testing.assert_allclose(pooled @ net.head.weight.asnumpy().T + net.head.bias.asnumpy(), got,
                               rtol=RTOL, atol=ATOL)


def test_training_and_mixed_precision_evaluate_the_network_itself():
    from types import SimpleNamespace
    from src.checkpoint.load import inference_network
    from src.train.step import apply_amp
    net = apply_cpu_kernels(_model(drop_path_rate=0.0))
    x = tensor(rand(4, 3, 32, 32, seed=16))
    reference = _separate(net)
    net.set_train(True)
    reference.set_train(True)
    fused = fuse_for_inference(net)          # built beside the network: its training mode is kept
    assert all(cell.training for _, cell in net.cells_and_names())
    np.testing.assert_array_equal(net(x).asnumpy(), reference(x).asnumpy())   # batch statistics
    assert isinstance(inference_network(net, SimpleNamespace(cpu_kernels=True, amp_level="O0")), FusedConvMLP)
    assert inference_network(net, SimpleNamespace(cpu_kernels=False, amp_level="O0")) is net
    apply_amp(net, "O1")
    assert inference_network(net, SimpleNamespace(cpu_kernels=True, amp_level="O1")) is net
    assert fused is not net
