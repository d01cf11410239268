"""Applying the C++ kernels to a built network (in the spirit of timm's ``convert_sync_batchnorm``):
:func:`apply_cpu_kernels` swaps each plain cell that a kernel cell implements for that kernel cell,
holding the very same ``Parameter`` objects under the same names (checkpoints, optimisers and EMA
see no difference). The kernel cells are built with constant initial values and the drop paths keep
their ``Dropout`` cells, so that applying the kernels draws nothing from MindSpore's random state:
a run with a given seed draws what it would draw without them. The network itself never chooses a
backend."""
import mindspore as ms
from mindspore import nn

from ..convmlp import ChannelsLastDepthwise, Mlp
from ..drop_path import DropPath as PlainDropPath
from . import layers
from .build import build_kernels, conv_library_path

__all__ = ["apply_cpu_kernels", "KERNEL_CELLS"]

#: the kernel cell classes :func:`apply_cpu_kernels` swaps in
KERNEL_CELLS = (layers.LayerNorm, layers.GELU, layers.MaxPool2d, layers.Dense, layers.BatchNorm2d, layers.Conv2d,
                layers.DepthwiseNHWC, layers.DropPath)
_ZEROS = "zeros"   # initial values of a kernel cell's own parameters, replaced by the plain cell's
_PARAMETERS = ("weight", "bias", "gamma", "beta", "moving_mean", "moving_variance")


def _square(v):
    """An int from a kernel size / stride given as an int or a pair of equal ints, else None."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1]:
        return v[0]
    return None


def _exact_gelu(cell):
    return type(cell) is nn.GELU and cell.approximate == "none"


def _kernel_cell(cell, following, parent=None, name=None):
    """``(kernel cell, absorbs_following)`` for a plain cell the kernels implement, else ``(None,
    False)``. `following` is the next cell of `parent` (named `name` there): a ReLU after a
    BatchNorm is fused into the BatchNorm kernel, the GELU after a channel MLP's ``fc1`` (the
    model's :class:`~model.convmlp.Mlp`, whose ``construct`` is ``fc2(act(fc1(x)))``) into the
    Dense kernel."""
    kind = type(cell)
    if kind is nn.Dense and cell.has_bias and cell.activation is None and type(parent) is Mlp and name == "fc1" \
            and following is parent.act and _exact_gelu(following):
        return layers.Dense(cell.in_channels, cell.out_channels, _ZEROS, _ZEROS, fuse_gelu=True), True
    if kind is nn.LayerNorm and len(cell.normalized_shape) == 1 and cell.begin_norm_axis == -1 \
            and cell.begin_params_axis == -1:
        return layers.LayerNorm(cell.normalized_shape, epsilon=cell.epsilon), False
    if _exact_gelu(cell):
        return layers.GELU(approximate=False), False
    if kind is nn.Dense and cell.has_bias and cell.activation is None:
        return layers.Dense(cell.in_channels, cell.out_channels, _ZEROS, _ZEROS), False
    if kind is nn.MaxPool2d and cell.use_pad and cell.format == "NCHW" and not cell.return_indices:
        pad = cell.padding
        if _square(cell.kernel_size) and _square(cell.stride) and pad[0] == 0 and pad[1] == pad[2] \
                and not cell.max_pool.ceil_mode and tuple(cell.max_pool.dilation) == (1, 1, 1):
            return layers.MaxPool2d(_square(cell.kernel_size), _square(cell.stride), "pad", pad[1]), False
    if kind is nn.Conv2d and cell.group == 1 and tuple(cell.dilation) == (1, 1) and cell.pad_mode == "pad" \
            and cell.data_format == "NCHW" and isinstance(cell.padding, int) and conv_library_path() is not None:
        k, s = _square(cell.kernel_size), _square(cell.stride)
        if k and s:
            return layers.Conv2d(cell.in_channels, cell.out_channels, k, s, "pad", cell.padding,
                                 has_bias=cell.has_bias, weight_init=_ZEROS, bias_init=_ZEROS), False
    if kind is nn.BatchNorm2d and type(following) is nn.ReLU and cell.use_batch_statistics is None \
            and cell.format == "NCHW" and cell.gamma.requires_grad:
        return layers.BatchNorm2d(cell.num_features, eps=cell.eps, momentum=1.0 - cell.momentum,
                                  fuse_relu=True), True
    if kind is ChannelsLastDepthwise:
        return layers.DepthwiseNHWC(cell.in_channels, _ZEROS), False
    if kind is PlainDropPath and cell.dropout is not None:
        return layers.DropPath(cell.drop_prob, cell.dropout), False
    return None, False


def _adopt(kernel, plain):
    """`kernel` holding `plain`'s parameters (the same objects) and training mode."""
    for name in _PARAMETERS:
        value = getattr(plain, name, None)
        if isinstance(value, ms.Parameter):
            setattr(kernel, name, value)
    kernel.set_train(plain.training)
    return kernel


def _swap_children(parent, counts):
    children = list(parent.name_cells().items())
    indexed = isinstance(parent, (nn.SequentialCell, nn.CellList))
    absorbed = set()   # names of cells a fused kernel cell took over (now Identity)
    for i, (name, child) in enumerate(children):
        if name in absorbed:
            continue
        following = children[i + 1][1] if i + 1 < len(children) else None
        kernel, absorbs = _kernel_cell(child, following, parent, name)
        if kernel is None:
            _swap_children(child, counts)
            continue
        replaced = [(name, _adopt(kernel, child))]
        if absorbs:
            replaced.append((children[i + 1][0], nn.Identity()))
            absorbed.add(children[i + 1][0])
        for key, new in replaced:
            if indexed:
                parent[int(key)] = new
            else:
                setattr(parent, key, new)
        counts[type(kernel).__name__] = counts.get(type(kernel).__name__, 0) + 1


def apply_cpu_kernels(net: nn.Cell) -> nn.Cell:
    """Swap the cells of `net` that the C++ kernels implement for kernel cells holding the same
    parameters (a BatchNorm followed by a ReLU, a channel MLP's first Dense and its GELU, each
    become one fused kernel cell and an ``Identity``), in place, and return `net`. Builds the kernels first (:func:`~.build.build_kernels`, cached); where they
    cannot run (another device, no compiler: one ``warning:`` line) `net` is returned unchanged."""
    if not build_kernels():
        return net
    names = {id(p): p.name for p in net.get_parameters(expand=True)}
    counts = {}
    _swap_children(net, counts)
    for p in net.get_parameters(expand=True):   # inserting a cell re-prefixes its parameters' names
        p.name = names.get(id(p), p.name)
    return net
