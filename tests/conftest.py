"""Shared pytest fixtures: generated CIFAR folders, the session's one trained run, the official
ground truth, a local HTTP server; the ``slow`` marker; the start of the background jobs
(``helpers.background``). What is not a fixture lives in helpers.py.

``python -m pytest tests`` runs every test; ``-m "not slow"`` leaves out the long end-to-end ones.
"""
import contextlib
import functools
import http.server
import json
import os
import threading
from types import SimpleNamespace

import pytest

from helpers import (FIXTURES, TRAIN_EPOCHS, TRAIN_FLAGS, BackgroundJob, background, data_flags, generated,
                     learnable, ok, read_tsv, run_main, run_script, start_background_jobs)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long end-to-end run (msrun, kill -9 loops, AMP training, "
                                       "CIFAR-100 end to end); -m \"not slow\" leaves them out")


def pytest_collection_modifyitems(items):
    """The files whose tests read a background job of their own run last, so that their jobs
    overlap every other file's tests (the order within a file is kept)."""
    own_jobs = {(job.module, job.name) for job in BackgroundJob.defined}
    last = {item.module.__name__ for item in items if hasattr(item, "module")
            and any((item.module.__name__, name) in own_jobs for name in item.fixturenames)}
    items.sort(key=lambda item: hasattr(item, "module") and item.module.__name__ in last)


@contextlib.contextmanager
def _session_cache(variable, folder):
    """`variable` (a cache root the product reads) set to `folder` for the session, restored after."""
    old = os.environ.get(variable)
    os.environ[variable] = str(folder)
    try:
        yield str(folder)
    finally:
        if old is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = old


@pytest.fixture(scope="session", autouse=True)
def graph_cache_root(tmp_path_factory):
    """Graphs compiled by the entry scripts the tests run are cached in a folder of this test
    session (``CONVMLP_GRAPH_CACHE``, inherited by every subprocess), never in the user's
    ``~/.cache``; runs within the session share it, as a user's runs share theirs."""
    with _session_cache("CONVMLP_GRAPH_CACHE", tmp_path_factory.mktemp("graph_cache")) as root:
        yield root


@pytest.fixture(scope="session", autouse=True)
def image_check_root(tmp_path_factory):
    """The kept image checks (``CONVMLP_IMAGE_CACHE``, src/data/checked.py) of this test session's
    trees go to a folder of the session, never to the user's ``~/.cache``."""
    with _session_cache("CONVMLP_IMAGE_CACHE", tmp_path_factory.mktemp("image_checks")) as root:
        yield root


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
# Generated data

@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory):
    """Folder ``.../cifar-10-batches-bin`` with 203 train records in 5 files (odd sizes) and 61 val records."""
    return generated(tmp_path_factory.mktemp("tiny_cifar10"), "cifar10", 203, 61, seed=1)


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory):
    """Folder ``.../cifar-100-binary`` with 301 train records in ``train.bin`` and 101 val records."""
    return generated(tmp_path_factory.mktemp("tiny_cifar100"), "cifar100", 301, 101, seed=2)


@pytest.fixture(scope="session")
def learnable_cifar10(tmp_path_factory):
    """A generated CIFAR-10-format folder big enough to learn (``helpers.learnable``)."""
    return learnable(tmp_path_factory.mktemp("learn10"), "cifar10")


@pytest.fixture(scope="session")
def learnable_cifar100(tmp_path_factory):
    """A generated CIFAR-100-format folder big enough to learn (``helpers.learnable``)."""
    return learnable(tmp_path_factory.mktemp("learn100"), "cifar100")


# ------------------------------------------------------------------------------------------------
# Background jobs, and the session's trained run

@pytest.fixture(scope="session", autouse=True)
def background_jobs(request, graph_cache_root, tiny_cifar10, tmp_path_factory):
    """Start, one after the other in a background thread, the jobs (``helpers.background``) that
    the selected tests read; at the end of the session, wait for the one still running."""
    wanted = {name for item in request.session.items for name in item.fixturenames}
    jobs = [job for job in BackgroundJob.defined if job.name in wanted]
    env = dict(os.environ)   # with the session's graph cache
    contexts = {job.name: SimpleNamespace(folder=tmp_path_factory.mktemp(job.name), env=env, tiny_cifar10=tiny_cifar10)
                for job in jobs}
    thread, stop = start_background_jobs(jobs, contexts)
    yield
    stop.set()
    thread.join()


@background
def trained_run(ctx):
    """One train.py run with :data:`helpers.TRAIN_FLAGS` for ``TRAIN_EPOCHS`` epochs on
    ``tiny_cifar10``, started as a user starts it: its folder (a ``pathlib.Path`` holding last.ckpt,
    best.ckpt, epoch_000N.ckpt, metrics.csv, config.yaml, train.log) and its stdout. Every test that
    needs "a train.py checkpoint" or "a finished run" reads it; none may modify it (copy first)."""
    out = ctx.folder / "run"
    proc = ok(run_script("train.py", *TRAIN_FLAGS, *data_flags(ctx.tiny_cifar10), "--epoch_size", TRAIN_EPOCHS,
                         "--save_checkpoint_path", out, environ=ctx.env))
    return {"dir": out, "stdout": proc.stdout}


# ------------------------------------------------------------------------------------------------
# A local HTTP server

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
# The model, the official ground truth and the pth2ckpt.py command line

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
def tiny_ckpt(tmp_path_factory):
    """A checkpoint of the tiny topology (fresh weights) written by the repository's writer
    (``src.checkpoint.checkpoint.save_atomic``); evaluate it with :data:`helpers.TINY_CKPT_FLAGS`."""
    from model import ConvMLP
    from src.checkpoint.checkpoint import save_atomic
    net = ConvMLP(num_classes=10, blocks=[1, 2, 1], dims=[16, 32, 64], mlp_ratios=[2, 2, 2], channels=16,
                  n_conv_blocks=1)
    path = str(tmp_path_factory.mktemp("tiny_ckpt") / "tiny.ckpt")
    save_atomic(net, path)
    return path


@pytest.fixture(scope="session")
def run_pth2ckpt():
    """Run ``pth2ckpt.py ARGS`` in this process (``helpers.run_main``: its ``main`` through the same
    ``run_cli``, from the repository root); returns the ``CompletedProcess`` with text
    ``stdout``/``stderr`` and run_cli's exit status. What only a new process shows of it (signals,
    first-run noise) is tested with ``helpers.run_script``."""
    def run(*args, env=None, timeout=300):
        return run_main("pth2ckpt.py", *args, env=env, timeout=timeout)
    return run
