"""Evaluate a ConvMLP checkpoint on a validation split (CIFAR-10/100, Flowers-102, ImageNet, your images).

    python evl.py --checkpoint_path output/best.ckpt
    python evl.py --checkpoint_path output/last.ckpt --dataset_choose cifar100 --json result.json
    python evl.py --checkpoint_path output/best.ckpt --use_ema true      # the checkpoint's EMA weights
    python evl.py --demo --checkpoint_path output/demo/best.ckpt

Takes train.py's and pth2ckpt.py's checkpoints; prints the seed's ``accuracy:{'acc': ...}`` line,
then top-5, the mean loss, the images evaluated (and those ``skip_bad_images`` left out because they
could not be decoded) and the per-class accuracy with the checkpoint's class names. Details
(``--json``, ``val_fraction`` runs): docs/training.md.
"""
import src  # noqa: F401  (first: it keeps MindSpore's C++ log quiet, see src/__init__.py)
import os
import sys

from src.checkpoint.load import describe_model, load_checkpoint_model, require_checkpoint_path
from src.config import option, parse_command_line
from src.config.runs import check_saved_split
from src.data.catalog import data_format, split_source
from src.data.pipeline import (check_layout, check_val_classes, create_dataset, dataset_size, model_class_names,
                               saved_split_lists)
from src.data.records import data_failure, log_left_out
from src.platform.bounds import check_batch
from src.platform.console import Progress, get_logger, messages_to_stderr
from src.platform.device import setup_runtime
from src.platform.errors import run_cli, shown_name
from src.platform.fileio import STDOUT, check_output_path, write_json
from src.platform.graph_cache import open_graph_cache
from src.train.distributed import make_reduce_fn
from src.train.loop import evaluate
from src.train.run_folder import CONFIG_FILE
from model import require_finite_outputs

#: evl.py's own options (everything else is a config key).
OPTIONS = [option("json", None, "str", "Also write the results as JSON to this file ('-': the standard output).",
                  nullable=True)]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = parse_command_line(argv, OPTIONS, script="evl.py")
    with messages_to_stderr(cmd.options.json == STDOUT):
        return evaluate_checkpoint(cmd.cfg, cmd.options.json)


def evaluate_checkpoint(cfg, json_path):
    """Load the checkpoint's model, evaluate it, print (and write) the results."""
    json_inputs = [("checkpoint_path", cfg.checkpoint_path)]
    if json_path:
        check_output_path(json_path, *json_inputs, label="--json", dash_is_stdout=True)
    check_data_settings(cfg)
    device, rank, world = setup_runtime(cfg, get_logger(0))
    logger = get_logger(rank)
    net, meta = load_checkpoint_model(require_checkpoint_path(cfg), cfg, logger, classes_from_head=False)
    check_batch("eval_batch_size" if cfg.eval_batch_size else "batch_size", cfg.eval_batch_size or cfg.batch_size,
                cfg.image_size, "config")
    if meta.dataset is not None and meta.dataset != cfg.dataset_choose:
        logger.warning(f"'{cfg.checkpoint_path}' was trained on {meta.dataset}, evaluating on "
                       f"{cfg.dataset_choose}")
    saved = meta.class_names
    check_val_classes(cfg, saved, cfg.checkpoint_path)
    try:
        results = run_evaluation(cfg, net, meta, logger, device, rank, world)
    except RuntimeError as exc:
        raise data_failure(exc) or exc
    if rank == 0:
        names, _ = model_class_names(cfg, cfg.num_classes, logger, saved)
        print_results(results, names)
        if json_path:
            write_results(json_path, json_inputs, cfg, results, names)
    return 0


def check_data_settings(cfg):
    """Image trees: no split folders given as a tree of classes; with val_fraction, the split the run
    saved (its val_files.txt) must be the one val_fraction (and --seed, when given) ask for
    (src/config/runs.py)."""
    check_layout(cfg)
    lists = saved_split_lists(cfg) if cfg.val_fraction is not None and data_format(cfg.dataset_choose) == \
        "imagefolder" else None
    if lists:
        folder = os.path.dirname(lists["val"])
        check_saved_split(cfg, os.path.join(folder, CONFIG_FILE), folder, seed_given="seed" in cfg.command_line_keys)


def run_evaluation(cfg, net, meta, logger, device, rank, world):
    """The validation split through the model (each rank its shard, counts summed over ranks)."""
    val_ds = create_dataset(cfg, "val", **(dict(num_shards=world, shard_id=rank) if world > 1 else {}))
    logger.info(f"evaluating {cfg.checkpoint_path} ({describe_model(cfg)}, {cfg.num_classes} classes"
                + (f", epoch {meta.epoch}" if meta.epoch is not None else "") + f") on {cfg.dataset_choose} "
                f"val ({split_source(cfg, 'val')}) at {cfg.image_size}px, device {device}")
    graph_cache = open_graph_cache(cfg, "eval", logger, device, rank, world, data={"val": dataset_size(cfg, "val")})
    bar = Progress(val_ds.get_dataset_size(), "eval", logger, enabled=rank == 0, log_interval=cfg.log_interval)
    results = evaluate(net, val_ds, cfg.num_classes, make_reduce_fn(world), progress=bar)
    bar.close()
    log_left_out(logger, results, "during the evaluation")
    graph_cache.commit()
    require_finite_outputs(results["loss"], cfg.checkpoint_path, f"mean loss on {split_source(cfg, 'val')}")
    return results


def print_results(results, names):
    print(f"accuracy:{{'acc': {results['top1']:.4f}}}")
    print(f"top-5 accuracy: {results['top5']:.4f} | mean loss: {results['loss']:.4f} | images: {results['n']}"
          + (f" ({results['left_out']} left out: could not be decoded)" if results["left_out"] else ""))
    print("per-class accuracy:")
    for i, (acc, cnt) in enumerate(zip(results["per_class_acc"], results["per_class_count"])):
        name = shown_name(names[i], quoted=False) if i < len(names) else str(i)
        print(f"  {i:3d} {name:<20s} {acc:.4f} ({cnt} images)" if cnt else
              f"  {i:3d} {name:<20s}   n/a  (0 images)")


def write_results(json_path, json_inputs, cfg, results, names):
    out = {"checkpoint": os.path.abspath(cfg.checkpoint_path), "arch": cfg.arch,
           "dataset": cfg.dataset_choose, "image_size": cfg.image_size, "acc": results["top1"],
           "top5": results["top5"], "loss": results["loss"], "n": results["n"],
           "left_out": results["left_out"],
           "per_class": {(names[i] if i < len(names) else str(i)): (None if a != a else a)
                         for i, a in enumerate(results["per_class_acc"])}}
    write_json(json_path, out, inputs=json_inputs)


if __name__ == "__main__":
    run_cli(main)
