"""The input pipeline's C++ parts (``src/data/csrc``), called through ctypes without Python's lock.

The training crop (``resized_crop.cc``): timm's and torchvision's RandomResizedCrop with Pillow's
bicubic filter, the same pixels as
``Image.crop(box).resize(size, Image.BICUBIC)``, its box drawn as their ``get_params`` draws it from a
generator keyed by the record (the seed, the shard and the record's index), so that a run's crops do
not depend on which thread computes them.

The batch's normalisation (``normalize.cc``): uint8 HWC images to normalised float32 NCHW in one
pass, the numbers of the engine's ``HWC2CHW`` + ``Normalize``.

Built and cached with the other C++ kernels; where they cannot be built, :func:`library` is None and
the pipeline keeps the engine's ``RandomResizedCrop`` and ``Normalize``."""
import ctypes
import os

import numpy as np

__all__ = ["library", "resized_crop", "random_resized_crop", "record_key", "normalize_batch"]

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_U8 = ctypes.POINTER(ctypes.c_uint8)
_I32 = ctypes.POINTER(ctypes.c_int32)
_F32 = ctypes.POINTER(ctypes.c_float)
_loaded = []


def library():
    """The loaded library, or None where it cannot be built (one ``warning:`` line)."""
    if not _loaded:
        from model.cpu_kernels import build_library
        path = build_library("convmlp_data", _CSRC, {"resized_crop.cc": [], "normalize.cc": []})
        lib = None
        if path is not None:
            lib = ctypes.CDLL(path)
            lib.convmlp_resized_crop.argtypes = [_U8, ctypes.c_int, ctypes.c_int, _I32, _U8, ctypes.c_int,
                                                 ctypes.c_int]
            lib.convmlp_random_resized_crop.argtypes = [_U8, ctypes.c_int, ctypes.c_int, _U8, ctypes.c_int,
                                                        ctypes.c_double, ctypes.c_double, ctypes.c_double,
                                                        ctypes.c_double, ctypes.c_uint64, _I32]
            lib.convmlp_normalize_batch.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int,
                                                    ctypes.c_int, _F32, _F32, _F32]
        _loaded.append(lib)
    return _loaded[0]


def _rgb(image):
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return image


def resized_crop(image, box, size):
    """The crop ``box = (top, left, height, width)`` of the uint8 RGB `image` resized to `size`
    ``(height, width)`` with Pillow's bicubic filter."""
    image = _rgb(image)
    out = np.empty((size[0], size[1], 3), np.uint8)
    b = np.asarray(box, np.int32)
    if library().convmlp_resized_crop(image.ctypes.data_as(_U8), image.shape[0], image.shape[1],
                                      b.ctypes.data_as(_I32), out.ctypes.data_as(_U8), size[0], size[1]):
        raise ValueError(f"crop box {tuple(box)} is outside the {image.shape[0]} x {image.shape[1]} image")
    return out


def record_key(seed, shard, index):
    """The generator key of one record's crop: distinct for every (seed, shard, index)."""
    return (int(seed) * 0x9E3779B97F4A7C15 + int(shard) * 0xD1B54A32D192ED03 + int(index)) % (1 << 64)


def random_resized_crop(image, size, scale, ratio, key):
    """``(crop, box)``: a RandomResizedCrop of the uint8 RGB `image` to ``size x size`` with area
    fraction in `scale` and aspect ratio (width / height) in `ratio`, drawn from `key`."""
    image = _rgb(image)
    out = np.empty((size, size, 3), np.uint8)
    box = np.empty(4, np.int32)
    library().convmlp_random_resized_crop(image.ctypes.data_as(_U8), image.shape[0], image.shape[1],
                                          out.ctypes.data_as(_U8), size, float(scale[0]), float(scale[1]),
                                          float(ratio[0]), float(ratio[1]), key, box.ctypes.data_as(_I32))
    return out, tuple(int(v) for v in box)


def normalize_batch(images, mean, std):
    """The uint8 RGB HWC `images` (all of one size) as one float32 NCHW batch ``(x - mean) / std``
    per channel (`mean`, `std`: three values on the 0..255 scale)."""
    images = [np.ascontiguousarray(im, np.uint8) for im in images]
    h, w = images[0].shape[:2]
    for im in images:
        if im.shape != (h, w, 3):
            raise ValueError(f"expected RGB images of shape ({h}, {w}, 3), got {im.shape}")
    out = np.empty((len(images), 3, h, w), np.float32)
    pointers = (ctypes.c_void_p * len(images))(*[im.ctypes.data for im in images])
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    library().convmlp_normalize_batch(pointers, len(images), h, w, m.ctypes.data_as(_F32), s.ctypes.data_as(_F32),
                                      out.ctypes.data_as(_F32))
    return out
