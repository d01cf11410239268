"""Start-up shared by train.py and evl.py: the run's config (with the demo layer), device and
communication set-up, and the precision checks that must fail before anything is built."""
import os
import sys
import time

from errors import ConfigError

__all__ = ["DEMO_OVERRIDES", "DEMO_SIZES", "load_run_config", "setup_runtime", "check_precision",
           "prepare_demo", "build_model"]

TOPOLOGY_KEYS = ("blocks", "dims", "mlp_ratios", "channels", "n_conv_blocks")

# ``--demo``: a generated CIFAR-10-format sample at 32 px, a few epochs (a few minutes on 2 CPU
# cores). This layer sits between config.yaml and the command line, so flags still win.
DEMO_OVERRIDES = {"image_size": 32, "epoch_size": 6, "warmup_epochs": 1, "lr": 2e-3, "min_lr": 1e-4,
                  "batch_size": 64, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "aa": None,
                  "drop_path_rate": 0.0, "save_checkpoint_path": "./output/demo"}
DEMO_SIZES = {"train": 3000, "val": 1000}


def load_run_config(argv=None):
    """``load_config`` plus the demo layer when ``demo`` is on."""
    from config import load_config
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(argv)
    if cfg.demo:
        cli_keys = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
        for k, v in DEMO_OVERRIDES.items():
            if k not in cli_keys:
                setattr(cfg, k, v)
    return cfg


def check_precision(cfg, device: str, logger):
    """Reject AMP / loss-scale combinations the device cannot run, before anything is built."""
    if device == "CPU" and cfg.loss_scale_type == "dynamic":
        raise ConfigError("loss_scale_type dynamic is not supported on the CPU by MindSpore (no overflow "
                          "detection there); use loss_scale_type fixed (no overflow dropping) or none")
    if cfg.loss_scale_type != "none" and cfg.loss_scale <= 0:
        raise ConfigError(f"loss_scale must be > 0 with loss_scale_type {cfg.loss_scale_type}, got "
                          f"{cfg.loss_scale}")
    if device == "CPU" and cfg.amp_level != "O0":
        logger.warning(f"amp_level {cfg.amp_level} on the CPU: float16 is emulated there and runs 2-3x "
                       "slower than float32; use O0 on the CPU unless you are testing AMP")
    if cfg.amp_level in ("O2", "O3") and cfg.loss_scale_type == "none":
        logger.warning(f"amp_level {cfg.amp_level} without loss scaling: small float16 gradients may "
                       "underflow; consider loss_scale_type fixed")


def setup_runtime(cfg, logger):
    """Execution mode, device and (for ``is_distributed``) the communication group.
    Returns ``(device, rank, world_size)``."""
    import mindspore as ms
    from config import resolve_device
    from perf import configure_runtime

    device = resolve_device(cfg)
    configure_runtime(mode=cfg.mode, device_target=device)
    rank, world = 0, 1
    if cfg.is_distributed:
        from mindspore.communication import init, get_rank, get_group_size
        try:
            init()
        except Exception as exc:  # not started by msrun / no cluster environment
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError("is_distributed: true but the communication group cannot start "
                              f"({first}); launch with msrun --worker_num=N --local_worker_num=N "
                              "train.py --is_distributed true") from None
        rank, world = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world)
    elif device != "CPU":
        ms.set_device(device, cfg.device_id)
    ms.set_seed(cfg.seed)
    return device, rank, world


def prepare_demo(cfg, logger, rank=0):
    """Write the demo dataset when it is not there yet (only on explicit ``demo: true``)."""
    from cifar import write_synthetic
    folder = cfg.train_data_path
    if rank == 0 and not os.path.isdir(folder):
        logger.info(f"demo: writing a generated {cfg.dataset_choose}-format sample to {folder} "
                    f"({DEMO_SIZES['train']} train / {DEMO_SIZES['val']} val images)")
        write_synthetic(folder, cfg.dataset_choose, DEMO_SIZES["train"], DEMO_SIZES["val"], seed=cfg.seed)
    else:
        while not os.path.isdir(folder):  # other ranks wait for rank 0
            time.sleep(0.5)


def build_model(cfg, **kwargs):
    """``create_model`` for the config: ``arch`` with any custom-topology keys that are set."""
    from model import create_model
    topo = {k: getattr(cfg, k) for k in TOPOLOGY_KEYS if getattr(cfg, k) is not None}
    return create_model(cfg.arch, num_classes=cfg.num_classes, **topo, **kwargs)
