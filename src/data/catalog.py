"""What the repository knows about each dataset it reads (the facts the config's per-dataset
defaults and the data code share), and the resize interpolations a config may name. MindSpore is
imported only when asked for an interpolation mode: the config schema reads this module."""

__all__ = ["DATASETS", "CIFAR", "IMAGE_FOLDER_DATASETS", "NUM_CLASSES", "PRETTY_NAMES", "FOLDERS", "SPLIT_FOLDERS",
           "MEAN", "STD", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "interpolation_mode", "resize_mode",
           "data_format", "SPLIT_NAMES", "split_folders", "split_source"]

#: The CIFAR binary releases (src.data.cifar) and the class-per-folder image trees (src.data.imagefolder):
#: two named trees with their official recipe, and ``imagefolder``, any tree of a user's images.
CIFAR = ("cifar10", "cifar100")
IMAGE_FOLDER_DATASETS = ("flowers102", "imagenet", "imagefolder")
DATASETS = CIFAR + IMAGE_FOLDER_DATASETS
#: Classes of the official datasets; ``imagefolder`` counts its class folders.
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "flowers102": 102, "imagenet": 1000}
PRETTY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "flowers102": "Flowers-102",
                "imagenet": "ImageNet-1k", "imagefolder": "image folder"}
#: The folder a dataset's files are in, under the data root (``data/`` or ``data/demo/``).
FOLDERS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary", "flowers102": "flowers102",
           "imagenet": "imagenet"}
#: The split folders of an image tree under its dataset folder (the official recipes' ``train_split`` /
#: ``val_split``: Flowers-102 ``train``/``valid``; ImageNet timm's defaults, ``train`` and ``val``).
SPLIT_FOLDERS = {"flowers102": {"train": "train", "val": "valid"}, "imagenet": {"train": "train", "val": "val"}}
#: Sub-folder names that make a tree a tree of splits (``dataset.py check`` and ``pack`` take each on its
#: own; train.py refuses a train_data_path whose only folders they are), the validation split's names in
#: the order they are looked for after ``train``.
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
#: Per-channel statistics of the training images (RGB, 0..1), used to normalise the inputs. A user's
#: own images are normalised as ImageNet's, which the pretrained weights were trained with.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4867, 0.4408),
        "flowers102": (0.4353, 0.3773, 0.2872), "imagenet": IMAGENET_MEAN, "imagefolder": IMAGENET_MEAN}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2675, 0.2565, 0.2761),
       "flowers102": (0.2966, 0.2455, 0.2698), "imagenet": IMAGENET_STD, "imagefolder": IMAGENET_STD}
#: Resize interpolations (MindSpore's ``vision.Inter`` members of the same name, upper case).
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def data_format(dataset):
    """``"cifar"`` (binary records) or ``"imagefolder"`` (one folder of image files per class)."""
    return "cifar" if dataset in CIFAR else "imagefolder"


def split_source(cfg, split):
    """Where messages say the images of `split` (``train`` / ``val``) come from: its folder, or with
    ``val_fraction`` the part of ``train_data_path`` the split takes."""
    if cfg.val_fraction is None:
        return cfg.train_data_path if split == "train" else cfg.val_data_path
    if split == "train":
        return f"{cfg.train_data_path} less val_fraction {cfg.val_fraction:g}"
    return f"val_fraction {cfg.val_fraction:g} of {cfg.train_data_path}"


def split_folders(names):
    """The split folders among a tree's sub-folder `names` in :data:`SPLIT_NAMES` order, when every
    one of them is a split name; else [] (a tree of class folders)."""
    names = [n for n in names if not n.startswith(".")]
    return [n for n in SPLIT_NAMES if n in names] if names and set(names) <= set(SPLIT_NAMES) else []


def interpolation_mode(name):
    """MindSpore's ``vision.Inter`` member for an interpolation name of :data:`INTERPOLATIONS`."""
    from mindspore.dataset.vision import Inter
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {name!r}")
    return Inter[name.upper()]


def resize_mode(name):
    """The ``vision.Inter`` member for resizing (crop and evaluation resize): ``bicubic`` is
    ``Inter.PILCUBIC``, the engine's copy of Pillow's bicubic filter that timm's transforms use
    (antialiased when shrinking; within 2 levels of Pillow's pixels), the other names as
    :func:`interpolation_mode`."""
    from mindspore.dataset.vision import Inter
    return Inter.PILCUBIC if name == "bicubic" else interpolation_mode(name)
