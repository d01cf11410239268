"""The compiled training step: ``build_train_step`` returns one MindSpore ``Cell`` that runs forward,
soft-target cross-entropy, backward, (data-parallel gradient mean) and the AdamW update, compiled as
a single graph in GRAPH mode (``benchmarks/bench.py`` times exactly this cell). Stochastic depth's
factors are an input of the step (:class:`DropPathDraws`, drawn on the host from the seed, rank,
epoch and step), so no random state lives in the graph. Loss scaling ``none``, ``fixed`` (the
optimiser divides by the same value; no step is dropped) or ``dynamic`` (MindSpore's
``DynamicLossScaleUpdateCell``; Ascend/GPU only): docs/training.md, "Precision (AMP)".
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from model.drop_path import drop_path_factors

from ..config.schema import AMP_LEVELS

__all__ = ["SoftTargetCrossEntropy", "NetWithLoss", "DropPathDraws", "build_train_step", "apply_amp"]

#: First entropy word of the drop-path draws, so that their stream is not the data pipeline's.
DROP_PATH_STREAM = 0x44504154


class SoftTargetCrossEntropy(nn.Cell):
    """Cross-entropy against soft targets (mixup/cutmix/label smoothing), computed in float32."""

    def construct(self, logits, target):
        logits = ops.cast(logits, ms.float32)
        target = ops.cast(target, ms.float32)
        loss = ops.reduce_sum(-target * ops.log_softmax(logits, -1), -1)
        return loss.mean()


class NetWithLoss(nn.Cell):
    """``net(images[, drop_scales])`` -> logits (cast to float32) -> loss against soft targets."""

    def __init__(self, net, loss_fn=None):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn or SoftTargetCrossEntropy()

    def construct(self, images, target, drop_scales=None):
        if drop_scales is None:
            return self.loss_fn(self.net(images), target)
        return self.loss_fn(self.net(images, drop_scales), target)


class DropPathDraws:
    """The drop-path factors of each training step, for a network with ``drop_path_rates`` (one
    per row, :class:`model.ConvMLP`): ``draws(epoch, step)`` -> the extra inputs of the step cell,
    ``()`` when no drop path is active, else one (rows, batch_size) float32 tensor
    (:func:`model.drop_path.drop_path_factors`) drawn from a generator seeded with (seed, rank,
    0-based epoch, 0-based step in the epoch) alone: the same in every run of the same command, in
    a run resumed at any step, with or without a compiled-graph cache hit."""

    def __init__(self, net, batch_size: int, seed: int, rank: int = 0):
        self.rates = tuple(getattr(net, "drop_path_rates", ()))
        self.batch_size, self.seed, self.rank = batch_size, seed, rank

    def __call__(self, epoch: int, step: int) -> tuple:
        if not self.rates:
            return ()
        rng = np.random.default_rng([DROP_PATH_STREAM, self.seed, self.rank, epoch, step])
        return (ms.Tensor(drop_path_factors(self.rates, self.batch_size, rng)),)


def apply_amp(net: nn.Cell, amp_level: str) -> nn.Cell:
    """Mixed precision on ``net`` in place, with ``Cell.to_float`` (MindSpore's own
    ``auto_mixed_precision`` rewrites O1 networks through generated source files in the working
    directory, so it is not used):

    * O0: float32.
    * O1: float16 for the compute-bound cells (Conv2d, Dense); everything else float32.
    * O2: float16 everywhere except norm layers and the classifier head.
    * O3: float16 everywhere except norm layers.

    Norm layers (BatchNorm, LayerNorm) stay float32 at every level, as with the official recipe's
    ``torch.cuda.amp``; the loss casts logits to float32. Evaluation then runs the network itself
    (the fused evaluation cell is float32 only, see ``src.checkpoint.load.inference_network``).
    """
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {AMP_LEVELS}, got {amp_level!r}")
    if amp_level == "O0":
        return net
    norms = (nn.LayerNorm, nn.BatchNorm2d)
    if amp_level == "O1":
        for _, cell in net.cells_and_names():
            if isinstance(cell, (nn.Conv2d, nn.Dense)):
                cell.to_float(ms.float16)
            elif isinstance(cell, norms):
                cell.to_float(ms.float32)
        return net
    net.to_float(ms.float16)
    for name, cell in net.cells_and_names():
        if isinstance(cell, norms) or (amp_level == "O2" and name == "head"):
            cell.to_float(ms.float32)
    return net


def build_train_step(net: nn.Cell, optimizer: nn.Optimizer, loss_fn=None,
                     loss_scale_type: str = "none", loss_scale: float = 1.0) -> nn.Cell:
    """One cell ``step(images, soft_targets[, drop_scales]) -> loss`` (and, for dynamic scaling,
    ``(loss, overflow, scale)``). ``optimizer`` must be built with ``loss_scale=loss_scale`` for the
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
