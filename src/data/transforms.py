"""Per-image transforms of the official recipe on MindSpore's dataset engine: the training chain
(RandomResizedCrop, flip, RandAugment, normalise) and timm's evaluation resize and centre crop, on
uint8 HWC images."""
import math

import mindspore.dataset.vision as vision

from .catalog import resize_mode
from .randaugment import rand_augment_ops

__all__ = ["train_transforms", "eval_transforms", "eval_scale_size", "normalize_ops", "normalize_values",
           "decode_min_side"]


def normalize_values(cfg):
    """``(mean, std)`` of the normalisation on the 0..255 scale."""
    return [255.0 * v for v in cfg.mean], [255.0 * v for v in cfg.std]


def normalize_ops(cfg):
    """uint8 HWC -> normalised float32 CHW: the transpose first, on the uint8 image (a quarter of the
    bytes to move; the same numbers as normalising first)."""
    mean, std = normalize_values(cfg)
    return [vision.HWC2CHW(), vision.Normalize(mean=mean, std=std, is_hwc=False)]


def train_transforms(cfg, shape=None, encoded=False, cropped=False, normalize=True):
    """Per-image train ops on uint8 HWC (crop, flip, RandAugment, normalise, HWC->CHW). `shape`: the
    (height, width) of every image when they share one (CIFAR: 32 x 32); with ``crop_scale: [1, 1]``
    the plain resize to ``image_size`` is then left out when they have that size already.
    `encoded`: the records are image file bytes (:func:`.encoded.read_encoded`), decoded first by
    the engine's C++ ``Decode``. `cropped`: the records are the training crops already
    (:mod:`.native`), so no crop or resize op. `normalize`: False leaves the images uint8 HWC for
    the batch to normalise (:func:`.native.normalize_batch`)."""
    size = cfg.image_size
    inter = resize_mode(cfg.interpolation)
    ops = [vision.Decode()] if encoded else []
    if cropped:
        pass                                        # cut before the map (.native)
    elif tuple(cfg.crop_scale) != (1.0, 1.0):
        ops.append(vision.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio),
                                            interpolation=inter))
    elif shape is None or tuple(shape) != (size, size):
        ops.append(vision.Resize((size, size), interpolation=inter))
    if cfg.hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=cfg.hflip))
    fill = tuple(min(255, round(255 * v)) for v in cfg.mean)
    ops += rand_augment_ops(cfg.aa, cfg.interpolation, fill)
    return ops + (normalize_ops(cfg) if normalize else [])


def eval_scale_size(cfg):
    """timm's evaluation resize: the shorter side goes to ``floor(image_size / crop_pct)``."""
    return int(math.floor(cfg.image_size / cfg.crop_pct))


def eval_transforms(cfg, shape=None, encoded=False):
    """Per-image eval ops (timm's): resize the shorter side to :func:`eval_scale_size` (aspect ratio
    kept), crop the centre ``image_size`` square, normalise, HWC->CHW. `shape`: the (height, width)
    of the images when known; the resize is left out when their shorter side has that size already
    (CIFAR at 32 px), and so is the crop when they are ``image_size`` squares. `encoded`: as
    :func:`train_transforms`."""
    size, scale = cfg.image_size, eval_scale_size(cfg)
    resize = shape is None or min(shape) != scale
    ops = [vision.Decode()] if encoded else []
    if resize:
        ops.append(vision.Resize(scale, interpolation=resize_mode(cfg.interpolation)))
    if resize or tuple(shape) != (size, size):
        ops.append(vision.CenterCrop(size))
    return ops + normalize_ops(cfg)


def decode_min_side(cfg):
    """The shorter side below which a large JPEG is not decoded at reduced size
    (:func:`.images.decode_plan`): twice the largest side the transforms ask for -- the evaluation
    resize (:func:`eval_scale_size`), and the shorter side at which RandomResizedCrop's smallest crop
    (``crop_scale[0]`` of the area) still has ``image_size`` pixels. Images far larger than that keep
    the transforms' output as it would be at full resolution, at a fraction of the decoding cost."""
    scale = cfg.crop_scale or (1.0, 1.0)
    train = cfg.image_size / math.sqrt(max(min(scale), 1e-6))
    return int(math.ceil(2 * max(train, eval_scale_size(cfg))))
