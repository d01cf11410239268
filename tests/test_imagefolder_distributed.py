"""Data-parallel training on an image tree under msrun equals one process over the same global
batches, as tests/test_distributed.py shows for CIFAR (read its docstring for how the reference
reproduces each rank's draws, and why it is not plain ``train.py --batch_size 2B``).

``msrun --worker_num=2 --local_worker_num=2 train.py --is_distributed true`` trains on a generated
5-class tree of JPEG and PNG files (256 train / 64 val images of 40-72 px, 2 epochs of 8 steps at
16 images per device) with the training recipe of config.yaml on (RandomResizedCrop to 32 px, flip,
RandAugment, random erasing, label smoothing, mixup/cutmix, stochastic depth on a small topology
with two blocks per stage) and the weights' EMA (decay 0.9, so that it moves within 16 steps),
with the C++ CPU kernels on (the default) and, in a second job, off. Each rank's train pipeline
decodes its shard of the files (MindSpore's distributed sampler over the checked file list). The
reference (helpers.data_parallel_reference), in its own process, builds each rank's pipeline and
drop-path factors as the rank does, averages the ranks' gradients (BatchNorm statistics per rank),
makes one AdamW step and the EMA update. Tolerance ``atol=rtol=1e-5`` for the weights and the EMA
weights (measured max |diff| 4.8e-7 for both, kernels on and off; the weights moved by up to 3.2,
the EMA by up to 2.1)."""
import os
import subprocess
import sys
import time

from helpers import (DP_TOPOLOGY, MSRUN, MSRUN_MARKS, REPO, VENV_BIN, assert_data_parallel_equal,
                     assert_default_recipe, background, free_port, plugin_env)

N_TRAIN, N_VAL, PER_DEVICE, WORLD, EPOCHS = 256, 64, 16, 2, 2
ATOL = RTOL = 1e-5
#: config.yaml's recipe as it is (no augmentation flag), the EMA on.
RECIPE = [*DP_TOPOLOGY, "--model_ema", "true", "--model_ema_decay", "0.9"]
#: Only against a hang (a loaded machine takes minutes; nothing here asserts a speed).
HANG = 1800

pytestmark = MSRUN_MARKS


def train_args(paths, out, recipe):
    return [*recipe, "--dataset_choose", "imagefolder",
            "--train_data_path", paths["train"], "--val_data_path", paths["val"], "--image_size", "32",
            "--epoch_size", str(EPOCHS), "--warmup_epochs", "0", "--cooldown_epochs", "0", "--lr", "2e-3",
            "--min_lr", "1e-4", "--batch_size", str(PER_DEVICE), "--save_checkpoint_path", out, "--seed", "0",
            "--num_parallel_workers", "1"]


def _tree_job(ctx, recipe):
    """A generated 5-class tree, the 2-worker msrun run on it with `recipe` (each rank's final
    weights dumped) and the single-process reference in its own process: the paths of the dumps
    and the run's times."""
    from src.data.synthetic import write_image_tree
    tree = write_image_tree(str(ctx.folder / "data"), 5, N_TRAIN, N_VAL, seed=6)
    out, logs, dump = str(ctx.folder / "out"), str(ctx.folder / "logs"), str(ctx.folder / "dump")
    env = dict(ctx.env, PATH=VENV_BIN + os.pathsep + ctx.env.get("PATH", ""))
    cmd = [MSRUN, "--worker_num=2", "--local_worker_num=2", "--join=True", f"--log_dir={logs}",
           f"--master_port={free_port()}", os.path.join(REPO, "train.py"), "--is_distributed", "true",
           *train_args(tree, out, recipe)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(ctx.folder), env=dict(env, **plugin_env(env, CONVMLP_TEST_DUMP_WEIGHTS=dump)),
                          capture_output=True, text=True, timeout=HANG)
    seconds = time.time() - t0
    log0 = open(os.path.join(logs, "worker_0.log")).read() if os.path.isfile(os.path.join(logs, "worker_0.log")) else ""
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{log0[-3000:]}"
    ref = str(ctx.folder / "reference.npz")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "reference", ref,
                           *train_args(tree, str(ctx.folder / "unused"), recipe)], cwd=str(ctx.folder), env=env,
                          capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"log0": log0, "seconds": seconds, "dump": dump, "ref": ref, "out": out}


@background
def dp_tree_runs(ctx):
    """The job with the recipe and the C++ kernels on (the default)."""
    return _tree_job(ctx, RECIPE)


@background
def dp_tree_runs_kernels_off(ctx):
    """The same job with ``--cpu_kernels false`` (MindSpore's own CPU kernels)."""
    return _tree_job(ctx, [*RECIPE, "--cpu_kernels", "false"])


def _check(job, kernels):
    log0 = job["log0"]
    print(f"\n2-worker msrun on the image tree: {job['seconds']:.1f} s")
    assert "rank 0 / world size 2" in log0 and f"batch {PER_DEVICE} per device x 2 = {2 * PER_DEVICE} global, 8 steps" \
        in log0
    assert f"C++ CPU kernels (model/cpu_kernels/): {kernels}" in log0
    assert "model EMA: decay 0.9," in log0
    assert_default_recipe(os.path.join(job["out"], "config.yaml"), "imagefolder")
    assert_data_parallel_equal(job["dump"], job["ref"], ATOL, RTOL)


def test_two_workers_on_an_image_tree_equal_a_single_process(dp_tree_runs):
    _check(dp_tree_runs, "on (")


def test_two_workers_on_an_image_tree_equal_a_single_process_with_the_cpu_kernels_off(dp_tree_runs_kernels_off):
    _check(dp_tree_runs_kernels_off, "off")


# ------------------------------------------------------------------------------------------------
# The single-process reference (run in its own process by the test above)

def reference_run(out, argv):
    """What the two ranks compute, in one process (helpers.data_parallel_reference). Writes the
    final parameters to `out` and the initial ones to `out` with ``_init``."""
    from helpers import data_parallel_reference
    data_parallel_reference(out, argv, WORLD)


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "reference":
    reference_run(sys.argv[2], sys.argv[3:])
