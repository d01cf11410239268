"""PyTorch reference ConvMLP, written for this repository from the paper's architecture.

Used only to check weight conversion (``pth2ckpt.py --verify``), to export ONNX (``export.py
--file_format ONNX``), in tests and in the side-by-side benchmark; training and evaluation never
import it. Its ``state_dict`` keys are those of the
official model (SHI-Labs/Convolutional-MLPs ``src/convmlp.py``), and the parity fixtures in
``../shared/parity`` prove it computes the official function (see ``tests/test_parity.py``).
"""
from typing import Sequence

import torch
from torch import nn

__all__ = ["TorchConvMLP", "TorchFeatures", "torch_convmlp"]


def _conv_bn_relu(cin, cout, k, stride=1):
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _Tokenizer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(*_conv_bn_relu(3, dim // 2, 3, 2), *_conv_bn_relu(dim // 2, dim // 2, 3),
                                   *_conv_bn_relu(dim // 2, dim, 3),
                                   nn.MaxPool2d(3, stride=2, padding=1))

    def forward(self, x):
        return self.block(x)


class _ConvStage(nn.Module):
    def __init__(self, n, cin, hidden, cout):
        super().__init__()
        self.conv_blocks = nn.ModuleList([
            nn.Sequential(*_conv_bn_relu(cin, hidden, 1), *_conv_bn_relu(hidden, hidden, 3),
                          *_conv_bn_relu(hidden, cin, 1)) for _ in range(n)])
        self.downsample = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x):
        for b in self.conv_blocks:
            x = x + b(x)
        return self.downsample(x)


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class _Block(nn.Module):
    def __init__(self, dim, hidden, dp):
        super().__init__()
        self.norm1, self.channel_mlp1 = nn.LayerNorm(dim), _Mlp(dim, hidden)
        self.norm2, self.channel_mlp2 = nn.LayerNorm(dim), _Mlp(dim, hidden)
        self.drop_path = _DropPath(dp)
        self.connect = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.connect_norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = x + self.drop_path(self.channel_mlp1(self.norm1(x)))
        x = self.connect(self.connect_norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.channel_mlp2(self.norm2(x)))


class _Downsample(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.downsample = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x):
        return self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class _Stage(nn.Module):
    def __init__(self, n, dims, ratio, rate, downsample):
        super().__init__()
        dpr = [x.item() for x in torch.linspace(0, rate, n)]
        self.blocks = nn.ModuleList([_Block(dims[0], int(dims[0] * ratio), dpr[i]) for i in range(n)])
        self.downsample_mlp = _Downsample(dims[0], dims[1]) if downsample else nn.Identity()

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.downsample_mlp(x)


class TorchConvMLP(nn.Module):
    """Same arguments and ``state_dict`` keys as the official ``ConvMLP``."""

    def __init__(self, blocks: Sequence[int], dims: Sequence[int], mlp_ratios: Sequence[float],
                 channels: int = 64, n_conv_blocks: int = 3, classifier_head: bool = True,
                 num_classes: int = 1000, drop_path_rate: float = 0.1):
        super().__init__()
        self.tokenizer = _Tokenizer(channels)
        self.conv_stages = _ConvStage(n_conv_blocks, channels, dims[0], dims[0])
        self.stages = nn.ModuleList([
            _Stage(blocks[i], dims[i:i + 2], mlp_ratios[i], drop_path_rate, i + 1 < len(blocks))
            for i in range(len(blocks))])
        self.head = None
        if classifier_head:
            self.norm = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.conv_stages(self.tokenizer(x)).permute(0, 2, 3, 1)
        for s in self.stages:
            x = s(x)
        if self.head is None:
            return x
        b, _, _, c = x.shape
        return self.head(self.norm(x.reshape(b, -1, c)).mean(dim=1))


class TorchFeatures(nn.Module):
    """The backbone of a head-less :class:`TorchConvMLP` returning its feature maps (NCHW), the
    forward of the official ``DetConvMLP``/``SegConvMLP`` generalised as in
    :func:`model.features.feature_levels`; `out_indices` as :class:`model.features.FeatureListNet`'s."""

    def __init__(self, net: TorchConvMLP, out_indices=None):
        super().__init__()
        from .features import feature_levels, feature_take_indices
        self.net = net
        dims = [s.blocks[0].channel_mlp1.fc1.in_features for s in net.stages]
        channels = net.tokenizer.block[6].out_channels
        info, self.taken = feature_levels(channels, dims)
        self.out_indices = feature_take_indices(len(info), out_indices, "out_indices")

    def forward(self, x):
        x = self.net.tokenizer(x)
        outs = [x]
        x = self.net.conv_stages(x)
        if len(self.net.stages) > 1:
            outs.append(x)
        x = x.permute(0, 2, 3, 1)
        for i, stage in enumerate(self.net.stages):
            x = stage(x)
            if i in self.taken:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
        return tuple(outs[i] for i in self.out_indices)


def torch_convmlp(arch: str, num_classes: int = 1000, **kwargs) -> TorchConvMLP:
    """The reference model of a released variant (``convmlp_s``/``m``/``l``)."""
    from .convmlp import TOPOLOGY_KEYS, default_cfgs
    cfg = default_cfgs[arch]
    args = {k: cfg[k] for k in TOPOLOGY_KEYS}
    args.update(kwargs)
    return TorchConvMLP(num_classes=num_classes, **args)
