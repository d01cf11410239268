# NOTE for the perf engineer (helper-3): the lead overwrote your uncommitted draft of this file by
# accident (sorry). Please re-apply your speed-ups onto THIS interface, which train.py uses:
# build_train_step(net, optimizer, loss_fn=None, loss_scale_type="none", loss_scale=1.0) -> Cell;
# AdamW + lr schedule live in optim.py. Remove this note when done.
"""The compiled training step: loss, mixed precision, loss scaling and the optimiser update.

``build_train_step`` returns one MindSpore ``Cell`` that runs forward, soft-target cross-entropy,
backward, (data-parallel gradient mean) and the AdamW update, compiled as a single graph in GRAPH
mode. ``benchmarks/bench.py`` times exactly this cell.

Loss scaling (``loss_scale_type``):
* ``none``: plain gradients.
* ``fixed``: the loss is multiplied by ``loss_scale`` before backward and the optimiser divides the
  gradients by the same value, so the update sees unscaled gradients. No overflow check, so no
  step is ever dropped (the only fixed mode MindSpore supports on the CPU).
* ``dynamic``: ``nn.TrainOneStepWithLossScaleCell`` with a ``DynamicLossScaleUpdateCell``: overflow
  steps are skipped and the scale adapts (Ascend/GPU only: MindSpore refuses it on the CPU).
"""
import mindspore as ms
from mindspore import nn, ops

__all__ = ["SoftTargetCrossEntropy", "NetWithLoss", "build_train_step", "apply_amp", "AMP_LEVELS",
           "LOSS_SCALE_TYPES"]

AMP_LEVELS = ("O0", "O1", "O2", "O3")
LOSS_SCALE_TYPES = ("none", "fixed", "dynamic")


class SoftTargetCrossEntropy(nn.Cell):
    """Cross-entropy against soft targets (mixup/cutmix/label smoothing), computed in float32."""

    def construct(self, logits, target):
        logits = ops.cast(logits, ms.float32)
        target = ops.cast(target, ms.float32)
        loss = ops.reduce_sum(-target * ops.log_softmax(logits, -1), -1)
        return loss.mean()


class NetWithLoss(nn.Cell):
    """``net(images)`` -> logits (cast to float32) -> loss against soft targets."""

    def __init__(self, net, loss_fn=None):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn or SoftTargetCrossEntropy()

    def construct(self, images, target):
        return self.loss_fn(self.net(images), target)


def apply_amp(net: nn.Cell, amp_level: str) -> nn.Cell:
    """Mixed precision on ``net`` in place: O0 float32; O1 float16 for the white-listed ops
    (conv, matmul); O2 float16 except norm layers; O3 float16 except norm layers (norms are kept
    in float32 at every level, as the official recipe's ``torch.cuda.amp`` does)."""
    if amp_level == "O0":
        return net
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {AMP_LEVELS}, got {amp_level!r}")
    net = ms.amp.auto_mixed_precision(net, amp_level, dtype=ms.float16)
    if amp_level == "O3":
        for _, cell in net.cells_and_names():
            if isinstance(cell, (nn.LayerNorm, nn.BatchNorm2d)):
                cell.to_float(ms.float32)
    return net


def build_train_step(net: nn.Cell, optimizer: nn.Optimizer, loss_fn=None,
                     loss_scale_type: str = "none", loss_scale: float = 1.0) -> nn.Cell:
    """One cell ``step(images, soft_targets) -> loss`` (and, for dynamic scaling, ``(loss,
    overflow, scale)``). ``optimizer`` must be built with ``loss_scale=loss_scale`` for the
    ``fixed`` type (see module docstring)."""
    with_loss = NetWithLoss(net, loss_fn)
    if loss_scale_type == "dynamic":
        update = nn.DynamicLossScaleUpdateCell(loss_scale_value=loss_scale, scale_factor=2,
                                               scale_window=1000)
        step = nn.TrainOneStepWithLossScaleCell(with_loss, optimizer, scale_sense=update)
    else:
        sens = float(loss_scale) if loss_scale_type == "fixed" else 1.0
        step = nn.TrainOneStepCell(with_loss, optimizer, sens=sens)
    step.set_train(True)
    return step
