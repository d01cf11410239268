"""Fine-tune (or train from scratch) ConvMLP on CIFAR-10/100, Flowers-102, ImageNet or your own images.

    python train.py                                  # config.yaml as it is
    python train.py --dataset_choose cifar100 --pretrained_ckpt convmlp_s_imagenet.ckpt
    python train.py --dataset_choose imagefolder --train_data_path photos --val_fraction 0.2
    python train.py --demo                           # offline demo on generated CIFAR-format data
    msrun --worker_num=2 --local_worker_num=2 --join=True train.py --is_distributed true

``main`` reads as the run's phases: the config, the start, the output folder, the data, the model
and its compiled step, the resume, the epochs. The run folder, resuming and the recipes:
docs/training.md; data parallel: docs/distributed.md.
"""
import src  # noqa: F401  (first: it keeps MindSpore's C++ log quiet, see src/__init__.py)
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

import mindspore as ms

from src.checkpoint.checkpoint import BEST, EMA_PREFIX, LAST, Checkpoint, resume_path, save_training_state
from src.checkpoint.load import build_model, check_arch, describe_model, inference_network, load_training_state
from src.config import epoch_config, load_config
from src.config.runs import check_resumed_config
from src.data.catalog import data_format, split_source
from src.data.pipeline import check_layout, create_dataset, dataset_size, prepare_demo, prepare_split, resolve_classes
from src.data.records import data_failure, log_decode_skips, log_left_out
from src.platform.bounds import check_batch
from src.platform.console import Progress, get_logger
from src.platform.cpu import onednn_isa, release_compile_memory
from src.platform.device import check_precision, cpu_kernels_wanted, setup_runtime
from src.platform.errors import EXIT_INTERRUPTED, ClusterError, ConfigError, DataError, first_line, run_cli
from src.platform.fileio import remove_stale_temps
from src.platform.graph_cache import open_graph_cache
from src.train.ema import ModelEma, TrainStepWithEma, copy_weights, ema_network
from src.train.distributed import (average_bn_statistics, check_same_start, is_communication_failure,
                                   make_reduce_fn)
from src.train.loop import TrainingDiverged, evaluate, train_one_epoch
from src.train.metrics import MetricsLog
from src.train.modelarts import prepare_data, sync_outputs
from src.train.optim import AdamW, cosine_schedule, log_schedule, param_groups_weight_decay
from src.train.run_folder import CONFIG_FILE, LOG_FILE, check_fresh_start, claim_run_folder
from src.train.state import RunState, StopRequest
from src.train.step import DropPathDraws, apply_amp, build_train_step
from model import check_fit, cpu_kernels, load_pretrained


@dataclass
class RunContext:
    """What every phase needs: the resolved config, the logger and where this process runs."""
    cfg: Any
    logger: Any
    device: str
    rank: int
    world: int
    reduce_fn: Optional[Callable] = None   # sums a vector over the ranks (None for one process)
    class_names: Optional[list] = None     # the training data's (build_data)

    @property
    def shard(self):
        return dict(num_shards=self.world, shard_id=self.rank) if self.world > 1 else {}


@dataclass
class TrainingSetup:
    """The datasets, the network and its compiled training step."""
    val_ds: Any
    steps_per_epoch: int
    net: Any
    step_cell: Any
    optimizer: Any
    lr_per_step: Any           # the learning rate of every step of the run (src.train.optim.cosine_schedule)
    draws: Any                 # src.train.step.DropPathDraws: the drop-path factors of each step
    graph_cache: Any = None    # src.platform.graph_cache.GraphCache, opened before the first compile
    ema_net: Any = None        # model_ema: the network of the averages (src.train.ema)
    eval_net: Any = None       # what evaluates net (src.checkpoint.load.inference_network)
    ema_eval_net: Any = None   # ... and ema_net

    def global_step(self) -> int:
        return int(self.optimizer.global_step.asnumpy()[0])


def main(argv=None):
    cfg = load_config(list(sys.argv[1:] if argv is None else argv), script="train.py")
    run = start(cfg)
    check_output_folder(run)
    check_resumed_settings(run)
    setup = build_training(run, *build_data(run))
    state = resume(run, setup)
    if state.epoch >= cfg.epoch_size:
        run.logger.info(f"nothing to do: the run already finished its {cfg.epoch_size} epochs")
        return 0
    compile_step(run, setup)
    try:
        train_epochs(run, setup, state)
    except KeyboardInterrupt:
        return save_on_interrupt(run, setup, state)
    except RuntimeError as exc:
        raise cluster_failure(run, exc) or data_failure(exc) or exc
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc}{last_good_checkpoint(cfg)}") from None
    finish(run, setup, state)
    return 0


def start(cfg) -> RunContext:
    """Device, rank and logger; the precision checks that must fail before anything is built; the
    demo data; the resolved config in the log."""
    for name in ("batch_size", "eval_batch_size"):   # before anything allocates a batch
        check_batch(name, getattr(cfg, name) or cfg.batch_size, cfg.image_size, "config")
    device, rank, world = setup_runtime(cfg, get_logger(0))
    check_precision(cfg, device, get_logger(0))
    if rank == 0:  # one process per run folder; its files are not the files the run reads
        claim_run_folder(cfg)
    logger = get_logger(rank, os.path.join(cfg.save_checkpoint_path, LOG_FILE))
    if cfg.demo:
        prepare_demo(cfg, logger, rank)
    prepare_data(cfg, logger, rank)            # ModelArts: data_url to this machine
    logger.info("resolved config:\n  " + cfg.to_yaml().strip().replace("\n", "\n  "))
    logger.info(f"device {device} | mode {cfg.mode.upper()} | rank {rank} / world size {world} | "
                f"MindSpore {ms.__version__}")
    return RunContext(cfg, logger, device, rank, world, make_reduce_fn(world))


def check_output_folder(run: RunContext):
    """Temporaries of a killed run are removed; a fresh run never writes into a folder holding a
    run (``--resume auto`` continues it; only the demo starts over)."""
    cfg, logger = run.cfg, run.logger
    if run.rank == 0:
        stale = remove_stale_temps(cfg.save_checkpoint_path)
        if stale:
            logger.info(f"removed {len(stale)} temporary file(s) left by a killed run: {', '.join(stale)}")
    check_fresh_start(cfg.save_checkpoint_path, cfg.resume, cfg.demo, logger, owner=run.rank == 0)


def check_resumed_settings(run: RunContext):
    """``--resume``: the settings against the run's saved config.yaml (beside the checkpoint): a key
    whose change would change what the saved state means is refused, the others are named in one
    warning (src/config/runs.py)."""
    resume_file = resume_path(run.cfg.resume, run.cfg.save_checkpoint_path)
    if resume_file:
        check_resumed_config(run.cfg, os.path.join(os.path.dirname(os.path.abspath(resume_file)), CONFIG_FILE))


def build_data(run: RunContext):
    """The validation pipeline and the steps per epoch, after every data file was validated; an
    image tree's classes (and with val_fraction its split, saved in the run folder)."""
    cfg, world = run.cfg, run.world
    check_layout(cfg)
    prepare_split(cfg, run.logger, run.rank, fresh=resume_path(cfg.resume, cfg.save_checkpoint_path) is None,
                  world=world)
    run.class_names = resolve_classes(cfg, run.logger)
    steps_per_epoch = create_dataset(cfg, "train", **run.shard).get_dataset_size()
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size {cfg.batch_size} x {world} device(s) is larger than the training "
                          f"set in {cfg.train_data_path}; lower batch_size")
    val_ds = create_dataset(cfg, "val", **run.shard)
    run.logger.info(f"data: {cfg.dataset_choose} train {dataset_size(cfg, 'train')} images "
                    f"({split_source(cfg, 'train')}), val {dataset_size(cfg, 'val')} images "
                    f"({split_source(cfg, 'val')}), "
                    f"{cfg.num_classes} classes, {cfg.image_size}px")
    run.logger.info(f"batch {cfg.batch_size} per device x {world} = {cfg.batch_size * world} global, "
                    f"{steps_per_epoch} steps per epoch, {cfg.epoch_size} epochs")
    log_schedule(cfg, run.logger, run.rank)
    return val_ds, steps_per_epoch


def build_training(run: RunContext, val_ds, steps_per_epoch) -> TrainingSetup:
    """The network (pretrained weights unless resuming), mixed precision, AdamW on the per-step
    schedule, and the training step cell."""
    cfg, logger = run.cfg, run.logger
    net = build_model(cfg, drop_path_rate=cfg.drop_path_rate)
    n_params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    fresh = resume_path(cfg.resume, cfg.save_checkpoint_path) is None
    if fresh and cfg.pretrained_ckpt:
        loaded = load_pretrained(net, cfg.pretrained_ckpt, Checkpoint.read(cfg.pretrained_ckpt).entries)
        logger.info(f"initialised from {cfg.pretrained_ckpt}: {len(loaded['loaded'])} tensors loaded"
                    + ("; head re-created for %d classes" % cfg.num_classes if loaded["head_reinitialised"]
                       else "") + (f"; ignored {len(loaded['ignored'])} non-model entries" if loaded["ignored"]
                                   else ""))
    elif fresh:
        logger.warning("*** no pretrained_ckpt: training FROM SCRATCH (random init). The published accuracy "
                       "needs the converted ImageNet weights (pth2ckpt.py) ***")
    logger.info(f"model {describe_model(cfg)}: {n_params:,} trainable parameters, drop_path {cfg.drop_path_rate}")
    kernels = cpu_kernels_wanted(cfg, run.device)
    logger.info(f"C++ CPU kernels (model/cpu_kernels/): {cpu_kernels.status() if kernels else 'off'}; "
                f"oneDNN ISA: {onednn_isa()}")
    net = apply_amp(net, cfg.amp_level)
    logger.info(f"precision: amp_level {cfg.amp_level}, loss_scale_type {cfg.loss_scale_type}"
                + (f" ({cfg.loss_scale:g})" if cfg.loss_scale_type != "none" else ""))
    lr_per_step = cosine_schedule(cfg.lr, cfg.min_lr, cfg.warmup_lr, cfg.warmup_epochs, cfg.epoch_size,
                                  steps_per_epoch, cfg.cooldown_epochs)
    scale = cfg.loss_scale if cfg.loss_scale_type == "fixed" else 1.0
    optimizer = AdamW(param_groups_weight_decay(net.trainable_params(), cfg.weight_decay), ms.Tensor(lr_per_step),
                      weight_decay=cfg.weight_decay, loss_scale=scale, cpu_kernel=kernels)
    step_cell = build_train_step(net, optimizer, loss_scale_type=cfg.loss_scale_type, loss_scale=cfg.loss_scale)
    draws = DropPathDraws(net, cfg.batch_size, cfg.seed, run.rank)
    ema_net = None
    if cfg.model_ema:   # timm's ModelEmaV2, from the initial (pretrained) weights, updated inside the step
        ema_net = apply_amp(ema_network(net, lambda: build_model(cfg)), cfg.amp_level)
        step_cell = TrainStepWithEma(step_cell, ModelEma(net, ema_net, cfg.model_ema_decay))
        logger.info(f"model EMA: decay {cfg.model_ema_decay:g}, updated after every step, evaluated each epoch")
    return TrainingSetup(val_ds, steps_per_epoch, net, step_cell, optimizer, lr_per_step, draws, ema_net=ema_net,
                         eval_net=inference_network(net, cfg),
                         ema_eval_net=None if ema_net is None else inference_network(ema_net, cfg))


def resume(run: RunContext, setup: TrainingSetup):
    """The position to start from: the beginning, or a checkpoint's epoch and step with its weights,
    optimiser state and best result. Writes the resolved config next to the checkpoints."""
    cfg = run.cfg
    state = RunState(class_names=run.class_names)
    resume_file = resume_path(cfg.resume, cfg.save_checkpoint_path)
    if resume_file:
        ckpt = Checkpoint.read(resume_file)
        check_arch(ckpt.meta, cfg.arch, resume_file, "resume")
        check_same_classes(run, ckpt.meta.class_names, resume_file)
        check_fit(setup.net, ckpt.entries, resume_file)
        load_training_state(setup.step_cell, setup.optimizer, ckpt)
        if setup.ema_net is not None and not ckpt.has_ema:   # as timm: the EMA starts from the weights
            copy_weights(setup.net, setup.ema_net)
            run.logger.warning(f"{resume_file} has no EMA weights ({EMA_PREFIX}*): the EMA starts from its weights")
        state = RunState.resumed(ckpt, run.class_names)
        run.logger.info(f"resumed from {resume_file}: {state.epoch} epoch(s) done"
                        + (f" + {state.step} step(s) of epoch {state.epoch + 1}" if state.step else "")
                        + f", global step {setup.global_step()}")
    if run.rank == 0 and state.epoch < cfg.epoch_size:
        os.makedirs(cfg.save_checkpoint_path, exist_ok=True)
        cfg.save(os.path.join(cfg.save_checkpoint_path, CONFIG_FILE))
    if run.world > 1:
        check_same_start(run.reduce_fn, run.world, run.rank, state.epoch, state.step, cfg.save_checkpoint_path)
    return state


def check_same_classes(run: RunContext, trained, resume_file):
    """An image tree's classes must be those the resumed run was trained on (`trained`, its
    checkpoint's class_names): DataError naming the classes added and removed since."""
    if not trained or data_format(run.cfg.dataset_choose) != "imagefolder" or trained == run.class_names:
        return
    now = run.class_names
    added, removed = [c for c in now if c not in trained], [c for c in trained if c not in now]
    diff = "; ".join(f"{what} {', '.join(repr(c) for c in names[:5])}" + (" ..." if len(names) > 5 else "")
                     for what, names in (("added", added), ("removed", removed)) if names) or "in another order"
    raise DataError(f"{run.cfg.train_data_path} now has {len(now)} class folders, but the run resumed from "
                    f"{resume_file} was trained on {len(trained)} ({diff}); restore the class folders it was trained "
                    f"on, or start a new run in another save_checkpoint_path (--pretrained_ckpt {resume_file} "
                    "starts from its weights with a new head)")


def compile_step(run: RunContext, setup: TrainingSetup):
    """The graph cache of this setting (src/platform/graph_cache.py: a hit loads the compiled graphs); in
    GRAPH mode, compile before the first batch, then hand the compiler's freed heap back to the OS
    (benchmarks/RESULTS.md), so that images/s and memory describe training alone."""
    cfg = run.cfg
    setup.graph_cache = open_graph_cache(cfg, "train", run.logger, run.device, run.rank, run.world,
                                         data={split: dataset_size(cfg, split) for split in ("train", "val")})
    if cfg.mode != "graph":
        return
    t_compile = time.time()
    setup.step_cell.compile(ms.Tensor(np.zeros((cfg.batch_size, 3, cfg.image_size, cfg.image_size), np.float32)),
                            ms.Tensor(np.zeros((cfg.batch_size, cfg.num_classes), np.float32)), *setup.draws(0, 0))
    setup.graph_cache.commit()
    release_compile_memory()
    run.logger.info(f"compiled the training step in {time.time() - t_compile:.1f}s")


def train_epochs(run: RunContext, setup: TrainingSetup, state):
    """The epoch loop: train, (evaluate), log one line, save; Ctrl-C / SIGTERM stops at a step
    boundary (KeyboardInterrupt, handled by :func:`save_on_interrupt`)."""
    cfg = run.cfg
    metrics = MetricsLog.resume(cfg.save_checkpoint_path, state.epoch) if run.rank == 0 else None
    stop = StopRequest(run.logger, run.reduce_fn if run.world > 1 else None)
    for epoch in range(state.epoch, cfg.epoch_size):
        train_ds = create_dataset(epoch_config(cfg, epoch), "train", **run.shard)
        bar = Progress(setup.steps_per_epoch - state.step, f"epoch {epoch + 1}/{cfg.epoch_size}", run.logger,
                       enabled=run.rank == 0, log_interval=cfg.log_interval)
        stats = train_one_epoch(setup.step_cell, train_ds, epoch + 1, setup.steps_per_epoch, skip=state.step,
                                progress=bar, on_step=state.advance, should_stop=stop,
                                step_inputs=lambda i: setup.draws(epoch, i), skipped_losses=state.epoch_losses)
        bar.close()
        if stats["interrupted"]:
            raise KeyboardInterrupt
        state.epoch, state.step = epoch + 1, 0
        if run.world > 1:  # the mean loss over all ranks; one set of BatchNorm statistics
            stats["loss"] = float(run.reduce_fn(np.array([stats["loss"]], np.float32))[0]) / run.world
            for net in (n for n in (setup.net, setup.ema_net) if n is not None):   # the EMA too (timm distribute_bn)
                average_bn_statistics(net, run.reduce_fn, run.world)
        end_of_epoch(run, setup, state, stats, metrics)
        setup.graph_cache.commit()   # now with the evaluation graph
        if epoch + 1 < cfg.epoch_size:
            sync_outputs(cfg, run.logger, run.rank, final=False)   # ModelArts: outputs to train_url
        if stop() and epoch + 1 < cfg.epoch_size:
            raise KeyboardInterrupt


def end_of_epoch(run: RunContext, setup: TrainingSetup, state, stats, metrics):
    """Validation when due, the epoch's log line and metrics row, and its checkpoint."""
    cfg, epoch = run.cfg, state.epoch
    lr_now = float(setup.lr_per_step[min(setup.global_step(), len(setup.lr_per_step) - 1)])
    images_per_s = stats["images_per_s"] * run.world
    row = {"epoch": epoch, "step": setup.global_step(), "train_loss": f"{stats['loss']:.5f}",
           "lr": f"{lr_now:.3e}", "images_per_s": f"{images_per_s:.1f}", "epoch_time_s": f"{stats['time']:.1f}"}
    line = f"epoch:{epoch} step:{setup.steps_per_epoch}, loss is {stats['loss']:.5f}"
    is_best = False
    log_decode_skips(run.logger, f"in epoch {epoch}")     # the training's, before the validation's
    if epoch % cfg.eval_interval == 0 or epoch == cfg.epoch_size:
        text, top1 = validate(run, setup, row)
        line += text
        if top1 > state.best_acc:
            state.best_acc, state.best_epoch, is_best = top1, epoch, True
    run.logger.info(line + f" | lr {lr_now:.2e} | {images_per_s:.1f} img/s | {stats['time']:.1f}s")
    if run.rank == 0:  # the row first: a kill before the checkpoint leaves a row that resume drops
        metrics.add(row)
        path = save_training_state(setup.step_cell, cfg.save_checkpoint_path,
                                   state.checkpoint_meta(cfg, setup.global_step(), epoch),
                                   is_best=is_best, epochs_kept=cfg.keep_checkpoint_max)
        run.logger.info(f"saved {path}" + (f" (new best top-1 {state.best_acc:.4f})" if is_best else ""))
    state.saved = (epoch, 0)


def validate(run: RunContext, setup: TrainingSetup, row) -> Tuple[str, float]:
    """The validation of the weights and, with model_ema, of the averages; fills the metrics `row`.
    Returns the log text and the top-1 that ranks checkpoints (the EMA's when on, as timm). Images
    skip_bad_images replaced are left out of the metrics, in one warning line."""
    text, top1, results = "", None, []
    for prefix, net, label in (("", setup.eval_net, "val"), ("ema_", setup.ema_eval_net, "EMA")):
        if net is None:
            continue
        result = evaluate(net, setup.val_ds, run.cfg.num_classes, run.reduce_fn)
        row.update({f"{prefix}val_loss": f"{result['loss']:.5f}", f"{prefix}val_top1": f"{result['top1']:.4f}",
                    f"{prefix}val_top5": f"{result['top5']:.4f}"})
        text += f" | {label} top-1 {result['top1']:.4f} top-5 {result['top5']:.4f} loss {result['loss']:.4f}"
        top1 = result["top1"]
        results.append(result)
    log_left_out(run.logger, results[0], f"in epoch {row['epoch']}'s validation")   # the EMA's: the same images
    return text, top1


def save_on_interrupt(run: RunContext, setup: TrainingSetup, state) -> int:
    """Ctrl-C / SIGTERM: a resumable checkpoint of the position reached (unless it is on disk
    already), the command that continues the run, exit status 130."""
    cfg, logger = run.cfg, run.logger
    position = (state.epoch, state.step)
    if run.rank == 0 and position != state.saved and position != (0, 0):
        meta = state.checkpoint_meta(cfg, setup.global_step(), state.epoch, state.step)
        path = save_training_state(setup.step_cell, cfg.save_checkpoint_path, meta, epoch_file=False)
        logger.warning(f"interrupted at {state.where()}: saved resumable {path}")
    elif run.rank == 0:
        logger.warning(f"interrupted at {state.where()}; nothing new to save")
    sync_outputs(cfg, logger, run.rank, final=False)
    launcher = "msrun <same msrun options> train.py" if run.world > 1 else "python train.py"
    logger.warning(f"continue with: {launcher} <same options> --resume auto "
                   f"--save_checkpoint_path {cfg.save_checkpoint_path}")
    if run.world > 1:
        logger.warning("data-parallel run: msrun and MindSpore's scheduler also stop every rank this way "
                       "when one rank dies; the cause is in the other ranks' logs (msrun --log_dir)")
    return EXIT_INTERRUPTED


def cluster_failure(run: RunContext, exc: RuntimeError) -> Optional[ClusterError]:
    """A collective operation that failed in a data-parallel run, as one error naming the cause's
    place; None for any other RuntimeError (raised as it is)."""
    if run.world <= 1 or not is_communication_failure(exc):
        return None
    return ClusterError(
        f"rank {run.rank} of {run.world}: a collective operation failed, so another rank has died or cannot "
        f"be reached (MindSpore: {first_line(exc)}). The cause is in the other ranks' logs "
        "(msrun --log_dir: worker_<rank>.log, scheduler.log); restart every rank with --resume auto"
        + last_good_checkpoint(run.cfg, " (last good checkpoint {})"))


def last_good_checkpoint(cfg, template="; the last good checkpoint is {}") -> str:
    last = os.path.join(cfg.save_checkpoint_path, LAST)
    return template.format(last) if os.path.isfile(last) else ""


def finish(run: RunContext, setup: TrainingSetup, state):
    """The final log lines (and, on ModelArts, the last copy of the outputs)."""
    cfg = run.cfg
    run.logger.info(f"done: best val top-1 {state.best_acc:.4f} at epoch {state.best_epoch}; checkpoints in "
                    f"{cfg.save_checkpoint_path} (best.ckpt, last.ckpt)")
    if cfg.demo and run.rank == 0:
        best = os.path.join(cfg.save_checkpoint_path, BEST)
        run.logger.info(f"demo finished. Evaluate with: python evl.py --demo --checkpoint_path {best} "
                        f"--image_size {cfg.image_size}")
    sync_outputs(cfg, run.logger, run.rank)


if __name__ == "__main__":
    run_cli(main)
