"""Image files handed to MindSpore's dataset engine as encoded bytes, decoded there by its C++
``vision.Decode`` in the map's threads (no Python decode, no worker processes, no decoded array
copied into the engine).

A file is passed as it is only when that decoder gives exactly the pixels of
:func:`.images.read_image`: a complete baseline or progressive 8-bit JPEG with one (grey) or three
(YCbCr/RGB) components, without an EXIF or XMP orientation other than 1, within
:data:`.images.MAX_IMAGE_PIXELS`, and not so large that read_image decodes it at reduced size
(:func:`.images.decode_plan`). Every other file (PNG, CMYK, EXIF-rotated, truncated, ...) is
decoded by :func:`.images.read_image` (the one rule, its errors included) and handed over as an
uncompressed BMP, which the engine's decoder reads back without loss."""
import io
import struct

import numpy as np

from .images import MAX_IMAGE_PIXELS, decode_plan, read_image

__all__ = ["jpeg_info", "engine_decodes", "read_encoded"]

_SOF = {0xC0, 0xC1, 0xC2}          # baseline, extended sequential, progressive (Huffman)
_NO_LENGTH = {0x01} | set(range(0xD0, 0xD8))
_ORIENTATION = 0x0112


def _exif_orientation(segment):
    """The orientation tag of an APP1 ``Exif`` segment's first IFD: 1 when absent, None when unreadable."""
    tiff = segment[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack(end + "H", tiff[ifd:ifd + 2])
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            return None
        tag, kind = struct.unpack(end + "HH", tiff[at:at + 4])
        if tag == _ORIENTATION:
            return struct.unpack(end + "H", tiff[at + 8:at + 10])[0] if kind == 3 else None
    return 1


def jpeg_info(data):
    """``(width, height, components, precision, orientation)`` from a JPEG's markers up to its
    first scan, or None when `data` is not a JPEG whose header reads cleanly. ``orientation`` is
    None when an EXIF or XMP orientation cannot be read as 1..8."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    at, frame, orientation = 2, None, 1
    n = len(data)
    while at + 4 <= n:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:                       # fill byte
            at += 1
            continue
        if marker in _NO_LENGTH:
            at += 2
            continue
        length = (data[at + 2] << 8) | data[at + 3]
        body = data[at + 4:at + 2 + length]
        if length < 2 or len(body) != length - 2:
            return None
        if marker == 0xDA:                       # start of scan: the header is complete
            return None if frame is None else frame + (orientation,)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF or len(body) < 6:
                return ()                        # lossless, arithmetic, hierarchical: not ours
            precision, height, width, components = struct.unpack(">BHHB", body[:6])
            frame = (width, height, components, precision)
        elif marker == 0xE1 and body.startswith(b"Exif\0"):
            found = _exif_orientation(body)
            orientation = found if orientation == 1 else orientation
        elif marker == 0xE1 and b"Orientation" in body:   # XMP orientation: Pillow applies it too
            orientation = None
        at += 2 + length
    return None


def engine_decodes(data, min_side=None):
    """Whether MindSpore's ``vision.Decode`` turns these file bytes into exactly the pixels
    ``read_image(path, min_side)`` gives (see the module docstring): not for a JPEG that read_image
    decodes at reduced size (:func:`.images.decode_plan`)."""
    data = bytes(data)
    info = jpeg_info(data)
    if not info:
        return False
    width, height, components, precision, orientation = info
    if components not in (1, 3) or precision != 8 or orientation != 1:
        return False
    if not 0 < width * height <= MAX_IMAGE_PIXELS:
        return False
    if decode_plan((width, height), "JPEG", "RGB", len(data), None, min_side)[0] != 1:
        return False
    tail = data[-64:].rstrip(b"\0")      # complete: ends with the end-of-image marker
    return tail.endswith(b"\xff\xd9")


def read_encoded(path, min_side=None):
    """The bytes of the image at `path` for ``vision.Decode``: the file itself when
    :func:`engine_decodes`, else ``read_image(path, min_side)``'s RGB pixels as an uncompressed BMP
    (DataError naming the file, as read_image, when it cannot be decoded)."""
    data = np.fromfile(path, dtype=np.uint8)
    if engine_decodes(data, min_side):
        return data
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(read_image(path, min_side)).save(out, format="BMP")
    return np.frombuffer(out.getvalue(), dtype=np.uint8)
