"""Per-image transforms of the official recipe on MindSpore's dataset engine: the training chain
(RandomResizedCrop, flip, RandAugment, normalise) and the evaluation resize, on uint8 HWC images."""
import mindspore.dataset.vision as vision

from .catalog import interpolation_mode
from .randaugment import rand_augment_ops

__all__ = ["train_transforms", "eval_transforms", "normalize_ops"]


def normalize_ops(cfg):
    mean = [255.0 * v for v in cfg.mean]
    std = [255.0 * v for v in cfg.std]
    return [vision.Normalize(mean=mean, std=std, is_hwc=True), vision.HWC2CHW()]


def train_transforms(cfg):
    """Per-image train ops on uint8 HWC (crop, flip, RandAugment, normalise, HWC->CHW)."""
    size = cfg.image_size
    inter = interpolation_mode(cfg.interpolation)
    ops = []
    if tuple(cfg.crop_scale) != (1.0, 1.0):
        ops.append(vision.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio),
                                            interpolation=inter))
    elif size != 32:
        ops.append(vision.Resize((size, size), interpolation=inter))
    if cfg.hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=cfg.hflip))
    fill = tuple(min(255, round(255 * v)) for v in cfg.mean)
    ops += rand_augment_ops(cfg.aa, cfg.interpolation, fill)
    return ops + normalize_ops(cfg)


def eval_transforms(cfg):
    """Per-image eval ops: resize to image_size (not at 32), normalise, HWC->CHW."""
    ops = []
    if cfg.image_size != 32:
        ops.append(vision.Resize((cfg.image_size, cfg.image_size), interpolation=interpolation_mode(cfg.interpolation)))
    return ops + normalize_ops(cfg)
