"""Input pipeline alone on a tree of JPEG files at 224 px: this repository's image-folder train
pipeline (src.data.pipeline.create_dataset on MindSpore's dataset engine) against torchvision's
``ImageFolder`` + ``DataLoader`` with the same transforms and the same number of workers, in one run.

    python benchmarks/bench_imagefolder.py --torch-python ~/tv-venv/bin/python [--workers 2] [--isa avx2]

Both sides: decode (Pillow, RGB), RandomResizedCrop(224, scale --crop-scale (0.8, 1: the fine-tuning recipe;
0.08, 1: ImageNet's), ratio (3/4, 4/3), bicubic),
horizontal flip 0.5, RandAugment as the recipe applies it (two ops, each applied with probability
0.5, one of the 14 ops at magnitude 9 of 10: torchvision ``RandomApply([RandAugment(num_ops=1,
magnitude=9, num_magnitude_bins=11)], p=0.5)`` twice; here ``rand-m9-inc1``, magnitude fixed),
normalise, CHW float32, batches of --batch with the last incomplete one dropped. Mixup, cutmix and
random erasing are off (torchvision has no batch mixing in its loader). Ours also applies the EXIF
orientation (no cost for these files) and makes one-hot targets (label smoothing) per batch. Each
side runs in its own process; ``--isa avx2`` caps both sides' CPU dispatch at AVX2 (OpenCV, ATen,
oneDNN). ``--source packed`` makes our side read the same images as MindRecord shards
(``dataset.py pack``; :data:`SOURCES`), torchvision still the folder.

torchvision cannot be installed beside this repository's torch; give an interpreter that has it with
``--torch-python`` (e.g. a venv outside the repository: ``python3 -m venv ~/tv-venv &&
~/tv-venv/bin/pip install torch torchvision pillow numpy``). Without it only our side runs.
The images: --images synthetic pictures (src.data.synthetic) resized to about 500 x 375 px (ImageNet's
typical size) and saved as JPEG (quality 90) in 10 class folders. Each side runs --rounds times,
alternating; the first batch (start-up) is not timed; a round stops after --seconds or one epoch.
Each round reports images/s (wall clock) and images per CPU second (user + system time of the side's
process, its threads and worker processes, from /proc: images/s per core, less sensitive to other
load than the wall clock). Last lines: ``ratio per CPU second (images/s per core): X`` and
``ratio: X`` (ours over torchvision's, medians).
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

#: CPU seconds (user + system) of this process and all its descendants, every thread (/proc; those
#: that ended: getrusage):
#: shared by both sides, so that "images per CPU second" (images/s per core) is counted alike.
_CPU_SECONDS = r'''
import os, resource
def cpu_seconds():
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)       # worker processes already joined
    pids, total, seen = [os.getpid()], (ended.ru_utime + ended.ru_stime) * os.sysconf("SC_CLK_TCK"), set()
    while pids:
        pid = pids.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")
'''
exec(_CPU_SECONDS)

_TORCH_SIDE = _CPU_SECONDS + r'''
import json, sys, time
import torch
from torchvision import datasets, transforms as T
root, size, workers, batch, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
scale = tuple(float(v) for v in sys.argv[6].split(","))
mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
aug = [T.RandomApply([T.RandAugment(num_ops=1, magnitude=9, num_magnitude_bins=11,
                                    fill=[round(255 * m) for m in mean])], p=0.5) for _ in range(2)]
tf = T.Compose([T.RandomResizedCrop(size, scale=scale, ratio=(3 / 4, 4 / 3),
                                    interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(0.5), *aug, T.ToTensor(), T.Normalize(mean, std)])
loader = torch.utils.data.DataLoader(datasets.ImageFolder(root, transform=tf), batch_size=batch, shuffle=True,
                                     num_workers=workers, drop_last=True, persistent_workers=False)
it = iter(loader)
next(it)
n, start, cpu = 0, time.perf_counter(), cpu_seconds()
for images, _ in it:
    n += len(images)
    if time.perf_counter() - start > seconds:
        break
wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
print(json.dumps({"images_per_s": n / wall, "images_per_cpu_s": n / cpu, "images": n, "torch": torch.__version__}))
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


def _folder(root, tmp):
    """The generated tree itself, read as a folder."""
    return root


def _packed(root, tmp):
    """The generated tree written as MindRecord shards (``dataset.py pack``; src.data.packed_write)."""
    from src.data import packed_write
    out = os.path.join(tmp, "jpeg.mindrecord")
    packed_write.pack(root, out, report=lambda line: None)
    return out


#: --source -> the data path our side reads, made once per run from the generated tree `root` (in
#: the folder `tmp`): the tree itself, or the same images in another form.
SOURCES = {"folder": _folder, "packed": _packed}


#: --isa -> side -> environment of its process (OpenCV and ATen dispatch by CPU; libjpeg-turbo's
#: SIMD is AVX2 at most).
_NO_AVX512 = "AVX512F,AVX512_COMMON,AVX512_SKX,AVX512_KNL,AVX512_KNM,AVX512_CNL,AVX512_CLX,AVX512_ICL"
ISA_ENV = {
    "native": {},
    "avx2": {"ours": {"OPENCV_CPU_DISABLE": _NO_AVX512, "ONEDNN_MAX_CPU_ISA": "AVX2"},
             "torchvision": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENCV_CPU_DISABLE": _NO_AVX512}},
}


def _ours_rate(root, args):
    """Images/s of this repository's image-folder train pipeline (run in its own process)."""
    from src.config import load_config
    from src.data.pipeline import create_dataset
    cfg = load_config(["--dataset_choose", "imagefolder", "--train_data_path", root, "--val_data_path", root,
        "--image_size", str(args.size), "--batch_size", str(args.batch), "--num_parallel_workers",
        str(args.workers), "--crop_scale", args.crop_scale, "--hflip", "0.5", "--aa", "rand-m9-inc1",
        "--mixup", "0", "--cutmix", "0", "--reprob", "0"])
    it = create_dataset(cfg, "train").create_tuple_iterator(num_epochs=1, output_numpy=True)
    next(it)
    n, start, cpu = 0, time.perf_counter(), cpu_seconds()
    for images, _ in it:
        n += len(images)
        if time.perf_counter() - start > args.seconds:
            break
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {"images_per_s": n / wall, "images_per_cpu_s": n / cpu, "images": n}


def _side(cmd, side, args):
    env = dict(os.environ, **ISA_ENV[args.isa].get(side, {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        print(f"{side} side failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(root, args):
    """Images/s of this repository's pipeline, in a new process (with --isa's environment)."""
    return _side([sys.executable, os.path.abspath(__file__), "--ours-in", root, "--source", args.source,
                  "--size", str(args.size), "--workers", str(args.workers), "--batch", str(args.batch),
                  "--seconds", str(args.seconds), "--crop-scale", args.crop_scale], "ours", args)


def theirs(root, args):
    """Images/s of torchvision's ImageFolder + DataLoader (run by --torch-python), or None."""
    return _side([args.torch_python, "-c", _TORCH_SIDE, root, str(args.size), str(args.workers),
                  str(args.batch), str(args.seconds), args.crop_scale], "torchvision", args)


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
    parser.add_argument("--crop-scale", default="0.8,1",
                        help="RandomResizedCrop's area range on both sides: 0.8,1 (fine-tuning recipe) or 0.08,1 "
                             "(ImageNet recipe)")
    parser.add_argument("--source", choices=sorted(SOURCES), default="folder", help="the form our side reads")
    parser.add_argument("--isa", choices=sorted(ISA_ENV), default="native",
                        help="avx2: both sides' CPU dispatch capped at AVX2")
    parser.add_argument("--ours-in", help=argparse.SUPPRESS)      # our side's process: the tree to read
    args = parser.parse_args(argv)
    if args.ours_in:
        print(json.dumps(_ours_rate(args.ours_in, args)))
        return 0
    compare = has_torchvision(args.torch_python)
    if not compare:
        print(f"torchvision not found (--torch-python {args.torch_python}): measuring our pipeline only")
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "jpeg")
        write_tree(tree, args.images)
        root = SOURCES[args.source](tree, tmp)
        print(f"{args.images} JPEG files (~500x375) in 10 classes, {args.size} px, batch {args.batch}, "
              f"{args.workers} workers, {os.cpu_count()} CPU cores; crop scale {args.crop_scale}; source {args.source}, --isa {args.isa}; "
              f"load {os.getloadavg()[0]:.2f}")
        sides = [("ours", "ours (MindSpore dataset engine)", ours, root)]
        if compare:
            sides.append(("torchvision", "torchvision ImageFolder + DataLoader", theirs, tree))
        runs = {side: [] for side, _, _, _ in sides}
        for r in range(args.rounds):
            for side, name, measure, data in sides:
                got = measure(data, args)
                if got is None:
                    return 1
                runs[side].append(got)
                print(f"round {r + 1}: {name} {got['images_per_s']:.1f} images/s, "
                      f"{got['images_per_cpu_s']:.1f} images per CPU second", flush=True)
    med = {side: {k: float(np.median([g[k] for g in got])) for k in ("images_per_s", "images_per_cpu_s")}
           for side, got in runs.items()}
    print("median: " + ", ".join(f"{side} {m['images_per_s']:.1f} images/s, {m['images_per_cpu_s']:.1f} per CPU s"
                                 for side, m in med.items()))
    if compare:
        ours_m, theirs_m = med["ours"], med["torchvision"]
        print(f"ratio per CPU second (images/s per core): {ours_m['images_per_cpu_s'] / theirs_m['images_per_cpu_s']:.2f}")
        print(f"ratio: {ours_m['images_per_s'] / theirs_m['images_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
