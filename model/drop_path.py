"""Stochastic depth ("drop path", Huang et al. 2016; timm ``DropPath``): in training, each sample's
residual branch is dropped with probability ``drop_prob`` and kept ones are scaled by
``1 / (1 - drop_prob)``.

The factors can come from outside the graph: :class:`ConvMLP` takes an optional ``drop_scales``
input (one row of factors per drop-path call, :attr:`ConvMLP.drop_path_rates`), drawn on the host
by :func:`drop_path_factors` from a NumPy generator. Training draws them from its (seed, rank,
epoch, step) (``src/train/step.py``), so no random state lives in the compiled graph: the same
command gives the same factors, and a resumed run draws what the uninterrupted run drew. Without
that input (a cell used on its own) the cell draws with MindSpore's in-graph ``Dropout``, whose
stream is neither saved nor reproducible on the CPU (it depends on kernel timing).
"""
import numpy as np
from mindspore import nn, ops

__all__ = ["DropPath", "drop_path_factors"]


def drop_path_factors(rates, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """(len(rates), batch_size) float32: in row ``r``, 0 with probability ``rates[r]``, else
    ``1 / (1 - rates[r])`` (in float32, as MindSpore's ``Dropout`` scales), one draw per sample."""
    rates = np.asarray(rates, np.float64).reshape(-1, 1)
    keep = rng.random((len(rates), batch_size)) >= rates
    scale = np.float32(1.0) / (1.0 - rates).astype(np.float32)
    return np.where(keep, scale, np.float32(0.0)).astype(np.float32)


class DropPath(nn.Cell):
    """Stochastic depth: drop the whole residual branch per sample with probability ``drop_prob``.

    ``construct(x, scale=None)``: ``scale`` (B,) holds the per-sample factors (0 or
    ``1 / (1 - drop_prob)``, see :func:`drop_path_factors`); without it they are drawn in the graph
    by ``nn.Dropout`` on a ones vector. The kept branches are scaled by a broadcasting
    multiplication (:func:`model.cpu_kernels.apply_cpu_kernels` swaps in a C++ kernel for it)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.dropout = nn.Dropout(p=self.drop_prob) if self.drop_prob > 0 else None

    def factors(self, x, scale=None):
        """The (B,) per-sample factors: `scale` in `x`'s dtype, or drawn in the graph."""
        if scale is None:
            return self.dropout(ops.ones((x.shape[0],), x.dtype))
        return ops.cast(scale, x.dtype)

    def construct(self, x, scale=None):
        if self.dropout is None or not self.training:
            return x
        scale = self.factors(x, scale)
        return x * scale.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
