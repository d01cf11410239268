"""Input pipeline alone on a tree of JPEG files at 224 px: this repository's image-folder train
pipeline (src.data.pipeline.create_dataset on MindSpore's dataset engine) against torchvision's
``ImageFolder`` + ``DataLoader`` with the same transforms and the same number of workers, in one run.

    python benchmarks/bench_imagefolder.py --torch-python ~/tv-venv/bin/python [--workers 2]

Both sides: decode (Pillow, RGB), RandomResizedCrop(224, scale (0.8, 1), ratio (3/4, 4/3), bicubic),
horizontal flip 0.5, RandAugment as the recipe applies it (two ops, each applied with probability
0.5, one of the 14 ops at magnitude 9 of 10: torchvision ``RandomApply([RandAugment(num_ops=1,
magnitude=9, num_magnitude_bins=11)], p=0.5)`` twice; here ``rand-m9-inc1``, magnitude fixed),
normalise, CHW float32, batches of --batch with the last incomplete one dropped. Mixup, cutmix and
random erasing are off (torchvision has no batch mixing in its loader). Ours also applies the EXIF
orientation (no cost for these files) and makes one-hot targets (label smoothing) per batch.

torchvision cannot be installed beside this repository's torch; give an interpreter that has it with
``--torch-python`` (e.g. a venv outside the repository: ``python3 -m venv ~/tv-venv &&
~/tv-venv/bin/pip install torch torchvision pillow numpy``). Without it only our side runs.
The images: --images synthetic pictures (src.data.synthetic) resized to about 500 x 375 px (ImageNet's
typical size) and saved as JPEG (quality 90) in 10 class folders. Each side runs --rounds times,
alternating; the first batch (start-up) is not timed; a round stops after --seconds or one epoch.
Last line: ``ratio: X`` (our images/s over torchvision's, medians).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_TORCH_SIDE = r'''
import json, sys, time
import torch
from torchvision import datasets, transforms as T
root, size, workers, batch, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
aug = [T.RandomApply([T.RandAugment(num_ops=1, magnitude=9, num_magnitude_bins=11,
                                    fill=[round(255 * m) for m in mean])], p=0.5) for _ in range(2)]
tf = T.Compose([T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3),
                                    interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(0.5), *aug, T.ToTensor(), T.Normalize(mean, std)])
loader = torch.utils.data.DataLoader(datasets.ImageFolder(root, transform=tf), batch_size=batch, shuffle=True,
                                     num_workers=workers, drop_last=True, persistent_workers=False)
it = iter(loader)
next(it)
n, start = 0, time.perf_counter()
for images, _ in it:
    n += len(images)
    if time.perf_counter() - start > seconds:
        break
print(json.dumps({"images_per_s": n / (time.perf_counter() - start), "images": n,
                  "torch": torch.__version__}))
'''


def write_tree(root, n, seed=0):
    """`n` JPEG files of about 500 x 375 px in 10 class folders."""
    from PIL import Image
    from src.data.synthetic import synthetic_images
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    for i, (label, pic) in enumerate(zip(labels, synthetic_images(labels, 10, rng))):
        folder = os.path.join(root, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        w, h = int(rng.integers(440, 501)), int(rng.integers(330, 376))
        Image.fromarray(pic).resize((w, h), Image.BICUBIC).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def ours(root, args):
    """Images/s of this repository's image-folder train pipeline."""
    from src.config import load_config
    from src.data.pipeline import create_dataset
    cfg = load_config(["--dataset_choose", "imagefolder", "--train_data_path", root, "--val_data_path", root,
                       "--image_size", str(args.size), "--batch_size", str(args.batch), "--num_parallel_workers",
                       str(args.workers), "--crop_scale", "0.8,1", "--hflip", "0.5", "--aa", "rand-m9-inc1",
                       "--mixup", "0", "--cutmix", "0", "--reprob", "0"])
    it = create_dataset(cfg, "train").create_tuple_iterator(num_epochs=1, output_numpy=True)
    next(it)
    n, start = 0, time.perf_counter()
    for images, _ in it:
        n += len(images)
        if time.perf_counter() - start > args.seconds:
            break
    return n / (time.perf_counter() - start)


def theirs(root, args):
    """Images/s of torchvision's ImageFolder + DataLoader (run by --torch-python), or None."""
    proc = subprocess.run([args.torch_python, "-c", _TORCH_SIDE, root, str(args.size), str(args.workers),
                           str(args.batch), str(args.seconds)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        print(f"torchvision side failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["images_per_s"]


def has_torchvision(python):
    if not python:
        return False
    proc = subprocess.run([python, "-c", "import torchvision"], capture_output=True, text=True)
    return proc.returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024, help="JPEG files generated")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2, help="num_parallel_workers / DataLoader num_workers")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="time limit per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side, alternating")
    parser.add_argument("--torch-python", default=None, help="a Python interpreter with torch and torchvision")
    args = parser.parse_args(argv)
    compare = has_torchvision(args.torch_python)
    if not compare:
        print(f"torchvision not found (--torch-python {args.torch_python}): measuring our pipeline only")
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "jpeg")
        write_tree(root, args.images)
        print(f"{args.images} JPEG files (~500x375) in 10 classes, {args.size} px, batch {args.batch}, "
              f"{args.workers} workers, {os.cpu_count()} CPU cores; load {os.getloadavg()[0]:.2f}")
        rates = {"ours": [], "torchvision": []}
        for r in range(args.rounds):
            rates["ours"].append(ours(root, args))
            print(f"round {r + 1}: ours (MindSpore dataset engine) {rates['ours'][-1]:.1f} images/s", flush=True)
            if compare:
                rates["torchvision"].append(theirs(root, args))
                print(f"round {r + 1}: torchvision ImageFolder + DataLoader {rates['torchvision'][-1]:.1f} images/s",
                      flush=True)
    ours_rate = float(np.median(rates["ours"]))
    if compare and all(rates["torchvision"]):
        theirs_rate = float(np.median(rates["torchvision"]))
        print(f"median: ours {ours_rate:.1f}, torchvision {theirs_rate:.1f} images/s")
        print(f"ratio: {ours_rate / theirs_rate:.2f}")
    else:
        print(f"median: ours {ours_rate:.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
