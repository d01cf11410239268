"""Classify your own images with a ConvMLP checkpoint: top-5 classes with names and probabilities.

    python infer.py --checkpoint_path output/best.ckpt cat.jpg dog.png
    python infer.py --checkpoint_path output/best.ckpt photos/ --json predictions.json
    python infer.py --checkpoint_path output/best.ckpt my_photos/ --top_k 3 --mode pynative

Arguments that are not ``--key value`` pairs are image files (PNG, JPEG, or any format Pillow
reads) or folders; a folder contributes its files with an image extension (not its sub-folders;
hidden files and other files are skipped). The model is the checkpoint's (arch, topology,
``image_size``, dataset, mean/std and interpolation from a train.py checkpoint's saved config,
``num_classes`` from its head, unless given on the command line). Other keys as in train.py.

Preprocessing is evl.py's: an image is decoded by the rule training uses
(``src.data.images.read_image``: RGB, alpha dropped, EXIF orientation applied, 16-bit scaled; a
large JPEG such as a 200-megapixel photo decoded at reduced size, no smaller than twice the resize
below needs), its
shorter side resized to ``image_size / crop_pct`` with the config's ``interpolation`` (the aspect
ratio kept), the centre ``image_size`` square cropped, then normalised with the dataset's mean/std.
A 32x32 image therefore goes through exactly what a CIFAR validation image goes through. Photos
are sharper than the upsampled 32-pixel CIFAR images a CIFAR model was fine-tuned on, so expect
its predictions on them to be less sure than the validation accuracy suggests.

Class names: those the checkpoint recorded (train.py saves the training data's), else the dataset's
(the CIFAR meta file in ``train_data_path`` or the official CIFAR names; an image tree's class
folders), else ``class_<i>``. ``--use_ema true`` classifies with the checkpoint's EMA weights.

Options of this script (not config keys): ``--json FILE`` writes the results as JSON (``--json -``:
to the standard output, everything else then goes to stderr);
``--top_k K`` (default 5) classes per image.

An image that cannot be read is reported as one ``error: ...`` line naming the file, and the
others are still classified; the exit status is then 2 (0 when every image was classified).
"""
import src  # noqa: F401  (first: it keeps MindSpore's C++ log quiet, see src/__init__.py)
import os
import sys

import numpy as np

from src.checkpoint.load import DEPLOY_KEYS, describe_model, load_checkpoint_model, require_checkpoint_path
from src.config import option, parse_command_line
from src.data.images import collect_images, preprocess, read_image
from src.data.transforms import decode_min_side
from src.data.pipeline import model_class_names
from src.platform.bounds import check_batch
from src.platform.console import get_logger, messages_to_stderr
from src.platform.device import setup_runtime
from src.platform.errors import DataError, run_cli, shown_name
from src.platform.fileio import STDOUT, check_output_path, write_json
from model import require_finite_outputs

#: infer.py's own options (everything else is a config key; other arguments are images/folders).
OPTIONS = [option("json", None, "str", "Also write the predictions as JSON to this file ('-': the standard "
                  "output).", nullable=True),
           option("top_k", 5, "int", "Classes listed per image.", min=1)]


def softmax(logits):
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = parse_command_line(argv, OPTIONS, positionals=True, script="infer.py")
    with messages_to_stderr(cmd.options.json == STDOUT):
        return classify_images(cmd)


def classify_images(cmd):
    """Load the checkpoint's model, classify every image, print (and write) the results."""
    cfg, json_path = cmd.cfg, cmd.options.json
    files = collect_images(cmd.positionals)
    json_inputs = [("checkpoint_path", cfg.checkpoint_path)] + [("image", f) for f in files]
    if json_path:
        check_output_path(json_path, *json_inputs, label="--json", dash_is_stdout=True)
    path = require_checkpoint_path(cfg)
    logger = get_logger(0)
    setup_runtime(cfg, logger)
    net, meta = load_checkpoint_model(path, cfg, logger, DEPLOY_KEYS)
    names, source = model_class_names(cfg, cfg.num_classes, logger, meta.class_names)
    logger.info(f"classifying {len(files)} image(s) with {cfg.checkpoint_path} ({describe_model(cfg)}, "
                f"{cfg.num_classes} classes, {cfg.image_size}px, {cfg.interpolation}); names from {source}")
    results, errors = classify(net, cfg, files, names, min(cmd.options.top_k, cfg.num_classes))
    if json_path:
        write_results(json_path, json_inputs, cfg, source, results, errors)
    if errors:
        if results:
            print(f"{len(results)} image(s) classified, {len(errors)} could not be read (see the errors above)")
        return 2
    return 0


def classify(net, cfg, files, names, top_k):
    """Every image through the model in batches, its top-k classes printed; returns ``(results,
    errors)``. An image that cannot be read is one ``error:`` line and the others go on."""
    import mindspore as ms
    batch = min(cfg.eval_batch_size or cfg.batch_size, len(files))
    check_batch("eval_batch_size" if cfg.eval_batch_size else "batch_size", batch, cfg.image_size, "config")
    results, errors = [], []
    for start in range(0, len(files), batch):
        chunk, tensors = [], []
        for path in files[start:start + batch]:
            try:
                tensors.append(preprocess(read_image(path, decode_min_side(cfg)), cfg))
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
        require_finite_outputs(logits, cfg.checkpoint_path, f"logits of {', '.join(map(shown_name, chunk[:3]))}")
        for path, p in zip(chunk, softmax(logits)):
            order = np.argsort(-p, kind="stable")[:top_k]
            top = [{"class": int(c), "name": names[c], "prob": float(p[c])} for c in order]
            results.append({"file": path, "top": top})
            print(shown_name(path, quoted=False))
            for rank, t in enumerate(top, 1):
                print(f"  {rank}. {shown_name(t['name'], quoted=False):<20s} {t['prob']:.4f}  (class {t['class']})")
    return results, errors


def write_results(json_path, json_inputs, cfg, source, results, errors):
    out = {"checkpoint": os.path.abspath(cfg.checkpoint_path), "arch": cfg.arch,
           "dataset": cfg.dataset_choose, "num_classes": cfg.num_classes, "image_size": cfg.image_size,
           "interpolation": cfg.interpolation, "mean": cfg.mean, "std": cfg.std, "class_names": source,
           "results": results, "errors": errors}
    write_json(json_path, out, inputs=json_inputs)


if __name__ == "__main__":
    run_cli(main)
