"""Settings that depend on other settings: the per-dataset defaults (classes, mean/std, data
folders and the official training recipe) that ``dataset_choose`` selects, and the demo layer of
``--demo``."""
from ..data import catalog

__all__ = ["DATA_ROOT", "DEMO_ROOT", "DEMO_OVERRIDES", "RECIPES", "ARCH_RECIPES", "RECIPE_KEYS", "recipe",
           "apply_dataset_defaults"]


DATA_ROOT = "data"        # default parent of the dataset folders (relative to the working directory)


DEMO_ROOT = "data/demo"   # default parent when `demo: true`


# ``--demo``: a generated CIFAR-10-format sample at 32 px, a few epochs (a few minutes on 2 CPU
# cores). This layer sits between config.yaml and the command line, so flags still win.
DEMO_OVERRIDES = {"image_size": 32, "epoch_size": 6, "warmup_epochs": 1, "cooldown_epochs": 0,
                  "lr": 5e-4, "min_lr": 1e-5,
                  "batch_size": 64, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "aa": None,
                  "drop_path_rate": 0.0, "save_checkpoint_path": "./output/demo"}


# The official recipes (configs/classification/ of SHI-Labs/Convolutional-MLPs: finetuned/convmlp_*_
# {cifar10,cifar100,flowers102}.yml and convmlp_*_imagenet.yml, with classification.py's defaults for
# the keys a file leaves out). ``epoch_size`` counts the cool-down: timm trains ``epochs +
# cooldown_epochs``. ``crop_pct`` is the evaluation crop (resize to image_size / crop_pct, centre
# crop). The official runs use AMP on GPUs; ``amp_level`` stays O0, the CPU's setting (see
# docs/training.md, "Precision"). The CIFAR values are the S/M files' (convmlp_l's files train at batch 64).
_FINE_TUNE = {"epoch_size": 60, "warmup_epochs": 10, "cooldown_epochs": 10, "warmup_lr": 1e-6,
              "crop_scale": [0.8, 1.0], "crop_pct": 1.0, "model_ema": False, "model_ema_decay": 0.9998}
RECIPES = {
    "cifar10": {**_FINE_TUNE, "batch_size": 128, "lr": 3e-4, "min_lr": 1e-5},
    "cifar100": {**_FINE_TUNE, "batch_size": 128, "lr": 3e-4, "min_lr": 1e-5},
    "flowers102": {**_FINE_TUNE, "batch_size": 96, "lr": 5e-4, "min_lr": 1e-8},
    "imagenet": {"batch_size": 128, "epoch_size": 310, "warmup_epochs": 5, "cooldown_epochs": 10, "lr": 5e-4,
                 "min_lr": 1e-5, "warmup_lr": 1e-4, "crop_scale": [0.08, 1.0], "crop_pct": 0.9,
                 "model_ema": True, "model_ema_decay": 0.99996},
    # a user's own images: the fine-tuning recipe of Flowers-102, the official transfer to a small set
    "imagefolder": {**_FINE_TUNE, "batch_size": 96, "lr": 5e-4, "min_lr": 1e-8},
}
#: Where a variant's official file differs from the dataset's recipe above.
ARCH_RECIPES = {("flowers102", "convmlp_m"): {"lr": 3e-4},
                ("flowers102", "convmlp_l"): {"lr": 3e-4, "batch_size": 64}}
#: The keys a recipe fills (null in the schema: "the dataset's recipe").
RECIPE_KEYS = tuple(RECIPES["imagenet"])


def recipe(dataset, arch):
    """The official recipe's values of :data:`RECIPE_KEYS` for `dataset` trained as `arch`."""
    return {**RECIPES[dataset], **ARCH_RECIPES.get((dataset, arch), {})}


def _data_paths(cfg, root):
    """Default train/val folders: the CIFAR folder (both splits), or the split folders of a named
    image tree; none for ``imagefolder`` (the user names the tree) or for val with ``val_fraction``."""
    name = cfg.dataset_choose
    if name not in catalog.FOLDERS:
        return None, None
    folder = f"{root}/{catalog.FOLDERS[name]}"
    splits = catalog.SPLIT_FOLDERS.get(name)
    if splits is None:
        return folder, folder
    return f"{folder}/{splits['train']}", f"{folder}/{splits['val']}"


def apply_dataset_defaults(cfg):
    """Fill the per-dataset keys that are null from `dataset_choose` (and `demo`); returns cfg.

    num_classes -> the dataset's (``imagefolder``: left null, the class folders are counted when
    the data is read); mean/std -> the dataset's statistics; the recipe keys (:data:`RECIPE_KEYS`)
    -> :func:`recipe`; train/val paths -> data/cifar-10-batches-bin, data/flowers102/train and
    data/flowers102/valid, ... (under data/demo when demo is on; val stays null with val_fraction).
    Values the user set are kept.
    """
    name = cfg.dataset_choose
    if cfg.num_classes is None:
        cfg.num_classes = catalog.NUM_CLASSES.get(name)
    if cfg.mean is None:
        cfg.mean = list(catalog.MEAN[name])
    if cfg.std is None:
        cfg.std = list(catalog.STD[name])
    for key, value in recipe(name, cfg.arch).items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, list(value) if isinstance(value, list) else value)
    train, val = _data_paths(cfg, DEMO_ROOT if cfg.demo else DATA_ROOT)
    if cfg.train_data_path is None:
        cfg.train_data_path = train
    if cfg.val_data_path is None and cfg.val_fraction is None:
        cfg.val_data_path = val
    return cfg
