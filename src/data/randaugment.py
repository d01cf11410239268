"""RandAugment as the official recipe spells it (timm's ``rand-m9-mstd0.5-inc1``): the spec parser
the config validates with, and its mapping to MindSpore's ``vision.RandAugment``."""
import math
import re

import numpy as np

from ..platform.errors import short_quote
from .catalog import interpolation_mode

__all__ = ["parse_aa", "rand_augment_ops"]


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
            raise ValueError(f"unknown RandAugment option {short_quote(part)} (known: m<int>, n<int>, mstd<float>, inc<0|1>)")
        k, v = m.groups()
        if k in ("mmax", "w", "p"):
            raise ValueError(f"RandAugment option {short_quote(part)} is not supported by this port")
        try:
            out[k] = int(v) if k in ("n", "inc") else float(v)
        except ValueError:
            raise ValueError(f"bad number in RandAugment option {short_quote(part)}") from None
    if not 0 <= out["m"] <= 10 or out["m"] != int(out["m"]):
        raise ValueError(f"magnitude m{out['m']:g} must be an integer in 0..10")
    out["m"] = int(out["m"])
    if out["inc"] != 1:
        raise ValueError("only increasing-severity ops (inc1) exist in MindSpore's RandAugment; add '-inc1'")
    if out["n"] < 1:
        raise ValueError("n must be >= 1")
    return out


def _magnitude_choices(m, mstd, slots=20):
    """Integer magnitudes approximating timm's per-op ``gauss(m, mstd)`` clipped to [0, 10].

    Returns a list of `slots` magnitudes (with repeats) whose uniform choice has about the
    probabilities of the rounded, clipped Gaussian; ``[m]`` when mstd is 0.
    """
    if mstd <= 0:
        return [m]
    ks = np.arange(11)
    cdf = lambda x: 0.5 * (1 + math.erf((x - m) / (mstd * math.sqrt(2))))
    p = np.array([cdf(k + 0.5) - cdf(k - 0.5) for k in ks])
    p[0], p[-1] = cdf(0.5), 1 - cdf(9.5)          # clipped mass goes to the ends
    counts = np.floor(p * slots).astype(int)
    for i in np.argsort(-(p * slots - counts))[: slots - counts.sum()]:
        counts[i] += 1                              # largest remainders
    return [int(k) for k in ks for _ in range(counts[k])]


def rand_augment_ops(spec, interpolation="bicubic", fill=(0, 0, 0)):
    """MindSpore ops for a timm RandAugment spec such as ``rand-m9-mstd0.5-inc1`` (None -> []).

    Mapping to timm's ``RandAugment`` (timm/data/auto_augment.py):

    * timm applies ``n`` ops, each chosen at random and applied with probability 0.5, at magnitude
      ``m`` out of 10. Here each of the ``n`` ops is ``RandomApply([RandomChoice([RandAugment(
      num_ops=1, magnitude=k, num_magnitude_bins=11)])], prob=0.5)``: with 11 bins MindSpore's
      magnitude ``k`` is ``k / 10`` of each op's maximum, as timm's ``m / 10``.
    * ``mstd``: timm draws each op's magnitude from ``gauss(m, mstd)`` clipped to [0, 10];
      here from integer magnitudes with the probabilities of that Gaussian rounded (for
      m9-mstd0.5: 8, 9, 10 with 3/20, 14/20, 3/20).
    * ``inc1``: MindSpore's (torchvision's) posterize and solarize already grow stronger with the
      magnitude, as timm's "increasing" ops; ``inc0`` is refused by the config.
    * Differences: MindSpore's op set is torchvision's (Identity, ShearX/Y, TranslateX/Y, Rotate,
      Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize); it has
      Identity and lacks timm's Invert and SolarizeAdd; the n ops may repeat (timm draws without
      replacement); magnitudes are integers. Maxima match timm: rotate 30 deg, shear 0.3,
      translate 0.45 of the size, enhance factors 1 +- 0.9. Fill = dataset mean, as timm.
    """
    params = parse_aa(spec)
    if params is None:
        return []
    import mindspore.dataset.transforms as T
    import mindspore.dataset.vision as vision
    inter = interpolation_mode(interpolation)
    fill = tuple(int(v) for v in fill)
    ops = []
    for _ in range(params["n"]):
        choices = [vision.RandAugment(num_ops=1, magnitude=k, num_magnitude_bins=11, interpolation=inter,
                                      fill_value=fill)
                   for k in _magnitude_choices(params["m"], params["mstd"])]
        one = choices[0] if len(choices) == 1 else T.RandomChoice(choices)
        ops.append(T.RandomApply([one], prob=0.5))
    return ops
