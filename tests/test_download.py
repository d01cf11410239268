"""download.py and cifar.ensure_dataset against a local HTTP server: md5 checks, corrupted archives,
unsafe archive members, offline errors."""
import io
import os
import socket
import tarfile

import numpy as np
import pytest

from src.data import cifar
from src.platform.download import DownloadError, download_url, md5sum, safe_extract_tar
from src.platform.errors import DataError


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"          # nothing listens there any more


def _tar_gz(path, members):
    """Write a tar.gz with `members`: list of (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _entry(name, data=b"x", **attrs):
    info = tarfile.TarInfo(name)
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, (data if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else None)


# ---------------------------------------------------------------------------------- download_url
def test_download_checks_md5_and_leaves_no_partial_file(http_root, tmp_path):
    root, url = http_root
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with open(os.path.join(root, "blob.bin"), "wb") as f:
        f.write(payload)
    dst = str(tmp_path / "dl" / "blob.bin")
    md5 = md5sum(os.path.join(root, "blob.bin"))
    assert download_url(url + "blob.bin", dst, md5=md5) == dst
    assert open(dst, "rb").read() == payload
    assert os.listdir(tmp_path / "dl") == ["blob.bin"]


def test_md5_mismatch_names_file_and_both_sums_and_removes_the_file(http_root, tmp_path):
    root, url = http_root
    with open(os.path.join(root, "blob.bin"), "wb") as f:
        f.write(b"corrupted")
    dst = str(tmp_path / "blob.bin")
    with pytest.raises(DataError) as e:
        download_url(url + "blob.bin", dst, md5="0" * 32)
    msg = str(e.value)
    assert dst in msg and "expected " + "0" * 32 in msg and md5sum(os.path.join(root, "blob.bin")) in msg
    assert os.listdir(tmp_path) == ["www"]      # neither blob.bin nor blob.bin.part


def test_http_404_and_connection_refused_name_url_and_destination(http_root, tmp_path):
    _, url = http_root
    dst = str(tmp_path / "missing.bin")
    with pytest.raises(DownloadError, match="404") as e:
        download_url(url + "missing.bin", dst)
    assert url + "missing.bin" in str(e.value) and f"put it at {dst}" in str(e.value)
    with pytest.raises(DownloadError, match="refused"):
        download_url(_closed_port_url() + "x.bin", dst, timeout=5)
    assert not os.path.exists(dst) and not os.path.exists(dst + ".part")


# ---------------------------------------------------------------------------------- safe_extract_tar
def test_safe_extract_extracts_a_normal_archive(tmp_path):
    archive = _tar_gz(str(tmp_path / "ok.tar.gz"), [
        _entry("d", type=tarfile.DIRTYPE, mode=0o755), _entry("d/a.bin", b"abc"),
        _entry("d/link", type=tarfile.SYMTYPE, linkname="a.bin")])
    out = tmp_path / "out"
    assert sorted(safe_extract_tar(archive, str(out))) == ["d", "d/a.bin", "d/link"]
    assert (out / "d" / "a.bin").read_bytes() == b"abc"


@pytest.mark.parametrize("member, why", [
    (_entry("/etc/evil", b"x"), "absolute path"),
    (_entry("../evil", b"x"), "contains '..'"),
    (_entry("d/../../evil", b"x"), "contains '..'"),
    (_entry("link", type=tarfile.SYMTYPE, linkname="../../etc/passwd"), "outside"),
    (_entry("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "absolute path"),
    (_entry("hard", type=tarfile.LNKTYPE, linkname="../outside"), "outside"),
    (_entry("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "device"),
    (_entry("fifo", type=tarfile.FIFOTYPE), "FIFO"),
])
def test_safe_extract_refuses_members_that_escape(tmp_path, member, why):
    archive = _tar_gz(str(tmp_path / "bad.tar.gz"), [_entry("fine.txt", b"ok"), member])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=why) as e:
        safe_extract_tar(archive, str(out))
    assert archive in str(e.value) and repr(member[0].name) in str(e.value)
    assert not (out / "fine.txt").exists()      # checked before anything is written
    assert not (tmp_path / "evil").exists()


def test_safe_extract_reports_a_broken_archive(tmp_path):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"\x1f\x8b" + os.urandom(100))
    with pytest.raises(DataError, match="broken.tar.gz"):
        safe_extract_tar(str(path), str(tmp_path / "out"))


# ---------------------------------------------------------------------------------- ensure_dataset
@pytest.fixture
def served_cifar10(http_root, tiny_cifar10, monkeypatch):
    """A CIFAR-10 archive built from tiny_cifar10, served as cifar-10-binary.tar.gz; its md5 is
    made the expected one and CONVMLP_CIFAR_URL points at the server."""
    root, url = http_root
    archive = os.path.join(root, "cifar-10-binary.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_cifar10, arcname="cifar-10-batches-bin")
    monkeypatch.setenv("CONVMLP_CIFAR_URL", url)
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10", ("cifar-10-binary.tar.gz", md5sum(archive)))
    return archive


def test_ensure_dataset_downloads_checks_and_extracts(served_cifar10, tiny_cifar10, tmp_path):
    folder = str(tmp_path / "data" / "cifar-10-batches-bin")
    assert cifar.ensure_dataset(folder, "cifar10", download=True) == folder
    got, ref = cifar.read_split(folder, "cifar10", "train"), cifar.read_split(tiny_cifar10, "cifar10", "train")
    np.testing.assert_array_equal(got.images, ref.images)
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert os.path.isfile(tmp_path / "data" / "cifar-10-binary.tar.gz")


def test_ensure_dataset_refuses_a_corrupted_archive(served_cifar10, tmp_path):
    with open(served_cifar10, "r+b") as f:   # flip bytes in the middle of the served archive
        f.seek(os.path.getsize(served_cifar10) // 2)
        f.write(b"\x00\xff\x00\xff")
    folder = str(tmp_path / "data" / "cifar-10-batches-bin")
    with pytest.raises(DataError, match="md5 mismatch for .*cifar-10-binary.tar.gz"):
        cifar.ensure_dataset(folder, "cifar10", download=True)
    assert not os.path.exists(folder)
    assert os.listdir(tmp_path / "data") == []


def test_ensure_dataset_refuses_path_traversal_in_the_archive(http_root, monkeypatch, tmp_path):
    root, url = http_root
    archive = _tar_gz(os.path.join(root, "cifar-10-binary.tar.gz"),
                      [_entry("cifar-10-batches-bin/../../escaped.bin", b"x" * 3073)])
    monkeypatch.setenv("CONVMLP_CIFAR_URL", url)
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10", ("cifar-10-binary.tar.gz", md5sum(archive)))
    with pytest.raises(DataError, match="refusing to extract .*contains '..'"):
        cifar.ensure_dataset(str(tmp_path / "data" / "cifar-10-batches-bin"), "cifar10", download=True)
    assert not (tmp_path / "escaped.bin").exists()


def test_offline_download_says_where_to_put_the_files(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVMLP_CIFAR_URL", _closed_port_url())
    folder = str(tmp_path / "cifar-100-binary")
    with pytest.raises(DataError) as e:
        cifar.ensure_dataset(folder, "cifar100", download=True)
    msg = str(e.value)
    assert "could not download" in msg and "cifar-100-binary.tar.gz" in msg and folder in msg
    assert "\n" not in msg


def test_missing_folder_without_download_mentions_the_flag(tmp_path):
    folder = str(tmp_path / "cifar-10-batches-bin")
    with pytest.raises(DataError, match="set download: true") as e:
        cifar.ensure_dataset(folder, "cifar10", download=False)
    assert folder in str(e.value)


def test_archive_not_matching_the_configured_folder_name(served_cifar10, tmp_path):
    with pytest.raises(DataError, match="was extracted to .*cifar-10-batches-bin, but the configured folder"):
        cifar.ensure_dataset(str(tmp_path / "data" / "my_cifar"), "cifar10", download=True)
