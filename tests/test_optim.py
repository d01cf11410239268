"""The optimiser, the schedule and the compiled train step, checked against PyTorch's definitions."""
import re

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from src.train.optim import AdamW, cosine_schedule, describe_schedule, param_groups_weight_decay
from src.train.step import SoftTargetCrossEntropy, apply_amp, build_train_step

ms.set_context(mode=ms.GRAPH_MODE)


class _TwoParams(nn.Cell):
    def __init__(self, w, b):
        super().__init__()
        self.w = ms.Parameter(ms.Tensor(w), name="w")
        self.b = ms.Parameter(ms.Tensor(b), name="b")


@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
def test_adamw_equals_torch_adamw_with_decay_only_on_matrices(loss_scale):
    """Five updates with a per-step lr match ``torch.optim.AdamW`` (bias-corrected, decoupled
    decay on the 2-D weight, none on the bias); a loss scale given to the optimiser is undone."""
    torch = pytest.importorskip("torch")
    rs = np.random.RandomState(0)
    w0, b0 = rs.randn(4, 3).astype(np.float32), rs.randn(4).astype(np.float32)
    grads = [(rs.randn(4, 3).astype(np.float32), rs.randn(4).astype(np.float32)) for _ in range(5)]
    lrs = np.array([1e-2, 2e-2, 3e-2, 4e-2, 5e-2, 5e-2], np.float32)

    tw, tb = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(b0))
    topt = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.05},
                              {"params": [tb], "weight_decay": 0.0}], lr=1.0, eps=1e-8)
    for i, (gw, gb) in enumerate(grads):
        for g in topt.param_groups:
            g["lr"] = float(lrs[i])
        tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
        topt.step()

    cell = _TwoParams(w0, b0)
    opt = AdamW(param_groups_weight_decay(cell.trainable_params(), 0.05), ms.Tensor(lrs),
                weight_decay=0.05, loss_scale=loss_scale)
    for gw, gb in grads:
        opt((ms.Tensor(gw * loss_scale), ms.Tensor(gb * loss_scale)))

    np.testing.assert_allclose(cell.w.asnumpy(), tw.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(cell.b.asnumpy(), tb.detach().numpy(), atol=2e-6)
    assert int(opt.global_step.asnumpy()[0]) == 5


def test_weight_decay_groups_exclude_norms_biases_and_1d():
    from model import ConvMLP
    net = ConvMLP([1, 1, 1], [16, 32, 64], [2, 2, 2], channels=16, n_conv_blocks=1, num_classes=10)
    decay, no_decay, _ = param_groups_weight_decay(net.trainable_params(), 0.05)
    assert all(len(p.shape) > 1 for p in decay["params"])
    names = {p.name for p in no_decay["params"]}
    assert "norm.gamma" in names and "head.bias" in names and "tokenizer.block.1.beta" in names
    assert "head.weight" not in names and no_decay["weight_decay"] == 0.0


def test_cosine_schedule_warmup_peak_and_floor():
    lrs = cosine_schedule(3e-4, 1e-5, 1e-6, warmup_epochs=2, epochs=10, steps_per_epoch=5)
    assert len(lrs) == 51
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[10] == pytest.approx(3e-4)            # end of warm-up = peak
    assert np.all(np.diff(lrs[:11]) > 0)              # linear rise
    assert np.all(np.diff(lrs[10:]) <= 1e-12)         # then never increases
    assert lrs[50] == pytest.approx(1e-5)             # cosine floor at the last step


def test_cooldown_epochs_hold_min_lr_after_the_cosine():
    lrs = cosine_schedule(3e-4, 1e-5, 1e-6, warmup_epochs=1, epochs=6, steps_per_epoch=4, cooldown_epochs=2)
    assert lrs[4] == pytest.approx(3e-4)
    assert lrs[16] == pytest.approx(1e-5) and np.all(lrs[16:] == lrs[16])   # epochs 5-6 at min_lr
    short = cosine_schedule(3e-4, 1e-5, 1e-6, warmup_epochs=2, epochs=3, steps_per_epoch=4, cooldown_epochs=10)
    np.testing.assert_array_equal(short, cosine_schedule(3e-4, 1e-5, 1e-6, 2, 3, 4))  # no room: ignored


def test_lr_plan_in_words_for_the_recipe():
    text, warning = describe_schedule(60, 10, 10, lr=3e-4, min_lr=1e-5, warmup_lr=1e-6)
    assert text == ("lr plan (60 epochs): 10 warm-up epochs from 1e-06 to 3e-04, 40 cosine epochs to 1e-05, "
                    "10 cool-down epochs at 1e-05")
    assert warning is None
    assert describe_schedule(6, 1, 0, 5e-4, 1e-5, 1e-6) == (     # the demo's plan
        "lr plan (6 epochs): 1 warm-up epoch from 1e-06 to 5e-04, 5 cosine epochs to 1e-05, no cool-down", None)
    assert describe_schedule(50, 0, 0, 2.5e-4, 0.0, 1e-6)[0] == \
        "lr plan (50 epochs): no warm-up, 50 cosine epochs from 2.5e-04 to 0, no cool-down"


def test_lr_plan_warns_when_the_cool_down_is_over_a_third_of_the_run():
    text, warning = describe_schedule(25, 10, 10, 3e-4, 1e-5, 1e-6)
    assert text.endswith("10 warm-up epochs from 1e-06 to 3e-04, 5 cosine epochs to 1e-05, 10 cool-down epochs "
                         "at 1e-05")
    assert "the cool-down takes 10 of the 25 epochs (more than a third of the run)" in warning
    assert "--cooldown_epochs" in warning
    assert describe_schedule(30, 0, 10, 3e-4, 1e-5, 1e-6)[1] is None          # exactly a third: fine


def test_lr_plan_when_warm_up_and_cool_down_do_not_fit():
    # warm-up + cool-down >= epoch_size: the cool-down is dropped, the cosine runs to the end
    text, warning = describe_schedule(15, 10, 10, 3e-4, 1e-5, 1e-6)
    assert text == "lr plan (15 epochs): 10 warm-up epochs from 1e-06 to 3e-04, 5 cosine epochs to 1e-05, no cool-down"
    assert warning.startswith("warmup_epochs 10 + cooldown_epochs 10 >= epoch_size 15: no room for the cool-down, "
                              "so it is dropped") and "--cooldown_epochs 0" in warning
    # warm-up >= epoch_size: the ramp fills the whole run and the rate never decays
    text, warning = describe_schedule(5, 10, 10, 3e-4, 1e-5, 1e-6)
    assert text == "lr plan (5 epochs): warm-up from 1e-06 to 3e-04 over the whole run, no cosine decay, no cool-down"
    assert "never decays to 1e-05" in warning and "--warmup_epochs" in warning


@pytest.mark.parametrize("epochs,warmup,cooldown", [(60, 10, 10), (15, 10, 10), (20, 10, 10), (25, 10, 10),
                                                    (6, 1, 0), (50, 0, 0), (30, 0, 10), (3, 1, 1), (5, 10, 10),
                                                    (4, 0, 9)])
def test_lr_plan_says_what_cosine_schedule_does(epochs, warmup, cooldown):
    """The epochs the text names are those of the per-step array: the peak at the end of the
    warm-up, the cool-down = the steps held at min_lr."""
    spe = 4
    lrs = cosine_schedule(3e-4, 1e-5, 1e-6, warmup, epochs, spe, cooldown)
    text, _ = describe_schedule(epochs, warmup, cooldown, 3e-4, 1e-5, 1e-6)

    def count(phase):
        m = re.search(rf"(\d+) {phase} epoch", text)
        return int(m.group(1)) if m else 0
    n_warm = epochs if "over the whole run" in text else count("warm-up")
    n_cos, n_cool = count("cosine"), count("cool-down")
    assert n_warm + n_cos + n_cool == epochs
    assert int(np.argmax(lrs)) == n_warm * spe                               # peak = end of warm-up
    assert int(np.sum(lrs[:-1] == np.float32(1e-5))) == n_cool * spe          # held at min_lr


def test_soft_target_cross_entropy_equals_hard_label_cross_entropy_on_one_hot():
    rs = np.random.RandomState(1)
    logits = rs.randn(6, 5).astype(np.float32)
    y = rs.randint(0, 5, 6)
    loss = SoftTargetCrossEntropy()(ms.Tensor(logits), ms.Tensor(np.eye(5, dtype=np.float32)[y])).asnumpy()
    z = logits - logits.max(1, keepdims=True)
    ref = -(z[np.arange(6), y] - np.log(np.exp(z).sum(1))).mean()
    assert loss == pytest.approx(ref, rel=1e-5)


def _tiny_step(loss_scale_type, loss_scale, amp_level="O0"):
    from model import ConvMLP
    ms.set_seed(0)
    net = ConvMLP([1, 1, 1], [16, 32, 64], [2, 2, 2], channels=16, n_conv_blocks=1, num_classes=10,
                  drop_path_rate=0.0)
    net = apply_amp(net, amp_level)
    scale = loss_scale if loss_scale_type == "fixed" else 1.0
    opt = AdamW(param_groups_weight_decay(net.trainable_params(), 0.05),
                ms.Tensor(np.full(10, 1e-3, np.float32)), weight_decay=0.05, loss_scale=scale)
    return net, build_train_step(net, opt, loss_scale_type=loss_scale_type, loss_scale=loss_scale)


def test_fixed_loss_scale_gives_the_same_update_as_no_scaling():
    """The gradients never reach the optimiser scaled: 3 steps with a fixed scale of 1024 end
    with the same weights as 3 unscaled steps."""
    rs = np.random.RandomState(0)
    x = ms.Tensor(rs.randn(4, 3, 32, 32).astype(np.float32))
    y = ms.Tensor(np.eye(10, dtype=np.float32)[[1, 2, 3, 4]])
    results = []
    for kind, scale in (("none", 1.0), ("fixed", 1024.0)):
        net, step = _tiny_step(kind, scale)
        for _ in range(3):
            step(x, y)
        results.append({p.name: p.asnumpy() for p in net.trainable_params()})
    for name, w in results[0].items():
        np.testing.assert_allclose(results[1][name], w, atol=1e-5, err_msg=name)


def test_amp_keeps_norm_layers_in_float32_and_loss_finite():
    rs = np.random.RandomState(0)
    x = ms.Tensor(rs.randn(4, 3, 32, 32).astype(np.float32))
    y = ms.Tensor(np.eye(10, dtype=np.float32)[[1, 2, 3, 4]])
    for level in ("O1", "O2", "O3"):
        net, step = _tiny_step("fixed", 128.0, level)
        loss = float(step(x, y).asnumpy())
        assert np.isfinite(loss), level
        for _, cell in net.cells_and_names():
            if isinstance(cell, (nn.LayerNorm, nn.BatchNorm2d)):
                assert cell.gamma.dtype == ms.float32
