"""What the repository knows about each dataset it reads (the facts the config's per-dataset
defaults and the data code share), and the resize interpolations a config may name. MindSpore is
imported only when asked for an interpolation mode: the config schema reads this module."""

__all__ = ["DATASETS", "NUM_CLASSES", "PRETTY_NAMES", "FOLDERS", "MEAN", "STD", "INTERPOLATIONS", "interpolation_mode"]

DATASETS = ("cifar10", "cifar100")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
PRETTY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
#: The folder a dataset's files are in, under the data root (``data/`` or ``data/demo/``).
FOLDERS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}
#: Per-channel statistics of the training images (RGB, 0..1), used to normalise the inputs.
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4867, 0.4408)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2675, 0.2565, 0.2761)}
#: Resize interpolations (MindSpore's ``vision.Inter`` members of the same name, upper case).
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def interpolation_mode(name):
    """MindSpore's ``vision.Inter`` member for an interpolation name of :data:`INTERPOLATIONS`."""
    from mindspore.dataset.vision import Inter
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {name!r}")
    return Inter[name.upper()]
