"""Configuration: one schema of keys (default, type, help, validation), ``config.yaml``, CLI flags.

Precedence, lowest first: the defaults in :data:`SCHEMA` < the YAML file given by ``--config``
(default: ``config.yaml`` next to this file) < ``--key value`` flags on the command line.
Unknown keys and invalid values raise :class:`errors.ConfigError` naming the key and the value.

    >>> cfg = load_config(["--batch_size", "32", "--dataset_choose", "cifar100"])
    >>> cfg.num_classes, cfg.mean        # per-dataset values follow dataset_choose
    (100, [0.5071, 0.4867, 0.4408])

On the command line booleans are ``true``/``false`` (a bare ``--flag`` means true), ``null``
(or ``none``) is None, and lists are comma separated (``--crop_scale 0.5,1``), space separated
(``--blocks 2 4 2``) or YAML (``--crop_scale [0.5,1]``).
"""
import difflib
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import yaml

from .errors import ConfigError

__all__ = ["SCHEMA", "DATASETS", "Config", "load_config", "apply_dataset_defaults", "resolve_device",
           "parse_aa", "config_markdown", "DEFAULT_CONFIG_FILE"]

_LOG = logging.getLogger(__name__)

#: ``config.yaml`` at the top of the repository, next to the entry scripts.
DEFAULT_CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config.yaml")

# Per-dataset values that follow `dataset_choose` unless the user sets them.
DATASETS = {
    "cifar10": {"num_classes": 10, "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616],
                "folder": "cifar-10-batches-bin"},
    "cifar100": {"num_classes": 100, "mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761],
                 "folder": "cifar-100-binary"},
}
DATA_ROOT = "data"        # default parent of the dataset folders (relative to the working directory)
DEMO_ROOT = "data/demo"   # default parent when `demo: true`


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One configuration key: its default, type, help text and constraints."""
    name: str
    default: Any
    type: str                      # "int" | "float" | "bool" | "str" | "floats" | "ints"
    help: str
    nullable: bool = False
    choices: Optional[tuple] = None
    min: Optional[float] = None    # inclusive lower bound (numbers)
    max: Optional[float] = None    # inclusive upper bound (numbers)
    length: Optional[int] = None   # list length ("floats"/"ints"); None = any length >= 1
    check: Optional[Callable[[Any], Optional[str]]] = None   # returns an explanation when invalid


def parse_aa(spec):
    """Parse a timm RandAugment spec such as ``rand-m9-mstd0.5-inc1``.

    Returns ``None`` for ``None`` (RandAugment off), else a dict with ``m`` (magnitude, 0..10),
    ``n`` (ops per image, default 2), ``mstd`` (std of the per-op magnitude noise, default 0),
    ``inc`` (1 = increasing-severity ops). Raises ValueError with the reason.
    """
    if spec is None:
        return None
    parts = str(spec).split("-")
    if parts[0] != "rand":
        raise ValueError("only RandAugment specs 'rand-...' are supported (e.g. 'rand-m9-mstd0.5-inc1')")
    out = {"m": 9.0, "n": 2, "mstd": 0.0, "inc": 0}
    for part in parts[1:]:
        m = re.fullmatch(r"(mstd|mmax|inc|m|n|w|p)([0-9.]+)", part)
        if not m:
            raise ValueError(f"unknown RandAugment option {part!r} (known: m<int>, n<int>, mstd<float>, inc<0|1>)")
        k, v = m.groups()
        if k in ("mmax", "w", "p"):
            raise ValueError(f"RandAugment option {part!r} is not supported by this port")
        try:
            out[k] = int(v) if k in ("n", "inc") else float(v)
        except ValueError:
            raise ValueError(f"bad number in RandAugment option {part!r}") from None
    if not 0 <= out["m"] <= 10 or out["m"] != int(out["m"]):
        raise ValueError(f"magnitude m{out['m']:g} must be an integer in 0..10")
    out["m"] = int(out["m"])
    if out["inc"] != 1:
        raise ValueError("only increasing-severity ops (inc1) exist in MindSpore's RandAugment; add '-inc1'")
    if out["n"] < 1:
        raise ValueError("n must be >= 1")
    return out


def _check_aa(v):
    try:
        parse_aa(v)
    except ValueError as exc:
        return str(exc)
    return None


def _check_range_pair(lo_min, hi_max):
    def check(v):
        if not lo_min < v[0] <= v[1] or (hi_max is not None and v[1] > hi_max):
            upper = f" <= {hi_max}" if hi_max is not None else ""
            return f"expected two numbers lo, hi with {lo_min} < lo <= hi{upper}"
        return None
    return check


def _check_positive_list(v):
    return None if all(x > 0 for x in v) else "expected positive numbers"


def _check_resume(v):
    return None if v is None or v == "auto" or v.strip() else "expected null, 'auto' or a checkpoint path"


SCHEMA = [
    # model
    Key("arch", "convmlp_s", "str", "Model variant.", choices=("convmlp_s", "convmlp_m", "convmlp_l")),
    Key("num_classes", None, "int", "Classifier outputs; null = from the dataset (10 or 100).",
        nullable=True, min=1),
    Key("drop_path_rate", 0.1, "float", "Stochastic depth rate.", min=0.0, max=1.0),
    Key("blocks", None, "ints", "Custom topology: Conv-MLP blocks per stage; null = the arch's "
        "(S 2,4,2; M 3,6,3; L 4,8,3). Set blocks, dims and mlp_ratios together.", nullable=True,
        check=_check_positive_list),
    Key("dims", None, "ints", "Custom topology: embedding dimension per stage; null = the arch's.",
        nullable=True, check=_check_positive_list),
    Key("mlp_ratios", None, "floats", "Custom topology: channel-MLP ratio per stage; null = the arch's.",
        nullable=True, check=_check_positive_list),
    Key("channels", None, "int", "Custom topology: tokenizer output channels; null = the arch's.",
        nullable=True, min=2),
    Key("n_conv_blocks", None, "int", "Custom topology: residual blocks of the conv stage; null = the "
        "arch's.", nullable=True, min=0),
    Key("pretrained_ckpt", None, "str", "MindSpore checkpoint to start fine-tuning from "
        "(ImageNet weights converted by pth2ckpt.py); null = train from scratch.", nullable=True),
    # data
    Key("dataset_choose", "cifar10", "str", "Dataset; selects num_classes, mean/std and default paths.",
        choices=("cifar10", "cifar100")),
    Key("train_data_path", None, "str", "Folder with the training .bin files; null = "
        "data/cifar-10-batches-bin or data/cifar-100-binary (data/demo/... when demo is on).", nullable=True),
    Key("val_data_path", None, "str", "Folder with the validation .bin files; null = same default as "
        "train_data_path.", nullable=True),
    Key("download", False, "bool", "Download and extract the official binary archive when the data "
        "folder is missing."),
    Key("demo", False, "bool", "Use a small generated dataset (written under data/demo if missing) "
        "instead of real CIFAR; for smoke tests."),
    Key("image_size", 224, "int", "Input resolution; 32 = native CIFAR size (no resize).", min=8),
    Key("batch_size", 128, "int", "Training batch size per device (the official recipe: 128).", min=1),
    Key("eval_batch_size", None, "int", "Evaluation batch size per device; null = batch_size.",
        nullable=True, min=1),
    Key("num_parallel_workers", 2, "int", "Workers for the data pipeline's map/batch operations.", min=1),
    Key("mean", None, "floats", "Normalisation mean (RGB, 0..1); null = per-dataset value.",
        nullable=True, length=3),
    Key("std", None, "floats", "Normalisation std (RGB, 0..1); null = per-dataset value.",
        nullable=True, length=3, check=_check_positive_list),
    # augmentation (official fine-tune recipe)
    Key("crop_scale", [0.8, 1.0], "floats", "RandomResizedCrop area range (fraction of the image).",
        length=2, check=_check_range_pair(0.0, 1.0)),
    Key("crop_ratio", [0.75, 1.3333333], "floats", "RandomResizedCrop aspect-ratio range.",
        length=2, check=_check_range_pair(0.0, None)),
    Key("interpolation", "bicubic", "str", "Resize interpolation for crop, eval resize and RandAugment.",
        choices=("bicubic", "bilinear", "nearest")),
    Key("hflip", 0.5, "float", "Horizontal flip probability (0 = off).", min=0.0, max=1.0),
    Key("aa", "rand-m9-mstd0.5-inc1", "str", "RandAugment spec in timm syntax (m = magnitude 0..10, "
        "n = ops, mstd = magnitude noise); null = off.", nullable=True, check=_check_aa),
    Key("reprob", 0.25, "float", "Random erasing probability (per image, random normal pixels; 0 = off).",
        min=0.0, max=1.0),
    Key("smoothing", 0.1, "float", "Label smoothing.", min=0.0, max=0.999),
    Key("mixup", 0.8, "float", "Mixup alpha (0 = off).", min=0.0),
    Key("cutmix", 1.0, "float", "CutMix alpha (0 = off).", min=0.0),
    Key("mixup_prob", 1.0, "float", "Probability of applying mixup or cutmix to a batch.", min=0.0, max=1.0),
    Key("mixup_switch_prob", 0.5, "float", "Probability of cutmix instead of mixup when both are on.",
        min=0.0, max=1.0),
    # optimisation
    Key("epoch_size", 60, "int", "Training epochs, cool-down included (the official fine-tune recipe: 50 "
        "cosine epochs + 10 at min_lr).", min=1),
    Key("cooldown_epochs", 10, "int", "Final epochs at min_lr after the cosine decay (timm's cooldown).",
        min=0),
    Key("lr", 3e-4, "float", "Peak learning rate (AdamW, cosine schedule). Used as given, not scaled: it "
        "belongs to the recipe's global batch, so scale it linearly if batch_size x devices changes a lot.",
        min=0.0),
    Key("min_lr", 1e-5, "float", "Final learning rate of the cosine schedule.", min=0.0),
    Key("warmup_lr", 1e-6, "float", "Learning rate at the start of the linear warm-up.", min=0.0),
    Key("warmup_epochs", 10, "int", "Linear warm-up epochs.", min=0),
    Key("weight_decay", 0.05, "float", "AdamW weight decay.", min=0.0),
    Key("max_steps_per_epoch", None, "int", "Debug cap on steps per epoch; null = the whole dataset.",
        nullable=True, min=1),
    # precision
    Key("amp_level", "O0", "str", "MindSpore automatic mixed precision level.", choices=("O0", "O1", "O2", "O3")),
    Key("loss_scale_type", "none", "str", "Loss scaling: none, fixed (loss_scale) or dynamic (starts "
        "at loss_scale).", choices=("none", "fixed", "dynamic")),
    Key("loss_scale", 1024.0, "float", "Loss scale value (fixed) or initial value (dynamic).", min=1.0),
    # checkpoints, logging
    Key("resume", None, "str", "Resume training: null = no, auto = latest checkpoint in "
        "save_checkpoint_path, or a checkpoint path.", nullable=True, check=_check_resume),
    Key("save_checkpoint_path", "./output", "str", "Folder for checkpoints, logs and the resolved config."),
    Key("keep_checkpoint_max", 5, "int", "Number of most recent checkpoints to keep.", min=1),
    Key("checkpoint_path", None, "str", "Checkpoint evaluated by evl.py.", nullable=True),
    Key("eval_interval", 1, "int", "Evaluate every N epochs during training.", min=1),
    Key("log_interval", 20, "int", "Log every N steps.", min=1),
    # runtime
    Key("device_target", "auto", "str", "Device; auto = Ascend, then GPU, then CPU.",
        choices=("auto", "Ascend", "GPU", "CPU")),
    Key("device_id", 0, "int", "Device index for single-device runs.", min=0),
    Key("mode", "graph", "str", "MindSpore execution mode.", choices=("graph", "pynative")),
    Key("cpu_kernels", True, "bool", "CPU only: C++ kernels (model/csrc, built with g++ on first use) for "
        "convolution backward, LayerNorm, GELU, BatchNorm+ReLU, max-pool, depthwise conv, bias; false = MindSpore's."),
    Key("is_distributed", False, "bool", "Data-parallel training (launch with msrun)."),
    Key("run_modelarts", False, "bool", "Running on Huawei ModelArts (needs the moxing SDK)."),
    Key("seed", 0, "int", "Random seed (weights, shuffling, augmentation).", min=0),
]
SCHEMA_BY_NAME = {k.name: k for k in SCHEMA}


# --------------------------------------------------------------------------------------------
# Conversion and validation of single values
# --------------------------------------------------------------------------------------------
_NULLS = ("null", "none", "~")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _expected(key):
    if key.choices:
        exp = "one of " + ", ".join(key.choices)
    elif key.type in ("floats", "ints"):
        what = "integers" if key.type == "ints" else "numbers"
        exp = f"a list of {key.length} {what}" if key.length else f"a comma-separated list of {what}"
    else:
        exp = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[key.type]
        if key.min is not None and key.max is not None:
            exp += f" in [{key.min:g}, {key.max:g}]"
        elif key.min is not None:
            exp += f" >= {key.min:g}"
    return exp + (" or null" if key.nullable else "")


def _convert(key, value, source):
    """Convert `value` (from YAML or a CLI string) to the key's type and validate it."""
    def fail(why=None):
        raise ConfigError(f"{source}: invalid value {value!r} for '{key.name}': expected "
                          f"{why or _expected(key)}")

    if value is None or (key.nullable and isinstance(value, str) and value.strip().lower() in _NULLS):
        if key.nullable:
            return None
        fail()

    if key.type == "bool":
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            out = value.strip().lower() in _TRUE
        else:
            fail()
    elif key.type == "int":
        if isinstance(value, bool):
            fail()
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            out = int(value)
        else:
            fail()
    elif key.type == "float":
        if isinstance(value, bool):
            fail()
        try:
            out = float(value)
        except (TypeError, ValueError):
            fail()
        if out != out or out in (float("inf"), float("-inf")):
            fail("a finite number")
    elif key.type == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            fail()
        out = str(value)
        if key.choices:
            match = [c for c in key.choices if c.lower() == out.strip().lower()]
            if not match:
                fail()
            out = match[0]
    elif key.type in ("floats", "ints"):
        items = value
        if isinstance(value, str):
            text = value.strip()
            items = yaml.safe_load(text) if text.startswith("[") else [s for s in text.split(",") if s.strip()]
        if not isinstance(items, (list, tuple)) or not items or (key.length is not None
                                                                 and len(items) != key.length):
            fail()
        out = []
        for x in items:
            try:
                if isinstance(x, bool):
                    raise ValueError
                v = float(x)
                if key.type == "ints":
                    if not v.is_integer():
                        raise ValueError
                    v = int(v)
                out.append(v)
            except (TypeError, ValueError):
                fail()
    else:  # pragma: no cover - schema error
        raise AssertionError(key.type)

    if key.type in ("int", "float"):
        if key.min is not None and out < key.min:
            fail(f"a value >= {key.min:g}")
        if key.max is not None and out > key.max:
            fail(f"a value in [{key.min:g}, {key.max:g}]" if key.min is not None else f"a value <= {key.max:g}")
    if key.check is not None:
        why = key.check(out)
        if why:
            fail(why)
    return out


def _unknown_key(name, source):
    close = difflib.get_close_matches(name, SCHEMA_BY_NAME, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see config.py for the list of keys"
    return ConfigError(f"{source}: unknown key '{name}'{hint}")


# --------------------------------------------------------------------------------------------
# Config object
# --------------------------------------------------------------------------------------------
class Config:
    """Resolved configuration with attribute access (``cfg.batch_size``); keys are those of SCHEMA."""

    def __init__(self, values):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        close = difflib.get_close_matches(name, values, n=1)
        raise AttributeError(f"config has no key '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""))

    def __setattr__(self, name, value):
        if name not in self._values:
            raise _unknown_key(name, "config")
        self._values[name] = value

    def __contains__(self, name):
        return name in self._values

    def __repr__(self):
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def to_dict(self):
        """A plain dict copy (lists copied), in schema order."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._values.items()}

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path):
        """Write the resolved config as YAML to `path` atomically (:func:`fileio.atomic_output`)."""
        from .fileio import atomic_output
        with atomic_output(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_yaml())
        return path


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; expected a YAML file (see --config)")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path}: invalid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def _parse_cli(argv):
    """Split argv into (config_file or None, {key: raw string}) ; `-h` prints the key list."""
    config_file, raw = None, {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            print(_help_text())
            sys.exit(0)
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"command line: unexpected argument {tok!r}; expected --key value")
        name, eq, val = tok[2:].partition("=")
        name = name.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            key = SCHEMA_BY_NAME.get(name)
            is_bool = key is not None and key.type == "bool"
            if nxt is None or nxt.startswith("--"):
                if not is_bool:
                    if name != "config" and key is None:
                        raise _unknown_key(name, "command line")
                    raise ConfigError(f"command line: --{name} needs a value")
                val = "true"
            else:
                val = nxt
                i += 1
                # list keys also take space-separated values: --blocks 2 4 2 (as pth2ckpt.py)
                if key is not None and key.type in ("floats", "ints"):
                    extra = []
                    while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                        extra.append(argv[i + 1])
                        i += 1
                    if extra:
                        val = ",".join([val] + extra)
        i += 1
        if name == "config":
            config_file = val
        elif name not in SCHEMA_BY_NAME:
            raise _unknown_key(name, "command line")
        else:
            raw[name] = val
    return config_file, raw


def apply_dataset_defaults(cfg):
    """Fill the per-dataset keys that are null from `dataset_choose` (and `demo`); returns cfg.

    num_classes -> 10/100, mean/std -> the dataset's statistics, train/val paths ->
    data/cifar-10-batches-bin or data/cifar-100-binary (under data/demo when demo is on).
    Values the user set are kept.
    """
    info = DATASETS[cfg.dataset_choose]
    if cfg.num_classes is None:
        cfg.num_classes = info["num_classes"]
    if cfg.mean is None:
        cfg.mean = list(info["mean"])
    if cfg.std is None:
        cfg.std = list(info["std"])
    root = DEMO_ROOT if cfg.demo else DATA_ROOT
    if cfg.train_data_path is None:
        cfg.train_data_path = f"{root}/{info['folder']}"
    if cfg.val_data_path is None:
        cfg.val_data_path = f"{root}/{info['folder']}"
    return cfg


def load_config(argv=None, apply_defaults=True):
    """Build the Config: schema defaults < YAML (``--config FILE``) < ``--key value`` flags.

    `argv` defaults to ``sys.argv[1:]``. With `apply_defaults`, null per-dataset keys are filled
    by :func:`apply_dataset_defaults`. Raises ConfigError for unknown keys and invalid values.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_file, cli = _parse_cli(argv)
    values = {k.name: (list(k.default) if isinstance(k.default, list) else k.default) for k in SCHEMA}

    path = config_file or DEFAULT_CONFIG_FILE
    if config_file is not None or os.path.isfile(path):
        for name, val in _read_yaml(path).items():
            if name not in SCHEMA_BY_NAME:
                raise _unknown_key(str(name), f"config file {path}")
            values[name] = _convert(SCHEMA_BY_NAME[name], val, f"config file {path}")
    for name, val in cli.items():
        values[name] = _convert(SCHEMA_BY_NAME[name], val, "command line")

    cfg = Config(values)
    _check_cross(cfg)
    if apply_defaults:
        apply_dataset_defaults(cfg)
    return cfg


def _check_cross(cfg):
    """Checks that involve more than one key or the environment."""
    topo = {k: getattr(cfg, k) for k in ("blocks", "dims", "mlp_ratios") if getattr(cfg, k) is not None}
    if len({len(v) for v in topo.values()}) > 1:
        raise ConfigError("blocks, dims and mlp_ratios must have the same length, got "
                          + ", ".join(f"{k} {v}" for k, v in topo.items()))
    if cfg.num_classes is not None and cfg.num_classes < DATASETS[cfg.dataset_choose]["num_classes"]:
        raise ConfigError(f"num_classes {cfg.num_classes} is smaller than the {cfg.dataset_choose} label "
                          f"range ({DATASETS[cfg.dataset_choose]['num_classes']}); set num_classes: null")
    if cfg.run_modelarts and importlib.util.find_spec("moxing") is None:
        raise ConfigError("run_modelarts: true needs the ModelArts SDK (python package 'moxing'), which is not "
                          "installed; set run_modelarts: false outside ModelArts")


# --------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------
def _device_available(target):
    """Whether this MindSpore build can run on `target` (quiet check of the loaded plugins)."""
    if target == "CPU":
        return True
    try:
        from mindspore._c_expression import MSContext  # the check behind device_context.*.is_available
        return bool(MSContext.get_instance().is_pkg_support_device(target))
    except Exception:  # pragma: no cover - private API changed
        import mindspore as ms
        module = {"GPU": ms.device_context.gpu, "Ascend": ms.device_context.ascend}[target]
        return bool(module.is_available())


def resolve_device(cfg):
    """Return the device to use: `cfg.device_target`, or for ``auto`` the first of Ascend, GPU, CPU
    that this MindSpore build supports. Logs the choice; does not modify `cfg`.
    Raises ConfigError when an explicitly requested device is not available."""
    if cfg.device_target != "auto":
        if not _device_available(cfg.device_target):
            raise ConfigError(f"device_target {cfg.device_target} is not available in this MindSpore "
                              f"installation; expected one of the available devices or 'auto'")
        _LOG.info("device: %s (from config)", cfg.device_target)
        return cfg.device_target
    for target in ("Ascend", "GPU", "CPU"):
        if _device_available(target):
            _LOG.info("device: %s (device_target auto: first available of Ascend, GPU, CPU)", target)
            return target
    return "CPU"  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------
def _fmt_default(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:g}" for x in v) + "]"
    return str(v)


def _help_text():
    lines = [f"usage: {os.path.basename(sys.argv[0])} [--config FILE] [--key value ...]", "",
             "--config FILE  YAML file (default: config.yaml next to config.py)", "", "keys:"]
    for k in SCHEMA:
        lines.append(f"  --{k.name} ({_expected(k)}; default {_fmt_default(k.default)})")
        lines.append(f"      {k.help}")
    return "\n".join(lines)


def config_markdown():
    """A Markdown table of all keys (name, default, accepted values, help) for the README."""
    rows = ["| key | default | values | meaning |", "|---|---|---|---|"]
    for k in SCHEMA:
        rows.append(f"| `{k.name}` | `{_fmt_default(k.default)}` | {_expected(k)} | {k.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    # `python -m src.config [--config FILE] [--key value ...]` prints the resolved config;
    # `python -m src.config --markdown` prints the key table for the README.
    from .errors import run_cli

    def _main(argv):
        if argv and argv[0] == "--markdown":
            sys.stdout.write(config_markdown() + "\n")
            sys.stdout.flush()
            return 0
        print(load_config(argv).to_yaml(), end="")
        return 0

    run_cli(_main, sys.argv[1:])
