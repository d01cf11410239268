"""The C++ CPU kernels of ``model/cpu_kernels/`` (LayerNorm, exact GELU, padded max-pool).

Each kernel is checked, forward and backward, against a float64 reference (numpy / PyTorch) and
against MindSpore's own kernel, on shapes that exercise the edges (odd channel counts, odd image
sizes, ties after ReLU, NaN). Then: ``apply_cpu_kernels`` swaps exactly the cells they implement
(same parameters and names) and the network computes the same function and gradients with and
without them, they stay out cleanly (config key off, float16, no compiler), and MINDIR export never
contains them.
"""
import ctypes
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn

from helpers import REPO
from model import cpu_kernels
from model.cpu_kernels import GELU, LayerNorm, MaxPool2d


pytestmark = pytest.mark.skipif(not cpu_kernels.active(),
                                reason=f"CPU kernels not available here: {cpu_kernels.status()}")


def rand(*shape, scale=1.0, seed=0):
    return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


def grads(cell, x, weight):
    """(output, d(sum(cell(x) * weight))/dx, parameter gradients) in GRAPH mode (as train.py)."""
    def loss(t):
        return (cell(t) * ms.Tensor(weight)).sum()
    params = cell.trainable_params()
    fn = ms.jit(ms.value_and_grad(loss, grad_position=0, weights=params if params else None))
    _, g = fn(ms.Tensor(x))
    dx, dparams = (g[0], g[1]) if params else (g, ())
    return cell(ms.Tensor(x)).asnumpy(), dx.asnumpy(), [p.asnumpy() for p in dparams]


# ------------------------------------------------------------------------------------------------
# LayerNorm

def layer_norm_reference(x, gamma, beta, eps, dy):
    """float64 forward and backward of LayerNorm over the last axis."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    axes = tuple(range(x.ndim - 1))
    return xhat * gamma + beta, dx, (dy * xhat).sum(axes), dy.sum(axes)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 4, 4, 128), (64, 512), (16, 28, 28, 40)])
def test_layer_norm_matches_float64_reference_and_mindspore(shape):
    c = shape[-1]
    x = rand(*shape, scale=2.0) + 3.0  # a large mean: the variance must not cancel
    dy = rand(*shape, seed=1)
    cell = LayerNorm((c,), epsilon=1e-5)
    assert cell.use_kernel
    cell.gamma.set_data(ms.Tensor(rand(c, seed=2) * 0.5 + 1.0))
    cell.beta.set_data(ms.Tensor(rand(c, seed=3)))
    y, dx, (dgamma, dbeta) = grads(cell, x, dy)
    ref = layer_norm_reference(x, cell.gamma.asnumpy().astype(np.float64),
                               cell.beta.asnumpy().astype(np.float64), 1e-5, dy)
    rows = int(np.prod(shape[:-1]))
    np.testing.assert_allclose(y, ref[0], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(dx, ref[1], rtol=1e-4, atol=5e-5)
    np.testing.assert_allclose(dgamma, ref[2], rtol=1e-5, atol=1e-6 * rows)
    np.testing.assert_allclose(dbeta, ref[3], rtol=1e-5, atol=1e-6 * rows)

    builtin = nn.LayerNorm((c,), epsilon=1e-5)
    builtin.gamma.set_data(cell.gamma.value())
    builtin.beta.set_data(cell.beta.value())
    y_ms, dx_ms, _ = grads(builtin, x, dy)
    np.testing.assert_allclose(y, y_ms, atol=2e-5)
    np.testing.assert_allclose(dx, dx_ms, atol=1e-4)


def test_layer_norm_keeps_mindspore_kernel_where_the_c_kernel_does_not_apply():
    assert not LayerNorm((4, 8), begin_norm_axis=-2, begin_params_axis=-2).use_kernel  # 2 axes
    cell = LayerNorm((8,), epsilon=1e-5)
    x16 = ms.Tensor(rand(2, 8)).astype(ms.float16)  # float16 (AMP O2/O3): MindSpore's kernel
    ref = nn.LayerNorm((8,), epsilon=1e-5)(x16)
    np.testing.assert_array_equal(cell(x16).asnumpy(), ref.asnumpy())


# ------------------------------------------------------------------------------------------------
# GELU

def test_gelu_matches_erf_definition_over_the_whole_range():
    x = np.concatenate([np.linspace(-12, 12, 4801, dtype=np.float32), rand(1000, scale=3.0)])
    x64 = x.astype(np.float64)
    cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x64]))
    pdf = np.exp(-0.5 * x64 ** 2) / math.sqrt(2 * math.pi)
    dy = rand(x.size, seed=4)
    cell = GELU(approximate=False)
    assert cell.use_kernel
    y, dx, _ = grads(cell, x, dy)
    # atol 1e-6: below x = -4, float32 1 + erf(x / sqrt 2) cancels (PyTorch and MindSpore compute
    # the same expression and share this error)
    np.testing.assert_allclose(y, x64 * cdf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dy * (cdf + x64 * pdf), rtol=1e-5, atol=1e-6)
    # the official model's op: PyTorch's float32 exact GELU
    np.testing.assert_allclose(y, torch.nn.functional.gelu(torch.tensor(x)).numpy(), rtol=1e-6, atol=1e-6)
    # and MindSpore's exact GELU (whose Erf is the slow kernel this replaces)
    y_ms, dx_ms, _ = grads(nn.GELU(approximate=False), x, dy)
    np.testing.assert_allclose(y, y_ms, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dx_ms, rtol=1e-5, atol=1e-5)


def test_gelu_propagates_nan_and_keeps_tanh_variant_on_mindspore():
    out = GELU(approximate=False)(ms.Tensor(np.array([np.nan, 1.0, -np.nan], np.float32))).asnumpy()
    assert np.isnan(out[0]) and np.isnan(out[2]) and abs(out[1] - 0.8413447) < 1e-6
    assert not GELU(approximate=True).use_kernel


# ------------------------------------------------------------------------------------------------
# Max-pool

@pytest.mark.parametrize("shape,k,s,p", [
    ((4, 8, 16, 16), 3, 2, 1),   # ConvMLP's tokenizer pool (even size)
    ((2, 3, 15, 9), 3, 2, 1),    # odd sizes: the last window reaches the padding
    ((2, 5, 7, 7), 3, 1, 1),
    ((2, 4, 8, 6), 2, 2, 0),
    ((1, 2, 11, 13), 5, 3, 2),
])
def test_max_pool_matches_pytorch_including_ties(shape, k, s, p):
    # After ReLU many windows hold equal values (zeros); the gradient goes to the first maximum in
    # row-major window order, as in PyTorch's CPU kernel (and MindSpore's).
    x = np.maximum(rand(*shape, seed=5), 0).round(1)
    cell = MaxPool2d(kernel_size=k, stride=s, pad_mode="pad", padding=p)
    assert cell.use_kernel
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, k, s, p)
    dy = rand(*yt.shape, seed=6)
    (yt * torch.tensor(dy)).sum().backward()
    y, dx, _ = grads(cell, x, dy)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-6)
    y_ms = nn.MaxPool2d(kernel_size=k, stride=s, pad_mode="pad", padding=p)(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(y, y_ms)


def test_max_pool_nan_and_infinities():
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 2, 2] = np.nan
    x[0, 0, 5, 5] = -np.inf
    x[0, 0, 0, 5] = np.inf
    y = MaxPool2d(3, 2, "pad", 1)(ms.Tensor(x)).asnumpy()[0, 0]
    # output (i, j) pools rows/columns 2i-1 .. 2i+1: only window (1, 1) holds the NaN
    assert np.isnan(y[1, 1]) and np.isnan(y).sum() == 1
    assert y[0, 2] == np.inf and y[2, 2] == 0.0


def test_max_pool_other_modes_stay_on_mindspore():
    assert not MaxPool2d(3, 2, "same").use_kernel
    assert not MaxPool2d(3, 2, "pad", 1, return_indices=True).use_kernel
    assert not MaxPool2d((3, 2), 2, "pad", 1).use_kernel


# ------------------------------------------------------------------------------------------------
# The model with and without them

def _tiny_model(seed):
    from model import ConvMLP
    ms.set_seed(seed)
    return ConvMLP(blocks=[1, 2, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2], channels=16,
                   n_conv_blocks=1, num_classes=10, drop_path_rate=0.0)


#: what apply_cpu_kernels makes of each plain cell of the model (a ReLU after a BatchNorm is fused
#: into the BatchNorm kernel cell, the GELU of a channel MLP into its first Dense kernel cell: each
#: becomes an Identity)
SWAPS = {"LayerNorm": "LayerNorm", "GELU": "Identity", "Dense": "Dense", "MaxPool2d": "MaxPool2d", "Conv2d": "Conv2d",
         "BatchNorm2d": "BatchNorm2d", "ReLU": "Identity", "ChannelsLastDepthwise": "DepthwiseNHWC",
         "DropPath": "DropPath"}


def test_apply_cpu_kernels_swaps_exactly_the_cells_it_implements_keeping_the_parameters():
    ms.set_seed(0)
    from model import ConvMLP
    net = ConvMLP(blocks=[1, 2, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2], channels=16, n_conv_blocks=1,
                  num_classes=10, drop_path_rate=0.1)
    before = {name: type(cell) for name, cell in net.cells_and_names()}
    params = [(id(p), p.name) for p in net.get_parameters()]
    assert cpu_kernels.apply_cpu_kernels(net) is net
    # (the fused cells' own ReLU / GELU children: their fallback for float16 input)
    after = {name: type(cell) for name, cell in net.cells_and_names() if not name.endswith((".relu", ".gelu"))}
    assert [(id(p), p.name) for p in net.get_parameters()] == params   # the same objects, names
    assert set(after) == set(before)
    swapped = {}
    for name, old in before.items():
        new = after[name]
        if new is old:
            # what stays: containers, the model's own cells, the drop paths of rate 0
            assert old.__name__ not in SWAPS or (old.__name__ == "DropPath" and name.endswith("drop_path")), name
            continue
        assert new.__name__ == SWAPS[old.__name__], name
        assert new.__module__ == ("mindspore.nn.layer.basic" if new.__name__ == "Identity"
                                  else "model.cpu_kernels.layers"), name
        swapped[new.__name__] = swapped.get(new.__name__, 0) + 1
    # 4 blocks: 3 LayerNorms, 2 MLPs (2 Dense, the first with the GELU), 1 depthwise each; 6
    # conv-BN-ReLU + 3 other convolutions; the one block with drop path rate > 0; the head's
    # LayerNorm and Dense
    assert swapped == {"LayerNorm": 13, "Dense": 17, "MaxPool2d": 1, "Conv2d": 9, "BatchNorm2d": 6,
                       "Identity": 6 + 8, "DepthwiseNHWC": 4, "DropPath": 1}
    mlp = net.stages[0].blocks[0].channel_mlp1
    assert mlp.fc1.fuse_gelu and not mlp.fc2.fuse_gelu and type(mlp.act) is nn.Identity


def test_applying_the_kernels_draws_nothing_from_the_random_state():
    """A run with a seed draws the same numbers after building its network with or without them."""
    from mindspore.common.initializer import Normal, initializer

    def next_draw(apply):
        net = _tiny_model(3)
        if apply:
            cpu_kernels.apply_cpu_kernels(net)
        return initializer(Normal(), (16,), ms.float32).init_data().asnumpy(), np.random.get_state()[1][:4]
    plain, kernels = next_draw(False), next_draw(True)
    np.testing.assert_array_equal(plain[0], kernels[0])
    np.testing.assert_array_equal(plain[1], kernels[1])


def test_model_is_the_same_function_with_and_without_the_kernels():
    fast = cpu_kernels.apply_cpu_kernels(_tiny_model(0))
    slow = _tiny_model(0)
    assert fast.stages[0].blocks[0].norm1.use_kernel and fast.tokenizer.block[9].use_kernel
    assert type(slow.stages[0].blocks[0].norm1) is nn.LayerNorm and type(slow.tokenizer.block[9]) is nn.MaxPool2d
    ms.load_param_into_net(slow, {p.name: p for p in fast.get_parameters()})
    x = rand(4, 3, 32, 32, seed=7)
    dy = rand(4, 10, seed=8)
    for net in (fast, slow):
        net.set_train(True)
    y_f, dx_f, dp_f = grads(fast, x, dy)
    y_s, dx_s, dp_s = grads(slow, x, dy)
    np.testing.assert_allclose(y_f, y_s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx_f, dx_s, rtol=1e-3, atol=1e-5)
    for a, b, p in zip(dp_f, dp_s, fast.trainable_params()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5, err_msg=p.name)


def _run(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)


def test_without_a_compiler_the_model_falls_back_with_one_warning(tmp_path):
    code = ("import logging; logging.basicConfig(); import numpy as np, mindspore as ms\n"
            "from model import cpu_kernels, create_model\n"
            "net = cpu_kernels.apply_cpu_kernels(create_model('convmlp_s', num_classes=10))\n"
            "net = cpu_kernels.fuse_for_inference(net)\n"
            "print('status', cpu_kernels.status())\n"
            "print('use_kernel', isinstance(net.norm, cpu_kernels.LayerNorm))\n"
            "print('shape', net(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32))).shape)\n")
    proc = _run(code, CXX=str(tmp_path / "no-such-compiler"), CONVMLP_KERNEL_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count("CPU kernels unavailable") == 1, proc.stdout
    assert "no-such-compiler" in proc.stdout and "use_kernel False" in proc.stdout
    assert "shape (1, 10)" in proc.stdout


def test_config_key_off_keeps_the_plain_network_and_on_applies_the_kernels():
    from types import SimpleNamespace
    from src.checkpoint.load import build_model, inference_network
    from model import TOPOLOGY_KEYS
    for on in (False, True):
        cfg = SimpleNamespace(arch="convmlp_s", num_classes=10, cpu_kernels=on, amp_level="O0",
                              **{k: None for k in TOPOLOGY_KEYS})
        net = build_model(cfg)
        assert isinstance(net.norm, cpu_kernels.LayerNorm) == on
        assert isinstance(inference_network(net, cfg), cpu_kernels.FusedConvMLP) == on


def test_compiled_library_is_cached_per_machine(tmp_path):
    # First use compiles into the cache folder; the second process reuses the file untouched.
    code = "from model import cpu_kernels; print(cpu_kernels.library_path())"
    first = _run(code, CONVMLP_KERNEL_CACHE=str(tmp_path))
    lib = first.stdout.strip().splitlines()[-1]
    assert first.returncode == 0 and lib.startswith(str(tmp_path)) and os.path.isfile(lib), first.stdout
    mtime = os.stat(lib).st_mtime_ns
    second = _run(code, CONVMLP_KERNEL_CACHE=str(tmp_path))
    assert second.stdout.strip().splitlines()[-1] == lib and os.stat(lib).st_mtime_ns == mtime
    leftovers = [n for n in os.listdir(os.path.dirname(lib)) if n.startswith(".build-")]
    assert leftovers == []


# ------------------------------------------------------------------------------------------------
# Depthwise convolution on channels-last tokens (the Conv-MLP blocks' "connect" layer)

@pytest.mark.parametrize("shape,k", [((2, 4, 4, 128), 3), ((3, 7, 5, 24), 3), ((2, 1, 1, 512), 3),
                                     ((1, 2, 2, 8), 3), ((2, 9, 6, 16), 5)])
def test_depthwise_conv_matches_pytorch_grouped_conv(shape, k):
    from model.cpu_kernels import depthwise_conv_nhwc, ops
    n, h, w, c = shape
    x = rand(*shape, seed=9)
    weight = rand(c, 1, k, k, seed=10)
    dy = rand(*shape, seed=11)

    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, padding=k // 2, groups=c).permute(0, 2, 3, 1)
    (yt * torch.tensor(dy, dtype=torch.float64)).sum().backward()

    w_param = ms.Parameter(ms.Tensor(weight), name="w")

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = w_param
            ops._primitives()   # the Custom ops made before compiling, as the kernel cells' __init__ do

        def construct(self, t):
            return depthwise_conv_nhwc(t, self.w)

    y, dx, (dw,) = grads(Net(), x, dy)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Dense with the C++ bias addition (the channel MLPs' fc1/fc2)

@pytest.mark.parametrize("shape", [(2, 4, 4, 128), (7, 33), (3, 1, 1, 512)])
def test_dense_matches_mindspore_dense_and_sums_the_bias_gradient_exactly(shape):
    from model.cpu_kernels import Dense
    cin, cout = shape[-1], 2 * shape[-1] + 1
    cell = Dense(cin, cout)
    assert cell.use_kernel
    cell.bias.set_data(ms.Tensor(rand(cout, seed=12)))
    ref = nn.Dense(cin, cout)
    ref.weight.set_data(cell.weight.value())
    ref.bias.set_data(cell.bias.value())
    x, dy = rand(*shape, seed=13), rand(*shape[:-1], cout, seed=14)
    y, dx, (dw, db) = grads(cell, x, dy)
    y_r, dx_r, (dw_r, db_r) = grads(ref, x, dy)
    np.testing.assert_allclose(y, y_r, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dw, dw_r, rtol=1e-5, atol=1e-5)
    # the bias gradient is the row sum of dy: compare with a float64 sum
    np.testing.assert_allclose(db, dy.reshape(-1, cout).astype(np.float64).sum(0), rtol=1e-6, atol=1e-5)
    assert not Dense(4, 4, has_bias=False).use_kernel


@pytest.mark.parametrize("shape", [(2, 4, 4, 128), (7, 33), (600, 64)])
def test_dense_fused_with_the_following_gelu_matches_dense_then_gelu_in_float64(shape):
    """A channel MLP's fc1 and its GELU as one kernel cell (bias and GELU in one pass, the bias
    gradient summed in the same pass): the float64 function and gradients, and exactly the bias
    gradient the separate bias kernel sums from the same input gradient."""
    from model.cpu_kernels import Dense
    cin, cout = shape[-1], 2 * shape[-1] + 3
    cell = Dense(cin, cout, fuse_gelu=True)
    assert cell.use_kernel
    cell.weight.set_data(ms.Tensor(rand(cout, cin, scale=0.2, seed=15)))
    cell.bias.set_data(ms.Tensor(rand(cout, seed=16)))
    x, dy = rand(*shape, seed=17), rand(*shape[:-1], cout, seed=18)
    y, dx, (dw, db) = grads(cell, x, dy)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(cell.weight.asnumpy(), dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(cell.bias.asnumpy(), dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.gelu(torch.nn.functional.linear(xt, wt, bt))
    (yt * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-5, atol=1e-5)
    # the same bias gradient as the plain Dense kernel given this input gradient, bit for bit
    plain = Dense(cin, cout)
    plain.weight.set_data(cell.weight.value())
    plain.bias.set_data(cell.bias.value())
    pre = plain(ms.Tensor(x)).asnumpy().astype(np.float64)
    dpre = (dy * (0.5 * (1 + torch.erf(torch.tensor(pre) / math.sqrt(2))).numpy()
                  + pre * np.exp(-0.5 * pre ** 2) / math.sqrt(2 * math.pi))).astype(np.float32)
    _, _, (_, db_plain) = grads(plain, x, dpre)
    np.testing.assert_allclose(db, db_plain, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Stochastic depth's per-sample scaling

@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 5, 6), (16, 28, 28, 16)])
def test_scale_samples_equals_the_broadcasting_product_and_its_gradient(shape):
    from model.cpu_kernels import scale_samples
    x, dy = rand(*shape, seed=30), rand(*shape, seed=31)
    s = np.array([0.0, 1.25, -2.0, 1.0, 0.5] * 4, np.float32)[:shape[0]]

    def loss(t):
        return (scale_samples(t, ms.Tensor(s)) * ms.Tensor(dy)).sum()
    y = scale_samples(ms.Tensor(x), ms.Tensor(s)).asnumpy()
    dx = ms.jit(ms.grad(loss))(ms.Tensor(x)).asnumpy()
    per_sample = s.reshape((-1,) + (1,) * (len(shape) - 1))
    np.testing.assert_array_equal(y, x * per_sample)        # the same float products, bit for bit
    np.testing.assert_array_equal(dx, dy * per_sample)


def test_drop_path_with_the_kernel_drops_whole_samples_at_its_rate():
    from model.cpu_kernels import DropPath
    cell = DropPath(0.25)
    assert cell.use_kernel
    cell.set_train(True)
    x = np.ones((4000, 3, 2), np.float32)
    y = cell(ms.Tensor(x)).asnumpy()
    per_sample = y.reshape(4000, -1)
    assert (per_sample == per_sample[:, :1]).all()          # one factor per sample
    assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
    dropped = (per_sample[:, 0] == 0).mean()
    assert 0.22 < dropped < 0.28, dropped                   # 1000 expected: sd 0.007
    cell.set_train(False)
    np.testing.assert_array_equal(cell(ms.Tensor(x)).asnumpy(), x)


# ------------------------------------------------------------------------------------------------
# BatchNorm + ReLU (the tokenizer's and conv stage's conv -> BN -> ReLU)

@pytest.mark.parametrize("shape", [(8, 16, 8, 8), (3, 5, 7, 9), (2, 4, 1, 1)])
def test_batch_norm_relu_training_matches_mindspore_batch_norm_then_relu(shape):
    from model.cpu_kernels import BatchNorm2d
    c = shape[1]
    fused = BatchNorm2d(c, eps=1e-5, momentum=0.9, fuse_relu=True)
    assert fused.use_kernel
    fused.gamma.set_data(ms.Tensor(rand(c, seed=15) * 0.5 + 1.0))
    fused.beta.set_data(ms.Tensor(rand(c, seed=16) * 0.5))
    ref_bn = nn.BatchNorm2d(c, eps=1e-5, momentum=0.9)
    ref_bn.gamma.set_data(fused.gamma.value())
    ref_bn.beta.set_data(fused.beta.value())
    ref = nn.SequentialCell([ref_bn, nn.ReLU()])
    for cell in (fused, ref):
        cell.set_train(True)
    x = rand(*shape, scale=2.0, seed=17) + 1.0
    dy = rand(*shape, seed=18)
    y, dx, (dgamma, dbeta) = grads(fused, x, dy)    # (grads() also runs one more forward)
    y_r, dx_r, (dgamma_r, dbeta_r) = grads(ref, x, dy)
    np.testing.assert_allclose(y, y_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, dgamma_r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, dbeta_r, rtol=1e-4, atol=1e-4)
    # moving statistics after the same number of training forwards: unbiased variance, momentum 0.9
    np.testing.assert_allclose(fused.moving_mean.asnumpy(), ref_bn.moving_mean.asnumpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.asnumpy(), ref_bn.moving_variance.asnumpy(), rtol=1e-5, atol=1e-6)
    # evaluation mode uses the moving statistics, as nn.BatchNorm2d (its own kernel, with gradients)
    fused.set_train(False)
    ref.set_train(False)
    y, dx, (dgamma, dbeta) = grads(fused, x, dy)
    y_r, dx_r, (dgamma_r, dbeta_r) = grads(ref, x, dy)
    np.testing.assert_allclose(y, y_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, dgamma_r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, dbeta_r, rtol=1e-4, atol=1e-4)


def test_an_unusable_cache_folder_falls_back_to_the_temporary_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = _run("from model import cpu_kernels; print(cpu_kernels.status())",
                CONVMLP_KERNEL_CACHE=str(blocker / "cache"))
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1].startswith("on ("), proc.stdout
    assert "convmlp_mindspore_kernels_" in proc.stdout


# ------------------------------------------------------------------------------------------------
# Convolution on oneDNN's own layouts (tokenizer, conv stage, downsampling convs)

CONV_CASES = [  # (input shape, out channels, kernel, stride, bias)
    ((4, 16, 16, 16), 16, 3, 2, True),    # these two share input and weight shapes: each geometry
    ((4, 16, 16, 16), 16, 3, 1, False),   # must keep its own output shape
    ((2, 3, 33, 35), 8, 3, 2, False),     # odd sizes, 3 input channels (the stem)
    ((2, 16, 8, 8), 32, 1, 1, False),     # 1x1 (conv stage bottleneck)
    ((3, 32, 4, 4), 64, 3, 2, True),      # small maps (downsampling at 32 px)
    ((2, 64, 10, 9), 64, 3, 1, False),    # Winograd forward and input gradient, odd map (conv stage)
    ((2, 32, 12, 12), 64, 3, 1, False),   # Winograd forward, direct input gradient (tokenizer's third)
]


@pytest.mark.parametrize("shape,cout,k,stride,bias", CONV_CASES)
def test_conv_matches_mindspore_conv2d_forward_and_backward(shape, cout, k, stride, bias):
    from model.cpu_kernels import Conv2d
    if cpu_kernels.conv_library_path() is None:
        pytest.skip(f"convolution kernel not built here: {cpu_kernels.status()}")
    cin = shape[1]
    cell = Conv2d(cin, cout, k, stride, pad_mode="pad", padding=k // 2, has_bias=bias)
    assert cell.use_kernel
    ref = nn.Conv2d(cin, cout, k, stride, pad_mode="pad", padding=k // 2, has_bias=bias)
    ref.weight.set_data(cell.weight.value())
    if bias:
        cell.bias.set_data(ms.Tensor(rand(cout, seed=19)))
        ref.bias.set_data(cell.bias.value())
    x = rand(*shape, seed=20)
    y_r = ref(ms.Tensor(x)).asnumpy()
    dy = rand(*y_r.shape, seed=21)
    y, dx, dparams = grads(cell, x, dy)
    _, dx_r, dparams_r = grads(ref, x, dy)
    assert y.shape == y_r.shape
    np.testing.assert_allclose(y, y_r, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-5, atol=2e-5)
    for a, b in zip(dparams, dparams_r):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_3x3_convolutions_of_32_channels_in_and_64_out_run_as_winograd_in_training():
    """A 3x3, stride-1 convolution from 32 input and 64 output channels on runs its forward and its
    weight gradient as Winograd convolutions (``model/csrc/winograd.h``), and its input gradient
    too when it has 64 input channels or more (the gradient is a convolution from the output's
    channels to the input's); the library counts them. Their numbers: the cases above."""
    from model.cpu_kernels import Conv2d
    if cpu_kernels.conv_library_path() is None:
        pytest.skip(f"convolution kernel not built here: {cpu_kernels.status()}")
    lib = ctypes.CDLL(cpu_kernels.conv_library_path())
    lib.WinogradConvolutionsRun.restype = ctypes.c_int64
    # (in, out, stride) -> Winograd convolutions in one forward and backward: forward, input gradient,
    # weight gradient
    for cin, cout, stride, winograd in ((64, 64, 1, 3), (32, 64, 1, 2), (64, 64, 2, 0), (16, 64, 1, 0)):
        cell = Conv2d(cin, cout, 3, stride, pad_mode="pad", padding=1, has_bias=False)

        def loss(t):
            return cell(t).sum()
        before = lib.WinogradConvolutionsRun()
        step = ms.value_and_grad(loss, grad_position=0, weights=cell.trainable_params())
        value, _ = ms.jit(step)(ms.Tensor(rand(2, cin, 8, 8, seed=22)))
        value.asnumpy()
        assert lib.WinogradConvolutionsRun() - before == winograd, (cin, cout, stride)


def test_conv_other_cases_stay_on_mindspore():
    from model.cpu_kernels import Conv2d
    assert not Conv2d(8, 8, 3, pad_mode="pad", padding=1, group=8).use_kernel   # depthwise
    assert not Conv2d(8, 8, 3, pad_mode="same").use_kernel
    assert not Conv2d(8, 8, 3, pad_mode="pad", padding=2, dilation=2).use_kernel


def test_max_pool_geometries_sharing_an_input_shape_keep_their_own_output_shape():
    x = ms.Tensor(rand(2, 3, 8, 8, seed=22))
    a = MaxPool2d(3, 2, "pad", 1)(x)
    b = MaxPool2d(3, 1, "pad", 1)(x)
    assert a.shape == (2, 3, 4, 4) and b.shape == (2, 3, 8, 8)


def test_without_onednn_headers_only_the_convolutions_stay_on_mindspore(tmp_path):
    code = ("import importlib.util\n"
            "find = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'torch' else find(name, *a)\n"
            "import numpy as np, mindspore as ms\n"
            "from model import cpu_kernels, create_model\n"
            "net = cpu_kernels.apply_cpu_kernels(create_model('convmlp_s', num_classes=10))\n"
            "print('status', cpu_kernels.status())\n"
            "print('kernels', isinstance(net.norm, cpu_kernels.LayerNorm),\n"
            "      isinstance(net.tokenizer.block[0], cpu_kernels.Conv2d))\n"
            "print('fused', type(cpu_kernels.fuse_for_inference(net)).__name__)\n"
            "print('shape', net(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32))).shape)\n")
    proc = _run(code, CONVMLP_DNNL_INCLUDE=str(tmp_path), CONVMLP_KERNEL_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stdout
    assert "convolutions: MindSpore's (no oneDNN 3.x headers" in proc.stdout, proc.stdout
    assert "kernels True False" in proc.stdout and "fused ConvMLP" in proc.stdout and "shape (1, 10)" in proc.stdout


# ------------------------------------------------------------------------------------------------
# oneDNN's ISA: capped at AVX2 only where MindSpore's own convolutions run (src/platform/cpu.py)

ISA_PROBE = """
import ctypes, json, os, sys
import numpy as np, torch, mindspore as ms
from src.platform.cpu import onednn_isa, uses_only_conv_kernel
from src.platform.device import configure_runtime
from model import cpu_kernels
from model.cpu_kernels import Conv2d
own = sys.argv[1] == "own"
configure_runtime(mode="graph", device_target="CPU", own_convolutions=own)
lib = cpu_kernels.mindspore_onednn_library()
out = {"note": onednn_isa(), "effective": ctypes.CDLL(lib).dnnl_get_effective_cpu_isa(),
       "env": os.environ.get("ONEDNN_MAX_CPU_ISA"), "only_kernel": uses_only_conv_kernel(), "diff": 0.0}
rng = np.random.RandomState(0)
for shape, cout, k, stride in [((2, 16, 20, 20), 32, 3, 1), ((2, 3, 33, 35), 8, 3, 2), ((2, 16, 8, 8), 24, 1, 1)]:
    cell = Conv2d(shape[1], cout, k, stride, pad_mode="pad", padding=k // 2, has_bias=False)
    assert cell.use_kernel
    x = rng.standard_normal(shape).astype(np.float32)
    y = cell(ms.Tensor(x)).asnumpy()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    weight = ms.Tensor(dy)

    def loss(t):
        return (cell(t) * weight).sum()
    dx, dw = ms.jit(ms.grad(loss, grad_position=0, weights=cell.trainable_params()))(ms.Tensor(x))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(cell.weight.asnumpy(), dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=k // 2)
    (yt * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    for a, b in ((y, yt), (dx.asnumpy(), xt.grad), (dw[0].asnumpy(), wt.grad)):
        b = b.detach().numpy()
        out["diff"] = max(out["diff"], float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12)))
print("RESULT", json.dumps(out))
"""


def _isa_probe(mode, folder):
    script = folder / "isa_probe.py"      # a file: MindSpore compiles jit functions from their source
    script.write_text(f"import sys\nsys.path.insert(0, {REPO!r})\n" + ISA_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    proc = subprocess.run([sys.executable, str(script), mode], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:]
    import json
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.skipif(not cpu_kernels.conv_library_path(), reason="convolution kernel not built here")
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="the ISA cap is for x86 CPUs")
def test_onednn_is_capped_at_avx2_only_for_mindspores_own_convolutions_and_both_agree(tmp_path):
    """MindSpore's own convolutions need oneDNN capped at AVX2 (plain NCHW memory gets a scalar
    reference kernel on AVX-512 otherwise); when every convolution runs the C++ kernel the cap
    is left off. The cap goes through oneDNN's API, never the environment that child processes
    inherit, and the convolution kernel gives float64-exact-to-float32 results either way (plain
    layouts under the cap, oneDNN's blocked ones where the plain ones would be a reference kernel)."""
    capped, free = _isa_probe("own", tmp_path), _isa_probe("kernel", tmp_path)
    assert capped["note"] == "AVX2" and capped["effective"] <= 0x7, capped
    assert free["note"].startswith("not capped") and free["effective"] >= capped["effective"], free
    assert capped["env"] is None and free["env"] is None
    assert capped["only_kernel"] and free["only_kernel"]
    assert capped["diff"] < 1e-5 and free["diff"] < 1e-5, (capped["diff"], free["diff"])


def test_settings_that_run_mindspores_own_convolutions_keep_the_cap():
    from src.platform.cpu import uses_only_conv_kernel
    assert not uses_only_conv_kernel(cpu_kernels_on=False)
    assert not uses_only_conv_kernel(amp_level="O2")          # float16 convolutions are MindSpore's
    assert not uses_only_conv_kernel(device_target="GPU")


# ------------------------------------------------------------------------------------------------
# Threads

#: Calls kernels of the library at sys.argv[1] through ctypes (its MindSpore calling convention:
#: inputs then outputs) on fixed inputs large enough to be split over the worker pool, and saves
#: every output to sys.argv[2]: the calls follow.
_CALLS = r'''
import ctypes, sys
import numpy as np
lib = ctypes.CDLL(sys.argv[1])
rng = np.random.default_rng(0)
out = {}

def call(name, *arrays):
    n = len(arrays)
    shapes = [(ctypes.c_int64 * max(a.ndim, 1))(*a.shape) for a in arrays]
    status = getattr(lib, name)(n, (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays]),
                                (ctypes.c_int * n)(*[a.ndim for a in arrays]),
                                (ctypes.POINTER(ctypes.c_int64) * n)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64))
                                                                      for s in shapes]), None, None, None)
    assert status == 0, name
    call.count += 1
    for i, a in enumerate(arrays):
        out[f"{call.count}:{name}:{i}"] = a.copy()


call.count = 0

def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)
'''

#: every kernel of the main library
_EVERY_KERNEL = _CALLS + r'''
x, dy = f32(16, 16, 16, 96), f32(16, 16, 16, 96)
g, b, eps = f32(96), f32(96), np.array([1e-5], np.float32)
y, mean, rstd = np.empty_like(x), np.empty(x.shape[:-1], np.float32), np.empty(x.shape[:-1], np.float32)
call("LayerNormForward", x, g, b, eps, y, mean, rstd)
call("LayerNormBackward", dy, x, g, mean, rstd, np.empty_like(x), np.empty_like(g), np.empty_like(g))
call("GeluForward", x, np.empty_like(x))
call("GeluBackward", dy, x, np.empty_like(x))
odd = f32(3001, 37)   # an element count that is not a multiple of a vector
call("GeluForward", odd, np.empty_like(odd))
call("GeluBackward", odd[::-1].copy(), odd, np.empty_like(odd))
call("BiasAddForward", x, b, np.empty_like(x))
call("BiasAddBackward", dy, np.empty_like(b))
call("BiasGeluForward", x, b, np.empty_like(x))
call("BiasGeluBackward", dy, x, b, np.empty_like(x), np.empty_like(b))
call("ScaleSamples", x, f32(16), np.empty_like(x))
w = f32(96, 1, 3, 3)
call("DepthwiseConvForward", x, w, np.empty_like(x))
call("DepthwiseConvBackwardInput", dy, w, np.empty_like(x))
call("DepthwiseConvBackwardWeight", dy, x, w, np.empty_like(w))
xc, dyc, gc, bc = f32(16, 48, 20, 20), f32(16, 48, 20, 20), f32(48), f32(48)
yc, mc, rc, vc = np.empty_like(xc), np.empty_like(gc), np.empty_like(gc), np.empty_like(gc)
call("BatchNormReluForward", xc, gc, bc, eps, yc, mc, rc, vc)
call("BatchNormReluBackward", dyc, yc, xc, gc, mc, rc, np.empty_like(xc), np.empty_like(gc), np.empty_like(gc))
call("BatchNormReluInference", xc, gc, bc, mc, np.abs(vc) + 0.5, eps, np.empty_like(xc))
pooled, arg = np.empty((16, 48, 10, 10), np.float32), np.empty((16, 48, 10, 10), np.int32)
call("MaxPoolForward", np.maximum(xc, 0), np.array([3, 2, 1], np.int32), pooled, arg)
call("MaxPoolBackward", f32(16, 48, 10, 10), arg, xc, np.empty_like(xc))
np.savez(sys.argv[2], **out)
'''

#: the convolution library's Winograd convolutions (training's forward, input and weight gradients),
#: on a map whose tiles fill several chunks
_WINOGRAD = _CALLS + r'''
x, w, cfg = f32(8, 64, 17, 15), f32(96, 64, 3, 3) * 0.05, np.array([1, 1], np.int32)
call("ConvForward", x, w, cfg, np.empty((8, 96, 17, 15), np.float32))
dy = f32(8, 96, 17, 15)
call("ConvBackwardData", dy, w, x, cfg, np.empty_like(x))
call("ConvBackwardWeights", dy, x, w, cfg, np.empty_like(w))
assert lib.WinogradConvolutionsRun() == 3
np.savez(sys.argv[2], **out)
'''


def _outputs_with_threads(script, library, tmp_path):
    """``{threads: {call:name:argument -> array}}`` of `script` run on `library` with 1 and 3
    worker threads."""
    results = {}
    for threads in ("1", "3"):
        path = tmp_path / f"threads{threads}.npz"
        proc = subprocess.run([sys.executable, "-c", script, library, str(path)], cwd=REPO, text=True,
                              env={**os.environ, "CONVMLP_CONV_THREADS": threads}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=300)
        assert proc.returncode == 0, proc.stdout
        with np.load(path) as saved:
            results[threads] = dict(saved)
    return results


def test_every_kernel_gives_the_same_bits_whatever_the_number_of_threads(tmp_path):
    """The kernels split their work over a pool of $CONVMLP_CONV_THREADS threads (default: the
    cores); every output, the reductions over rows and images included (LayerNorm's and the biases'
    parameter gradients, BatchNorm's statistics, the depthwise weight gradient), is the same bit for
    bit with one thread and with three."""
    results = _outputs_with_threads(_EVERY_KERNEL, cpu_kernels.build.library_path(), tmp_path)
    assert len(results["1"]) == 83 and results["1"].keys() == results["3"].keys()
    for key, one in results["1"].items():
        np.testing.assert_array_equal(results["3"][key], one, err_msg=key)


def test_winograd_convolutions_give_the_same_bits_whatever_the_number_of_threads(tmp_path):
    """The Winograd convolutions split their tiles into chunks (and, for the weight gradient's sum,
    slabs) that depend on the shapes alone, each chunk's product on one thread: the forward, the
    input and the weight gradients are the same bit for bit with one thread and with three."""
    if cpu_kernels.conv_library_path() is None:
        pytest.skip(f"convolution kernel not built here: {cpu_kernels.status()}")
    results = _outputs_with_threads(_WINOGRAD, cpu_kernels.conv_library_path(), tmp_path)
    assert len(results["1"]) == 14 and results["1"].keys() == results["3"].keys()
    for key, one in results["1"].items():
        np.testing.assert_array_equal(results["3"][key], one, err_msg=key)
