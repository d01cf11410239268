"""Shared pytest fixtures: the repository on sys.path, small synthetic CIFAR folders, a local HTTP server.

Keep this file generic; test-specific helpers belong in their test file.
"""
import functools
import http.server
import os
import sys
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from src.data import cifar, synthetic  # noqa: E402  (needs REPO on sys.path)


@pytest.fixture(scope="session", autouse=True)
def graph_cache_root(tmp_path_factory):
    """Graphs compiled by the entry scripts the tests run are cached in a folder of this test
    session (``CONVMLP_GRAPH_CACHE``, inherited by every subprocess), never in the user's
    ``~/.cache``; runs within the session share it, as a user's runs share theirs."""
    old = os.environ.get("CONVMLP_GRAPH_CACHE")
    os.environ["CONVMLP_GRAPH_CACHE"] = str(tmp_path_factory.mktemp("graph_cache"))
    yield os.environ["CONVMLP_GRAPH_CACHE"]
    if old is None:
        os.environ.pop("CONVMLP_GRAPH_CACHE", None)
    else:
        os.environ["CONVMLP_GRAPH_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory):
    """Folder ``.../cifar-10-batches-bin`` with 203 train records in 5 files (odd sizes) and 61 val records."""
    folder = tmp_path_factory.mktemp("tiny_cifar10") / "cifar-10-batches-bin"
    return str(synthetic.write_synthetic(str(folder), "cifar10", n_train=203, n_val=61, seed=1))


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory):
    """Folder ``.../cifar-100-binary`` with 301 train records in ``train.bin`` and 101 val records."""
    folder = tmp_path_factory.mktemp("tiny_cifar100") / "cifar-100-binary"
    return str(synthetic.write_synthetic(str(folder), "cifar100", n_train=301, n_val=101, seed=2))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    timeout = 10  # seconds a connection may stay idle

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """``(root_dir, base_url)``: files written under root_dir are served at base_url by a thread-run
    HTTP server on 127.0.0.1 (free port), shut down after the test."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield str(root), f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------------------
# Model, parity ground truth and the pth2ckpt.py command line (test_model, test_parity, test_pth2ckpt)

import json  # noqa: E402
import subprocess  # noqa: E402


#: Test-only hooks (fault injection, weight dumps) for subprocesses: put on PYTHONPATH, Python
#: loads its sitecustomize.py at start-up (see that file).
PLUGINS = os.path.join(REPO, "tests", "plugins")


def plugin_env(**hooks):
    """Environment entries that load tests/plugins in a subprocess and set its `hooks`."""
    path = os.pathsep.join(p for p in (PLUGINS, os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, **hooks}


#: Ground truth made with the official PyTorch code (see tests/fixtures/README.md).
FIXTURES = os.path.join(REPO, "tests", "fixtures")


@pytest.fixture(scope="session")
def parity_dir():
    return FIXTURES


@pytest.fixture(scope="session")
def tiny(parity_dir):
    """The official-format tiny checkpoint with its configuration, input and official logits."""
    import numpy as np
    with open(os.path.join(parity_dir, "convmlp_tiny.json")) as f:
        meta = json.load(f)
    topo = {k: meta[k] for k in ("blocks", "dims", "mlp_ratios", "channels", "n_conv_blocks")}
    return {
        "pth": os.path.join(parity_dir, "convmlp_tiny.pth"),
        "topology": topo,
        "num_classes": meta["num_classes"],
        "input": np.load(os.path.join(parity_dir, "convmlp_tiny_input.npy")),
        "logits": np.load(os.path.join(parity_dir, "convmlp_tiny_logits.npy")),
        # the pth2ckpt.py flags that describe the tiny topology
        "flags": sum(([f"--{k}"] + [str(x) for x in (v if isinstance(v, list) else [v])]
                      for k, v in topo.items()), []),
    }


@pytest.fixture(scope="session")
def tiny_state(tiny):
    """The tiny official state_dict (torch tensors); do not modify it."""
    import torch
    return torch.load(tiny["pth"], map_location="cpu", weights_only=True)


def read_tsv(path):
    """``{key: (shape, dtype, kind)}`` of an official state_dict listing."""
    out = {}
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header == ["key", "shape", "dtype", "kind"], f"{path}: unexpected header {header}"
        for line in f:
            key, shape, dtype, kind = line.rstrip("\n").split("\t")
            out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype, kind)
    return out


@pytest.fixture(scope="session")
def official_keys(parity_dir):
    """``official_keys("convmlp_s")`` -> ``{key: (shape, dtype, kind)}`` from the fixture tsv."""
    return functools.lru_cache(maxsize=None)(
        lambda variant: read_tsv(os.path.join(parity_dir, f"{variant}_state_dict.tsv")))


@pytest.fixture(scope="session")
def fake_official_state(official_keys):
    """``fake_official_state("convmlp_s")``: a full-size official-format state_dict of zeros built
    from the tsv shapes (no download); BatchNorm counters are int64 like the real ones."""
    import torch

    def build(variant):
        return {k: (torch.zeros(shape, dtype=torch.int64) if dtype == "int64" else torch.zeros(shape))
                for k, (shape, dtype, _) in official_keys(variant).items()}
    return build


@pytest.fixture(scope="session")
def built_model():
    """``built_model("convmlp_m", 1000)``: the MindSpore model, built once per session (building
    M and L takes seconds); do not modify it."""
    @functools.lru_cache(maxsize=None)
    def build(variant, num_classes=1000):
        from model import create_model
        return create_model(variant, num_classes=num_classes)
    return build


@pytest.fixture(scope="session")
def run_pth2ckpt():
    """Run ``pth2ckpt.py`` as a user would (subprocess, repo root as cwd); returns the
    ``CompletedProcess`` with text ``stdout``/``stderr``."""
    def run(*args, env=None, timeout=300):
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run([sys.executable, os.path.join(REPO, "pth2ckpt.py"), *map(str, args)],
                              cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    return run


def assert_user_error(proc, *fragments):
    """Exit status 2, one ``error: ...`` line on stderr containing every fragment, no traceback."""
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(err_lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in err_lines[0], f"{frag!r} not in {err_lines[0]!r}"
    return err_lines[0]


@pytest.fixture(scope="session")
def user_error():
    """``user_error(proc, "fragment", ...)``: see :func:`assert_user_error`."""
    return assert_user_error


# ------------------------------------------------------------------------------------------------
# Entry scripts end to end (test_train, test_reliability, test_distributed, ...)

#: A small ConvMLP topology (same code paths as S/M/L, ~0.2 M parameters) for fast CPU runs.
TINY_TOPOLOGY = ["--blocks", "1,1,1", "--dims", "32,64,128", "--mlp_ratios", "2,2,2",
                 "--channels", "16", "--n_conv_blocks", "1"]
#: The recipe's augmentations off, for runs whose numbers must be reproducible or quick to learn.
NO_AUG = ["--aa", "null", "--hflip", "0", "--reprob", "0", "--mixup", "0", "--cutmix", "0",
          "--crop_scale", "1,1"]


def run_script(script, *args, env=None, timeout=900, cwd=None):
    """Run ``python SCRIPT ARGS`` from the repository root as a user would; returns the
    ``CompletedProcess`` (text stdout/stderr)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)],
                          cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def learnable_cifar10(tmp_path_factory):
    """A generated CIFAR-10-format folder big enough to learn: 2,000 train / 500 val images."""
    folder = tmp_path_factory.mktemp("learn10") / "cifar-10-batches-bin"
    return str(synthetic.write_synthetic(str(folder), "cifar10", n_train=2000, n_val=500, seed=3))


@pytest.fixture(scope="session")
def learnable_cifar100(tmp_path_factory):
    """A generated CIFAR-100-format folder: 6,000 train / 1,000 val images (100 classes)."""
    folder = tmp_path_factory.mktemp("learn100") / "cifar-100-binary"
    return str(synthetic.write_synthetic(str(folder), "cifar100", n_train=6000, n_val=1000, seed=4))


def override(base, *extra):
    """`base` flags with those that `extra` gives again left out, then `extra`: the scripts refuse a
    flag given twice, so a test that changes one of a shared list of flags replaces it."""
    extra = [str(a) for a in extra]
    given = {a.split("=")[0] for a in extra if a.startswith("--")}
    out, skipping = [], False
    for a in map(str, base):
        if a.startswith("--"):
            skipping = a.split("=")[0] in given
        if not skipping:
            out.append(a)
    return out + extra


_COMPILE_CACHE_VARS = ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH")
_COMPILE_CACHE_AT_START = {v: os.environ.get(v) for v in _COMPILE_CACHE_VARS}


@pytest.fixture(autouse=True)
def no_leaked_compile_cache_settings():
    """No test may change MindSpore's compile-cache variables in this process: every entry script
    a later test starts would inherit them and reuse another setting's compiled graphs."""
    yield
    now = {v: os.environ.get(v) for v in _COMPILE_CACHE_VARS}
    assert now == _COMPILE_CACHE_AT_START, f"the test changed {now} in the environment"


# ------------------------------------------------------------------------------------------------
# A MindSpore checkpoint of the tiny topology (test_outputs, test_bounds, test_checksums)

#: The config flags that describe the official tiny topology (see `tiny`) at 32 px on the CPU.
TINY_CKPT_FLAGS = ["--blocks", "1,2,1", "--dims", "16,32,64", "--mlp_ratios", "2,2,2", "--channels", "16",
                   "--n_conv_blocks", "1", "--num_classes", "10", "--image_size", "32", "--device_target", "CPU"]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint of the tiny topology (fresh weights) written by the repository's writer
    (``src.checkpoint.files.save_atomic``); evaluate it with :data:`TINY_CKPT_FLAGS`."""
    from model import ConvMLP
    from src.checkpoint.files import save_atomic
    net = ConvMLP(num_classes=10, blocks=[1, 2, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2], channels=16,
                  n_conv_blocks=1)
    path = str(tmp_path_factory.mktemp("tiny_ckpt") / "tiny.ckpt")
    save_atomic(net, path)
    return path
