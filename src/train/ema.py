"""Exponential moving average of the model weights, as timm's ``ModelEmaV2`` (the official
ImageNet recipe: ``model_ema: true``, ``model_ema_decay: 0.99996``).

After every optimiser step, for every parameter and every BatchNorm moving statistic of the
network: ``ema = decay * ema + (1 - decay) * value`` (float32, in this order, as timm computes
it). The averages are the parameters of a second network of the same topology (the *EMA
network*), named ``ema.<name>``: it is evaluated as it is, and the training step cell holds the
averages, so they are saved in every checkpoint (``ema.*`` entries) and restored by a resume with
the rest of the training state. The update runs inside the compiled training step, right after
the optimiser's update (:class:`TrainStepWithEma`).
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops import composite as C

from ..checkpoint.checkpoint import EMA_PREFIX

__all__ = ["ModelEma", "TrainStepWithEma", "ema_network", "copy_weights"]

_update = C.MultitypeFuncGraph("ema_update")


@_update.register("Tensor", "Tensor", "Tensor", "Tensor")
def _update_one(decay, rest, average, value):
    return ops.assign(average, average * decay + rest * ops.cast(value, average.dtype))


class ModelEma(nn.Cell):
    """``ema()`` moves every average of `ema_net` towards the matching value of `net` (both built
    alike: their parameters pair up in order, the names differing by :data:`EMA_PREFIX`)."""

    def __init__(self, net, ema_net, decay):
        super().__init__(auto_prefix=False)
        values, averages = list(net.get_parameters()), list(ema_net.get_parameters())
        names = [p.name for p in values]
        if [EMA_PREFIX + n for n in names] != [p.name for p in averages]:
            raise ValueError("the EMA network's parameters do not pair up with the network's")
        self.values = ms.ParameterTuple(values)
        self.averages = ms.ParameterTuple(averages)
        self.decay = ms.Tensor(np.float32(decay))
        self.rest = ms.Tensor(np.float32(1.0 - decay))   # 1 - decay in float64 first, as Python computes it
        self.hyper_map = C.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_update, self.decay, self.rest), self.averages, self.values)


class TrainStepWithEma(nn.Cell):
    """A training step cell followed by the EMA update, one graph: ``step(images, target[,
    drop_scales])`` returns what the wrapped step returns."""

    def __init__(self, step, ema):
        super().__init__(auto_prefix=False)
        self.step, self.ema = step, ema

    def construct(self, *inputs):
        out = self.step(*inputs)
        return ops.depend(out, self.ema())


def copy_weights(src, dst):
    """Set every parameter of `dst` to the value of the parameter of `src` in the same position."""
    for a, b in zip(src.get_parameters(), dst.get_parameters()):
        b.set_data(ms.Tensor(a.asnumpy().copy(), b.dtype))


def ema_network(net, build):
    """The EMA network of `net`: ``build()`` (the same topology), holding `net`'s current weights,
    its parameters renamed ``ema.<name>``, in inference mode."""
    ema_net = build()
    copy_weights(net, ema_net)
    for p in ema_net.get_parameters():
        p.name = EMA_PREFIX + p.name
        p.requires_grad = False
    ema_net.set_train(False)
    return ema_net
