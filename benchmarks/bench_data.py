"""Throughput of the CIFAR input pipelines (src.data.pipeline.create_dataset) on synthetic data.

    python benchmarks/bench_data.py [--train 10000] [--workers 2] [--batch_size 64] [--seconds 20]

Reports images/s of the train pipeline with the full fine-tune recipe (RandomResizedCrop, flip,
RandAugment rand-m9-mstd0.5-inc1, normalise, random erasing 0.25, mixup/cutmix, smoothing) at 32 px
and 224 px, the train pipeline with every augmentation off, and the eval pipeline. The first batch
(pipeline start-up) is not timed; each row stops after --seconds or one epoch.
"""
import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from src.config import load_config  # noqa: E402
from src.data.pipeline import create_dataset  # noqa: E402
from src.data.synthetic import write_synthetic  # noqa: E402

OFF = ["--aa", "null", "--hflip", "0", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--crop_scale", "1,1"]


def measure(cfg, split, seconds):
    data = create_dataset(cfg, split)
    it = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
    next(it)                               # start-up not timed
    n, start = 0, time.perf_counter()
    for images, _ in it:
        n += len(images)
        if time.perf_counter() - start > seconds:
            break
    return n / (time.perf_counter() - start), n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=10000, help="synthetic train records")
    parser.add_argument("--workers", type=int, default=2, help="num_parallel_workers")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit per row")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_synthetic(os.path.join(tmp, "cifar-10-batches-bin"), "cifar10", args.train,
                                       args.train // 5, seed=0)
        common = ["--train_data_path", folder, "--val_data_path", folder, "--batch_size", str(args.batch_size),
                  "--num_parallel_workers", str(args.workers)]
        rows = [("train, full recipe", "train", 32, []),
                ("train, augmentation off", "train", 32, OFF),
                ("eval", "val", 32, []),
                ("train, full recipe", "train", 224, []),
                ("train, augmentation off", "train", 224, OFF),
                ("eval", "val", 224, [])]
        print(f"{args.train} synthetic CIFAR-10 train records, batch {args.batch_size}, "
              f"num_parallel_workers {args.workers}, {os.cpu_count()} CPU cores")
        print(f"{'pipeline':<26}{'size':>6}{'images/s':>11}{'images':>9}")
        for name, split, size, extra in rows:
            cfg = load_config(common + ["--image_size", str(size)] + extra)
            rate, n = measure(cfg, split, args.seconds)
            print(f"{name:<26}{size:>6}{rate:>11.0f}{n:>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
