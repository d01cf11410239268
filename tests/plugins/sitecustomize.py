"""Test-only hooks for the scripts the tests start as subprocesses. Python imports this module at
start-up because the tests put ``tests/plugins`` on ``PYTHONPATH`` (see tests/helpers.py); the
product never reads these variables.

* ``CONVMLP_TEST_KILL_AFTER=NAME[#N]``: the process kills itself with SIGKILL right after the N-th
  (default first) ``os.replace`` onto a file named NAME, that is right after the atomic writer put
  that file in place (tests/test_fault.py).
* ``CONVMLP_TEST_DUMP_WEIGHTS=FOLDER``: after every epoch's BatchNorm averaging of a data-parallel
  run, each rank writes its model parameters (with model_ema also the EMA network's, ``ema.*``) to
  ``FOLDER/rank<R>.npz`` (tests/test_distributed.py).
* ``CONVMLP_TEST_SIGNAL_IN_COMPILE=INT|TERM[:FILE]``: the process sends itself SIGINT or SIGTERM from
  the 20th call of MindSpore's graph parser (``resolve_symbol``), that is while a graph compiles,
  after writing FILE when given (tests/test_interrupts.py).
* ``CONVMLP_TEST_SIGNAL_AT_STEP=TERM|KILL:EPOCH:STEP``: right after step STEP (1-based) of epoch
  EPOCH (1-based) of train.py's loop, the process sends SIGTERM to itself, or SIGKILL to its process
  group (start it in a session of its own), wherever a reader of its output happens to be
  (tests/test_reproducible.py).
"""
import importlib.abc
import importlib.util
import os
import signal
import sys


def _kill_after(spec):
    name, _, count = spec.partition("#")
    count, seen = int(count or 1), [0]
    replace = os.replace

    def replace_then_maybe_die(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if os.path.basename(os.fspath(dst)) == name:
            seen[0] += 1
            if seen[0] == count:
                os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace_then_maybe_die


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``patch(module)`` once `name` has been imported (before anyone takes names from it)."""

    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)


def _dump_weights(folder):
    dumped = {}   # name -> latest values: the network's and, with model_ema, the EMA network's (ema.*)

    def patch(distributed):
        average = distributed.average_bn_statistics

        def average_then_dump(net, reduce_fn, world):
            out = average(net, reduce_fn, world)
            import numpy as np
            from mindspore.communication import get_rank
            os.makedirs(folder, exist_ok=True)
            dumped.update({p.name: p.asnumpy() for p in net.get_parameters()})
            np.savez(os.path.join(folder, f"rank{get_rank()}.npz"), **dumped)
            return out
        distributed.average_bn_statistics = average_then_dump
    sys.meta_path.insert(0, _AfterImport("src.train.distributed", patch))


def _signal_in_compile(spec):
    name, _, sent = spec.partition(":")
    calls = [0]

    def patch(parser):
        resolve = parser.resolve_symbol

        def resolve_then_maybe_signal(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 20:
                if sent:
                    open(sent, "w").close()
                os.kill(os.getpid(), getattr(signal, "SIG" + name))
            return resolve(*args, **kwargs)
        parser.resolve_symbol = resolve_then_maybe_signal
        if "mindspore.graph._parse" in sys.modules:   # the package re-exports it
            sys.modules["mindspore.graph._parse"].resolve_symbol = resolve_then_maybe_signal
    sys.meta_path.insert(0, _AfterImport("mindspore.graph._parse.parser", patch))


def _signal_at_step(spec):
    name, epoch, step = spec.split(":")
    epoch, step = int(epoch), int(step)

    def patch(loop):
        train_one_epoch = loop.train_one_epoch

        def with_signal(step_cell, dataset, at_epoch, *args, on_step=None, **kwargs):
            def advance(i, loss):
                if on_step is not None:
                    on_step(i, loss)
                if at_epoch == epoch and i == step:
                    if name == "KILL":
                        os.killpg(os.getpgid(0), signal.SIGKILL)
                    os.kill(os.getpid(), getattr(signal, "SIG" + name))
            return train_one_epoch(step_cell, dataset, at_epoch, *args, on_step=advance, **kwargs)
        loop.train_one_epoch = with_signal
    sys.meta_path.insert(0, _AfterImport("src.train.loop", patch))


if os.environ.get("CONVMLP_TEST_KILL_AFTER"):
    _kill_after(os.environ["CONVMLP_TEST_KILL_AFTER"])
if os.environ.get("CONVMLP_TEST_DUMP_WEIGHTS"):
    _dump_weights(os.environ["CONVMLP_TEST_DUMP_WEIGHTS"])
if os.environ.get("CONVMLP_TEST_SIGNAL_IN_COMPILE"):
    _signal_in_compile(os.environ["CONVMLP_TEST_SIGNAL_IN_COMPILE"])
if os.environ.get("CONVMLP_TEST_SIGNAL_AT_STEP"):
    _signal_at_step(os.environ["CONVMLP_TEST_SIGNAL_AT_STEP"])
