"""The run's settings: the schema of keys (defaults, types, bounds), config files, the command line
and the settings that follow from others (per-dataset defaults, the demo layer).

    >>> cfg = load_config(["--batch_size", "32", "--dataset_choose", "cifar100"])
    >>> cfg.num_classes, cfg.mean        # per-dataset values follow dataset_choose
    (100, [0.5071, 0.4867, 0.4408])
"""
from .cli import (COMMON_OPTIONS, DEFAULT_CONFIG_FILE, CommandLine, cap_workers, config_markdown,
                  load_config, parse_command_line, path_arg)
from .presets import DATA_ROOT, DEMO_OVERRIDES, DEMO_ROOT, apply_dataset_defaults
from .schema import (AMP_LEVELS, EPOCH_SEED_STRIDE, LOSS_SCALE_TYPES, MAX_IMAGE_SIZE, SCHEMA, SCHEMA_BY_NAME,
                     SEED_LIMIT, Key, epoch_seed, option)
from .values import Config, convert_value, epoch_config

__all__ = ["load_config", "parse_command_line", "CommandLine", "option", "Key", "Config", "SCHEMA",
           "SCHEMA_BY_NAME", "convert_value", "cap_workers", "path_arg", "config_markdown",
           "apply_dataset_defaults", "epoch_config", "epoch_seed", "DEFAULT_CONFIG_FILE", "COMMON_OPTIONS",
           "DATA_ROOT", "DEMO_ROOT", "DEMO_OVERRIDES", "SEED_LIMIT", "EPOCH_SEED_STRIDE", "MAX_IMAGE_SIZE",
           "AMP_LEVELS", "LOSS_SCALE_TYPES"]
