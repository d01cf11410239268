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
import dataclasses
import difflib
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import yaml

from . import cifar
from .errors import ConfigError
from .strict_yaml import load_mapping, read_utf8

__all__ = ["SCHEMA", "Key", "option", "Config", "CommandLine", "load_config", "parse_command_line",
           "apply_dataset_defaults", "resolve_device", "parse_aa", "config_markdown", "cli_keys", "DEFAULT_CONFIG_FILE",
           "DEMO_OVERRIDES", "DEMO_SIZES", "convert_value", "epoch_seed", "SEED_LIMIT", "EPOCH_SEED_STRIDE",
           "cap_workers", "path_arg"]

_LOG = logging.getLogger(__name__)

#: ``config.yaml`` at the top of the repository, next to the entry scripts.
DEFAULT_CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config.yaml")

DATA_ROOT = "data"        # default parent of the dataset folders (relative to the working directory)
DEMO_ROOT = "data/demo"   # default parent when `demo: true`

# ``--demo``: a generated CIFAR-10-format sample at 32 px, a few epochs (a few minutes on 2 CPU
# cores). This layer sits between config.yaml and the command line, so flags still win.
DEMO_OVERRIDES = {"image_size": 32, "epoch_size": 6, "warmup_epochs": 1, "cooldown_epochs": 0,
                  "lr": 5e-4, "min_lr": 1e-5,
                  "batch_size": 64, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "aa": None,
                  "drop_path_rate": 0.0, "save_checkpoint_path": "./output/demo"}
#: Records of the generated demo sample (written once to ``DEMO_ROOT`` by dataset.prepare_demo).
DEMO_SIZES = {"train": 3000, "val": 1000}


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
    option: bool = False           # an option of one script (not a config key): named "--name" in messages

    @property
    def label(self):
        return f"--{self.name}" if self.option else self.name


def option(name, default, type, help, **kw):
    """A command-line option of one entry script (``--json FILE``, ``--verify``): declared like a
    config key and parsed by the same code, but not part of the run's config."""
    return Key(name, default, type, help, option=True, **kw)


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
            return f"two numbers lo, hi with {lo_min} < lo <= hi{upper}"
        return None
    return check


def _check_positive_list(v):
    return None if all(x > 0 for x in v) else "positive numbers"


def _check_not_blank(v):
    return None if v is None or v.strip() else "a non-empty string"


def _num(x):
    """A bound as a person writes it: 4294967295, 0.5, 1e-05."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _check_list_range(lo, hi, lo_open=False):
    """Every entry in [lo, hi] ((lo, hi] with `lo_open`)."""
    bounds = f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}]"

    def check(v):
        if all((lo < x if lo_open else lo <= x) and x <= hi for x in v):
            return None
        return f"numbers {bounds}"
    check.bounds = bounds
    return check


def _check_path(v):
    """A path key: not empty, no NUL character (the OS refuses both)."""
    if v is None:
        return None
    if not v.strip():
        return "a non-empty path"
    if "\0" in v:
        return "a path without NUL characters"
    return None


def path_arg(text):
    """argparse ``type`` for a path option of a script outside the schema (pth2ckpt.py, dataset.py):
    the same check as the schema's path keys."""
    why = _check_path(text)
    if why:
        import argparse
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {why}")
    return text


def _check_resume(v):
    return None if v is None or v == "auto" or not _check_path(v) else "null, 'auto' or a checkpoint path"


#: Seeds are 32-bit (MindSpore's ``set_seed``, the dataset seed, NumPy): every seed derived from
#: ``seed`` must stay below this.
SEED_LIMIT = 2 ** 32
#: The data pipeline of epoch E (0-based) is seeded with ``seed + EPOCH_SEED_STRIDE * E``
#: (:func:`epoch_seed`), so the shuffle and augmentation of an epoch do not depend on a resume.
EPOCH_SEED_STRIDE = 1000
#: Largest ``image_size``: CIFAR images are 32 px, so every larger size only upsamples them, and
#: ImageNet weights were trained at 224; 1024 leaves room for high-resolution inputs of infer.py
#: while one 1024 px image already needs about 0.6 GB of activations in training.
MAX_IMAGE_SIZE = 1024
#: Upper bounds of the custom topology (the largest official variant, L: blocks 4-8-3, dims up to
#: 768, mlp ratio 3, 96 channels, 3 conv blocks; these leave an order of magnitude of room).
MAX_BLOCKS, MAX_DIM, MAX_MLP_RATIO, MAX_CHANNELS = 64, 8192, 16, 2048


def epoch_seed(seed, epoch):
    """The data-pipeline seed of 0-based `epoch` (see :data:`EPOCH_SEED_STRIDE`)."""
    return seed + EPOCH_SEED_STRIDE * epoch


SCHEMA = [
    # model
    Key("arch", "convmlp_s", "str", "Model variant.", choices=("convmlp_s", "convmlp_m", "convmlp_l")),
    Key("num_classes", None, "int", "Classifier outputs; null = from the dataset (10 or 100).",
        nullable=True, min=1, max=100000),
    Key("drop_path_rate", 0.1, "float", "Stochastic depth rate.", min=0.0, max=1.0),
    Key("blocks", None, "ints", "Custom topology: Conv-MLP blocks per stage; null = the arch's "
        "(S 2,4,2; M 3,6,3; L 4,8,3). Topology keys left null come from the arch, so blocks, dims and "
        "mlp_ratios given need one entry per stage of it (3).", nullable=True,
        check=_check_list_range(1, MAX_BLOCKS)),
    Key("dims", None, "ints", "Custom topology: embedding dimension per stage; null = the arch's.",
        nullable=True, check=_check_list_range(1, MAX_DIM)),
    Key("mlp_ratios", None, "floats", "Custom topology: channel-MLP ratio per stage; null = the arch's.",
        nullable=True, check=_check_list_range(0, MAX_MLP_RATIO, lo_open=True)),
    Key("channels", None, "int", "Custom topology: tokenizer output channels; null = the arch's.",
        nullable=True, min=2, max=MAX_CHANNELS),
    Key("n_conv_blocks", None, "int", "Custom topology: residual blocks of the conv stage; null = the "
        "arch's.", nullable=True, min=0, max=MAX_BLOCKS),
    Key("pretrained_ckpt", None, "str", "MindSpore checkpoint to start fine-tuning from "
        "(ImageNet weights converted by pth2ckpt.py); null = train from scratch.", nullable=True,
        check=_check_path),
    # data
    Key("dataset_choose", "cifar10", "str", "Dataset; selects num_classes, mean/std and default paths.",
        choices=cifar.DATASETS),
    Key("train_data_path", None, "str", "Folder with the training .bin files; null = "
        "data/cifar-10-batches-bin or data/cifar-100-binary (data/demo/... when demo is on).", nullable=True,
        check=_check_path),
    Key("val_data_path", None, "str", "Folder with the validation .bin files; null = same default as "
        "train_data_path.", nullable=True, check=_check_path),
    Key("download", False, "bool", "Download and extract the official binary archive when the data "
        "folder is missing."),
    Key("demo", False, "bool", "Use a small generated dataset (written under data/demo if missing) "
        "instead of real CIFAR; for smoke tests."),
    Key("image_size", 224, "int", "Input resolution; 32 = native CIFAR size (no resize).", min=8,
        max=MAX_IMAGE_SIZE),
    Key("batch_size", 128, "int", "Training batch size per device (the official recipe: 128).", min=1),
    Key("eval_batch_size", None, "int", "Evaluation batch size per device; null = batch_size.",
        nullable=True, min=1),
    Key("num_parallel_workers", 2, "int", "Workers for the data pipeline's map/batch operations; more "
        "than the machine's cores is lowered to the core count (with a warning).", min=1),
    Key("mean", None, "floats", "Normalisation mean (RGB, 0..1); null = per-dataset value.",
        nullable=True, length=3, check=_check_list_range(0, 1)),
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
    Key("mixup", 0.8, "float", "Mixup alpha (0 = off).", min=0.0, max=100.0),
    Key("cutmix", 1.0, "float", "CutMix alpha (0 = off).", min=0.0, max=100.0),
    Key("mixup_prob", 1.0, "float", "Probability of applying mixup or cutmix to a batch.", min=0.0, max=1.0),
    Key("mixup_switch_prob", 0.5, "float", "Probability of cutmix instead of mixup when both are on.",
        min=0.0, max=1.0),
    # optimisation
    Key("epoch_size", 60, "int", "Training epochs, cool-down included (the official fine-tune recipe: 50 "
        "cosine epochs + 10 at min_lr).", min=1, max=100000),
    Key("cooldown_epochs", 10, "int", "Final epochs at min_lr after the cosine decay (timm's cooldown).",
        min=0, max=100000),
    Key("lr", 3e-4, "float", "Peak learning rate (AdamW, cosine schedule). Used as given, not scaled: it "
        "belongs to the recipe's global batch, so scale it linearly if batch_size x devices changes a lot.",
        min=0.0),
    Key("min_lr", 1e-5, "float", "Final learning rate of the cosine schedule.", min=0.0),
    Key("warmup_lr", 1e-6, "float", "Learning rate at the start of the linear warm-up.", min=0.0),
    Key("warmup_epochs", 10, "int", "Linear warm-up epochs.", min=0, max=100000),
    Key("weight_decay", 0.05, "float", "AdamW weight decay.", min=0.0),
    Key("max_steps_per_epoch", None, "int", "Debug cap on steps per epoch; null = the whole dataset.",
        nullable=True, min=1, max=10 ** 9),
    # precision
    Key("amp_level", "O0", "str", "MindSpore automatic mixed precision level.", choices=("O0", "O1", "O2", "O3")),
    Key("loss_scale_type", "none", "str", "Loss scaling: none, fixed (loss_scale) or dynamic (starts "
        "at loss_scale).", choices=("none", "fixed", "dynamic")),
    Key("loss_scale", 1024.0, "float", "Loss scale value (fixed) or initial value (dynamic).", min=1.0,
        max=2.0 ** 24),
    # checkpoints, logging
    Key("resume", None, "str", "Resume training: null = no, auto = latest checkpoint in "
        "save_checkpoint_path, or a checkpoint path.", nullable=True, check=_check_resume),
    Key("save_checkpoint_path", "./output", "str", "Folder for checkpoints, logs and the resolved config.",
        check=_check_path),
    Key("keep_checkpoint_max", 5, "int", "Number of most recent checkpoints to keep.", min=1, max=10000),
    Key("checkpoint_path", None, "str", "Checkpoint evaluated by evl.py.", nullable=True, check=_check_path),
    Key("eval_interval", 1, "int", "Evaluate every N epochs during training.", min=1, max=100000),
    Key("log_interval", 20, "int", "Log every N steps.", min=1, max=10 ** 9),
    # runtime
    Key("device_target", "auto", "str", "Device; auto = Ascend, then GPU, then CPU.",
        choices=("auto", "Ascend", "GPU", "CPU")),
    Key("device_id", 0, "int", "Device index for single-device runs.", min=0, max=4095),
    Key("mode", "graph", "str", "MindSpore execution mode.", choices=("graph", "pynative")),
    Key("cpu_kernels", True, "bool", "CPU only: C++ kernels (model/csrc, built with g++ on first use) for "
        "convolution backward, LayerNorm, GELU, BatchNorm+ReLU, max-pool, depthwise conv, bias; false = MindSpore's."),
    Key("graph_cache", True, "bool", "Graph mode: keep the compiled graphs on disk ($CONVMLP_GRAPH_CACHE, default "
        "~/.cache/convmlp_mindspore/graphs), one folder per setting, so that a later run with the same "
        "setting skips the compilation; false = compile every time."),
    Key("is_distributed", False, "bool", "Data-parallel training (launch with msrun)."),
    Key("run_modelarts", False, "bool", "Running on Huawei ModelArts (needs the moxing SDK): copy data_url "
        "to the node before training and save_checkpoint_path to train_url after each epoch."),
    Key("data_url", None, "str", "ModelArts: OBS path of the dataset (the CIFAR binary folder or the folder "
        "above it); required with run_modelarts.", nullable=True, check=_check_not_blank),
    Key("train_url", None, "str", "ModelArts: OBS path the outputs (checkpoints, logs, metrics) are copied "
        "to; required with run_modelarts.", nullable=True, check=_check_not_blank),
    Key("modelarts_data_path", "/cache/data", "str", "ModelArts: local folder data_url is copied to.",
        check=_check_not_blank),
    Key("seed", 0, "int", "Random seed (weights, shuffling, augmentation); epoch E's data pipeline uses "
        "seed + 1000 x E, which must stay below 2**32.", min=0, max=SEED_LIMIT - 1),
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
        if getattr(key.check, "bounds", None):
            exp += f" {key.check.bounds}"
    else:
        exp = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[key.type]
        if key.min is not None and key.max is not None:
            exp += f" in [{_num(key.min)}, {_num(key.max)}]"
        elif key.min is not None:
            exp += f" >= {_num(key.min)}"
    return exp + (" or null" if key.nullable else "")


def _convert(key, value, source):
    """Convert `value` (from YAML or a CLI string) to the key's type and validate it."""
    def fail(why=None):
        raise ConfigError(f"{source}: invalid value {value!r} for '{key.label}': expected "
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
            try:
                items = yaml.safe_load(text) if text.startswith("[") else [s for s in text.split(",") if s.strip()]
            except yaml.YAMLError:
                fail()
        if not isinstance(items, (list, tuple)) or not items or (key.length is not None
                                                                 and len(items) != key.length):
            fail()
        out = []
        for x in items:
            try:
                if isinstance(x, bool):
                    raise ValueError
                v = float(x)
                if v != v or v in (float("inf"), float("-inf")):
                    fail("finite numbers")
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
            fail(f"an integer >= {_num(key.min)}" if key.type == "int" else f"a value >= {_num(key.min)}")
        if key.max is not None and out > key.max:
            fail(f"a value in [{_num(key.min)}, {_num(key.max)}]" if key.min is not None else f"a value <= {_num(key.max)}")
    if key.check is not None:
        why = key.check(out)
        if why:
            fail(why)
    return out


def convert_value(name, value, source, shown_as=None):
    """`value` converted and validated as the schema's key `name` (its type, bounds and check);
    ConfigError from `source` naming the key (or `shown_as`, e.g. another script's flag)."""
    key = SCHEMA_BY_NAME[name]
    if shown_as:
        key = dataclasses.replace(key, name=shown_as)
    return _convert(key, value, source)


def _unknown_key(name, source, keys=None):
    close = difflib.get_close_matches(name, keys or SCHEMA_BY_NAME, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; -h lists the keys"
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
    """The mapping of a config file: UTF-8, valid YAML, no key given twice (ConfigError otherwise)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; expected a YAML file (see --config)")
    return load_mapping(read_utf8(path, "config file"), f"config file {path}")


def _parse_cli(argv, keys, positionals=False):
    """Split argv into ``(config_file or None, {key: raw string}, [positional arguments])``;
    ``-h`` prints the keys. `keys` maps names to :class:`Key` (the schema and the script's options).

    A ``--key`` without ``=`` takes the next argument as its value, except a boolean key, which
    takes it only when it is a boolean word (a bare ``--flag`` means true). List keys also take
    space-separated values (``--blocks 2 4 2``) unless the script takes positional arguments (then
    one value: ``--blocks 2,4,2``). With `positionals`, other arguments (and everything after a
    lone ``--``) are returned as positional; without, they are an error. A key given more than
    once keeps every value, so that the caller can validate each and then refuse the repetition
    naming both."""
    config_file, raw, paths = None, {}, []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            print(_help_text(keys))
            sys.exit(0)
        if positionals and tok == "--":
            paths += argv[i + 1:]
            break
        if not tok.startswith("--") or tok == "--":
            if positionals:
                paths.append(tok)
                i += 1
                continue
            raise ConfigError(f"command line: unexpected argument {tok!r}; expected --key value")
        name, eq, val = tok[2:].partition("=")
        name = name.replace("-", "_")
        key = keys.get(name)
        if key is None and name != "config":
            raise _unknown_key(name, "command line", keys)
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            is_bool = key is not None and key.type == "bool"
            takes_next = nxt is not None and not nxt.startswith("--") and (
                not is_bool or not positionals or nxt.strip().lower() in _TRUE + _FALSE)
            if not takes_next:
                if not is_bool:
                    raise ConfigError(f"command line: --{name} needs a value")
                val = "true"
            else:
                val = nxt
                i += 1
                if key is not None and key.type in ("floats", "ints") and not positionals:
                    extra = []
                    while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                        extra.append(argv[i + 1])
                        i += 1
                    if extra:
                        val = ",".join([val] + extra)
        i += 1
        if name == "config":
            if config_file is not None:
                raise ConfigError(f"command line: --config is given twice ({config_file!r} and {val!r}); "
                                  "give one config file")
            config_file = val
        else:
            raw.setdefault(name, []).append(val)
    return config_file, raw, paths


def apply_dataset_defaults(cfg):
    """Fill the per-dataset keys that are null from `dataset_choose` (and `demo`); returns cfg.

    num_classes -> 10/100, mean/std -> the dataset's statistics, train/val paths ->
    data/cifar-10-batches-bin or data/cifar-100-binary (under data/demo when demo is on).
    Values the user set are kept.
    """
    name = cfg.dataset_choose
    if cfg.num_classes is None:
        cfg.num_classes = cifar.NUM_CLASSES[name]
    if cfg.mean is None:
        cfg.mean = list(cifar.MEAN[name])
    if cfg.std is None:
        cfg.std = list(cifar.STD[name])
    root = DEMO_ROOT if cfg.demo else DATA_ROOT
    if cfg.train_data_path is None:
        cfg.train_data_path = f"{root}/{cifar.FOLDERS[name]}"
    if cfg.val_data_path is None:
        cfg.val_data_path = f"{root}/{cifar.FOLDERS[name]}"
    return cfg


def cli_keys(argv):
    """The config keys named on the command line (``--key value``, ``--key=value``, ``--key-name``)."""
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def load_config(argv=None, apply_defaults=True):
    """Build the Config: schema defaults < YAML (``--config FILE``) < the demo layer
    (:data:`DEMO_OVERRIDES`, when ``demo`` is on) < ``--key value`` flags.

    `argv` defaults to ``sys.argv[1:]``. With `apply_defaults`, null per-dataset keys are filled
    by :func:`apply_dataset_defaults`. Raises ConfigError for unknown keys and invalid values.
    """
    return parse_command_line(argv, apply_defaults=apply_defaults).cfg


@dataclass
class CommandLine:
    """An entry script's command line: the run's config, the script's own options (a Config of the
    declared :func:`option` keys) and the positional arguments."""
    cfg: "Config"
    options: "Config"
    positionals: list


def parse_command_line(argv=None, options=(), positionals=False, apply_defaults=True) -> CommandLine:
    """The one command-line parser of the entry scripts: config keys as in :func:`load_config`,
    plus the script's own `options` (declared with :func:`option`; an option may take a config
    key's name, and then the command line sets the option) and, with `positionals`, the arguments
    that are not ``--key value`` pairs (e.g. image paths)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # An option may take a config key's name (export.py's --batch_size): on that script's command
    # line the option is meant, and the config key keeps its value from the config file.
    own = {k.name: k for k in options}
    config_file, cli, paths = _parse_cli(argv, {**SCHEMA_BY_NAME, **own}, positionals)
    values = {k.name: (list(k.default) if isinstance(k.default, list) else k.default) for k in SCHEMA}

    path = config_file or DEFAULT_CONFIG_FILE
    if config_file is not None or os.path.isfile(path):
        for name, val in _read_yaml(path).items():
            if name not in SCHEMA_BY_NAME:
                raise _unknown_key(str(name), f"config file {path}")
            values[name] = _convert(SCHEMA_BY_NAME[name], val, f"config file {path}")
    demo_values = cli.get("demo", [values["demo"]])
    if _convert(SCHEMA_BY_NAME["demo"], demo_values[-1], "command line"):
        values.update(DEMO_OVERRIDES)
    opts = {k.name: k.default for k in options}
    for name, vals in cli.items():
        for val in vals:
            if name in own:
                opts[name] = _convert(own[name], val, "command line")
            else:
                values[name] = _convert(SCHEMA_BY_NAME[name], val, "command line")
    for name, vals in cli.items():
        if len(vals) > 1:
            shown = " and ".join(repr(v) for v in vals)
            times = "twice" if len(vals) == 2 else f"{len(vals)} times"
            raise ConfigError(f"command line: --{name} is given {times} ({shown}); give it once")

    cfg = Config(values)
    _check_cross(cfg)
    cap_workers(cfg)
    if apply_defaults:
        apply_dataset_defaults(cfg)
    return CommandLine(cfg, Config(opts), paths)


def _check_cross(cfg):
    """Checks that involve more than one key or the environment."""
    topo = {k: getattr(cfg, k) for k in ("blocks", "dims", "mlp_ratios") if getattr(cfg, k) is not None}
    if len({len(v) for v in topo.values()}) > 1:
        raise ConfigError("blocks, dims and mlp_ratios must have the same length, got "
                          + ", ".join(f"{k} {v}" for k, v in topo.items()))
    if cfg.num_classes is not None and cfg.num_classes < cifar.NUM_CLASSES[cfg.dataset_choose]:
        raise ConfigError(f"num_classes {cfg.num_classes} is smaller than the {cfg.dataset_choose} label "
                          f"range ({cifar.NUM_CLASSES[cfg.dataset_choose]}); set num_classes: null")
    last_seed = epoch_seed(cfg.seed, cfg.epoch_size - 1)
    if last_seed >= SEED_LIMIT:
        raise ConfigError(f"seed {cfg.seed} is too large for epoch_size {cfg.epoch_size}: the data pipeline of the "
                          f"last epoch would use seed + {EPOCH_SEED_STRIDE} x {cfg.epoch_size - 1} = {last_seed}, "
                          f"and seeds are 32-bit (< 2**32 = {SEED_LIMIT}); expected a seed <= "
                          f"{SEED_LIMIT - 1 - EPOCH_SEED_STRIDE * (cfg.epoch_size - 1)}")
    if cfg.run_modelarts and importlib.util.find_spec("moxing") is None:
        raise ConfigError("run_modelarts: true needs the ModelArts SDK (python package 'moxing'), which is not "
                          "installed; set run_modelarts: false outside ModelArts")
    if cfg.run_modelarts:
        for key, what in (("data_url", "the dataset's OBS path"), ("train_url", "the OBS path for the outputs")):
            if getattr(cfg, key) is None:
                raise ConfigError(f"run_modelarts: true needs {key} ({what}, e.g. --{key} obs://bucket/...); "
                                  "the ModelArts job passes it when the job's data/output paths are set")


def cap_workers(cfg, cores=None):
    """Lower ``num_parallel_workers`` to the machine's core count (MindSpore's data pipeline refuses
    more), with one warning line on stderr; returns cfg."""
    cores = cores or os.cpu_count() or 1
    if cfg.num_parallel_workers > cores:
        print(f"warning: num_parallel_workers {cfg.num_parallel_workers} is more than the {cores} CPU core(s) "
              f"of this machine; using {cores}", file=sys.stderr, flush=True)
        cfg.num_parallel_workers = cores
    return cfg


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


def _help_text(keys=None):
    keys = keys or SCHEMA_BY_NAME
    own = [k for k in keys.values() if k.option]
    lines = [f"usage: {os.path.basename(sys.argv[0])} [--config FILE] [--key value ...]", "",
             "--config FILE  YAML file (default: config.yaml at the top of the repository)", ""]
    if own:
        lines.append("options of this script:")
        for k in own:
            lines.append(f"  --{k.name} ({_expected(k)}; default {_fmt_default(k.default)})")
            lines.append(f"      {k.help}")
        lines.append("")
    lines.append("config keys:")
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
