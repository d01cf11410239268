"""Model EMA (timm's ``ModelEmaV2``) in train.py's compiled training step, against PyTorch.

The trajectory is tests/test_trajectory.py's: 20 AdamW steps of train.py's training cell (GRAPH mode,
drop path 0, BatchNorm in training mode) on 4 fixed random batches of 8 images at 32 px with
smoothed one-hot targets, a warm-up / cosine / cool-down schedule, here with the EMA update of
``src.train.ema`` inside the step (decay 0.9, so that the average moves far from the initial weights
in 20 steps: the initial weights keep 0.9^20 = 12 %).

* ``test_ema_equals_timm_update_of_the_same_weights``: the PyTorch update
  ``ema_v.copy_(ema_v * decay + (1. - decay) * model_v)`` of timm's ModelEmaV2, applied in float32
  to MindSpore's own weights after each step (parameters and BatchNorm moving statistics), gives
  MindSpore's averages. Measured: max |difference| 0 (bit-identical); asserted ``atol=1e-7,
  rtol=1e-6``. It also shows the update reads the weights *after* the step's optimiser
  update (reading them before misses by orders of magnitude more).
* ``test_ema_equals_pytorch_training_with_model_ema``: PyTorch's reference model trained with
  ``torch.optim.AdamW`` and the same EMA, from the same initial weights: the averages agree as the
  weights do in tests/test_trajectory.py (the Conv-MLP stages and head to float32 precision; the
  tokenizer and conv stage behind ReLU/max-pool kinks within ``KINK_ATOL``). Measured max
  |difference| 6.0e-7 on these batches.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mindspore as ms  # noqa: E402

from model import ConvMLP  # noqa: E402
from model.torch_convmlp import TorchConvMLP  # noqa: E402
from src.convert.names import map_name  # noqa: E402
from src.data.mixing import BatchMixer  # noqa: E402
from src.platform.device import configure_runtime  # noqa: E402
from src.checkpoint.checkpoint import EMA_PREFIX, Checkpoint, CheckpointMeta  # noqa: E402
from src.train.ema import ModelEma, TrainStepWithEma, ema_network  # noqa: E402
from src.train.optim import AdamW, cosine_schedule, param_groups_weight_decay  # noqa: E402
from src.train.step import build_train_step  # noqa: E402
from src.platform.errors import CheckpointError  # noqa: E402

TOPOLOGY = dict(blocks=(1, 1, 1), dims=(32, 64, 128), mlp_ratios=(2, 2, 2), channels=16, n_conv_blocks=1)
NUM_CLASSES, IMAGE_SIZE, BATCH, STEPS_PER_EPOCH, EPOCHS = 10, 32, 8, 4, 5
STEPS = STEPS_PER_EPOCH * EPOCHS
DECAY = 0.9
EXACT_ATOL, EXACT_RTOL = 1e-7, 1e-6       # the same update of the same weights
ATOL, RTOL = 1e-5, 1e-5                   # two trainings, no kink behind the tensor
KINK_ATOL, KINK_RTOL = 3e-4, 1e-4         # behind a ReLU / max-pool kink (tests/test_trajectory.py)
KINKED = ("tokenizer.", "conv_stages.")


class _BatchInfo:
    def __init__(self, batch):
        self.batch = batch

    def get_epoch_num(self):
        return 0

    def get_batch_num(self):
        return self.batch


def fixed_batches():
    rs = np.random.RandomState(0)
    mixer = BatchMixer(NUM_CLASSES, smoothing=0.1, mixup=0.0, cutmix=0.0, reprob=0.0)
    return [mixer(list(rs.standard_normal((BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)),
                  list(rs.randint(0, NUM_CLASSES, BATCH)), _BatchInfo(i)) for i in range(STEPS_PER_EPOCH)]


def schedule():
    return cosine_schedule(1e-3, 1e-5, 1e-5, 1, EPOCHS, STEPS_PER_EPOCH, 1)


def params_of(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


@pytest.fixture(scope="module")
def mindspore_run():
    """train.py's training cell with the EMA update: initial weights, the weights after every step,
    the final averages (under the model's names) and the step cell."""
    configure_runtime(mode="graph", device_target="CPU")
    ms.set_seed(0)
    build = lambda: ConvMLP(num_classes=NUM_CLASSES, drop_path_rate=0.0, **TOPOLOGY)  # noqa: E731
    net = build()
    ema_net = ema_network(net, build)
    opt = AdamW(param_groups_weight_decay(net.trainable_params(), 0.05), ms.Tensor(schedule()), weight_decay=0.05)
    step = TrainStepWithEma(build_train_step(net, opt), ModelEma(net, ema_net, DECAY))
    initial, after, batches = params_of(net), [], fixed_batches()
    for i in range(STEPS):
        x, target = batches[i % STEPS_PER_EPOCH]
        step(ms.Tensor(x), ms.Tensor(target))
        after.append(params_of(net))
    ema = {name[len(EMA_PREFIX):]: value for name, value in params_of(ema_net).items()}
    return initial, after, ema, step


def torch_ema_update(ema, model_state):
    """timm ModelEmaV2._update: ``ema_v.copy_(ema_v * decay + (1. - decay) * model_v)``."""
    with torch.no_grad():
        for key, value in model_state.items():
            ema[key].copy_(ema[key] * DECAY + (1. - DECAY) * value)


def test_the_step_cell_holds_an_average_of_every_parameter_and_statistic(mindspore_run):
    initial, _, ema, step = mindspore_run
    assert sorted(ema) == sorted(initial)
    assert any(k.endswith("moving_mean") for k in ema) and any(k.endswith("moving_variance") for k in ema)
    names = {p.name for p in step.get_parameters()}
    assert {EMA_PREFIX + k for k in initial} <= names       # saved with the training state


def test_ema_equals_timm_update_of_the_same_weights(mindspore_run):
    initial, after, ema, _ = mindspore_run
    ref = {k: torch.from_numpy(v.copy()) for k, v in initial.items()}
    stale = {k: torch.from_numpy(v.copy()) for k, v in initial.items()}   # reading before the update
    for i, weights in enumerate(after):
        torch_ema_update(ref, {k: torch.from_numpy(v) for k, v in weights.items()})
        torch_ema_update(stale, {k: torch.from_numpy(v) for k, v in (after[i - 1] if i else initial).items()})
    worst = max(float(np.abs(ema[k] - ref[k].numpy()).max()) for k in ema)
    moved = min(float(np.abs(ref[k].numpy() - initial[k]).max()) for k in ema if "moving_var" not in k)
    stale_worst = max(float(np.abs(ema[k] - stale[k].numpy()).max()) for k in ema)
    print(f"\nEMA vs timm's update of the same weights: max |diff| {worst:.2e}; the weights before each "
          f"update would give {stale_worst:.2e}")
    for k in ema:
        np.testing.assert_allclose(ema[k], ref[k].numpy(), atol=EXACT_ATOL, rtol=EXACT_RTOL, err_msg=k)
    assert moved > 1e-3 and stale_worst > 100 * EXACT_ATOL


def test_ema_equals_pytorch_training_with_model_ema(mindspore_run):
    initial, _, ema, _ = mindspore_run
    model = TorchConvMLP(num_classes=NUM_CLASSES, drop_path_rate=0.0, **TOPOLOGY)
    names = {k: map_name(k) for k in model.state_dict() if map_name(k) is not None}
    with torch.no_grad():
        for key, name in names.items():
            model.state_dict()[key].copy_(torch.from_numpy(initial[name]))
    ema_ref = {key: model.state_dict()[key].detach().clone() for key in names}
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.05},
                             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                            lr=1e-5, betas=(0.9, 0.999), eps=1e-8)
    lrs, batches = schedule(), fixed_batches()
    model.train()
    for i in range(STEPS):
        x, target = batches[i % STEPS_PER_EPOCH]
        for group in opt.param_groups:
            group["lr"] = float(lrs[i])
        opt.zero_grad()
        loss = (-torch.from_numpy(target) * torch.log_softmax(model(torch.from_numpy(x)), -1)).sum(-1).mean()
        loss.backward()
        opt.step()
        torch_ema_update(ema_ref, {key: model.state_dict()[key] for key in names})
    worst = 0.0
    for key, name in names.items():
        want, got = ema_ref[key].numpy(), ema[name]
        worst = max(worst, float(np.abs(got - want).max()))
        atol, rtol = (KINK_ATOL, KINK_RTOL) if name.startswith(KINKED) else (ATOL, RTOL)
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=name)
    print(f"\nEMA vs PyTorch training with the same EMA: max |diff| {worst:.2e}")


def test_ema_weights_of_a_checkpoint_are_named_as_the_model():
    params = {"head.weight": 1, "ema.head.weight": 2, "arch": "convmlp_s"}
    with_ema = Checkpoint("x.ckpt", params, CheckpointMeta(arch="convmlp_s"), checksum_verified=True)
    assert with_ema.has_ema and with_ema.model_entries(use_ema=True) == {"head.weight": 2, "arch": "convmlp_s"}
    assert with_ema.model_entries() == params
    without = Checkpoint("y.ckpt", {"head.weight": 1}, CheckpointMeta(), checksum_verified=True)
    with pytest.raises(CheckpointError, match="'y.ckpt' holds no EMA weights"):
        without.model_entries(use_ema=True)
