"""ConvMLP: Hierarchical Convolutional MLPs for Vision, in MindSpore.

Paper: Jiachen Li, Ali Hassani, Steven Walton, Humphrey Shi, "ConvMLP: Hierarchical Convolutional
MLPs for Vision", CVPR Workshops 2023 (arXiv:2109.04454).
Official PyTorch code: https://github.com/SHI-Labs/Convolutional-MLPs (``src/convmlp.py``).

A convolutional tokenizer, a conv stage, three Conv-MLP stages and a head, as plain MindSpore cells
with one forward path each, the same on every device; parameter names mirror the official
``state_dict`` keys (norm parameters under MindSpore's names), so that weight conversion is a rename
(:mod:`src.convert.names`). Faster CPU backends are applied to a built network by
:mod:`model.cpu_kernels`, never chosen here. The parts and numerics: docs/architecture.md.
"""
import math
from typing import Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common import initializer as init
from mindspore.ops import constexpr

from .configs import HEAD_PREFIX, TOPOLOGY_KEYS, default_cfgs
from .drop_path import DropPath
from .errors import ConfigError
from .features import feature_levels, feature_take_indices
from .weights import load_pretrained

__all__ = ["ConvMLP", "ConvTokenizer", "ConvStage", "ConvMLPBlock", "ConvMLPStage", "ConvDownsample", "Mlp",
           "ChannelsLastDepthwise",
           "DropPath", "convmlp_s", "convmlp_m", "convmlp_l", "default_cfgs", "model_entrypoints", "TOPOLOGY_KEYS",
           "HEAD_PREFIX"]

LN_EPS = 1e-5  # torch.nn.LayerNorm default; MindSpore's default is 1e-7
BN_EPS = 1e-5
# MindSpore's BatchNorm momentum is the weight of the *old* statistic: 0.9 == torch momentum 0.1.
BN_MOMENTUM = 0.9
# Depthwise 3x3 on maps of at most this many positions runs as one product with a small
# (positions x positions) matrix instead of a grouped convolution, see ``ConvMLPBlock``.
SMALL_MAP_POSITIONS = 4


def _conv_bn_relu(in_ch, out_ch, kernel_size, stride=1):
    """Conv (no bias) -> BatchNorm -> ReLU as three cells, so that names match the official
    ``Sequential`` indices."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, pad_mode="pad", padding=kernel_size // 2,
                  has_bias=False),
        nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(),
    ]


def _halved(n: int) -> int:
    """Output size of a 3x3 stride-2 window with padding 1 on `n` positions."""
    return (n - 1) // 2 + 1


class ConvTokenizer(nn.Cell):
    """Three 3x3 conv-BN-ReLU (first with stride 2) and a 3x3/2 max-pool: /4 resolution.

    The output is reshaped to its size computed from the input's (static) height and width: with a
    dynamic batch dimension (a MINDIR exported for any batch size), MindSpore's padded max-pool
    infers every output dimension as unknown, and the blocks need the static map size to pick
    their depthwise form (``ChannelsLastDepthwise``). The reshape does not change the values.
    """

    def __init__(self, embedding_dim: int = 64):
        super().__init__()
        self.embedding_dim = embedding_dim
        half = embedding_dim // 2
        self.block = nn.SequentialCell(
            _conv_bn_relu(3, half, 3, stride=2)
            + _conv_bn_relu(half, half, 3)
            + _conv_bn_relu(half, embedding_dim, 3)
            + [nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)]
        )

    def construct(self, x):
        h, w = _halved(_halved(x.shape[2])), _halved(_halved(x.shape[3]))
        return self.block(x).reshape(-1, self.embedding_dim, h, w)


class ConvStage(nn.Cell):
    """Residual bottlenecks (1x1, 3x3, 1x1 conv-BN-ReLU) then a 3x3 stride-2 conv (NCHW)."""

    def __init__(self, num_blocks: int = 2, embedding_dim_in: int = 64, hidden_dim: int = 128,
                 embedding_dim_out: int = 128):
        super().__init__()
        self.conv_blocks = nn.CellList([
            nn.SequentialCell(
                _conv_bn_relu(embedding_dim_in, hidden_dim, 1)
                + _conv_bn_relu(hidden_dim, hidden_dim, 3)
                + _conv_bn_relu(hidden_dim, embedding_dim_in, 1)
            )
            for _ in range(num_blocks)
        ])
        self.downsample = nn.Conv2d(embedding_dim_in, embedding_dim_out, 3, stride=2, pad_mode="pad",
                                    padding=1, has_bias=True)

    def construct(self, x):
        for block in self.conv_blocks:
            x = x + block(x)
        return self.downsample(x)


class Mlp(nn.Cell):
    """Channel MLP on channels-last tokens: Dense -> exact GELU -> Dense."""

    def __init__(self, embedding_dim_in: int, hidden_dim: Optional[int] = None,
                 embedding_dim_out: Optional[int] = None):
        super().__init__()
        hidden_dim = hidden_dim or embedding_dim_in
        embedding_dim_out = embedding_dim_out or embedding_dim_in
        self.fc1 = nn.Dense(embedding_dim_in, hidden_dim)
        self.act = nn.GELU(approximate=False)
        self.fc2 = nn.Dense(hidden_dim, embedding_dim_out)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


@constexpr
def _tap_matrix(h: int, w: int):
    """(9, h*w*h*w) 0/1 constant: entry (k, p, q) is 1 when tap k = 3*i + j of a 3x3 window with
    padding 1 reads input position q for output position p (positions in row-major order)."""
    taps = np.zeros((9, h * w, h * w), np.float32)
    for i in range(3):
        for j in range(3):
            for y in range(h):
                for x in range(w):
                    yy, xx = y + i - 1, x + j - 1
                    if 0 <= yy < h and 0 <= xx < w:
                        taps[3 * i + j, y * w + x, yy * w + xx] = 1.0
    return ms.Tensor(taps.reshape(9, -1))


class ChannelsLastDepthwise(nn.Conv2d):
    """Depthwise 3x3 convolution (padding 1, no bias) on channels-last (B, H, W, C) tokens, with the
    weight of a grouped ``nn.Conv2d`` (C, 1, 3, 3): the grouped convolution between two transposes,
    except on maps of at most ``SMALL_MAP_POSITIONS`` positions (e.g. 2x2 and 1x1 at 32 px), where
    it is ``out[b, p, c] = sum_q x[b, q, c] * M[p, q, c]`` with ``M`` built from the same weights
    (the map size is static in GRAPH mode: the form is chosen at compile time)."""

    def __init__(self, channels: int, weight_init=None):
        super().__init__(channels, channels, 3, stride=1, pad_mode="pad", padding=1, group=channels,
                         has_bias=False, weight_init=weight_init)

    def construct(self, x):
        b, h, w, c = x.shape
        if h * w <= SMALL_MAP_POSITIONS:
            kernel = self.weight.reshape(c, 9)
            taps = ops.cast(_tap_matrix(h, w), kernel.dtype)  # float16 under AMP
            m = ops.matmul(taps.T, kernel.T).reshape(1, h * w, h * w, c)
            return (x.reshape(b, 1, h * w, c) * m).sum(axis=2).reshape(b, h, w, c)
        return self.conv2d(x.transpose(0, 3, 1, 2), self.weight).transpose(0, 2, 3, 1)   # nn.Conv2d's op


class ConvMLPBlock(nn.Cell):
    """One Conv-MLP block on channels-last (B, H, W, C) tokens.

    ``x = x + drop_path(mlp1(norm1(x)))``; ``x = connect(connect_norm(x))`` (depthwise 3x3, no bias,
    no residual); ``x = x + drop_path(mlp2(norm2(x)))``. The two drop paths take rows
    ``scale_rows`` of the model's ``drop_scales`` input when it is given (see :class:`ConvMLP`).
    """

    def __init__(self, embedding_dim: int, dim_feedforward: int, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm((embedding_dim,), epsilon=LN_EPS)
        self.channel_mlp1 = Mlp(embedding_dim, dim_feedforward)
        self.drop_path = DropPath(drop_path_rate)
        self.connect = ChannelsLastDepthwise(embedding_dim)
        self.connect_norm = nn.LayerNorm((embedding_dim,), epsilon=LN_EPS)
        self.norm2 = nn.LayerNorm((embedding_dim,), epsilon=LN_EPS)
        self.channel_mlp2 = Mlp(embedding_dim, dim_feedforward)
        self.scale_rows = (0, 1)   # set by ConvMLP

    def construct(self, x, drop_scales=None):
        first = second = None
        if drop_scales is not None and self.drop_path.drop_prob > 0:
            first, second = drop_scales[self.scale_rows[0]], drop_scales[self.scale_rows[1]]
        x = x + self.drop_path(self.channel_mlp1(self.norm1(x)), first)
        x = self.connect(self.connect_norm(x))
        x = x + self.drop_path(self.channel_mlp2(self.norm2(x)), second)
        return x


class ConvDownsample(nn.Cell):
    """3x3 stride-2 conv with bias between Conv-MLP stages, on channels-last tokens."""

    def __init__(self, embedding_dim_in: int, embedding_dim_out: int):
        super().__init__()
        self.downsample = nn.Conv2d(embedding_dim_in, embedding_dim_out, 3, stride=2, pad_mode="pad",
                                    padding=1, has_bias=True)

    def construct(self, x):
        x = self.downsample(x.transpose(0, 3, 1, 2))
        return x.transpose(0, 2, 3, 1)


class ConvMLPStage(nn.Cell):
    """``num_blocks`` Conv-MLP blocks, then (except for the last stage) a downsampling conv.

    Stochastic depth grows linearly inside the stage: ``linspace(0, rate, num_blocks)``.
    """

    def __init__(self, num_blocks: int, embedding_dims: Sequence[int], mlp_ratio: float = 1.0,
                 stochastic_depth_rate: float = 0.1, downsample: bool = True):
        super().__init__()
        dpr = np.linspace(0.0, stochastic_depth_rate, num_blocks).tolist() if num_blocks > 1 else [0.0]
        dim = embedding_dims[0]
        self.blocks = nn.CellList([
            ConvMLPBlock(dim, int(dim * mlp_ratio), drop_path_rate=dpr[i]) for i in range(num_blocks)
        ])
        self.downsample_mlp = ConvDownsample(dim, embedding_dims[1]) if downsample else None

    def construct(self, x, drop_scales=None):
        for blk in self.blocks:
            x = blk(x, drop_scales)
        if self.downsample_mlp is not None:
            x = self.downsample_mlp(x)
        return x


class ConvMLP(nn.Cell):
    """ConvMLP classifier with the same arguments as the official ``ConvMLP`` class.

    Args:
        blocks: number of Conv-MLP blocks in each of the Conv-MLP stages.
        dims: embedding dimension of each Conv-MLP stage.
        mlp_ratios: hidden/embedding ratio of the channel MLPs of each stage.
        channels: output channels of the tokenizer (input of the conv stage).
        n_conv_blocks: residual bottlenecks in the conv stage.
        classifier_head: with ``False``, ``construct`` returns the channels-last feature map.
        num_classes: classes of the Dense head (0 = no head, pooled features out).
        drop_path_rate: stochastic depth rate at the end of each stage.

    ``construct(x, drop_scales=None)``: ``drop_scales`` (R, B) are the drop-path factors of a
    training step drawn outside the graph (:func:`model.drop_path.drop_path_factors`), one row per
    drop-path call with the rate ``drop_path_rates[r]`` (two per block whose rate is above 0);
    without them the blocks draw in the graph.
    """

    def __init__(self, blocks: Sequence[int], dims: Sequence[int], mlp_ratios: Sequence[float],
                 channels: int = 64, n_conv_blocks: int = 3, classifier_head: bool = True,
                 num_classes: int = 1000, drop_path_rate: float = 0.1):
        super().__init__()
        if not (len(blocks) == len(dims) == len(mlp_ratios)):
            raise ValueError(f"blocks, dims and mlp_ratios must have the same length, got "
                             f"{len(blocks)}, {len(dims)}, {len(mlp_ratios)}")
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.tokenizer = ConvTokenizer(embedding_dim=channels)
        self.conv_stages = ConvStage(n_conv_blocks, embedding_dim_in=channels,
                                     hidden_dim=dims[0], embedding_dim_out=dims[0])
        self.stages = nn.CellList([
            ConvMLPStage(num_blocks=blocks[i], embedding_dims=dims[i:i + 2],
                         mlp_ratio=mlp_ratios[i], stochastic_depth_rate=drop_path_rate,
                         downsample=(i + 1 < len(blocks)))
            for i in range(len(blocks))
        ])
        self.classifier_head = classifier_head
        if classifier_head:
            self.norm = nn.LayerNorm((dims[-1],), epsilon=LN_EPS)
            self.head = nn.Dense(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        else:
            self.norm = None
            self.head = None
        self.drop_path_rates = ()
        for stage in self.stages:
            for blk in stage.blocks:
                if blk.drop_path.drop_prob > 0:
                    blk.scale_rows = (len(self.drop_path_rates), len(self.drop_path_rates) + 1)
                    self.drop_path_rates += (blk.drop_path.drop_prob,) * 2
        self.feature_info, self._feature_stages = feature_levels(channels, dims)
        self._init_weights()

    def _init_weights(self):
        """The official init: trunc-normal(0.02) Dense with zero bias, Kaiming-normal fan_out
        convs (bias left at PyTorch's default uniform), norms to 1/0."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Dense):
                cell.weight.set_data(init.initializer(init.TruncatedNormal(sigma=0.02),
                                                      cell.weight.shape, cell.weight.dtype))
                if cell.bias is not None:
                    cell.bias.set_data(init.initializer(init.Zero(), cell.bias.shape, cell.bias.dtype))
            elif isinstance(cell, nn.Conv2d):
                cell.weight.set_data(init.initializer(
                    init.HeNormal(mode="fan_out", nonlinearity="relu"),
                    cell.weight.shape, cell.weight.dtype))
                if cell.bias is not None:
                    fan_in = int(np.prod(cell.weight.shape[1:]))
                    bound = 1.0 / math.sqrt(fan_in)
                    cell.bias.set_data(init.initializer(init.Uniform(bound), cell.bias.shape,
                                                        cell.bias.dtype))
            elif isinstance(cell, (nn.LayerNorm, nn.BatchNorm2d)):
                cell.gamma.set_data(init.initializer(init.One(), cell.gamma.shape, cell.gamma.dtype))
                cell.beta.set_data(init.initializer(init.Zero(), cell.beta.shape, cell.beta.dtype))

    def reset_classifier(self, num_classes: int):
        """Replace the head by a freshly initialised one for ``num_classes`` (fine-tuning)."""
        self.num_classes = num_classes
        if num_classes > 0:
            head = nn.Dense(self.num_features, num_classes)
            head.weight.set_data(init.initializer(init.TruncatedNormal(sigma=0.02),
                                                  head.weight.shape, head.weight.dtype))
            head.bias.set_data(init.initializer(init.Zero(), head.bias.shape, head.bias.dtype))
        else:
            head = nn.Identity()
        self.head = head
        self.head.update_parameters_name(HEAD_PREFIX)

    def forward_features(self, x, drop_scales=None):
        """(B, 3, H, W) images -> (B, H/32, W/32, dims[-1]) channels-last features."""
        x = self.conv_stages(self.tokenizer(x)).transpose(0, 2, 3, 1)
        for stage in self.stages:
            x = stage(x, drop_scales)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        """Channels-last features -> LayerNorm -> mean over positions -> Dense logits."""
        x = self.norm(x)
        x = x.mean(axis=(1, 2))
        if pre_logits:
            return x
        return self.head(x)

    def feature_maps(self, x, last: int = -1):
        """The feature levels 0 to ``last`` (``feature_info``; -1: all) of (B, 3, H, W) images as a
        tuple of NCHW maps, as the official ``DetConvMLP``/``SegConvMLP`` forward takes them, and
        nothing computed past level ``last``."""
        last = last % len(self.feature_info)
        x = self.tokenizer(x)
        maps = (x,)
        if len(maps) > last:
            return maps
        x = self.conv_stages(x)
        if len(self.stages) > 1:
            maps = maps + (x,)
        x = x.transpose(0, 2, 3, 1)
        for i, stage in enumerate(self.stages):
            if len(maps) > last:
                break
            x = stage(x)
            if i in self._feature_stages:
                maps = maps + (x.transpose(0, 3, 1, 2),)
        return maps

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's ``forward_intermediates``: ``(final, intermediates)``, or only the list of
        intermediates with ``intermediates_only``.

        ``indices``: the levels of ``feature_info`` to return (None: all, an int ``n``: the last
        ``n``, a sequence: those, negative from the end), in ascending order. ``norm`` applies the
        head's LayerNorm to the last level's map (when the model has one). ``stop_early``: stop after
        the deepest level asked for. ``output_fmt``: ``NCHW`` or ``NHWC``. ``final`` is what
        :meth:`forward_features` returns (channels-last, before the head's norm); with
        ``stop_early`` it is the deepest level computed, channels-last.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ConfigError(f"output_fmt '{output_fmt}': expected NCHW or NHWC")
        levels = len(self.feature_info)
        take = sorted(feature_take_indices(levels, indices))
        last = take[-1] if stop_early or intermediates_only else levels - 1
        maps = list(self.feature_maps(x, last))
        final = maps[-1].transpose(0, 2, 3, 1)
        if norm and self.norm is not None and last == levels - 1:
            maps[-1] = self.norm(final).transpose(0, 3, 1, 2)
        chosen = [maps[i] if output_fmt == "NCHW" else maps[i].transpose(0, 2, 3, 1) for i in take]
        if intermediates_only:
            return chosen
        return final, chosen

    def construct(self, x, drop_scales=None):
        x = self.forward_features(x, drop_scales)
        if not self.classifier_head:
            return x
        return self.forward_head(x)


def _create(variant: str, pretrained_ckpt: Optional[str] = None, num_classes: int = 1000, **kwargs):
    cfg = default_cfgs[variant]
    arch = {k: cfg[k] for k in TOPOLOGY_KEYS}
    arch.update(kwargs)
    model = ConvMLP(num_classes=num_classes, **arch)
    model.default_cfg = cfg
    if pretrained_ckpt:
        load_pretrained(model, pretrained_ckpt)
    return model


def convmlp_s(pretrained_ckpt: Optional[str] = None, num_classes: int = 1000, **kwargs):
    """ConvMLP-S: blocks (2, 4, 2), dims (128, 256, 512), mlp ratios 2, 2 conv blocks."""
    return _create("convmlp_s", pretrained_ckpt, num_classes, **kwargs)


def convmlp_m(pretrained_ckpt: Optional[str] = None, num_classes: int = 1000, **kwargs):
    """ConvMLP-M: blocks (3, 6, 3), dims (128, 256, 512), mlp ratios 3, 3 conv blocks."""
    return _create("convmlp_m", pretrained_ckpt, num_classes, **kwargs)


def convmlp_l(pretrained_ckpt: Optional[str] = None, num_classes: int = 1000, **kwargs):
    """ConvMLP-L: blocks (4, 8, 3), dims (192, 384, 768), mlp ratios 3, 96 channels, 3 conv blocks."""
    return _create("convmlp_l", pretrained_ckpt, num_classes, **kwargs)


model_entrypoints = {"convmlp_s": convmlp_s, "convmlp_m": convmlp_m, "convmlp_l": convmlp_l}
