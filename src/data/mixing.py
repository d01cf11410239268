"""The training batch's last steps (timm's ``RandomErasing`` and ``Mixup``): random erasing per
image, one-hot targets with label smoothing, then mixup or cutmix on the batch."""
import math

import numpy as np

from .native import normalize_batch

__all__ = ["BatchMixer"]


class BatchMixer:
    """``per_batch_map`` of the train pipeline: random erasing per image, one-hot + smoothing,
    then mixup or cutmix on the batch (timm ``RandomErasing(mode='pixel')`` and ``Mixup``).
    `normalize`: ``(mean, std)`` when the images arrive as uint8 HWC, normalised here first
    (:func:`.native.normalize_batch`)."""

    def __init__(self, num_classes, smoothing=0.1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, switch_prob=0.5,
                 reprob=0.25, seed=0, shard_id=0, normalize=None):
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.mixup, self.cutmix = mixup, cutmix
        self.mixup_prob, self.switch_prob = mixup_prob, switch_prob
        self.reprob = reprob
        self.seed, self.shard_id = seed, shard_id
        self.normalize = normalize

    def __call__(self, images, labels, batch_info):
        rng = np.random.default_rng([self.seed, self.shard_id, batch_info.get_epoch_num(),
                                     batch_info.get_batch_num()])
        if self.normalize is None:
            x = np.stack(images).astype(np.float32, copy=False)
        else:
            x = normalize_batch(images, *self.normalize)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if self.reprob > 0:
            for img in x:
                if rng.random() < self.reprob:
                    self._erase(img, rng)
        off = self.smoothing / self.num_classes
        target = np.full((len(y), self.num_classes), off, np.float32)
        target[np.arange(len(y)), y] = 1.0 - self.smoothing + off
        lam, use_cutmix = self._params(rng)
        if lam != 1.0:
            if use_cutmix:
                (yl, yh, xl, xh), lam = self._cutmix_box(x.shape, lam, rng)
                x[:, :, yl:yh, xl:xh] = x[::-1, :, yl:yh, xl:xh].copy()
            else:
                x = x * lam + x[::-1] * (1.0 - lam)
            target = target * lam + target[::-1] * (1.0 - lam)
        return np.ascontiguousarray(x, np.float32), target.astype(np.float32)

    @staticmethod
    def _erase(img, rng, min_area=0.02, max_area=1 / 3, log_ratio=(math.log(0.3), math.log(1 / 0.3))):
        c, h, w = img.shape
        for _ in range(10):
            area = rng.uniform(min_area, max_area) * h * w
            aspect = math.exp(rng.uniform(*log_ratio))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if ew < w and eh < h:
                top, left = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
                img[:, top:top + eh, left:left + ew] = rng.standard_normal((c, eh, ew), np.float32)
                return

    def _params(self, rng):
        if (self.mixup <= 0 and self.cutmix <= 0) or rng.random() >= self.mixup_prob:
            return 1.0, False
        if self.mixup > 0 and self.cutmix > 0:
            use_cutmix = rng.random() < self.switch_prob
        else:
            use_cutmix = self.cutmix > 0
        alpha = self.cutmix if use_cutmix else self.mixup
        return float(rng.beta(alpha, alpha)), use_cutmix

    @staticmethod
    def _cutmix_box(shape, lam, rng):
        h, w = shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
        xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
        lam = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
        return (int(yl), int(yh), int(xl), int(xh)), lam
