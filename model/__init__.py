"""ConvMLP for MindSpore: ``from model import ConvMLP, convmlp_s, convmlp_m, convmlp_l, create_model``."""
from .convmlp import (HEAD_PREFIX, TOPOLOGY_KEYS, ConvMLP, ConvMLPBlock, ConvMLPStage, ConvStage, ConvTokenizer,
                      ConvDownsample, DropPath, Mlp, convmlp_l, convmlp_m, convmlp_s, default_cfgs)
from .errors import CheckpointError, ConfigError, UserError
from .helpers import (create_model, list_models, load_pretrained, read_checkpoint, check_fit, fit_problems,
                      require_convmlp, check_finite, complete_topology)

__all__ = ["ConvMLP", "ConvMLPBlock", "ConvMLPStage", "ConvStage", "ConvTokenizer", "ConvDownsample",
           "DropPath", "Mlp", "convmlp_s", "convmlp_m", "convmlp_l", "default_cfgs", "create_model",
           "list_models", "load_pretrained", "read_checkpoint", "check_fit", "fit_problems", "require_convmlp", "check_finite",
           "complete_topology", "TOPOLOGY_KEYS", "HEAD_PREFIX", "UserError", "ConfigError", "CheckpointError"]
