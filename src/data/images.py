"""A user's own image files: finding them (files and folders), decoding any image Pillow reads to
RGB (EXIF orientation applied, 16-bit grey scaled), and the evaluation transform for one image."""
import os

import numpy as np

from ..platform.errors import DataError, first_line
from .catalog import interpolation_mode
from .transforms import eval_transforms

__all__ = ["IMAGE_EXTENSIONS", "collect_images", "read_image", "preprocess"]


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def collect_images(paths):
    """The image files named by `paths` (files as given, folders' image files sorted by name).
    DataError when nothing is given, a path does not exist or a folder has no image file."""
    if not paths:
        raise DataError("no image given; usage: python infer.py --checkpoint_path FILE.ckpt IMAGE_OR_FOLDER ...")
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p)
                           if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(p, n)))
            if not found:
                raise DataError(f"folder '{p}' has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        elif os.path.exists(p):
            raise DataError(f"'{p}' is neither a file nor a folder")
        else:
            raise DataError(f"image path '{p}' does not exist")
    return files


def read_image(path):
    """The image at `path` as uint8 RGB HWC; DataError naming the file when it cannot be decoded."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: scale to 0..255
                grey = np.asarray(im, dtype=np.float64)
                grey = grey / 257.0 if im.mode.startswith("I") and grey.max() > 255 else grey
                grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
                arr = np.repeat(grey[..., None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError ...
        reason = first_line(exc)
        if "cannot identify image file" in reason:
            reason = "not an image Pillow can read (corrupt, empty or another format)"
        raise DataError(f"cannot read image '{path}': {reason}") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"cannot read image '{path}': empty image")
    return arr


def preprocess(image, cfg):
    """evl.py's eval transform for an RGB uint8 HWC image of any size: resize (whole image) to
    ``image_size`` with the config's interpolation unless it has that size already, then
    :func:`.transforms.eval_transforms`' normalisation and HWC -> CHW. Returns float32 (3, S, S)."""
    import mindspore.dataset.vision as vision
    size = cfg.image_size
    ops = [op for op in eval_transforms(cfg) if not isinstance(op, vision.Resize)]
    if image.shape[:2] != (size, size):
        ops.insert(0, vision.Resize((size, size), interpolation=interpolation_mode(cfg.interpolation)))
    out = image
    for op in ops:
        out = op(out)
    return np.ascontiguousarray(out, dtype=np.float32)
