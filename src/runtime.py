"""Start-up shared by the entry scripts (train.py, evl.py, export.py, infer.py): device and
communication set-up, the precision checks that must fail before anything
is built, and a model loaded from a checkpoint."""
import os

from model import TOPOLOGY_KEYS

from .config import cli_keys
from .errors import ClusterError, ConfigError, first_line

__all__ = ["setup_runtime", "check_precision", "build_model", "require_checkpoint_path", "adopt_checkpoint_model",
           "load_checkpoint_model", "MODEL_KEYS", "DEPLOY_KEYS"]

# What a train.py checkpoint's saved config says about the model it holds (see adopt_checkpoint_model).
MODEL_KEYS = ("arch",) + TOPOLOGY_KEYS + ("image_size",)
# ... and how its inputs were prepared and named (export.py, infer.py).
DEPLOY_KEYS = MODEL_KEYS + ("dataset_choose", "mean", "std", "interpolation", "train_data_path")


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


def setup_runtime(cfg, logger, cpu_kernels_on=None):
    """Execution mode, device, the C++ CPU kernels (``cpu_kernels_on``, default the config key
    ``cpu_kernels``) and (for ``is_distributed``) the communication group.
    Returns ``(device, rank, world_size)``."""
    import mindspore as ms
    from .config import resolve_device
    from .perf import configure_runtime, uses_only_conv_kernel

    device = resolve_device(cfg)
    from model import cpu_kernels
    kernels = cfg.cpu_kernels if cpu_kernels_on is None else cpu_kernels_on
    cpu_kernels.set_enabled(kernels)
    configure_runtime(mode=cfg.mode, device_target=device, device_id=None if cfg.is_distributed else cfg.device_id,
                      own_convolutions=not uses_only_conv_kernel(kernels, cfg.amp_level, device))
    rank, world = 0, 1
    if cfg.is_distributed:
        from mindspore.communication import init, get_rank, get_group_size
        # Under msrun the same script also runs as the scheduler (MS_ROLE=MS_SCHED): there init()
        # serves the cluster until every worker is done and then ends the process, or raises when
        # the cluster failed (a worker died: no heartbeat for MS_NODE_TIMEOUT s, default 30).
        role = os.environ.get("MS_ROLE")
        try:
            init()
        except Exception as exc:
            first = first_line(exc)
            if role == "MS_SCHED":
                raise ClusterError(f"msrun scheduler: the data-parallel job failed ({first}); the cause is in "
                                   "the workers' logs (msrun --log_dir: worker_<rank>.log)") from None
            if role:
                raise ClusterError(f"this worker cannot join the data-parallel job ({first}); check that "
                                   "every machine runs msrun with the same --worker_num, --master_addr and "
                                   "--master_port, and the scheduler's log (msrun --log_dir)") from None
            raise ConfigError("is_distributed: true but the communication group cannot start "
                              f"({first}); launch with msrun --worker_num=N --local_worker_num=N "
                              "train.py --is_distributed true") from None
        rank, world = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world)
    ms.set_seed(cfg.seed)
    return device, rank, world


def build_model(cfg, **kwargs):
    """``create_model`` for the config: ``arch`` with any custom-topology keys that are set."""
    from model import create_model
    topo = {k: getattr(cfg, k) for k in TOPOLOGY_KEYS if getattr(cfg, k) is not None}
    return create_model(cfg.arch, num_classes=cfg.num_classes, **topo, **kwargs)


# --------------------------------------------------------------------------------------------
# A model from a checkpoint (evl.py, export.py, infer.py)
# --------------------------------------------------------------------------------------------
def require_checkpoint_path(cfg):
    """``cfg.checkpoint_path``, or a ConfigError saying how to give it."""
    if not cfg.checkpoint_path:
        raise ConfigError("checkpoint_path is not set; give --checkpoint_path FILE.ckpt (e.g. "
                          f"{cfg.save_checkpoint_path}/best.ckpt)")
    return cfg.checkpoint_path


def adopt_checkpoint_model(cfg, meta, argv, logger, keys=MODEL_KEYS, path=None):
    """A train.py checkpoint records its run's config: take `keys` (by default the model's arch and
    topology, and the image size) from it unless they were given on the command line. The saved
    config is read like a config file (a mapping, no key twice) and each value taken is validated
    against the schema; CheckpointError naming the checkpoint (`path`, by default
    ``cfg.checkpoint_path``) otherwise."""
    from .checkpoint import saved_config, saved_config_source
    from .config import convert_value
    from .errors import CheckpointError
    path = path or cfg.checkpoint_path
    saved = saved_config(meta, path)
    if saved is None:
        return
    source = saved_config_source(path)
    given = cli_keys(argv)
    taken = []
    for key in keys:
        if key in saved and key not in given:
            try:
                value = convert_value(key, saved[key], source)
            except ConfigError as exc:
                raise CheckpointError(str(exc)) from None
            if value == getattr(cfg, key):
                continue
            setattr(cfg, key, value)
            taken.append(f"{key}={value}")
    if taken:
        logger.info("from the checkpoint's config: " + ", ".join(taken))


def load_checkpoint_model(cfg, argv, logger, keys=MODEL_KEYS, classes_from_head=True):
    """The model of ``cfg.checkpoint_path`` with its weights, in inference mode; returns ``(net, meta)``.

    Arch, topology and image size (and any other `keys`) come from a train.py checkpoint's saved
    config unless given in `argv`; ``num_classes`` comes from the checkpoint's head unless given
    (or unless ``classes_from_head`` is off: evl.py keeps the dataset's, so that a checkpoint for
    another class count is an error naming both counts).
    CheckpointError when the file is missing or unreadable, has no head, or does not fit the model.
    """
    import mindspore as ms
    from .checkpoint import read_meta
    from .errors import CheckpointError
    from model import read_checkpoint, check_fit, require_convmlp

    path = require_checkpoint_path(cfg)
    params = read_checkpoint(path)
    meta = read_meta(params)
    adopt_checkpoint_model(cfg, meta, argv, logger, keys)
    if "arch" in meta and meta["arch"] != cfg.arch:
        raise CheckpointError(f"'{path}' is a {meta['arch']} checkpoint but arch is {cfg.arch}; pass "
                              f"--arch {meta['arch']}")
    require_convmlp(params, path)
    head = params.get("head.weight")
    if head is None or isinstance(head, str) or len(head.shape) != 2:
        raise CheckpointError(f"'{path}' has no classifier head (head.weight): it is a backbone for "
                              "fine-tuning (pth2ckpt.py without the head); use a checkpoint written by "
                              "train.py or converted with its head")
    given = cli_keys(argv)
    if classes_from_head and "num_classes" not in given and cfg.num_classes != int(head.shape[0]):
        logger.info(f"num_classes={int(head.shape[0])} from the checkpoint's head")
        cfg.num_classes = int(head.shape[0])
    net = build_model(cfg)
    check_fit(net, params, path)
    ms.load_param_into_net(net, {k: v for k, v in params.items() if not isinstance(v, str)})
    net.set_train(False)
    return net, meta
