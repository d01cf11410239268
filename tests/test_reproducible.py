"""The same command gives the same weights, bit for bit, and so does a run stopped and resumed.

End to end (train.py as subprocesses): a 3-epoch run of the small topology on generated CIFAR
data with the whole augmentation recipe on (RandomResizedCrop, flip, RandAugment, random erasing,
mixup/cutmix, label smoothing), stochastic depth 0.1, the default two data workers and the C++ CPU
kernels; the topology has two blocks in its second stage, because a stage of one block has no drop
path (rates are ``linspace(0, rate, blocks)`` per stage). Four runs of the same command:

* ``first``: compiles its graphs (an empty graph cache of its own: a miss);
* ``second``: the same command again (a graph-cache hit);
* ``sigterm``: SIGTERM in epoch 2 (train.py saves a resumable ``last.ckpt`` mid-epoch), then
  ``--resume auto``;
* ``sigkill``: SIGKILL in epoch 2 (nothing saved: the resume starts over from epoch 1's files).

Every tensor of every checkpoint (weights, BatchNorm statistics, AdamW moments, step counters,
metadata) and the metrics rows must be equal in all four. In-process tests check the parts:
the drop-path draws depend on (seed, rank, epoch, step) alone, and feeding them changes no number
of the forward pass.
"""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, TINY_TOPOLOGY, background, checkpoint_meta, ok, override, plugin_env, run_script

EPOCHS = 3
STEPS = 6                          # max_steps_per_epoch (the data has 12 batches of 16)
TOPOLOGY = override(TINY_TOPOLOGY, "--blocks", "1,2,1")
ARGS = [*TOPOLOGY, "--image_size", "32", "--batch_size", "16", "--epoch_size", str(EPOCHS),
        "--max_steps_per_epoch", str(STEPS), "--warmup_epochs", "1", "--cooldown_epochs", "0", "--lr", "2e-3",
        "--drop_path_rate", "0.1", "--log_interval", "1", "--seed", "7"]
CHECKPOINTS = [f"epoch_{e:04d}.ckpt" for e in range(1, EPOCHS + 1)] + ["last.ckpt", "best.ckpt"]
#: metrics.csv columns that are numbers of the run (the others are speed and time)
NUMBERS = ("epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "lr")


def train_args(data, run_dir, *extra):
    return [*ARGS, "--train_data_path", data, "--val_data_path", data, "--save_checkpoint_path", str(run_dir),
            *extra]


def stop_in_epoch_2(args, sig, environ):
    """Run train.py with `args` and the environment `environ`; right after step 1 of epoch 2 it
    gets `sig` (SIGTERM, or SIGKILL to its process group) from the test plugin, at that step
    however fast the run is. Returns (exit status, log)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          start_new_session=True,
                          env=dict(environ, PYTHONUNBUFFERED="1",
                                   **plugin_env(environ, CONVMLP_TEST_SIGNAL_AT_STEP=f"{sig.name[3:]}:2:1")))
    return proc.returncode, proc.stdout


@background
def runs(ctx):
    """The four run folders (see the module docstring), the logs of the interrupted runs and a copy
    of the mid-epoch checkpoint the SIGTERM left (``sigterm_stop.ckpt``)."""
    env = dict(ctx.env, CONVMLP_GRAPH_CACHE=str(ctx.folder / "graphs"))     # the first run's is a miss
    dirs = {name: ctx.folder / name for name in ("first", "second", "sigterm", "sigkill")}
    data = ctx.tiny_cifar10
    for name in ("first", "second"):
        ok(run_script("train.py", *train_args(data, dirs[name]), environ=env))
    logs = {}
    rc, logs["sigterm"] = stop_in_epoch_2(train_args(data, dirs["sigterm"]), signal.SIGTERM, env)
    assert rc == 130, logs["sigterm"][-3000:]
    shutil.copyfile(dirs["sigterm"] / "last.ckpt", ctx.folder / "sigterm_stop.ckpt")
    rc, logs["sigkill"] = stop_in_epoch_2(train_args(data, dirs["sigkill"]), signal.SIGKILL, env)
    assert rc == -signal.SIGKILL, logs["sigkill"][-3000:]
    for name in ("sigterm", "sigkill"):
        resumed = run_script("train.py", *train_args(data, dirs[name], "--resume", "auto"), environ=env)
        logs[name + "_resumed"] = ok(resumed).stdout
    return dirs, logs, ctx.folder / "sigterm_stop.ckpt"


def checkpoint_entries(path):
    """Every entry of a checkpoint as NumPy arrays (strings as they are), except the saved
    config, which names the run's own folder."""
    import mindspore as ms
    return {k: (v if isinstance(v, str) else v.asnumpy()) for k, v in ms.load_checkpoint(str(path)).items()
            if k != "config"}


def metrics_numbers(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: row[k] for k in NUMBERS} for row in csv.DictReader(f)]


def test_the_runs_stopped_where_they_were_meant_to(runs):
    dirs, logs, stop_ckpt = runs
    assert "graph cache: miss" in (dirs["first"] / "train.log").read_text()
    assert "graph cache: hit" in (dirs["second"] / "train.log").read_text()
    meta = checkpoint_meta(stop_ckpt)                         # a mid-epoch checkpoint of epoch 2
    assert meta.epoch == 1 and 0 < meta.step_in_epoch < STEPS, meta
    assert len(meta.epoch_losses) == meta.step_in_epoch
    assert f"1 epoch(s) done + {meta.step_in_epoch} step(s) of epoch 2" in logs["sigterm_resumed"]
    assert "resumed from" in logs["sigkill_resumed"] and "1 epoch(s) done," in logs["sigkill_resumed"]


@pytest.mark.parametrize("other", ["second", "sigterm", "sigkill"])
def test_every_checkpoint_tensor_is_equal_to_the_first_run(runs, other):
    dirs = runs[0]
    for name in CHECKPOINTS:
        a = checkpoint_entries(dirs["first"] / name)
        b = checkpoint_entries(dirs[other] / name)
        assert a.keys() == b.keys(), (name, sorted(set(a) ^ set(b)))
        differ = [k for k in a if not np.array_equal(a[k], b[k])]
        assert differ == [], f"{other}/{name}: {len(differ)} of {len(a)} entries differ, e.g. {differ[:5]}"
    assert any(k.startswith("adam_m.") for k in a) and "global_step" in a      # optimiser state included
    assert metrics_numbers(dirs[other]) == metrics_numbers(dirs["first"])


def test_the_weights_moved_and_the_drop_path_was_active(runs):
    """The comparison is not vacuous: the run trained, and its blocks did drop paths."""
    from model import ConvMLP
    dirs = runs[0]
    start = checkpoint_entries(dirs["first"] / "epoch_0001.ckpt")
    end = checkpoint_entries(dirs["first"] / "epoch_0003.ckpt")
    assert not np.array_equal(start["head.weight"], end["head.weight"])
    topology = dict(blocks=(1, 2, 1), dims=(32, 64, 128), mlp_ratios=(2, 2, 2), channels=16, n_conv_blocks=1)
    assert ConvMLP(num_classes=10, drop_path_rate=0.1, **topology).drop_path_rates == (0.1, 0.1)
    assert re.search(r"drop_path 0\.1\b", (dirs["first"] / "train.log").read_text())


# ------------------------------------------------------------------------------------------------
# In process: the draws and their way into the network

def small_net(rate):
    from model import ConvMLP
    return ConvMLP(blocks=(1, 2, 1), dims=(8, 16, 16), mlp_ratios=(2, 2, 2), channels=8, n_conv_blocks=1,
                   num_classes=5, drop_path_rate=rate)


def test_drop_path_draws_depend_on_seed_rank_epoch_and_step_alone():
    from src.train.step import DropPathDraws
    net = small_net(0.5)
    draws = DropPathDraws(net, batch_size=64, seed=3)
    (a,) = draws(2, 5)
    (again,) = DropPathDraws(net, batch_size=64, seed=3)(2, 5)         # a new process, a resume
    np.testing.assert_array_equal(a.asnumpy(), again.asnumpy())
    assert a.shape == (2, 64)                                            # two rows per active block
    assert set(np.unique(a.asnumpy())) == {0.0, 2.0}                     # dropped, or kept and scaled
    others = [draws(2, 6)[0], draws(3, 5)[0], DropPathDraws(net, 64, seed=4)(2, 5)[0],
              DropPathDraws(net, 64, seed=3, rank=1)(2, 5)[0]]
    assert all(not np.array_equal(a.asnumpy(), o.asnumpy()) for o in others)
    assert DropPathDraws(small_net(0.0), 64, seed=3)(2, 5) == ()         # no drop path: no input


def test_drop_path_factors_have_the_rate_of_their_row():
    from model.drop_path import drop_path_factors
    f = drop_path_factors([0.1, 0.3], 20000, np.random.default_rng(0))
    assert f.dtype == np.float32
    np.testing.assert_array_equal(np.unique(f[0]), [0.0, np.float32(1.0) / np.float32(0.9)])
    assert abs((f[0] == 0).mean() - 0.1) < 0.01 and abs((f[1] == 0).mean() - 0.3) < 0.01


def test_feeding_drop_scales_changes_no_number_of_the_forward_pass():
    """Factors of 1 give exactly the network without drop path; a 0 changes that sample only."""
    import mindspore as ms
    net, plain = small_net(0.5), small_net(0.0)
    ms.load_param_into_net(plain, {p.name: p for p in net.get_parameters()})
    for n in (net, plain):
        n.set_train(True)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32))
    ones = np.ones((len(net.drop_path_rates), 4), np.float32)
    np.testing.assert_array_equal(net(x, ms.Tensor(ones)).asnumpy(), plain(x).asnumpy())
    dropped = ones.copy()
    dropped[1, 2] = 0.0
    out = net(x, ms.Tensor(dropped)).asnumpy()
    ref = plain(x).asnumpy()
    np.testing.assert_array_equal(np.delete(out, 2, axis=0), np.delete(ref, 2, axis=0))
    assert not np.array_equal(out[2], ref[2])
