"""What the tests share besides fixtures: where things are, the small model's flags, the two ways
of running an entry script, and the checks of "one error line, nothing changed on disk".

An entry script is run either as a user runs it, in a new process (:func:`run_script`: what only a
process shows -- the exit status, signals, kill -9, locks between processes), or in this process
(:func:`run_main`: the script's ``main(argv)`` through the same ``run_cli`` that turns a UserError
into one ``error:`` line and exit status 2). Both return a ``subprocess.CompletedProcess``, so the
same assertions read either.
"""
import contextlib
import hashlib
import importlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

#: Ground truth made with the official PyTorch code (see tests/fixtures/README.md).
FIXTURES = os.path.join(REPO, "tests", "fixtures")
#: Test-only hooks (fault injection, weight dumps) for subprocesses: put on PYTHONPATH, Python
#: loads its sitecustomize.py at start-up (see that file).
PLUGINS = os.path.join(REPO, "tests", "plugins")

#: A small ConvMLP topology (same code paths as S/M/L, ~0.2 M parameters) for fast CPU runs.
TINY_TOPOLOGY = ["--blocks", "1,1,1", "--dims", "32,64,128", "--mlp_ratios", "2,2,2",
                 "--channels", "16", "--n_conv_blocks", "1"]
#: A small topology with two Conv-MLP blocks per stage (~0.1 M parameters), so that stochastic depth
#: drops whole blocks: the data-parallel equality runs, whose recipe is on.
DP_TOPOLOGY = ["--blocks", "2,2,2", "--dims", "16,32,64", "--mlp_ratios", "2,2,2", "--channels", "16",
               "--n_conv_blocks", "1"]
#: The recipe's augmentations off, for runs whose numbers must be reproducible or quick to learn.
NO_AUG = ["--aa", "null", "--hflip", "0", "--reprob", "0", "--mixup", "0", "--cutmix", "0",
          "--crop_scale", "1,1"]

#: The flags of the session's one trained run (conftest ``trained_run``): the tiny model at 32 px on
#: ``tiny_cifar10`` (203 train records: 25 steps of 8 per epoch), the recipe's augmentation and drop
#: path on (every random draw is a function of the seed, the epoch and the step, so an interrupted
#: and resumed run ends bit-identical to this one). A test whose run has the same flags (the same
#: setting) loads the run's compiled graphs from the session's graph cache instead of compiling them.
TRAIN_FLAGS = TINY_TOPOLOGY + ["--image_size", "32", "--batch_size", "8", "--num_parallel_workers", "2",
                               "--warmup_epochs", "1", "--cooldown_epochs", "0", "--lr", "2e-3",
                               "--drop_path_rate", "0.1", "--log_interval", "1"]
#: The config flags that describe the official tiny topology (conftest ``tiny``) at 32 px on the
#: CPU; they evaluate conftest's ``tiny_ckpt``.
TINY_CKPT_FLAGS = ["--blocks", "1,2,1", "--dims", "16,32,64", "--mlp_ratios", "2,2,2", "--channels", "16",
                   "--n_conv_blocks", "1", "--num_classes", "10", "--image_size", "32", "--device_target", "CPU"]
#: Epochs of the trained run, and its steps per epoch.
TRAIN_EPOCHS, TRAIN_STEPS = 3, 25


def data_flags(folder):
    """The same folder for the train and the val split."""
    return ["--train_data_path", str(folder), "--val_data_path", str(folder)]


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


def generated(folder, dataset, n_train, n_val, seed):
    """A folder of generated images in `dataset`'s binary format, named as the real one, under `folder`."""
    from src.data import synthetic
    from src.data.catalog import FOLDERS
    return str(synthetic.write_synthetic(os.path.join(folder, FOLDERS[dataset]), dataset, n_train=n_train,
                                         n_val=n_val, seed=seed))


def learnable(folder, dataset):
    """A generated folder big enough to learn, under `folder`: CIFAR-10 2,000 train / 500 val
    images, CIFAR-100 6,000 / 1,000 (100 classes)."""
    n_train, n_val, seed = {"cifar10": (2000, 500, 3), "cifar100": (6000, 1000, 4)}[dataset]
    return generated(folder, dataset, n_train, n_val, seed)


def plugin_env(environ=None, **hooks):
    """Environment entries that load tests/plugins in a subprocess of `environ` (default: this
    process's environment) and set its `hooks`."""
    path = os.pathsep.join(p for p in (PLUGINS, (os.environ if environ is None else environ).get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, **hooks}


#: msrun of this environment (installed with MindSpore, next to its python), and its bin folder, which
#: msrun's workers need first on PATH.
VENV_BIN = os.path.dirname(sys.executable)
MSRUN = os.path.join(VENV_BIN, "msrun")
#: The marks of a module that starts msrun jobs: long, and skipped where msrun is not installed.
MSRUN_MARKS = [pytest.mark.slow,
               pytest.mark.skipif(not os.path.isfile(MSRUN), reason="msrun is not installed next to python")]


def free_port():
    """A TCP port free on 127.0.0.1 now (msrun's scheduler)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# Running an entry script

def run_script(script, *args, env=None, timeout=900, cwd=None, preexec_fn=None, environ=None):
    """Run ``python SCRIPT ARGS`` from the repository root as a user would; returns the
    ``CompletedProcess`` (text stdout/stderr). The process gets `environ` (default: this process's
    environment) with the `env` entries."""
    full_env = dict(os.environ if environ is None else environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)],
                          cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def run_script_reader_leaves(script, *args, lines=1, stream="stdout", timeout=600):
    """``python SCRIPT ARGS | head -LINES`` as a user runs it (no ``PYTHONUNBUFFERED``: a pipe is
    block-buffered): the reader of `stream` (``"stdout"`` or ``"stderr"``) reads `lines` lines and
    closes its end while the script goes on (``lines=0``: before it writes anything). Returns the
    ``CompletedProcess``; that stream's text is the lines read, the other's everything written."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader, other = (proc.stdout, proc.stderr) if stream == "stdout" else (proc.stderr, proc.stdout)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        got = "".join(reader.readline() for _ in range(lines))
        reader.close()
        rest = other.read()
        rc = proc.wait()
    finally:
        watchdog.cancel()
    out, err = (got, rest) if stream == "stdout" else (rest, got)
    return subprocess.CompletedProcess(proc.args, rc, out, err)


class InProcessTimeout(BaseException):
    """An in-process run took longer than its timeout (a subprocess would have been killed)."""


def run_main(script, *args, env=None, timeout=300):
    """``python SCRIPT ARGS`` (or ``python -m MODULE ARGS``) in this process: its ``main(argv)`` through
    :func:`src.platform.errors.run_cli`, from the repository root, with stdout and stderr captured.
    Returns a ``CompletedProcess`` whose ``returncode`` is run_cli's exit status.

    What run_cli and the script set for their process is put back afterwards (signal handlers,
    ``sys.unraisablehook``, log handlers, the C++ kernels switch, the execution mode, run-folder
    locks, the environment), so that runs do not see each other; `env` entries are set in the
    environment for the run only. A run that would compile graphs into the graph cache (MindSpore
    reads its place once per process) is refused: give it ``--graph_cache false``. A run still
    going after `timeout` seconds (e.g. blocked reading a named pipe) is stopped with
    :class:`InProcessTimeout`."""
    main = importlib.import_module(script[:-3] if script.endswith(".py") else script).main
    from src.platform.errors import run_cli
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with _process_state_restored(), _time_limit(timeout, script), contextlib.chdir(REPO), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.environ.update(env or {})
        try:
            run_cli(main, argv)
            rc = 0   # pragma: no cover - run_cli always exits
        except SystemExit as exc:
            rc = 0 if exc.code is None else exc.code
    if rc == 130:   # Ctrl-C reached this process (the tests send no signal to it): stop the session
        raise KeyboardInterrupt
    return subprocess.CompletedProcess([script, *argv], rc, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _time_limit(seconds, script):
    def expire(signum, frame):
        raise InProcessTimeout(f"{script} still running in this process after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _process_state_restored():
    import mindspore as ms
    from src.platform import errors, graph_cache
    from src.train import run_folder
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook, environ = sys.unraisablehook, dict(os.environ)
    loggers = {name: (lg, lg.handlers[:], lg.level, lg.propagate)
               for name, lg in (("root", logging.getLogger()), ("convmlp", logging.getLogger("convmlp")))}
    mode, held = ms.get_context("mode"), set(run_folder._held)
    cache_folder = graph_cache._process_folder
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook
        errors._received.clear()
        for lg, old_handlers, level, propagate in loggers.values():
            for h in lg.handlers:
                if h not in old_handlers:
                    h.close()
            lg.handlers[:], lg.level, lg.propagate = old_handlers, level, propagate
        if ms.get_context("mode") != mode:
            ms.set_context(mode=mode)
        for real in set(run_folder._held) - held:   # the lock a train.py process drops at its exit
            run_folder._release(real, os.path.join(real, run_folder.LOCK_NAME))
        opened = graph_cache._process_folder
        graph_cache._process_folder = cache_folder
        os.environ.clear()
        os.environ.update(environ)
        assert opened == cache_folder, (f"an in-process run opened the graph cache {opened}: MindSpore reads "
                                        "it once per process; give the run --graph_cache false")


def ok(proc):
    """`proc`, after asserting that it exited with status 0."""
    assert proc.returncode == 0, f"rc {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def assert_user_error(proc, *fragments):
    """Exit status 2, one ``error: ...`` line on stderr containing every fragment, no traceback.
    Returns the line."""
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(err_lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in err_lines[0], f"{frag!r} not in {err_lines[0]!r}"
    return err_lines[0]


# ------------------------------------------------------------------------------------------------
# Runs that overlap the other tests

class BackgroundJob:
    """A long run made only of processes (a training run, an msrun job, a kill -9 sequence) that
    starts in a background thread when the session starts (conftest), so that it overlaps the tests
    working in this process, whose CPU time would otherwise be the only CPU time used. Defined with
    :func:`background`; the jobs of a session run one after the other, in the order they are defined."""

    defined = []

    def __init__(self, fn):
        self.fn, self.name = fn, fn.__name__
        self.module = fn.__module__
        self._done, self._value, self._error, self.started = threading.Event(), None, None, False
        BackgroundJob.defined.append(self)

    def run(self, ctx):
        try:
            self._value = self.fn(ctx)
        except BaseException as exc:   # raised again in the test that reads the result
            self._error = exc
        finally:
            self._done.set()

    def result(self):
        """The job's return value, once it has finished; its exception if it failed."""
        assert self.started, f"the background job {self.name} was not started (see conftest)"
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def background(fn):
    """Make `fn(ctx)` a job started when the session starts and its name a fixture that waits for
    its result. ``ctx`` has ``folder`` (an empty folder of the job's own), ``env`` (the environment
    when the session started: the tests change this process's environment as they go, so a job
    never reads ``os.environ``) and ``tiny_cifar10``. A job must not print (its output would land in
    whichever test is running) and runs only processes (in-process runs change process-wide state).
    The tests of a module that defines a job run after the other modules' (conftest)."""
    job = BackgroundJob(fn)

    @pytest.fixture(scope="session", name=job.name)
    def fixture():
        return job.result()
    fixture.job = job
    return fixture


def start_background_jobs(jobs, contexts):
    """Run `jobs` one after the other in a thread (``contexts[job.name]`` for each); returns the
    thread and an event that stops it from starting the next job."""
    stop = threading.Event()

    def run_all():
        for job in jobs:
            if stop.is_set():
                job._error = RuntimeError(f"the session ended before the background job {job.name} started")
                job._done.set()
                continue
            job.run(contexts[job.name])

    for job in jobs:
        job.started = True
    thread = threading.Thread(target=run_all, name="background jobs", daemon=True)
    thread.start()
    return thread, stop



# ------------------------------------------------------------------------------------------------
# What is on disk

def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def snapshot(*roots):
    """``{path: sha256}`` of every file under `roots` (files or folders); special files and folders
    are recorded by kind. ``train.log`` (append-only) is left out."""
    out = {}
    for root in map(str, roots):
        if not os.path.isdir(root):
            out[root] = sha(root) if os.path.isfile(root) else "missing" if not os.path.lexists(root) else "special"
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = "folder"
            for f in filenames:
                p = os.path.join(dirpath, f)
                if f != "train.log":
                    out[p] = sha(p) if os.path.isfile(p) else "special"
    return out


class Snapshot(dict):
    """A :func:`snapshot` that remembers its roots, to be taken again after the run."""

    def __init__(self, *roots):
        super().__init__(snapshot(*roots))
        self.roots = roots


def expect_clean_failure(proc, before, *fragments):
    """Exit status 2, one ``error:`` line with every fragment, no traceback, nothing changed on disk
    since the :class:`Snapshot` `before`. Returns the error line."""
    line = assert_user_error(proc, *fragments)
    after = snapshot(*before.roots)
    assert after == dict(before), f"files changed on disk: {set(after.items()) ^ set(before.items())}"
    return line


def temp_files(folder):
    """Temporary files (of the atomic writer) in `folder`."""
    return [f for f in os.listdir(folder) if ".tmp" in f]


def leftovers(folder):
    """Temporary and lock files in `folder`."""
    return [f for f in os.listdir(folder) if ".tmp" in f or f.endswith(".lock")]


def metrics_epochs(run_dir):
    """The epoch column of a run folder's metrics.csv."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [int(r.split(",")[0]) for r in f.read().strip().splitlines()[1:]]


def checkpoint_meta(path):
    """The training metadata (a CheckpointMeta: epoch, step_in_epoch, best_acc, ...) of a train.py
    checkpoint."""
    import mindspore as ms
    from src.checkpoint.checkpoint import CheckpointMeta
    return CheckpointMeta.from_entries(ms.load_checkpoint(str(path)))


def model_weights(ckpt):
    """The model's tensors of a checkpoint (optimiser state and metadata left out)."""
    import mindspore as ms
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(ckpt)).items()
            if not isinstance(v, str) and not k.startswith(("adam_", "global_step", "learning_rate"))
            and k not in ("epoch", "step_in_epoch", "best_acc", "best_epoch", "num_classes", "image_size")}


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


# ------------------------------------------------------------------------------------------------
# References computed in this process

def gradient_cell(loss_net, params):
    """A compiled cell ``(images, target[, drop_scales]) -> gradients`` of `loss_net`'s loss with
    respect to `params` (BatchNorm's moving statistics update as in a training step)."""
    from mindspore import nn, ops

    class Gradients(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.loss_net, self.params = loss_net, params
            self.grad = ops.GradOperation(get_by_list=True)

        def construct(self, *inputs):
            return self.grad(self.loss_net, self.params)(*inputs)
    return Gradients()


def data_parallel_reference(out, argv, world):
    """What `world` data-parallel ranks of ``train.py ARGV --is_distributed true`` compute, in one
    process (test_distributed, test_imagefolder_distributed), with the recipe as configured:

    * rank r's batches: the train pipeline of epoch e built as rank r builds it
      (``create_dataset(epoch_config(cfg, e), "train", num_shards=world, shard_id=r)``), so its
      shard of the shuffle, its per-image augmentation and its mixup/cutmix and random erasing
      draws (the batch mixer is seeded per shard) are the rank's;
    * rank r's stochastic depth: ``DropPathDraws(net, batch_size, seed, rank=r)(e, step)``;
    * per step: the gradient of each rank's batch (BatchNorm statistics of that batch), their mean
      (DistributedGradReducer's), one AdamW step with train.py's schedule, then the EMA update
      (``model_ema``: src.train.ema.ModelEma, as train.py's step runs it);
    * BatchNorm moving statistics (of the network and of the EMA network): the mean of the ranks'
      updates at each step, which equals train.py's epoch-end average because both the moving
      average and the EMA are linear.

    Runtime (mode, C++ kernels, oneDNN ISA, seed) as train.py sets it (``setup_runtime``). Writes
    the final parameters (``ema.*`` included) to `out` (.npz) and the initial ones beside it
    (``_init.npz``)."""
    import numpy as np
    import mindspore as ms
    from src.checkpoint.load import build_model
    from src.config import epoch_config, load_config
    from src.data.pipeline import create_dataset, resolve_classes
    from src.platform.device import setup_runtime
    from src.train.ema import ModelEma, ema_network
    from src.train.optim import AdamW, cosine_schedule, param_groups_weight_decay
    from src.train.step import DropPathDraws, NetWithLoss

    cfg = load_config(argv)
    setup_runtime(cfg, logging.getLogger("reference"))
    resolve_classes(cfg)
    steps = create_dataset(cfg, "train", num_shards=world, shard_id=0).get_dataset_size()
    net = build_model(cfg, drop_path_rate=cfg.drop_path_rate)
    ema_net = ema_network(net, lambda: build_model(cfg)) if cfg.model_ema else None
    nets = [n for n in (net, ema_net) if n is not None]
    params = [p for n in nets for p in n.get_parameters()]
    np.savez(out.replace(".npz", "_init.npz"), **{p.name: p.asnumpy() for p in params})
    lrs = cosine_schedule(cfg.lr, cfg.min_lr, cfg.warmup_lr, cfg.warmup_epochs, cfg.epoch_size, steps,
                          cfg.cooldown_epochs)
    opt = AdamW(param_groups_weight_decay(net.trainable_params(), cfg.weight_decay), ms.Tensor(lrs),
                weight_decay=cfg.weight_decay, cpu_kernel=cfg.cpu_kernels)
    loss_net = NetWithLoss(net)
    loss_net.set_train(True)
    gradients = gradient_cell(loss_net, opt.parameters)
    ema = ModelEma(net, ema_net, cfg.model_ema_decay) if ema_net is not None else None
    draws = [DropPathDraws(net, cfg.batch_size, cfg.seed, rank) for rank in range(world)]
    bn = [p for p in net.get_parameters() if p.name.rsplit(".", 1)[-1] in ("moving_mean", "moving_variance")]
    for epoch in range(cfg.epoch_size):
        one = epoch_config(cfg, epoch)
        ranks = [create_dataset(one, "train", num_shards=world, shard_id=rank).create_tuple_iterator(
            num_epochs=1, output_numpy=True) for rank in range(world)]
        for i, batches in enumerate(zip(*ranks)):
            if i >= steps:
                break
            before, grads, moved = [p.asnumpy() for p in bn], [], []
            for rank, (images, target) in enumerate(batches):
                for p, b in zip(bn, before):
                    p.set_data(ms.Tensor(b))
                grads.append([g.asnumpy() for g in gradients(ms.Tensor(images), ms.Tensor(target),
                                                             *draws[rank](epoch, i))])
                moved.append([p.asnumpy() for p in bn])
            for j, p in enumerate(bn):
                p.set_data(ms.Tensor(np.mean([m[j] for m in moved], axis=0)))
            opt(tuple(ms.Tensor(np.mean([g[j] for g in grads], axis=0)) for j in range(len(grads[0]))))
            if ema is not None:
                ema()
    np.savez(out, **{p.name: p.asnumpy() for p in params})


#: The keys of the training recipe that draw random numbers or change the targets.
RECIPE_KEYS = ("drop_path_rate", "crop_scale", "hflip", "aa", "reprob", "smoothing", "mixup", "cutmix",
               "mixup_prob", "mixup_switch_prob")


def assert_default_recipe(run_config, dataset):
    """The resolved config a run saved (`run_config`) has config.yaml's value for `dataset` of every
    :data:`RECIPE_KEYS` key, and none of them is off."""
    import yaml
    from src.config import load_config
    with open(run_config, encoding="utf-8") as f:       # the values as saved (a short run's file names the
        saved = yaml.safe_load(f)                        # recipe's cool-down, which load_config would refuse)
    default = load_config(["--dataset_choose", dataset])
    for key in RECIPE_KEYS:
        assert saved[key] == getattr(default, key), (key, saved[key], getattr(default, key))
    assert list(saved["crop_scale"]) != [1.0, 1.0] and saved["aa"] and all(
        saved[k] > 0 for k in RECIPE_KEYS if k not in ("crop_scale", "aa"))


def assert_data_parallel_equal(dump, reference, atol, rtol):
    """The weights and the EMA weights (``ema.*``) that both ranks of a data-parallel job dumped
    (``CONVMLP_TEST_DUMP_WEIGHTS`` folder `dump`) are bit-identical, and equal those of
    :func:`data_parallel_reference` (its .npz `reference`) within `atol`/`rtol`; both moved from
    their initial values by far more than that, so the comparison is not one of two initial states.
    Prints the max |diff| of each."""
    import numpy as np
    from src.checkpoint.checkpoint import EMA_PREFIX
    r0, r1 = np.load(os.path.join(dump, "rank0.npz")), np.load(os.path.join(dump, "rank1.npz"))
    want, init = np.load(reference), np.load(reference.replace(".npz", "_init.npz"))
    assert sorted(r0.files) == sorted(r1.files) == sorted(want.files) == sorted(init.files)
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
    for name, keys in (("weights", [k for k in r0.files if not k.startswith(EMA_PREFIX)]),
                       ("EMA weights", [k for k in r0.files if k.startswith(EMA_PREFIX)])):
        assert keys and any("moving_mean" in k for k in keys), name
        worst = max(float(np.abs(r0[k] - want[k]).max()) for k in keys)
        moved = max(float(np.abs(r0[k] - init[k]).max()) for k in keys)
        print(f"2 ranks vs single process, {name}: max |diff| {worst:.3g} "
              f"(largest change from the initial values {moved:.3g})")
        assert moved > 100 * atol, name
        for k in keys:
            np.testing.assert_allclose(r0[k], want[k], atol=atol, rtol=rtol, err_msg=k)


# ------------------------------------------------------------------------------------------------
# Checkpoints made without training

def write_train_checkpoint(path, topology, image_size=32, dataset="cifar10", head_scale=20.0, extra=()):
    """A checkpoint laid out as train.py writes it (weights, metadata, the run's config) for a
    random-init model of `topology`; the head is scaled so that predictions are confident.
    Returns the config of the run."""
    import mindspore as ms
    from src.config import load_config
    from src.checkpoint.load import build_model
    flags = sum(([f"--{k}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
                 for k, v in topology.items()), [])
    cfg = load_config(flags + ["--image_size", str(image_size), "--dataset_choose", dataset, *extra])
    net = build_model(cfg)
    w = net.head.weight
    w.set_data(ms.Tensor(w.asnumpy() * head_scale))
    meta = {"epoch": 3, "global_step": 30, "arch": cfg.arch, "num_classes": cfg.num_classes,
            "image_size": cfg.image_size, "dataset": cfg.dataset_choose, "config": cfg.to_yaml()}
    ms.save_checkpoint(net, str(path), append_dict=meta)
    return cfg


def checkpoint_model(ckpt, *argv):
    """``(net, cfg)``: the model of `ckpt` as export.py/infer.py load it (topology from the saved config)."""
    from src.checkpoint.load import load_checkpoint_model, DEPLOY_KEYS
    from src.config import load_config
    cfg = load_config(["--checkpoint_path", ckpt, *argv])
    net, _ = load_checkpoint_model(ckpt, cfg, logging.getLogger("test"), DEPLOY_KEYS)
    return net, cfg
