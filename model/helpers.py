"""Building models by name: the registry of released variants, and a topology completed from an
arch's settings."""
from typing import Dict, Optional, Sequence, Union

from mindspore import nn

from .configs import TOPOLOGY_KEYS, default_cfgs
from .convmlp import model_entrypoints
from .errors import ConfigError
from .features import FeatureListNet

__all__ = ["create_model", "list_models", "complete_topology", "STAGE_KEYS"]

#: The per-stage lists among them: one entry per Conv-MLP stage, so all of the same length.
STAGE_KEYS = ("blocks", "dims", "mlp_ratios")


def list_models():
    """Names accepted by :func:`create_model`, smallest variant first."""
    return list(model_entrypoints)


def create_model(name: str, num_classes: int = 1000, pretrained_ckpt: Optional[str] = None,
                 features_only: bool = False, out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 **kwargs) -> nn.Cell:
    """Build a registered ConvMLP variant; topology keyword arguments that are given replace the
    variant's (:func:`complete_topology`); ``pretrained_ckpt`` loads a (converted) checkpoint with
    :func:`.weights.load_pretrained`, re-creating the head when its class count differs.

    ``features_only=True`` builds the backbone without its head (:class:`.features.FeatureListNet`):
    its output is the tuple of the feature maps ``out_indices`` (levels of ``feature_info``, timm's
    rules), and ``pretrained_ckpt`` may be a backbone or a classifier checkpoint (its head is not
    loaded)."""
    if name not in model_entrypoints:
        raise ConfigError(f"unknown arch '{name}': expected one of {', '.join(list_models())}")
    topo = complete_topology(name, {k: kwargs.pop(k) for k in TOPOLOGY_KEYS if k in kwargs})
    if not features_only:
        return model_entrypoints[name](pretrained_ckpt=pretrained_ckpt, num_classes=num_classes, **topo, **kwargs)
    net = model_entrypoints[name](pretrained_ckpt=pretrained_ckpt, classifier_head=False, **topo, **kwargs)
    return FeatureListNet(net, out_indices)


def complete_topology(arch: str, given: Dict) -> Dict:
    """The ConvMLP arguments of `arch` (``default_cfgs``) with the topology keys in `given` (those
    not None) in their place: ``--dims`` alone keeps the arch's blocks, mlp_ratios, channels and
    n_conv_blocks. ConfigError naming the keys and where each came from when the per-stage lists
    end up of different lengths (e.g. two dims for the arch's three stages)."""
    if arch not in default_cfgs:
        raise ConfigError(f"unknown arch '{arch}': expected one of {', '.join(list_models())}")
    topo = {k: given[k] if given.get(k) is not None else default_cfgs[arch][k] for k in TOPOLOGY_KEYS}
    topo = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in topo.items()}
    if len({len(topo[k]) for k in STAGE_KEYS}) > 1:
        parts = [f"{k} {topo[k]} ({'given' if given.get(k) is not None else 'from ' + arch})" for k in STAGE_KEYS]
        raise ConfigError(f"{', '.join(parts)}: blocks, dims and mlp_ratios need one entry per stage, the "
                          "same number each; set them together")
    return topo
