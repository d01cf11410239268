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
import subprocess
import sys
import time

import numpy as np

from helpers import (MSRUN, MSRUN_MARKS, NO_AUG, REPO, TINY_TOPOLOGY, VENV_BIN, background, free_port, override,
                     plugin_env)

N_TRAIN, N_VAL, PER_DEVICE, WORLD, EPOCHS = 256, 64, 16, 2, 2
ATOL = RTOL = 1e-5

pytestmark = MSRUN_MARKS


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
           f"--master_port={free_port()}", os.path.join(REPO, "train.py"), "--is_distributed", "true",
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
    from helpers import data_parallel_reference
    data_parallel_reference(out, argv, WORLD)


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "reference":
    reference_run(sys.argv[2], sys.argv[3:])
