"""Download a file with a progress bar and an md5 check; extract tar archives safely.

Used for the CIFAR binary archives (cifar.py) and the official ConvMLP weights (pth2ckpt.py).
Failures the user can fix (offline, wrong checksum, unsafe archive) raise :class:`errors.DataError`
with one line that names the URL or file and what to do.
"""
import hashlib
import os
import sys
import tarfile
import urllib.error
import urllib.request

from tqdm import tqdm

from .errors import DataError, short_quote
from .fileio import atomic_output

__all__ = ["download_url", "md5sum", "safe_extract_tar", "DownloadError"]

_CHUNK = 1 << 20


class DownloadError(DataError):
    """The download itself failed (network, HTTP status, disk); `url`, `dst_path` and `reason` say why."""

    def __init__(self, url, dst_path, reason):
        super().__init__(f"download of {url} failed ({reason}); download it by hand and put it at {dst_path}")
        self.url, self.dst_path, self.reason = url, dst_path, reason


def md5sum(path, chunk_size=_CHUNK):
    """Hex md5 digest of the file at `path`."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def download_url(url, dst_path, md5=None, desc=None, timeout=60):
    """Download `url` to `dst_path` and return `dst_path`.

    The data is streamed to a temporary file beside `dst_path` (:func:`fileio.atomic_output`;
    progress bar on a terminal), its md5 is checked when `md5` is given, and only then renamed to
    `dst_path`, so `dst_path` is never a partial file.
    Raises DataError when the download fails (naming the URL and where to put the file by hand) or
    when the md5 does not match (naming the file and both checksums; the bad file is removed).
    """
    dst_path = os.fspath(dst_path)

    def check_md5(part):
        actual = md5sum(part)
        if actual != md5.lower():
            raise DataError(f"md5 mismatch for {dst_path} downloaded from {url}: expected {md5}, got {actual} "
                            f"(corrupted or incomplete download; the file was removed, try again)")

    with atomic_output(dst_path, verify=check_md5 if md5 is not None else None) as part:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
                total = resp.headers.get("Content-Length")
                with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                          unit_divisor=1024, desc=desc or os.path.basename(dst_path),
                          disable=not sys.stderr.isatty(), leave=False) as bar:
                    for block in iter(lambda: resp.read(_CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(url, dst_path, " ".join(str(reason).split())) from None
    return dst_path


def _is_within(base, target):
    base = os.path.realpath(base)
    target = os.path.realpath(target)
    return os.path.commonpath([base, target]) == base


def safe_extract_tar(archive, dst_dir):
    """Extract the tar archive `archive` into `dst_dir`, refusing anything that could escape it.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    symbolic or hard links whose target lies outside `dst_dir`, and device or FIFO files raise
    DataError naming the archive and the member. Returns the list of extracted member names.
    """
    archive = os.fspath(archive)
    os.makedirs(dst_dir, exist_ok=True)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive} is not a readable tar archive ({exc}); delete it and download again") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{archive} is a corrupted tar archive ({exc}); delete it and download again") from None
        for m in members:
            _check_member(archive, dst_dir, m)
        try:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dst_dir, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706
                tar.extractall(dst_dir, members=members)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"extracting {archive} into {dst_dir} failed ({exc})") from None
    return [m.name for m in members]


def _check_member(archive, dst_dir, m):
    def refuse(why):
        raise DataError(f"refusing to extract {archive}: member {short_quote(m.name)} {why}")

    name = m.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        refuse("has an absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        refuse("contains '..'")
    if not _is_within(dst_dir, os.path.join(dst_dir, name)):
        refuse(f"would be written outside {dst_dir}")
    if m.isdev() or m.isfifo():
        refuse("is a device or FIFO")
    if m.issym() or m.islnk():
        link = m.linkname
        if os.path.isabs(link):
            refuse(f"is a link to the absolute path {short_quote(link)}")
        base = os.path.dirname(os.path.join(dst_dir, name)) if m.issym() else dst_dir
        if not _is_within(dst_dir, os.path.join(base, link)):
            refuse(f"is a link to {short_quote(link)}, outside {dst_dir}")
    elif not (m.isfile() or m.isdir()):
        refuse("is not a regular file or folder")

