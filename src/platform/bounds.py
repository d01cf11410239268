"""The bounds of sizes and counts, and their products: the largest image size and evaluation
resize, and the counts that make a script allocate (a batch of images, generated records), checked
against what the machine has before anything is allocated, so that a mistyped number is one
``error:`` line naming it instead of an allocation traceback, a swapping machine or a full disk."""
import os
import shutil
from typing import Optional

from .errors import ConfigError

__all__ = ["available_memory", "check_memory", "check_disk_space", "check_batch", "check_resize", "format_bytes",
           "FLOAT32_BYTES", "MAX_IMAGE_SIZE", "MAX_RESIZE_SIDE"]

FLOAT32_BYTES = 4

#: Largest ``image_size``: CIFAR images are 32 px, so every larger size only upsamples them, and
#: ImageNet weights were trained at 224; 1024 leaves room for high-resolution inputs of infer.py
#: while one 1024 px image already needs about 0.6 GB of activations in training.
MAX_IMAGE_SIZE = 1024

#: Largest shorter side an image is resized to before the evaluation's centre crop
#: (``image_size / crop_pct``): four times the largest image size (1024 px at crop_pct 0.25). A
#: 4096 px RGB image is 48 MiB per decoding worker; the 20,480 px of 1024 / 0.05 would be 1.2 GB.
MAX_RESIZE_SIDE = 4 * MAX_IMAGE_SIZE


def format_bytes(n: float) -> str:
    """``11.2 TiB``, ``512.0 MiB``, ``300 bytes``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still get (``MemAvailable``, else the free pages), or None
    when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(what: str, nbytes: int, fix: str, source: str = "command line"):
    """ConfigError when `nbytes` (the least that `what` allocates) is more than the memory
    available; `fix` says what to change. Nothing is allocated here."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise ConfigError(f"{source}: {what} needs at least {format_bytes(nbytes)} of memory, more than the "
                          f"{format_bytes(free)} available; {fix}")


def check_batch(name: str, batch: int, image_size: int, source: str = "command line"):
    """ConfigError when one float32 batch of `batch` RGB images of `image_size` pixels (what the
    key `name` asks for; the least a step holds) does not fit in the available memory."""
    nbytes = int(batch) * 3 * int(image_size) ** 2 * FLOAT32_BYTES
    check_memory(f"{name} {batch} (one batch of 3x{image_size}x{image_size} float32 images)", nbytes,
                 f"give a smaller {name}", source)


def check_resize(image_size: int, crop_pct: float, source: str = "config"):
    """ConfigError when the evaluation resize ``image_size / crop_pct`` (timm's rule) is longer than
    :data:`MAX_RESIZE_SIDE`; each key may be within its own bounds while their quotient is not."""
    side = int(image_size / crop_pct)
    if side > MAX_RESIZE_SIDE:
        raise ConfigError(f"{source}: image_size {image_size} / crop_pct {crop_pct:g} resizes every evaluation image "
                          f"to {side} px before the centre crop, more than the {MAX_RESIZE_SIDE} px allowed; expected "
                          f"crop_pct >= {image_size / MAX_RESIZE_SIDE:.3g} (or a smaller image_size)")


def check_disk_space(what: str, nbytes: int, folder: str, fix: str):
    """ConfigError when `nbytes` (what `what` writes) is more than the free space of the file
    system that holds `folder` (or the nearest existing folder above it)."""
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if nbytes > free:
        raise ConfigError(f"{what} needs {format_bytes(nbytes)} of disk space in {existing}, more than the "
                          f"{format_bytes(free)} free; {fix}")
