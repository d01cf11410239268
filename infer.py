"""Classify your own images with a ConvMLP checkpoint: top-5 classes with names and probabilities.

    python infer.py --checkpoint_path output/best.ckpt cat.jpg dog.png
    python infer.py --checkpoint_path output/best.ckpt photos/ --json predictions.json
    python infer.py --checkpoint_path output/best.ckpt my_photos/ --top_k 3 --mode pynative

Arguments that are not ``--key value`` pairs are image files (PNG, JPEG, or any format Pillow
reads) or folders; a folder contributes its files with an image extension (not its sub-folders;
hidden files and other files are skipped). The model is the checkpoint's (arch, topology,
``image_size``, dataset, mean/std and interpolation from a train.py checkpoint's saved config,
``num_classes`` from its head, unless given on the command line). Other keys as in train.py.

Preprocessing is evl.py's eval transform: an image is converted to RGB (alpha dropped, EXIF
orientation applied), resized as a whole (no crop; the aspect ratio is not kept) to
``image_size`` x ``image_size`` with the config's ``interpolation`` when it has another size, then
normalised with the dataset's mean/std. A 32x32 image therefore goes through exactly what a CIFAR
validation image goes through. Larger photos are resized directly to ``image_size``: they are
sharper than the upsampled 32-pixel CIFAR images the model was fine-tuned on, so expect
predictions on them to be less sure than the validation accuracy suggests.

Class names: the dataset's meta file (``batches.meta.txt`` / ``fine_label_names.txt``) in
``train_data_path`` when it is there, else the official CIFAR-10 / CIFAR-100 names (``class_<i>``
when the model has another number of classes).

Options of this script (not config keys): ``--json FILE`` writes the results as JSON;
``--top_k K`` (default 5) classes per image.

An image that cannot be read is reported as one ``error: ...`` line naming the file, and the
others are still classified; the exit status is then 2 (0 when every image was classified).
"""
import json
import os
import sys

from src.config import option, parse_command_line
from src.errors import DataError, first_line, run_cli

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def collect_images(paths):
    """The image files named by `paths` (files as given, folders' image files sorted by name).
    DataError when nothing is given, a path does not exist or a folder has no image file."""
    if not paths:
        raise DataError("no image given; usage: python infer.py --checkpoint_path FILE.ckpt IMAGE_OR_FOLDER ...")
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p)
                           if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(p, n)))
            if not found:
                raise DataError(f"folder '{p}' has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        elif os.path.exists(p):
            raise DataError(f"'{p}' is neither a file nor a folder")
        else:
            raise DataError(f"image path '{p}' does not exist")
    return files


def read_image(path):
    """The image at `path` as uint8 RGB HWC; DataError naming the file when it cannot be decoded."""
    import numpy as np
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: scale to 0..255
                grey = np.asarray(im, dtype=np.float64)
                grey = grey / 257.0 if im.mode.startswith("I") and grey.max() > 255 else grey
                grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
                arr = np.repeat(grey[..., None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError ...
        reason = first_line(exc)
        if "cannot identify image file" in reason:
            reason = "not an image Pillow can read (corrupt, empty or another format)"
        raise DataError(f"cannot read image '{path}': {reason}") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"cannot read image '{path}': empty image")
    return arr


def preprocess(image, cfg):
    """evl.py's eval transform for an RGB uint8 HWC image of any size: resize (whole image) to
    ``image_size`` with the config's interpolation unless it has that size already, then
    :func:`dataset.eval_transforms`' normalisation and HWC -> CHW. Returns float32 (3, S, S)."""
    import numpy as np
    import mindspore.dataset.vision as vision
    from dataset import eval_transforms
    size = cfg.image_size
    ops = [op for op in eval_transforms(cfg) if not isinstance(op, vision.Resize)]
    if image.shape[:2] != (size, size):
        inter = getattr(vision.Inter, cfg.interpolation.upper())  # as dataset.py: bicubic -> BICUBIC
        ops.insert(0, vision.Resize((size, size), interpolation=inter))
    out = image
    for op in ops:
        out = op(out)
    return np.ascontiguousarray(out, dtype=np.float32)


def class_names(cfg, num_classes, logger=None):
    """The dataset's class names (``src.cifar.class_names``: the meta file of ``train_data_path``,
    else the official names); ``class_<i>`` when the model has another number of classes."""
    from src import cifar
    names, source = cifar.class_names(cfg.train_data_path, cfg.dataset_choose, with_source=True)
    if source == "official":
        source = f"the official {cfg.dataset_choose} names"
    if len(names) != num_classes:
        if logger:
            logger.warning(f"the model has {num_classes} classes, {source} {len(names)}; using class_<i>")
        return [f"class_{i}" for i in range(num_classes)], "class_<i>"
    return names, source


def softmax(logits):
    import numpy as np
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
#: infer.py's own options (everything else is a config key; other arguments are images/folders).
OPTIONS = [option("json", None, "str", "Also write the predictions as JSON to this file.", nullable=True),
           option("top_k", 5, "int", "Classes listed per image.", min=1)]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from src.runtime import setup_runtime, load_checkpoint_model, require_checkpoint_path, DEPLOY_KEYS
    from src.fileio import atomic_output, check_output_path
    cmd = parse_command_line(argv, OPTIONS, positionals=True)
    cfg, json_path, top_k = cmd.cfg, cmd.options.json, cmd.options.top_k
    files = collect_images(cmd.positionals)
    json_inputs = [("checkpoint_path", cfg.checkpoint_path)] + [("image", f) for f in files]
    if json_path:
        check_output_path(json_path, *json_inputs, label="--json")
    require_checkpoint_path(cfg)
    from src.run_log import get_logger
    logger = get_logger(0)
    setup_runtime(cfg, logger)

    import numpy as np
    import mindspore as ms
    from model.helpers import require_finite_outputs
    net, meta = load_checkpoint_model(cfg, argv, logger, DEPLOY_KEYS)
    names, source = class_names(cfg, cfg.num_classes, logger)
    top_k = min(top_k, cfg.num_classes)
    logger.info(f"classifying {len(files)} image(s) with {cfg.checkpoint_path} ({cfg.arch}, "
                f"{cfg.num_classes} classes, {cfg.image_size}px, {cfg.interpolation}); names from {source}")

    batch = min(cfg.eval_batch_size or cfg.batch_size, len(files))
    results, errors = [], []
    for start in range(0, len(files), batch):
        chunk, tensors = [], []
        for path in files[start:start + batch]:
            try:
                tensors.append(preprocess(read_image(path), cfg))
                chunk.append(path)
            except DataError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                errors.append({"file": path, "error": str(exc)})
        if not chunk:
            continue
        x = np.stack(tensors)
        if len(x) < batch:  # one input shape for every call: no recompilation for the last chunk
            x = np.concatenate([x, np.zeros((batch - len(x),) + x.shape[1:], np.float32)])
        logits = net(ms.Tensor(x)).asnumpy()[:len(chunk)]
        require_finite_outputs(logits, cfg.checkpoint_path, f"logits of {', '.join(chunk[:3])}")
        probs = softmax(logits)
        for path, p in zip(chunk, probs):
            order = np.argsort(-p, kind="stable")[:top_k]
            top = [{"class": int(c), "name": names[c], "prob": float(p[c])} for c in order]
            results.append({"file": path, "top": top})
            print(path)
            for rank, t in enumerate(top, 1):
                print(f"  {rank}. {t['name']:<20s} {t['prob']:.4f}  (class {t['class']})")

    if json_path:
        out = {"checkpoint": os.path.abspath(cfg.checkpoint_path), "arch": cfg.arch,
               "dataset": cfg.dataset_choose, "num_classes": cfg.num_classes, "image_size": cfg.image_size,
               "interpolation": cfg.interpolation, "mean": cfg.mean, "std": cfg.std, "class_names": source,
               "results": results, "errors": errors}
        with atomic_output(json_path, inputs=json_inputs, label="--json") as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(out, f, indent=2)
        print(f"wrote {json_path}")
    if errors:
        if results:
            print(f"{len(results)} image(s) classified, {len(errors)} could not be read (see the errors above)")
        return 2
    return 0


if __name__ == "__main__":
    run_cli(main)
