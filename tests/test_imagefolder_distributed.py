"""Data-parallel training on an image tree under msrun equals one process over the same global
batches, as tests/test_distributed.py shows for CIFAR (read its docstring for why the reference is
not plain ``train.py --batch_size 2B``).

``msrun --worker_num=2 --local_worker_num=2 train.py --is_distributed true`` trains on a generated
5-class tree of JPEG and PNG files (256 train / 64 val images of 40-72 px, resized to 32, tiny
topology, augmentation off, 2 epochs of 8 steps at 16 images per device). Each rank's train
pipeline decodes its shard of the files (MindSpore's distributed sampler over the checked file
list). The reference, in its own process, takes each global batch of 32 from the one-shard pipeline
and averages the gradients of its even and odd rows (BatchNorm statistics per half), one AdamW step.
Tolerance ``atol=rtol=1e-5`` (measured max |diff| 3.6e-7; the weights moved by up to 1.9)."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import NO_AUG, REPO, TINY_TOPOLOGY, background, override, plugin_env

VENV_BIN = os.path.dirname(sys.executable)
MSRUN = os.path.join(VENV_BIN, "msrun")
N_TRAIN, N_VAL, PER_DEVICE, WORLD, EPOCHS = 256, 64, 16, 2, 2
ATOL = RTOL = 1e-5

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isfile(MSRUN), reason="msrun is not installed next to python")]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(paths, out):
    return [*override([*TINY_TOPOLOGY, *NO_AUG], "--drop_path_rate", "0"), "--dataset_choose", "imagefolder",
            "--train_data_path", paths["train"], "--val_data_path", paths["val"], "--image_size", "32",
            "--epoch_size", str(EPOCHS), "--warmup_epochs", "0", "--cooldown_epochs", "0", "--lr", "2e-3",
            "--min_lr", "1e-4", "--batch_size", str(PER_DEVICE), "--save_checkpoint_path", out, "--seed", "0",
            "--num_parallel_workers", "1"]


@background
def dp_tree_runs(ctx):
    """A generated 5-class tree, the 2-worker msrun run on it (each rank's final weights dumped) and
    the single-process reference in its own process: the paths of the dumps and the run's times."""
    from src.data.synthetic import write_image_tree
    tree = write_image_tree(str(ctx.folder / "data"), 5, N_TRAIN, N_VAL, seed=6)
    out, logs, dump = str(ctx.folder / "out"), str(ctx.folder / "logs"), str(ctx.folder / "dump")
    env = dict(ctx.env, PATH=VENV_BIN + os.pathsep + ctx.env.get("PATH", ""))
    cmd = [MSRUN, "--worker_num=2", "--local_worker_num=2", "--join=True", f"--log_dir={logs}",
           f"--master_port={_free_port()}", os.path.join(REPO, "train.py"), "--is_distributed", "true",
           *train_args(tree, out)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(ctx.folder), env=dict(env, **plugin_env(env, CONVMLP_TEST_DUMP_WEIGHTS=dump)),
                          capture_output=True, text=True, timeout=600)
    seconds = time.time() - t0
    log0 = open(os.path.join(logs, "worker_0.log")).read() if os.path.isfile(os.path.join(logs, "worker_0.log")) else ""
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{log0[-3000:]}"
    ref = str(ctx.folder / "reference.npz")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "reference", ref,
                           *train_args(tree, str(ctx.folder / "unused"))], cwd=str(ctx.folder), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"log0": log0, "seconds": seconds, "dump": dump, "ref": ref}


def test_two_workers_on_an_image_tree_equal_a_single_process(dp_tree_runs):
    log0, dump, ref = dp_tree_runs["log0"], dp_tree_runs["dump"], dp_tree_runs["ref"]
    print(f"\n2-worker msrun on the image tree: {dp_tree_runs['seconds']:.1f} s")
    assert "rank 0 / world size 2" in log0 and f"batch {PER_DEVICE} per device x 2 = {2 * PER_DEVICE} global, 8 steps" \
        in log0
    want, init = np.load(ref), np.load(ref.replace(".npz", "_init.npz"))
    r0, r1 = np.load(os.path.join(dump, "rank0.npz")), np.load(os.path.join(dump, "rank1.npz"))
    assert sorted(r0.files) == sorted(want.files) and any("moving_mean" in k for k in r0.files)
    worst = max(float(np.abs(r0[k] - want[k]).max()) for k in r0.files)
    moved = max(float(np.abs(r0[k] - init[k]).max()) for k in r0.files)
    print(f"2 ranks vs single process: max |diff| {worst:.3g} (largest change from the initial weights {moved:.3g})")
    assert moved > 100 * ATOL
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
        np.testing.assert_allclose(r0[k], want[k], atol=ATOL, rtol=RTOL, err_msg=k)


# ------------------------------------------------------------------------------------------------
# The single-process reference (run in its own process by the test above)

def reference_run(out, argv):
    """Per global batch of 2 x batch_size from the one-shard pipeline: the mean of the gradients of
    its even and odd rows (BatchNorm statistics per half, moving statistics averaged), one AdamW
    step. Writes the final parameters to `out` and the initial ones to `out` with ``_init``."""
    import mindspore as ms
    from helpers import gradient_cell
    from src.checkpoint.load import build_model
    from src.config import epoch_config, load_config
    from src.data.pipeline import create_dataset, resolve_classes
    from src.platform.cpu import uses_only_conv_kernel
    from src.platform.device import configure_runtime
    from src.train.optim import AdamW, cosine_schedule, param_groups_weight_decay
    from src.train.step import NetWithLoss

    cfg = load_config(argv)
    configure_runtime(mode=cfg.mode, device_target="CPU",
                      own_convolutions=not uses_only_conv_kernel(cfg.cpu_kernels, cfg.amp_level))
    resolve_classes(cfg)
    ms.set_seed(cfg.seed)
    steps = create_dataset(cfg, "train", num_shards=WORLD, shard_id=0).get_dataset_size()
    net = build_model(cfg, drop_path_rate=cfg.drop_path_rate)
    np.savez(out.replace(".npz", "_init.npz"), **{p.name: p.asnumpy() for p in net.get_parameters()})
    opt = AdamW(param_groups_weight_decay(net.trainable_params(), cfg.weight_decay),
                ms.Tensor(cosine_schedule(cfg.lr, cfg.min_lr, cfg.warmup_lr, cfg.warmup_epochs, cfg.epoch_size, steps,
                                          cfg.cooldown_epochs)), weight_decay=cfg.weight_decay)
    loss_net = NetWithLoss(net)
    loss_net.set_train(True)
    gradients = gradient_cell(loss_net, opt.parameters)
    bn = [p for p in net.get_parameters() if p.name.rsplit(".", 1)[-1] in ("moving_mean", "moving_variance")]
    for epoch in range(cfg.epoch_size):
        one = epoch_config(cfg, epoch)
        one.batch_size = cfg.batch_size * WORLD
        batches = create_dataset(one, "train", num_shards=1, shard_id=0).create_tuple_iterator(
            num_epochs=1, output_numpy=True)
        for i, (images, target) in enumerate(batches):
            if i >= steps:
                break
            before, grads, moved = [p.asnumpy() for p in bn], [], []
            for r in range(WORLD):
                for p, b in zip(bn, before):
                    p.set_data(ms.Tensor(b))
                grads.append([g.asnumpy() for g in gradients(ms.Tensor(images[r::WORLD]), ms.Tensor(target[r::WORLD]))])
                moved.append([p.asnumpy() for p in bn])
            for j, p in enumerate(bn):
                p.set_data(ms.Tensor(np.mean([m[j] for m in moved], axis=0)))
            opt(tuple(ms.Tensor(np.mean([g[j] for g in grads], axis=0)) for j in range(len(grads[0]))))
    np.savez(out, **{p.name: p.asnumpy() for p in net.get_parameters()})


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "reference":
    reference_run(sys.argv[2], sys.argv[3:])
