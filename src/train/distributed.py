"""Data-parallel training's collective steps: sums over the ranks, BatchNorm statistics averaged
at each epoch end, the check that every rank starts at the same step, and telling a failed
collective operation from any other error."""
from typing import Callable, Optional

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ..platform.errors import ClusterError

__all__ = ["AllReduceSum", "make_reduce_fn", "average_bn_statistics", "check_same_start",
           "is_communication_failure"]


class AllReduceSum(nn.Cell):
    """Sum a float64-safe vector of counts over all ranks (identity when not distributed)."""

    def __init__(self):
        super().__init__()
        self.op = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x):
        return self.op(x)


def average_bn_statistics(net: nn.Cell, reduce_fn: Callable, world: int) -> int:
    """Set every BatchNorm's moving mean and variance to their mean over the data-parallel ranks
    (timm's ``--dist-bn reduce``). Gradients are averaged, so the weights agree on every rank, but
    each rank's moving statistics come from its own shard: without this the ranks would evaluate
    different models and rank 0's checkpoint would hold rank 0's statistics only. One AllReduce;
    every rank must call it. Returns the number of values averaged."""
    stats = [p for p in net.get_parameters()
             if not p.requires_grad and p.name.rsplit(".", 1)[-1] in ("moving_mean", "moving_variance")]
    if not stats:
        return 0
    flat = np.concatenate([p.asnumpy().astype(np.float32).ravel() for p in stats])
    flat = np.asarray(reduce_fn(flat), np.float32) / world
    offset = 0
    for p in stats:
        n = int(np.prod(p.shape))
        p.set_data(ms.Tensor(flat[offset:offset + n].reshape(p.shape), p.dtype))
        offset += n
    return offset


def make_reduce_fn(world: int) -> Optional[Callable]:
    """``numpy vector -> its sum over all ranks`` for a data-parallel run; None for one process."""
    if world <= 1:
        return None
    allreduce = AllReduceSum()
    return lambda v: allreduce(ms.Tensor(v)).asnumpy()


def check_same_start(reduce_fn, world, rank, epoch, step, save_dir):
    """Every rank must start at the same (epoch, step): a resumed run on several machines needs the
    same last.ckpt on each (sum and sum of squares agree only when all values are equal)."""
    x = np.array([epoch, step, epoch * epoch, step * step], np.float64)
    total = reduce_fn(x.astype(np.float32)).astype(np.float64)
    if not np.allclose(total[:2] ** 2, world * total[2:]):
        raise ClusterError(f"rank {rank} starts at epoch {epoch + 1} step {step}, another rank elsewhere: "
                           f"resuming needs the same {save_dir}/last.ckpt on every machine (a shared "
                           "folder, or copy it) before all ranks are started again")


def is_communication_failure(exc):
    """Whether a RuntimeError of MindSpore comes from a collective operation or the cluster."""
    text = str(exc)
    return any(k in text for k in ("AllReduce", "AllGather", "Broadcast", "collective", "cluster"))
