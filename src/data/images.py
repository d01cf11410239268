"""A user's own image files: finding them (files and folders), checking one without decoding it all,
and THE rule that turns any image Pillow reads into uint8 RGB (EXIF orientation applied; grey,
16-bit, CMYK, palette and alpha converted), which training, evaluation and infer.py all decode
through; and the evaluation transform for one image."""
import os

import numpy as np

from ..platform.errors import DataError, first_line, shown_name
from .transforms import eval_transforms

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "MAX_DECODE_BYTES", "MAX_COMPRESSION", "decode_plan",
           "collect_images", "is_image_name", "read_image", "to_rgb",
           "inspect_image", "ImageInfo", "preprocess"]


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Images up to this many pixels (Pillow's own default limit, about 9459 x 9459) are decoded without
#: further question. A larger one is judged by what decoding it costs (:func:`decode_plan`).
MAX_IMAGE_PIXELS = 89_478_485
#: Most memory one image may take to decode (its pixels after any reduction, in its own mode and
#: as RGB): 1 GiB, e.g. a 178-megapixel PNG; a JPEG is first reduced (:func:`decode_plan`).
MAX_DECODE_BYTES = 1 << 30
#: Decoded bytes per byte of file above which an image over :data:`MAX_IMAGE_PIXELS` is a
#: decompression bomb (a small file that decodes to gigabytes: a flat PNG compresses about 1000
#: times, a forged header millions of times); a photo of 100-200 megapixels compresses 5-50 times.
MAX_COMPRESSION = 500
#: JPEG's DCT scaling: a JPEG can be decoded at 1/2, 1/4 or 1/8 of its size at a fraction of the cost.
JPEG_REDUCTIONS = (8, 4, 2)
#: Bytes per pixel of Pillow's modes while decoding (4 for a mode not listed).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 3, "YCbCr": 3,
               "LAB": 3, "HSV": 3}


def is_image_name(name):
    """A file name with an image extension (any case) that is not hidden."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


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
                           if is_image_name(n) and os.path.isfile(os.path.join(p, n)))
            if not found:
                raise DataError(f"folder {shown_name(p)} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        elif os.path.exists(p):
            raise DataError(f"{shown_name(p)} is neither a file nor a folder")
        else:
            raise DataError(f"image path {shown_name(p)} does not exist")
    return files


# --------------------------------------------------------------------------------------------
# Decoding: one rule for training, evaluation and inference
# --------------------------------------------------------------------------------------------
def decode_plan(size, fmt, mode, file_bytes, path, min_side=None):
    """THE rule of what an image may cost, and at which reduction it is decoded: ``(reduction,
    decoded size)``. A JPEG larger than needed is decoded at 1/2, 1/4 or 1/8 (Pillow's ``draft``)
    while its shorter side stays at least `min_side` (:func:`.transforms.decode_min_side`: twice what
    the transforms ask for; None: no reduction); other formats are decoded whole. An image up to
    :data:`MAX_IMAGE_PIXELS` is accepted; a larger one is refused (DataError naming the file) when its
    file is compressed more than :data:`MAX_COMPRESSION` times (a decompression bomb), or when
    decoding it, after the reduction, would take more than :data:`MAX_DECODE_BYTES`."""
    width, height = size
    reduction = 1
    if fmt == "JPEG" and min_side:
        reduction = next((r for r in JPEG_REDUCTIONS if min(width, height) // r >= min_side), 1)
    out = (-(-width // reduction), -(-height // reduction))
    pixels, depth = width * height, _MODE_BYTES.get(mode, 4)
    if pixels <= MAX_IMAGE_PIXELS:
        return reduction, out
    ratio = pixels * depth / max(1, file_bytes)
    if ratio > MAX_COMPRESSION:
        raise DataError(f"image {shown_name(path)} is {width} x {height} = {pixels:,} pixels, more than the limit of "
                        f"{MAX_IMAGE_PIXELS:,}, in a file of {file_bytes:,} bytes (compressed {ratio:,.0f} times, "
                        f"more than {MAX_COMPRESSION}): a decompression bomb; expected a real image")
    cost = out[0] * out[1] * (depth + 3)
    if cost > MAX_DECODE_BYTES:
        how = f" at 1/{reduction} size" if reduction > 1 else ""
        raise DataError(f"image {shown_name(path)} is {width} x {height} = {pixels:,} pixels: decoding it{how} "
                        f"would take {cost / 2 ** 20:,.0f} MiB, more than the limit of {MAX_DECODE_BYTES // 2 ** 20:,} "
                        "MiB; expected a smaller image (a JPEG is decoded at reduced size when the model's input "
                        "allows it)")
    return reduction, out


def _size(path):
    """The bytes of the image file `path`, or of an image held in memory (a ``BytesIO``: a record of
    a pack, :mod:`.packed_read`, whose ``str()`` names it)."""
    return path.getbuffer().nbytes if hasattr(path, "getbuffer") else os.path.getsize(path)


def _plan(im, path, min_side):
    """:func:`decode_plan` for the open image `im`; a JPEG to be reduced is set to draft mode."""
    reduction, out = decode_plan(im.size, im.format, im.mode, _size(path), path, min_side)
    if reduction > 1:
        im.draft(im.mode, out)
    return reduction


def _open(path):
    """``Image.open`` with Pillow's own size limit off (its warning, its error at twice the limit):
    :func:`decode_plan` decides, from the header, before anything is decoded."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    return Image.open(path)


def _reason(exc):
    reason = first_line(exc)
    if "cannot identify image file" in reason:
        return "not an image Pillow can read (corrupt, empty or another format)"
    return reason


def to_rgb(im):
    """An open Pillow image as uint8 RGB HWC: EXIF orientation applied, 16/32-bit grey scaled to
    0..255, everything else (grey, CMYK, palette with or without transparency, alpha) converted with
    Pillow's ``convert("RGB")`` (alpha dropped)."""
    from PIL import ImageOps
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: scale to 0..255
        grey = np.asarray(im, dtype=np.float64)
        grey = grey / 257.0 if im.mode.startswith("I") and grey.max() > 255 else grey
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:   # the palette's alpha, then dropped (no warning)
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path, min_side=None):
    """The image at `path` as uint8 RGB HWC (:func:`to_rgb`), a large JPEG decoded at reduced size
    with its shorter side at least `min_side` (:func:`decode_plan`); DataError naming the file when
    it cannot be decoded or costs too much to decode."""
    try:
        with _open(path) as im:
            _plan(im, path, min_side)
            arr = to_rgb(im)
    except DataError:
        raise
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError ...
        raise DataError(f"cannot read image {shown_name(path)}: {_reason(exc)}") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"cannot read image {shown_name(path)}: empty image")
    return arr


class ImageInfo(tuple):
    """``(width, height, mode, format)`` of a checked image file."""
    __slots__ = ()

    def __new__(cls, width, height, mode, fmt):
        return super().__new__(cls, (width, height, mode, fmt))

    width, height, mode, format = (property(lambda self, i=i: self[i]) for i in range(4))


_PNG_END = b"\0\0\0\0IEND\xaeB`\x82"


def _ends_complete(path, fmt):
    """Whether a JPEG ends with its end-of-image marker (zero padding allowed) or a PNG with its
    IEND chunk: then the file was written to the end. (``FF D9`` cannot occur inside a JPEG's
    entropy-coded data, where every ``FF`` byte is followed by ``00``.)"""
    if fmt not in ("JPEG", "PNG"):
        return False
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
        tail = f.read()
    return tail.rstrip(b"\0").endswith(b"\xff\xd9") if fmt == "JPEG" else tail.endswith(_PNG_END)


def inspect_image(path, min_side=None):
    """Check the file at `path` without decoding it: not empty, an image Pillow identifies, within
    :func:`decode_plan`'s rule (decoded as :func:`read_image` with `min_side` would), and its data
    complete. A JPEG or PNG that ends as the format ends
    (:func:`_ends_complete`) is complete; one that does not (truncated, or data appended after its
    end) is decoded to tell (a JPEG at 1/8 scale, a PNG's chunks checked to the end), and so is
    every other format. Returns :class:`ImageInfo`; DataError naming the file and the problem."""
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"image {shown_name(path)} is an empty file (0 bytes)")
        with _open(path) as im:
            info = ImageInfo(im.size[0], im.size[1], im.mode, im.format)
            decode_plan(im.size, im.format, im.mode, os.path.getsize(path), path, min_side)
            if _ends_complete(path, im.format):
                return info
            if im.format == "PNG":
                im.verify()
            else:
                if im.format == "JPEG":
                    im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image {shown_name(path)}: {_reason(exc)}") from None
    return info


def preprocess(image, cfg):
    """The evaluation transform (:func:`.transforms.eval_transforms`: shorter side to image_size /
    crop_pct, centre crop, normalise, HWC -> CHW) on one RGB uint8 HWC image of any size, exactly
    as evl.py's pipeline applies it. Returns float32 (3, S, S)."""
    out = image
    for op in eval_transforms(cfg, image.shape[:2]):
        out = op(out)
    return np.ascontiguousarray(out, dtype=np.float32)
