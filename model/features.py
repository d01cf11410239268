"""ConvMLP as a backbone for dense tasks: the feature levels of the official detection and
segmentation backbones (``DetConvMLP``, ``SegConvMLP``: the tokenizer's output at stride 4, the conv
stage's at 8, then the deepest output at each further stride), their description
(``feature_info`` in timm's and mindcv's words) and the cell that returns them
(:class:`FeatureListNet`, built by ``create_model(name, features_only=True, out_indices=...)``).
Levels, channels and strides of the released variants: docs/deployment.md, "Use as a backbone".
"""
from typing import Optional, Sequence, Tuple, Union

from mindspore import nn

from .errors import ConfigError

__all__ = ["FeatureInfo", "FeatureListNet", "feature_levels", "feature_take_indices"]


class FeatureInfo(list):
    """One dict per feature level, in output order: ``num_chs``/``chs`` (channels), ``reduction``
    (stride with respect to the input), ``module``/``name`` (the cell whose output it is)."""

    def channels(self, idx: Optional[int] = None):
        """Channels of level ``idx``, or the list of all."""
        return self[idx]["num_chs"] if idx is not None else [info["num_chs"] for info in self]

    def reduction(self, idx: Optional[int] = None):
        """Stride of level ``idx`` with respect to the input, or the list of all."""
        return self[idx]["reduction"] if idx is not None else [info["reduction"] for info in self]

    def module_name(self, idx: Optional[int] = None):
        """Name of the cell that gives level ``idx``, or the list of all."""
        return self[idx]["module"] if idx is not None else [info["module"] for info in self]


def _info(chs: int, reduction: int, module: str) -> dict:
    return {"num_chs": chs, "reduction": reduction, "module": module, "chs": chs, "name": module}


def feature_levels(channels: int, dims: Sequence[int]) -> Tuple[FeatureInfo, Tuple[int, ...]]:
    """The levels of a ConvMLP with tokenizer ``channels`` and Conv-MLP stage ``dims``, and the
    indices of the Conv-MLP stages whose output is a level (see the module docstring)."""
    n = len(dims)
    info = FeatureInfo([_info(channels, 4, "tokenizer"), _info(dims[0], 8, "conv_stages")])
    # Stage i < n-1 ends with a downsampling conv (output stride 16 * 2**i); the last stage keeps
    # the stride of the one before it, so it replaces that one's output as the deepest at its stride.
    taken = [i for i in range(n - 1) if i != n - 2] + [n - 1]
    for i in taken:
        down = min(i + 1, n - 1)
        info.append(_info(dims[min(i + 1, n - 1)], 8 * 2 ** down, f"stages.{i}"))
    if n == 1:   # no downsampling after the conv stage: the stage's output is the deepest at 8
        del info[1]
    return info, tuple(taken)


def feature_take_indices(num_levels: int, indices: Union[None, int, Sequence[int]] = None,
                         what: str = "indices") -> Tuple[int, ...]:
    """timm's rule: None takes every level, an int ``n`` the last ``n``, a sequence those levels in
    its order (negative counts from the end). ConfigError naming the value otherwise."""
    if indices is None:
        return tuple(range(num_levels))
    if isinstance(indices, bool):
        raise ConfigError(f"{what} {indices!r}: expected level indices (a list of integers) or a count")
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ConfigError(f"{what} {indices}: a count of last levels must be 1 to {num_levels}")
        return tuple(range(num_levels - indices, num_levels))
    try:
        given = list(indices)
    except TypeError:
        raise ConfigError(f"{what} {indices!r}: expected level indices (a list of integers) or a count") from None
    if not given or any(isinstance(i, bool) or not isinstance(i, int) for i in given):
        raise ConfigError(f"{what} {given!r}: expected a non-empty list of integer level indices "
                          f"(0 to {num_levels - 1}, negative from the end)")
    bad = [i for i in given if not -num_levels <= i < num_levels]
    if bad:
        raise ConfigError(f"{what} {given!r}: level {bad[0]} does not exist; the backbone has {num_levels} "
                          f"levels, 0 to {num_levels - 1} (or {-num_levels} to -1)")
    resolved = [i % num_levels for i in given]
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"{what} {given!r}: each level may be taken once")
    return tuple(resolved)


class FeatureListNet(nn.Cell):
    """The backbone of a head-less :class:`~model.convmlp.ConvMLP` returning the tuple of its
    feature maps ``out_indices`` (NCHW) in that order. Parameter names are the classifier's
    (``tokenizer.block.0.weight`` ...), so classifier and backbone checkpoints load as they are;
    it has no head parameters. ``feature_info`` describes the outputs in order."""

    def __init__(self, net: nn.Cell, out_indices: Union[None, int, Sequence[int]] = (0, 1, 2, 3)):
        super().__init__(auto_prefix=False)
        if getattr(net, "head", None) is not None or getattr(net, "norm", None) is not None:
            raise ValueError("FeatureListNet takes a ConvMLP built with classifier_head=False")
        self.net = net
        self.out_indices = feature_take_indices(len(net.feature_info), out_indices, "out_indices")
        self.feature_info = FeatureInfo(net.feature_info[i] for i in self.out_indices)
        self.default_cfg = getattr(net, "default_cfg", None)

    def construct(self, x):
        maps = self.net.feature_maps(x, max(self.out_indices))
        out = ()
        for i in self.out_indices:
            out = out + (maps[i],)
        return out

