"""The configuration schema: every key of ``config.yaml`` and the command line with its default,
type, help text, bounds, the scripts that read it and what ``--resume`` does with a new value, and
the bounds that more than one module relies on (seeds, topology; sizes: src/platform/bounds.py)."""
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

from model import default_cfgs, list_models

from ..data.catalog import DATASETS, INTERPOLATIONS
from ..data.randaugment import parse_aa
from ..platform.bounds import MAX_IMAGE_SIZE

__all__ = ["Key", "option", "SCHEMA", "SCHEMA_BY_NAME", "SEED_LIMIT", "EPOCH_SEED_STRIDE", "MAX_IMAGE_SIZE",
           "AMP_LEVELS", "LOSS_SCALE_TYPES", "SCRIPTS", "epoch_seed", "check_path", "format_number"]

#: MindSpore's automatic mixed precision levels, and the loss scalings (src.train.step).
AMP_LEVELS = ("O0", "O1", "O2", "O3")
LOSS_SCALE_TYPES = ("none", "fixed", "dynamic")


def _topology_text(key):
    """The released variants' values of a topology key, for its help text (``S 2,4,2; M ...``)."""
    def text(v):
        return ",".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else str(v)
    return "; ".join(f"{name.rsplit('_', 1)[-1].upper()} {text(cfg[key])}" for name, cfg in default_cfgs.items())


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
    scripts: tuple = ()            # the entry scripts that read the key (set by _placed below)
    on_resume: Optional[str] = None   # train.py --resume with another value: "refuse" | "warn" | None (free)

    @property
    def label(self):
        return f"--{self.name}" if self.option else self.name


def option(name, default, type, help, **kw):
    """A command-line option of one entry script (``--json FILE``, ``--verify``): declared like a
    config key and parsed by the same code, but not part of the run's config."""
    return Key(name, default, type, help, option=True, **kw)


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


def _check_open_unit(v):
    return None if 0 < v < 1 else ("a number in (0, 1) (exclusive: 1 keeps the EMA at its start, 0 makes it a copy "
                                   "of the weights)")


_check_open_unit.bounds = "in (0, 1)"


def _check_not_blank(v):
    return None if v is None or v.strip() else "a non-empty string"


def format_number(x):
    """A bound as a person writes it: 4294967295, 0.5, 1e-05."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _check_list_range(lo, hi, lo_open=False):
    """Every entry in [lo, hi] ((lo, hi] with `lo_open`)."""
    bounds = f"in {'(' if lo_open else '['}{format_number(lo)}, {format_number(hi)}]"

    def check(v):
        if all((lo < x if lo_open else lo <= x) and x <= hi for x in v):
            return None
        return f"numbers {bounds}"
    check.bounds = bounds
    return check


#: Longest path a path key takes (Linux's PATH_MAX, terminating NUL included): every message that
#: names the path stays bounded.
MAX_PATH_BYTES = 4096


def check_path(v):
    """A path key: not empty, no NUL character, shorter than PATH_MAX (the OS refuses all three)."""
    if v is None:
        return None
    if not v.strip():
        return "a non-empty path"
    if "\0" in v:
        return "a path without NUL characters"
    if len(v.encode("utf-8", "surrogateescape")) >= MAX_PATH_BYTES:
        return f"a path shorter than {MAX_PATH_BYTES} bytes"
    return None


def _check_resume(v):
    return None if v is None or v == "auto" or not check_path(v) else "null, 'auto' or a checkpoint path"


#: Seeds are 32-bit (MindSpore's ``set_seed``, the dataset seed, NumPy): every seed derived from
#: ``seed`` must stay below this.
SEED_LIMIT = 2 ** 32


#: The data pipeline of epoch E (0-based) is seeded with ``seed + EPOCH_SEED_STRIDE * E``
#: (:func:`epoch_seed`), so the shuffle and augmentation of an epoch do not depend on a resume.
EPOCH_SEED_STRIDE = 1000


#: Upper bounds of the custom topology (the largest official variant, L: blocks 4-8-3, dims up to
#: 768, mlp ratio 3, 96 channels, 3 conv blocks; these leave an order of magnitude of room).
MAX_BLOCKS, MAX_DIM, MAX_MLP_RATIO, MAX_CHANNELS = 64, 8192, 16, 2048


def epoch_seed(seed, epoch):
    """The data-pipeline seed of 0-based `epoch` (see :data:`EPOCH_SEED_STRIDE`)."""
    return seed + EPOCH_SEED_STRIDE * epoch


SCHEMA = [
    # model
    Key("arch", "convmlp_s", "str", "Model variant.", choices=tuple(list_models())),
    Key("num_classes", None, "int", "Classifier outputs; null = from the dataset (10, 100, 102, 1000; "
        "imagefolder: the number of class folders).",
        nullable=True, min=1, max=100000),
    Key("drop_path_rate", 0.1, "float", "Stochastic depth rate.", min=0.0, max=1.0),
    Key("blocks", None, "ints", "Custom topology: Conv-MLP blocks per stage; null = the arch's "
        f"({_topology_text('blocks')}). Topology keys left null come from the arch, so blocks, dims and "
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
        check=check_path),
    # data
    Key("dataset_choose", "cifar10", "str", "Dataset; selects num_classes, mean/std, default paths and the "
        "official recipe's values of the keys left null. cifar10/cifar100: the binary release; flowers102, "
        "imagenet: class-per-folder image trees with their recipes; imagefolder: any tree root/<class>/<image> "
        "(see data/README.md).", choices=DATASETS),
    Key("train_data_path", None, "str", "Training data: the folder of .bin files (CIFAR) or of class folders; "
        "null = data/cifar-10-batches-bin, data/cifar-100-binary, data/flowers102/train, data/imagenet/train "
        "(data/demo/... when demo is on); imagefolder needs it.", nullable=True, check=check_path),
    Key("val_data_path", None, "str", "Validation data, as train_data_path; null = the CIFAR folder, "
        "data/flowers102/valid, data/imagenet/val (none with val_fraction).", nullable=True, check=check_path),
    Key("val_fraction", None, "float", "Image trees: hold out this fraction of each class of train_data_path "
        "for validation (seeded by seed, stratified; the two file lists are saved in save_checkpoint_path and "
        "reused by --resume and evl.py); null = validate on val_data_path.", nullable=True, min=0.001,
        max=0.999),
    Key("skip_bad_images", False, "bool", "Image trees: skip unreadable, truncated, empty or oversized image "
        "files (counted in the log) instead of stopping with an error naming the first."),
    Key("download", False, "bool", "Download and extract the official binary archive when the data "
        "folder is missing."),
    Key("demo", False, "bool", "Use a small generated dataset (written under data/demo if missing) "
        "instead of real CIFAR; for smoke tests."),
    Key("image_size", 224, "int", "Input resolution; 32 = native CIFAR size (no resize).", min=8,
        max=MAX_IMAGE_SIZE),
    Key("batch_size", None, "int", "Training batch size per device; null = the dataset's recipe (CIFAR, "
        "ImageNet 128; Flowers-102 96, L 64).", nullable=True, min=1),
    Key("eval_batch_size", None, "int", "Evaluation batch size per device; null = batch_size.",
        nullable=True, min=1),
    Key("num_parallel_workers", 2, "int", "Workers for the data pipeline's map/batch operations; more "
        "than the machine's cores is lowered to the core count (with a warning). Each map worker has its own "
        "random stream, so the augmentation depends on this number.", min=1),
    Key("mean", None, "floats", "Normalisation mean (RGB, 0..1); null = per-dataset value.",
        nullable=True, length=3, check=_check_list_range(0, 1)),
    Key("std", None, "floats", "Normalisation std (RGB, 0..1); null = per-dataset value.",
        nullable=True, length=3, check=_check_positive_list),
    # augmentation (official fine-tune recipe)
    Key("crop_scale", None, "floats", "RandomResizedCrop area range (fraction of the image); null = the "
        "dataset's recipe (0.8, 1; ImageNet 0.08, 1).", nullable=True, length=2, check=_check_range_pair(0.0, 1.0)),
    Key("crop_pct", None, "float", "Evaluation crop (timm): resize the shorter side to image_size / crop_pct, "
        "then crop the centre image_size x image_size; null = the dataset's recipe (1.0; ImageNet 0.9).",
        nullable=True, min=0.05, max=1.0),
    Key("crop_ratio", [0.75, 1.3333333], "floats", "RandomResizedCrop aspect-ratio range.",
        length=2, check=_check_range_pair(0.0, None)),
    Key("interpolation", "bicubic", "str", "Resize interpolation for crop, eval resize and RandAugment (bicubic crops and resizes use "
        "Pillow's filter, as timm's transforms).",
        choices=INTERPOLATIONS),
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
    Key("epoch_size", None, "int", "Training epochs, cool-down included; null = the dataset's recipe (fine-"
        "tuning: 50 cosine epochs + 10 at min_lr = 60; ImageNet 300 + 10 = 310).", nullable=True, min=1,
        max=100000),
    Key("cooldown_epochs", None, "int", "Final epochs at min_lr after the cosine decay (timm's cooldown); null "
        "= the dataset's recipe (10).", nullable=True, min=0, max=100000),
    Key("lr", None, "float", "Peak learning rate (AdamW, cosine schedule); null = the dataset's recipe (CIFAR "
        "3e-4; Flowers-102 S 5e-4, M/L 3e-4; ImageNet 5e-4). Used as given, not scaled: it belongs to the "
        "recipe's global batch, so scale it linearly if batch_size x devices changes a lot.", nullable=True,
        min=0.0),
    Key("min_lr", None, "float", "Final learning rate of the cosine schedule; null = the dataset's recipe "
        "(1e-5; Flowers-102 1e-8).", nullable=True, min=0.0),
    Key("warmup_lr", None, "float", "Learning rate at the start of the linear warm-up; null = the dataset's "
        "recipe (1e-6; ImageNet 1e-4).", nullable=True, min=0.0),
    Key("warmup_epochs", None, "int", "Linear warm-up epochs; null = the dataset's recipe (10; ImageNet 5).",
        nullable=True, min=0, max=100000),
    Key("weight_decay", 0.05, "float", "AdamW weight decay.", min=0.0),
    Key("model_ema", None, "bool", "Keep an exponential moving average of the weights (timm's ModelEmaV2: "
        "after every step ema = decay x ema + (1 - decay) x weight, BatchNorm statistics included), evaluated "
        "each epoch beside the weights and saved as ema.* in the checkpoints; null = the dataset's recipe "
        "(ImageNet on, else off).", nullable=True),
    Key("model_ema_decay", None, "float", "Decay of model_ema (1 would keep the EMA at its start and 0 make it a "
        "copy of the weights: both refused); null = the dataset's recipe (ImageNet 0.99996, else timm's 0.9998).",
        nullable=True, check=_check_open_unit),
    Key("use_ema", False, "bool", "evl.py, infer.py, export.py: use the checkpoint's EMA weights (ema.*, "
        "written by train.py with model_ema) instead of its weights."),
    Key("max_steps_per_epoch", None, "int", "Debug cap on steps per epoch; null = the whole dataset.",
        nullable=True, min=1, max=10 ** 9),
    # precision
    Key("amp_level", "O0", "str", "MindSpore automatic mixed precision level.", choices=AMP_LEVELS),
    Key("loss_scale_type", "none", "str", "Loss scaling: none, fixed (loss_scale) or dynamic (starts "
        "at loss_scale).", choices=LOSS_SCALE_TYPES),
    Key("loss_scale", 1024.0, "float", "Loss scale value (fixed) or initial value (dynamic).", min=1.0,
        max=2.0 ** 24),
    # checkpoints, logging
    Key("resume", None, "str", "Resume training: null = no, auto = latest checkpoint in "
        "save_checkpoint_path, or a checkpoint path.", nullable=True, check=_check_resume),
    Key("save_checkpoint_path", "./output", "str", "Folder for checkpoints, logs and the resolved config.",
        check=check_path),
    Key("keep_checkpoint_max", 5, "int", "Number of most recent checkpoints to keep.", min=1, max=10000),
    Key("checkpoint_path", None, "str", "Checkpoint evaluated by evl.py.", nullable=True, check=check_path),
    Key("eval_interval", 1, "int", "Evaluate every N epochs during training, and after the last epoch.", min=1,
        max=100000),
    Key("log_interval", 20, "int", "Log every N steps.", min=1, max=10 ** 9),
    # runtime
    Key("device_target", "auto", "str", "Device; auto = Ascend, then GPU, then CPU.",
        choices=("auto", "Ascend", "GPU", "CPU")),
    Key("device_id", 0, "int", "Device index for single-device runs.", min=0, max=4095),
    Key("mode", "graph", "str", "MindSpore execution mode.", choices=("graph", "pynative")),
    Key("cpu_kernels", True, "bool", "CPU only: C++ kernels (model/csrc, built with g++ on first use, applied to "
        "the built network) for convolution backward, LayerNorm, GELU, BatchNorm+ReLU, max-pool, depthwise conv, bias; false = MindSpore's."),
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
    Key("seed", 0, "int", "Random seed (weights, shuffling, augmentation, drop path); epoch E's data pipeline uses "
        f"seed + {EPOCH_SEED_STRIDE} x E, which must stay below 2**32.", min=0, max=SEED_LIMIT - 1),
]


#: The entry scripts that read config keys (pth2ckpt.py and dataset.py take their own options).
SCRIPTS = ("train.py", "evl.py", "infer.py", "export.py")
EVAL_SCRIPTS = SCRIPTS[1:]

#: The keys only training reads (augmentation, optimisation, EMA, checkpoints written, ModelArts)
#: and those only the evaluating scripts read; every other key is read by all four, but for the two
#: tables after these.
TRAIN_ONLY = ("pretrained_ckpt", "drop_path_rate", "crop_scale", "crop_ratio", "hflip", "aa", "reprob", "smoothing",
              "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "epoch_size", "cooldown_epochs", "lr", "min_lr",
              "warmup_lr", "warmup_epochs", "weight_decay", "model_ema", "model_ema_decay", "max_steps_per_epoch",
              "loss_scale_type", "loss_scale", "resume", "keep_checkpoint_max", "eval_interval", "run_modelarts",
              "data_url", "train_url", "modelarts_data_path")
EVAL_ONLY = ("use_ema", "checkpoint_path")
#: The keys of reading a dataset split (its folders, its bad files, the run folder's split lists, the
#: progress log and the graph cache of the evaluation loop), which infer.py and export.py do not read;
#: and the keys export.py alone leaves out (it batches by its own --batch_size and traces MindSpore's
#: own kernels).
DATA_ONLY = ("val_data_path", "val_fraction", "skip_bad_images", "download", "save_checkpoint_path",
             "num_parallel_workers", "log_interval", "graph_cache")
NOT_EXPORT = ("eval_batch_size", "cpu_kernels")

#: ``train.py --resume``: a key whose new value would change what the saved state means (the model, the
#: classes, the split, the step positions, what best.ckpt ranks) is refused; a key that only changes
#: how training goes on is named in one warning; the rest (where and how it runs) may change freely.
RESUME_REFUSED = ("num_classes", "dataset_choose", "val_fraction", "batch_size", "max_steps_per_epoch", "model_ema")
#: The model's keys are checked against the checkpoint's weights themselves (src.checkpoint.load.check_arch,
#: model.check_fit), which name the mismatching tensors.
RESUME_BY_CHECKPOINT = ("arch", "blocks", "dims", "mlp_ratios", "channels", "n_conv_blocks")
RESUME_FREE = ("resume", "save_checkpoint_path", "keep_checkpoint_max", "log_interval", "device_target", "device_id",
               "mode", "cpu_kernels", "graph_cache", "is_distributed", "run_modelarts", "data_url", "train_url",
               "modelarts_data_path", "download", "demo", "checkpoint_path", "use_ema", "eval_batch_size",
               "pretrained_ckpt")


def _placed(key):
    scripts = ("train.py",) if key.name in TRAIN_ONLY else EVAL_SCRIPTS if key.name in EVAL_ONLY else \
        ("train.py", "evl.py") if key.name in DATA_ONLY else SCRIPTS[:3] if key.name in NOT_EXPORT else SCRIPTS
    on_resume = None if key.name in RESUME_FREE + RESUME_BY_CHECKPOINT + EVAL_ONLY else \
        "refuse" if key.name in RESUME_REFUSED else "warn"
    return dataclasses.replace(key, scripts=scripts, on_resume=on_resume)


SCHEMA = [_placed(k) for k in SCHEMA]
SCHEMA_BY_NAME = {k.name: k for k in SCHEMA}
