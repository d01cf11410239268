"""AdamW as one C++ kernel over all parameters (``src/train/csrc/adamw.cc``, ``src/train/optim.py``).

The kernel is checked against a float64 reference of torch.optim.AdamW's update and against
torch.optim.AdamW itself (float32) on many tensors of different sizes (the joint element range is
split over the cores across tensor boundaries), against MindSpore's per-tensor ``AdamWeightDecay``
path of the same optimiser (float32 rounding), and in a compiled training step (parameters and
moments updated in place, under the names that checkpoints hold).
"""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn

from model import cpu_kernels
from src.train.optim import AdamW, param_groups_weight_decay

pytestmark = pytest.mark.skipif(not cpu_kernels.active(), reason=f"CPU kernels off here: {cpu_kernels.status()}")

SHAPES = [(64, 3, 3, 3), (64,), (1,), (300, 129), (7, 5), (129,), (1000, 512), (5,)]
LRS = np.array([1e-3, 3e-3, 2e-3, 1e-4, 5e-4], np.float32)
BETAS, EPS, WD = (0.9, 0.999), 1e-8, 0.05


class Params(nn.Cell):
    def __init__(self, values):
        super().__init__()
        self.params = ms.ParameterTuple([ms.Parameter(ms.Tensor(v), name=f"p{i}") for i, v in enumerate(values)])


def problem(seed=0):
    rs = np.random.RandomState(seed)
    values = [rs.randn(*s).astype(np.float32) for s in SHAPES]
    grads = [[(rs.randn(*s) * 10.0 ** rs.randint(-4, 2)).astype(np.float32) for s in SHAPES] for _ in LRS]
    return values, grads


def run_mindspore(values, grads, all_at_once):
    cell = Params(values)
    opt = AdamW(param_groups_weight_decay(cell.trainable_params(), WD), ms.Tensor(LRS), BETAS[0], BETAS[1], EPS,
                weight_decay=WD, cpu_kernel=all_at_once)
    assert opt.all_at_once == all_at_once
    for g in grads:
        opt(tuple(ms.Tensor(a) for a in g))
    return [p.asnumpy() for p in cell.params], opt


def float64_reference(values, grads):
    """torch.optim.AdamW's update in float64."""
    p = [v.astype(np.float64) for v in values]
    m = [np.zeros_like(v) for v in p]
    v2 = [np.zeros_like(v) for v in p]
    for t, (lr, g) in enumerate(zip(LRS.astype(np.float64), grads), start=1):
        for k, gk in enumerate(g):
            wd = WD if values[k].ndim > 1 else 0.0
            gk = gk.astype(np.float64)
            p[k] = p[k] * (1 - lr * wd)
            m[k] = BETAS[0] * m[k] + (1 - BETAS[0]) * gk
            v2[k] = BETAS[1] * v2[k] + (1 - BETAS[1]) * gk * gk
            denom = np.sqrt(v2[k]) / np.sqrt(1 - BETAS[1] ** t) + EPS
            p[k] = p[k] - lr / (1 - BETAS[0] ** t) * m[k] / denom
    return p


def run_torch(values, grads):
    params = [torch.nn.Parameter(torch.tensor(v)) for v in values]
    opt = torch.optim.AdamW([{"params": [q for q in params if q.ndim > 1], "weight_decay": WD},
                             {"params": [q for q in params if q.ndim <= 1], "weight_decay": 0.0}],
                            lr=1.0, betas=BETAS, eps=EPS)
    for lr, g in zip(LRS, grads):
        for group in opt.param_groups:
            group["lr"] = float(lr)
        for q, gk in zip(params, g):
            q.grad = torch.tensor(gk)
        opt.step()
    return [q.detach().numpy() for q in params]


def test_all_at_once_matches_float64_and_torch_adamw():
    values, grads = problem()
    got, opt = run_mindspore(values, grads, all_at_once=True)
    want64 = float64_reference(values, grads)
    want32 = run_torch(values, grads)
    for k, (a, b, c) in enumerate(zip(got, want64, want32)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7, err_msg=f"tensor {k} vs float64")
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7, err_msg=f"tensor {k} vs torch")
    assert int(opt.global_step.asnumpy()[0]) == len(LRS)
    moments = [m.asnumpy() for m in opt.moments1]
    assert [m.name for m in opt.moments1] == [f"adam_m.p{k}" for k in range(len(SHAPES))]
    assert all(np.abs(m).max() > 0 for m in moments)


def test_all_at_once_equals_the_per_tensor_path_within_float32_rounding():
    values, grads = problem(seed=1)
    fused, _ = run_mindspore(values, grads, all_at_once=True)
    per_tensor, _ = run_mindspore(values, grads, all_at_once=False)
    for k, (a, b) in enumerate(zip(fused, per_tensor)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7, err_msg=f"tensor {k}")


def test_training_step_updates_parameters_and_moments_in_place():
    from model import ConvMLP
    from src.train.step import build_train_step
    ms.set_seed(0)
    net = cpu_kernels.apply_cpu_kernels(ConvMLP(blocks=[1, 1, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2],
                                                channels=16, n_conv_blocks=1, num_classes=10, drop_path_rate=0.0))
    opt = AdamW(param_groups_weight_decay(net.trainable_params(), WD), learning_rate=1e-3, weight_decay=WD)
    step = build_train_step(net, opt)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    x = ms.Tensor(np.random.RandomState(2).randn(4, 3, 32, 32).astype(np.float32))
    target = ms.Tensor(np.eye(10, dtype=np.float32)[[1, 2, 3, 4]])
    losses = [float(step(x, target).asnumpy()) for _ in range(3)]
    assert losses[2] < losses[0]
    unchanged = [p.name for p in net.trainable_params() if np.array_equal(p.asnumpy(), before[p.name])]
    assert unchanged == []
    assert all(np.abs(m.asnumpy()).max() > 0 for m in opt.moments1)
    assert int(opt.global_step.asnumpy()[0]) == 3
