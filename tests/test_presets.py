"""The ``flowers102`` and ``imagenet`` presets are the official recipes: every value of the official
files (tests/fixtures/official_recipes/, copied from SHI-Labs/Convolutional-MLPs with their source),
for each variant, is either what ``load_config`` resolves for that dataset and arch, or listed in
``NOT_APPLIED`` with the reason; a key of the official files that is neither fails the test."""
import os

import pytest
import yaml

from src.config import load_config
from src.config.presets import RECIPE_KEYS

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "official_recipes")
VARIANTS = ("convmlp_s", "convmlp_m", "convmlp_l")

#: Official key -> how the resolved config shows it (a key of ours, or a function of the config).
SAME_KEY = {"num_classes": "num_classes", "img_size": "image_size", "mean": "mean", "std": "std",
            "cooldown_epochs": "cooldown_epochs", "warmup_epochs": "warmup_epochs", "batch_size": "batch_size",
            "lr": "lr", "min_lr": "min_lr", "warmup_lr": "warmup_lr", "weight_decay": "weight_decay",
            "smoothing": "smoothing", "model_ema": "model_ema", "model_ema_decay": "model_ema_decay",
            "hflip": "hflip", "ratio": "crop_ratio", "crop_pct": "crop_pct", "scale": "crop_scale",
            "interpolation": "interpolation", "train_interpolation": "interpolation", "reprob": "reprob",
            "aa": "aa", "mixup": "mixup", "mixup_prob": "mixup_prob", "mixup_switch_prob": "mixup_switch_prob",
            "cutmix": "cutmix", "drop_path_rate": "drop_path_rate"}
#: timm trains ``epochs`` cosine epochs, then ``cooldown_epochs`` at min_lr: epoch_size counts both.
DERIVED = {"epochs": lambda cfg: cfg.epoch_size - cfg.cooldown_epochs,
           "train_split": lambda cfg: os.path.basename(cfg.train_data_path),
           "val_split": lambda cfg: os.path.basename(cfg.val_data_path),
           "model": lambda cfg: cfg.arch}
#: Official keys this port does not take, and why.
NOT_APPLIED = {
    "dataset": "the dataset is dataset_choose itself",
    "amp": "mixed precision is a GPU/Ascend setting here: amp_level stays O0, the CPU's "
           "(docs/training.md, 'Precision')",
    "patience_epochs": "used only by timm's plateau schedule; the recipe's schedule is cosine",
    "sched": "cosine, the only schedule (src/train/optim.py)",
    "opt": "adamw, the only optimiser (src/train/optim.py)",
    "opt_eps": "1e-8, AdamW's epsilon in src/train/optim.py (checked below)",
    "pretrained": "fine-tuning starts from pretrained_ckpt (pth2ckpt.py's conversion of the ImageNet weights)",
    "vflip": "0.0: no vertical flip is applied",
    "recount": "1: one random-erasing box per image (src/data/mixing.py)",
    "remode": "pixel: erasing with per-pixel normal noise (src/data/mixing.py)",
    "mixup_mode": "batch: one mixup/cutmix draw per batch (src/data/mixing.py)",
    "mixup_off_epoch": "0: mixup stays on for the whole run",
    "seed": "a seed does not carry over between frameworks (the same number draws other numbers in "
            "MindSpore); seed keeps this repository's default",
}
#: Official values this port replaces by another (key: (official value, what is done instead)).
REPLACED = {"train_interpolation": ("random", "timm's 'random' picks bilinear or bicubic per image; here the "
                                    "recipe's interpolation (bicubic) for every image")}


def official(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return yaml.safe_load(f)


def expected_values(dataset, arch):
    """The official file of (dataset, arch) completed with classification.py's defaults."""
    folder = "flowers102" if dataset == "flowers102" else "imagenet"
    values = dict(official("classification_defaults.yml"))
    values.update(official(f"{arch}_{folder}.yml"))
    values["model"] = arch
    return values


def as_number(value):
    """PyYAML reads ``5e-4`` as a string; argparse's ``type=float`` makes it the number it is."""
    try:
        return float(value) if isinstance(value, str) and value[:1].isdigit() else value
    except ValueError:
        return value


def resolved(dataset, arch):
    return load_config(["--dataset_choose", dataset, "--arch", arch])


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("dataset", ["flowers102", "imagenet"])
def test_preset_is_the_official_recipe(dataset, arch):
    want, cfg = expected_values(dataset, arch), resolved(dataset, arch)
    unknown = sorted(set(want) - set(SAME_KEY) - set(DERIVED) - set(NOT_APPLIED))
    assert not unknown, f"official keys this test does not account for: {unknown}"
    for key, value in want.items():
        if key in NOT_APPLIED or REPLACED.get(key, (None,))[0] == value:
            continue
        got = DERIVED[key](cfg) if key in DERIVED else getattr(cfg, SAME_KEY[key])
        value = as_number(value)
        if key == "val_split" and value == "validation":
            value = "val"          # timm finds the folder "val" for the split "validation"
        if isinstance(value, list):
            assert got == pytest.approx(value, rel=1e-6), (key, got, value)
        else:
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, (key, got, value)


def test_the_recipes_fill_only_null_keys():
    cfg = load_config(["--dataset_choose", "imagenet", "--lr", "1e-3", "--model_ema", "false", "--crop_pct", "0.875"])
    assert (cfg.lr, cfg.model_ema, cfg.crop_pct, cfg.min_lr) == (1e-3, False, 0.875, 1e-5)
    assert all(getattr(load_config(["--dataset_choose", d]), k) is not None
               for d in ("cifar10", "flowers102", "imagenet", "imagefolder") for k in RECIPE_KEYS)


def test_official_values_not_applied_are_what_this_port_does():
    from src.train import optim
    assert "1e-8" in NOT_APPLIED["opt_eps"] and optim.AdamW.__init__.__defaults__ is not None
    assert 1e-8 in optim.AdamW.__init__.__defaults__
    for dataset in ("flowers102", "imagenet"):
        for arch in VARIANTS:
            values = expected_values(dataset, arch)
            assert (values["vflip"], values["recount"], values["remode"], values["mixup_mode"],
                    values["mixup_off_epoch"], values["opt"], values["sched"]) == \
                (0.0, 1, "pixel", "batch", 0, "adamw", "cosine")
            assert values.get("opt_eps", 1e-8) == 1e-8 and values["amp"] is True
    assert load_config(["--dataset_choose", "flowers102"]).amp_level == "O0"
