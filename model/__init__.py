"""ConvMLP for MindSpore: ``from model import ConvMLP, convmlp_s, convmlp_m, convmlp_l, create_model``.

``convmlp`` holds the cells and one builder per released variant, ``configs`` their settings,
``helpers`` building by name, ``features`` the backbone's feature levels, ``weights`` reading
checkpoints into a model, ``cpu_kernels`` the C++ CPU kernels applied to a built network
(``apply_cpu_kernels``, ``fuse_for_inference``), ``torch_convmlp`` the PyTorch reference, ``cache``
the user cache folder. The package imports nothing from outside itself."""
from .configs import HEAD_PREFIX, TOPOLOGY_KEYS, default_cfgs
from .convmlp import (ConvMLP, ConvMLPBlock, ConvMLPStage, ConvStage, ConvTokenizer, ConvDownsample, DropPath, Mlp,
                      convmlp_l, convmlp_m, convmlp_s)
from .errors import CheckpointError, ConfigError, UserError
from .features import FeatureInfo, FeatureListNet
from .helpers import complete_topology, create_model, list_models
from .weights import (check_finite, check_fit, fit_problems, load_pretrained, read_checkpoint, require_convmlp,
                      require_finite_outputs)

__all__ = ["ConvMLP", "ConvMLPBlock", "ConvMLPStage", "ConvStage", "ConvTokenizer", "ConvDownsample",
           "DropPath", "Mlp", "convmlp_s", "convmlp_m", "convmlp_l", "default_cfgs", "create_model",
           "list_models", "load_pretrained", "read_checkpoint", "check_fit", "fit_problems", "require_convmlp",
           "check_finite", "require_finite_outputs", "complete_topology", "TOPOLOGY_KEYS", "HEAD_PREFIX",
           "UserError", "ConfigError", "CheckpointError", "FeatureInfo", "FeatureListNet"]
