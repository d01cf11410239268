"""Fine-tune (or train from scratch) ConvMLP on CIFAR-10/100.

    python train.py                                  # config.yaml as it is
    python train.py --dataset_choose cifar100 --pretrained_ckpt convmlp_s_imagenet.ckpt
    python train.py --demo                           # offline demo on generated CIFAR-format data
    msrun --worker_num=2 --local_worker_num=2 --join=True train.py --is_distributed true

Every key of config.yaml can be given as ``--key value``; ``python train.py -h`` lists them.
Checkpoints, ``metrics.csv``, ``curves.png``, ``train.log`` and the resolved ``config.yaml`` go
to ``save_checkpoint_path``; ``--resume auto`` continues the run found there.

Data parallel (``is_distributed: true``, under msrun): ``batch_size`` is per device; gradients are
averaged over the ranks, BatchNorm moving statistics are averaged at each epoch end, validation
counts are summed over the ranks' shards; only rank 0 writes files and the progress bar.
Test hook: with the environment variable ``CONVMLP_DUMP_WEIGHTS_DIR`` set, every rank writes its
final model parameters to ``$CONVMLP_DUMP_WEIGHTS_DIR/rank<R>.npz`` (tests/test_distributed.py).
"""
import os
import signal
import sys
import time

import numpy as np

from src.errors import ConfigError, run_cli


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from src.config import Config
    from src.runtime import load_run_config, setup_runtime, check_precision, prepare_demo, build_model, ClusterError
    cfg = load_run_config(argv)

    from src.run_log import get_logger
    logger = get_logger(0)
    import mindspore as ms
    device, rank, world = setup_runtime(cfg, logger)
    check_precision(cfg, device, logger)
    if rank == 0:  # one process per run folder; its files are not the files the run reads
        from src.run_folder import claim_run_folder
        claim_run_folder(cfg)
    logger = get_logger(rank, os.path.join(cfg.save_checkpoint_path, "train.log"))
    if cfg.demo:
        prepare_demo(cfg, logger, rank)

    from src.checkpoint import resume_path, read_meta
    from dataset import create_dataset
    from model import load_pretrained, read_checkpoint, check_fit
    from src.optim import AdamW, cosine_schedule, param_groups_weight_decay
    from src.train_step import apply_amp, build_train_step
    from src.engine import evaluate, train_one_epoch, make_reduce_fn, TrainingDiverged, average_bn_statistics
    from src.checkpoint import save_training_state, remove_stale_temps
    from src.run_log import Progress, MetricsLog

    logger.info("resolved config:\n  " + cfg.to_yaml().strip().replace("\n", "\n  "))
    logger.info(f"device {device} | mode {cfg.mode.upper()} | rank {rank} / world size {world} | "
                f"MindSpore {ms.__version__}")
    if rank == 0:
        stale = remove_stale_temps(cfg.save_checkpoint_path)
        if stale:
            logger.info(f"removed {len(stale)} temporary file(s) left by a killed run: {', '.join(stale)}")

    from src.run_folder import check_fresh_start
    check_fresh_start(cfg.save_checkpoint_path, cfg.resume, cfg.demo, logger, owner=rank == 0)

    # ---- data (validated before any model is built) ----
    shard = dict(num_shards=world, shard_id=rank) if world > 1 else {}
    ds_probe = create_dataset(cfg, "train", **shard)
    steps_per_epoch = ds_probe.get_dataset_size()
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size {cfg.batch_size} x {world} device(s) is larger than the training "
                          f"set in {cfg.train_data_path}; lower batch_size")
    val_ds = create_dataset(cfg, "val", **shard)
    from dataset import dataset_size
    logger.info(f"data: {cfg.dataset_choose} train {dataset_size(cfg, 'train')} images "
                f"({cfg.train_data_path}), val {dataset_size(cfg, 'val')} images ({cfg.val_data_path}), "
                f"{cfg.num_classes} classes, {cfg.image_size}px")
    logger.info(f"batch {cfg.batch_size} per device x {world} = {cfg.batch_size * world} global, "
                f"{steps_per_epoch} steps per epoch, {cfg.epoch_size} epochs")

    # ---- model ----
    net = build_model(cfg, drop_path_rate=cfg.drop_path_rate)
    n_params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    resume_file = resume_path(cfg.resume, cfg.save_checkpoint_path)
    if resume_file is None and cfg.pretrained_ckpt:
        rep = load_pretrained(net, cfg.pretrained_ckpt)
        logger.info(f"initialised from {cfg.pretrained_ckpt}: {len(rep['loaded'])} tensors loaded"
                    + ("; head re-created for %d classes" % cfg.num_classes if rep["head_reinitialised"]
                       else "") + (f"; ignored {len(rep['ignored'])} non-model entries" if rep["ignored"]
                                   else ""))
    elif resume_file is None:
        logger.warning("*** no pretrained_ckpt: training FROM SCRATCH (random init). The published accuracy "
                       "needs the converted ImageNet weights (pth2ckpt.py) ***")
    logger.info(f"model {cfg.arch}: {n_params:,} trainable parameters, drop_path {cfg.drop_path_rate}")
    from model import cpu_kernels
    logger.info(f"C++ CPU kernels (model/cpu_kernels.py): {cpu_kernels.status()}")
    net = apply_amp(net, cfg.amp_level)
    logger.info(f"precision: amp_level {cfg.amp_level}, loss_scale_type {cfg.loss_scale_type}"
                + (f" ({cfg.loss_scale:g})" if cfg.loss_scale_type != "none" else ""))

    lrs = cosine_schedule(cfg.lr, cfg.min_lr, cfg.warmup_lr, cfg.warmup_epochs, cfg.epoch_size,
                          steps_per_epoch, cfg.cooldown_epochs)
    scale = cfg.loss_scale if cfg.loss_scale_type == "fixed" else 1.0
    opt = AdamW(param_groups_weight_decay(net.trainable_params(), cfg.weight_decay), ms.Tensor(lrs),
                weight_decay=cfg.weight_decay, loss_scale=scale)
    step_cell = build_train_step(net, opt, loss_scale_type=cfg.loss_scale_type, loss_scale=cfg.loss_scale)

    # ---- resume ----
    start_epoch, skip, best_acc, best_epoch = 0, 0, -1.0, 0
    if resume_file:
        params = read_checkpoint(resume_file)
        meta = read_meta(params)
        if meta.get("arch", cfg.arch) != cfg.arch:
            raise ConfigError(f"resume: '{resume_file}' is a {meta['arch']} checkpoint but arch is {cfg.arch}")
        check_fit(net, params, resume_file)
        _load_training_state(step_cell, params, resume_file)
        start_epoch = int(meta.get("epoch", 0))
        skip = int(meta.get("step_in_epoch", 0))
        best_acc = float(meta.get("best_acc", -1.0))
        best_epoch = int(meta.get("best_epoch", 0))
        if "global_step" in meta and int(opt.global_step.asnumpy()[0]) != int(meta["global_step"]):
            opt.global_step.set_data(ms.Tensor([int(meta["global_step"])], ms.int32))
        logger.info(f"resumed from {resume_file}: {start_epoch} epoch(s) done"
                    + (f" + {skip} step(s) of epoch {start_epoch + 1}" if skip else "")
                    + f", global step {int(opt.global_step.asnumpy()[0])}")
        if start_epoch >= cfg.epoch_size:
            logger.info(f"nothing to do: the run already finished its {cfg.epoch_size} epochs")
            return 0
    if rank == 0:
        os.makedirs(cfg.save_checkpoint_path, exist_ok=True)
        cfg.save(os.path.join(cfg.save_checkpoint_path, "config.yaml"))
    metrics = MetricsLog.resume(cfg.save_checkpoint_path, start_epoch) if rank == 0 else None
    reduce_fn = make_reduce_fn(world)
    if world > 1:
        _check_same_start(reduce_fn, world, rank, start_epoch, skip, cfg.save_checkpoint_path)

    def meta_for(epoch, step_in_epoch=0):
        return {"epoch": epoch, "global_step": int(opt.global_step.asnumpy()[0]),
                "step_in_epoch": step_in_epoch, "best_acc": best_acc, "best_epoch": best_epoch,
                "arch": cfg.arch, "num_classes": cfg.num_classes, "image_size": cfg.image_size,
                "dataset": cfg.dataset_choose, "config": cfg.to_yaml()}

    if cfg.mode == "graph":
        # Compile before the first batch, then hand the compiler's freed heap back to the OS
        # (~0.4 GB at 224 px; benchmarks/RESULTS.md).
        from src.perf import release_compile_memory
        t_compile = time.time()
        step_cell.compile(ms.Tensor(np.zeros((cfg.batch_size, 3, cfg.image_size, cfg.image_size), np.float32)),
                          ms.Tensor(np.zeros((cfg.batch_size, cfg.num_classes), np.float32)))
        release_compile_memory()
        logger.info(f"compiled the training step in {time.time() - t_compile:.1f}s")

    # Ctrl-C / SIGTERM: finish the current step, save a resumable checkpoint, exit 130. The
    # position is (finished epochs, steps done in the next one); "saved" is what is on disk.
    progress_state = {"epoch": start_epoch, "step": skip,
                      "saved": (start_epoch, skip) if resume_file else None}
    stop = _install_stop_handler(logger)
    if world > 1:
        # Every rank asks the same question after every step, so all stop at the same step (a
        # SIGTERM from a cluster scheduler reaches the ranks at different moments).
        def stop_requested():
            return float(reduce_fn(np.array([float(stop["requested"])], np.float32))[0]) > 0
    else:
        def stop_requested():
            return stop["requested"]

    try:
        for epoch in range(start_epoch, cfg.epoch_size):
            progress_state.update(epoch=epoch, step=skip)
            train_ds = create_dataset(_epoch_cfg(cfg, epoch, Config), "train", **shard)
            bar = Progress(steps_per_epoch - skip, f"epoch {epoch + 1}/{cfg.epoch_size}", logger,
                           enabled=rank == 0, log_interval=cfg.log_interval)
            stats = train_one_epoch(step_cell, train_ds, epoch + 1, steps_per_epoch, skip=skip,
                                    progress=bar,
                                    on_step=lambda s: progress_state.__setitem__("step", s),
                                    should_stop=stop_requested)
            bar.close()
            if stats["interrupted"]:
                raise KeyboardInterrupt
            progress_state.update(epoch=epoch + 1, step=0)
            skip = 0
            if world > 1:  # the mean loss over all ranks; one set of BatchNorm statistics
                stats["loss"] = float(reduce_fn(np.array([stats["loss"]], np.float32))[0]) / world
                average_bn_statistics(net, reduce_fn, world)
            lr_now = float(lrs[min(int(opt.global_step.asnumpy()[0]), len(lrs) - 1)])
            ips = stats["images_per_s"] * world
            row = {"epoch": epoch + 1, "step": int(opt.global_step.asnumpy()[0]),
                   "train_loss": f"{stats['loss']:.5f}", "lr": f"{lr_now:.3e}",
                   "images_per_s": f"{ips:.1f}", "epoch_time_s": f"{stats['time']:.1f}"}
            line = f"epoch:{epoch + 1} step:{steps_per_epoch}, loss is {stats['loss']:.5f}"
            is_best = False
            if (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epoch_size:
                res = evaluate(net, val_ds, cfg.num_classes, reduce_fn)
                row.update(val_loss=f"{res['loss']:.5f}", val_top1=f"{res['top1']:.4f}",
                           val_top5=f"{res['top5']:.4f}")
                line += (f" | val top-1 {res['top1']:.4f} top-5 {res['top5']:.4f} "
                         f"loss {res['loss']:.4f}")
                if res["top1"] > best_acc:
                    best_acc, best_epoch, is_best = res["top1"], epoch + 1, True
            line += f" | lr {lr_now:.2e} | {ips:.1f} img/s | {stats['time']:.1f}s"
            logger.info(line)
            if rank == 0:  # the row first: a kill before the checkpoint leaves a row that resume drops
                metrics.add(row)
                path = save_training_state(step_cell, cfg.save_checkpoint_path, meta_for(epoch + 1),
                                           is_best=is_best, keep=cfg.keep_checkpoint_max)
                logger.info(f"saved {path}" + (f" (new best top-1 {best_acc:.4f})" if is_best else ""))
            progress_state["saved"] = (epoch + 1, 0)
            if stop_requested() and epoch + 1 < cfg.epoch_size:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        e, s = progress_state["epoch"], progress_state["step"]
        where = f"epoch {e + 1} step {s}" if s else f"the end of epoch {e}"
        if rank == 0 and (e, s) != progress_state["saved"] and (e, s) != (0, 0):
            path = save_training_state(step_cell, cfg.save_checkpoint_path, meta_for(e, s), epoch_file=False)
            logger.warning(f"interrupted at {where}: saved resumable {path}")
        elif rank == 0:
            logger.warning(f"interrupted at {where}; nothing new to save")
        launcher = "msrun <same msrun options> train.py" if world > 1 else "python train.py"
        logger.warning(f"continue with: {launcher} <same options> --resume auto "
                       f"--save_checkpoint_path {cfg.save_checkpoint_path}")
        if world > 1:
            logger.warning("data-parallel run: msrun and MindSpore's scheduler also stop every rank this way "
                           "when one rank dies; the cause is in the other ranks' logs (msrun --log_dir)")
        return 130
    except RuntimeError as exc:
        if world > 1 and _is_communication_failure(exc):
            last = os.path.join(cfg.save_checkpoint_path, "last.ckpt")
            raise ClusterError(
                f"rank {rank} of {world}: a collective operation failed, so another rank has died or cannot "
                f"be reached (MindSpore: {_first_line(exc)}). The cause is in the other ranks' logs "
                "(msrun --log_dir: worker_<rank>.log, scheduler.log); restart every rank with --resume auto"
                + (f" (last good checkpoint {last})" if os.path.isfile(last) else "")) from None
        raise
    except TrainingDiverged as exc:
        last = os.path.join(cfg.save_checkpoint_path, "last.ckpt")
        keep = f"; the last good checkpoint is {last}" if os.path.isfile(last) else ""
        raise TrainingDiverged(f"{exc}{keep}") from None

    if os.environ.get("CONVMLP_DUMP_WEIGHTS_DIR"):
        _dump_weights(net, os.environ["CONVMLP_DUMP_WEIGHTS_DIR"], rank)
    logger.info(f"done: best val top-1 {best_acc:.4f} at epoch {best_epoch}; checkpoints in "
                f"{cfg.save_checkpoint_path} (best.ckpt, last.ckpt)")
    if cfg.demo and rank == 0:
        best = os.path.join(cfg.save_checkpoint_path, "best.ckpt")
        logger.info(f"demo finished. Evaluate with: python evl.py --demo --checkpoint_path {best} "
                    f"--image_size {cfg.image_size}")
    return 0


def _load_training_state(step_cell, params, path):
    """The weights and optimiser state of a resumed run into `step_cell`. The learning-rate schedule
    is not taken from the file: it follows this run's config (e.g. a larger epoch_size extends it)
    at the restored global step."""
    import mindspore as ms
    from src.errors import CheckpointError
    state = {k: v for k, v in params.items() if not isinstance(v, str)}
    for p in step_cell.get_parameters():
        if p.name == "learning_rate":  # this run's own schedule (also: no "not loaded" warning)
            state[p.name] = ms.Parameter(ms.Tensor(p.asnumpy()), name=p.name)
    try:
        ms.load_param_into_net(step_cell, state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"resume: '{path}' does not fit this run's training state: "
                              f"{_first_line(exc)}") from None


def _check_same_start(reduce_fn, world, rank, epoch, step, save_dir):
    """Every rank must start at the same (epoch, step): a resumed run on several machines needs the
    same last.ckpt on each (sum and sum of squares agree only when all values are equal)."""
    from src.runtime import ClusterError
    x = np.array([epoch, step, epoch * epoch, step * step], np.float64)
    total = reduce_fn(x.astype(np.float32)).astype(np.float64)
    if not np.allclose(total[:2] ** 2, world * total[2:]):
        raise ClusterError(f"rank {rank} starts at epoch {epoch + 1} step {step}, another rank elsewhere: "
                           f"resuming needs the same {save_dir}/last.ckpt on every machine (a shared "
                           "folder, or copy it) before all ranks are started again")


def _is_communication_failure(exc):
    """Whether a RuntimeError of MindSpore comes from a collective operation or the cluster."""
    text = str(exc)
    return any(k in text for k in ("AllReduce", "AllGather", "Broadcast", "collective", "cluster"))


def _first_line(exc):
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not set(ln.strip()) <= set("-")]
    kernel = [ln for ln in lines if ln.startswith("Launch kernel failed")]
    return (kernel or lines or [type(exc).__name__])[0]


def _dump_weights(net, folder, rank):
    """Test hook (``CONVMLP_DUMP_WEIGHTS_DIR``): this rank's model parameters, BatchNorm statistics
    included, to ``folder/rank<R>.npz``."""
    from src.fileio import atomic_output
    with atomic_output(os.path.join(folder, f"rank{rank}.npz")) as tmp:
        np.savez(tmp, **{p.name: p.asnumpy() for p in net.get_parameters()})


def _install_stop_handler(logger):
    """SIGINT/SIGTERM: the first asks the loop to stop at the next step boundary (it then saves a
    resumable checkpoint); a second one aborts at once."""
    state = {"requested": False}

    def handler(signum, frame):
        if state["requested"]:
            raise KeyboardInterrupt
        state["requested"] = True
        # MindSpore's runtime relays Ctrl-C (SIGINT) to the process as SIGTERM once it has run
        name = "SIGTERM (kill, or Ctrl-C relayed by MindSpore)" if signum == signal.SIGTERM else \
            signal.Signals(signum).name
        logger.warning(f"{name}: stopping after the current step and saving a "
                       "resumable checkpoint (send it again to abort without saving)")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return state


def _epoch_cfg(cfg, epoch, Config):
    """The config for one epoch's data pipeline: the seed moves with the epoch, so the shuffle
    and augmentation of epoch E are the same in a resumed run as in an uninterrupted one."""
    d = cfg.to_dict()
    d["seed"] = cfg.seed + 1000 * epoch
    return Config(d)


if __name__ == "__main__":
    run_cli(main)
