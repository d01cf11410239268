"""Settings that depend on other settings: the per-dataset defaults (classes, mean/std, data
folders) that ``dataset_choose`` selects, and the demo layer of ``--demo``."""
from ..data import catalog

__all__ = ["DATA_ROOT", "DEMO_ROOT", "DEMO_OVERRIDES", "apply_dataset_defaults"]


DATA_ROOT = "data"        # default parent of the dataset folders (relative to the working directory)


DEMO_ROOT = "data/demo"   # default parent when `demo: true`


# ``--demo``: a generated CIFAR-10-format sample at 32 px, a few epochs (a few minutes on 2 CPU
# cores). This layer sits between config.yaml and the command line, so flags still win.
DEMO_OVERRIDES = {"image_size": 32, "epoch_size": 6, "warmup_epochs": 1, "cooldown_epochs": 0,
                  "lr": 5e-4, "min_lr": 1e-5,
                  "batch_size": 64, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "aa": None,
                  "drop_path_rate": 0.0, "save_checkpoint_path": "./output/demo"}


def apply_dataset_defaults(cfg):
    """Fill the per-dataset keys that are null from `dataset_choose` (and `demo`); returns cfg.

    num_classes -> 10/100, mean/std -> the dataset's statistics, train/val paths ->
    data/cifar-10-batches-bin or data/cifar-100-binary (under data/demo when demo is on).
    Values the user set are kept.
    """
    name = cfg.dataset_choose
    if cfg.num_classes is None:
        cfg.num_classes = catalog.NUM_CLASSES[name]
    if cfg.mean is None:
        cfg.mean = list(catalog.MEAN[name])
    if cfg.std is None:
        cfg.std = list(catalog.STD[name])
    root = DEMO_ROOT if cfg.demo else DATA_ROOT
    if cfg.train_data_path is None:
        cfg.train_data_path = f"{root}/{catalog.FOLDERS[name]}"
    if cfg.val_data_path is None:
        cfg.val_data_path = f"{root}/{catalog.FOLDERS[name]}"
    return cfg
