"""Start-up shared by the entry scripts (train.py, evl.py, export.py, infer.py): the run's config
(with the demo layer), options of one script only, device and communication set-up, the precision
checks that must fail before anything is built, and a model loaded from a checkpoint."""
import os
import sys
import time

from .errors import ConfigError, UserError

__all__ = ["DEMO_OVERRIDES", "DEMO_SIZES", "load_run_config", "setup_runtime", "ClusterError", "check_precision",
           "prepare_demo", "build_model", "pop_option", "pop_positionals", "adopt_checkpoint_model",
           "load_checkpoint_model", "MODEL_KEYS", "DEPLOY_KEYS", "cli_keys"]

TOPOLOGY_KEYS = ("blocks", "dims", "mlp_ratios", "channels", "n_conv_blocks")
# What a train.py checkpoint's saved config says about the model it holds (see adopt_checkpoint_model).
MODEL_KEYS = ("arch",) + TOPOLOGY_KEYS + ("image_size",)
# ... and how its inputs were prepared and named (export.py, infer.py).
DEPLOY_KEYS = MODEL_KEYS + ("dataset_choose", "mean", "std", "interpolation", "train_data_path")

# ``--demo``: a generated CIFAR-10-format sample at 32 px, a few epochs (a few minutes on 2 CPU
# cores). This layer sits between config.yaml and the command line, so flags still win.
DEMO_OVERRIDES = {"image_size": 32, "epoch_size": 6, "warmup_epochs": 1, "cooldown_epochs": 0,
                  "lr": 5e-4, "min_lr": 1e-5,
                  "batch_size": 64, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "aa": None,
                  "drop_path_rate": 0.0, "save_checkpoint_path": "./output/demo"}
DEMO_SIZES = {"train": 3000, "val": 1000}


def cli_keys(argv):
    """The config keys named on the command line (``--key value``, ``--key=value``, ``--key-name``)."""
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def load_run_config(argv=None):
    """``load_config`` plus the demo layer when ``demo`` is on."""
    from .config import load_config
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(argv)
    if cfg.demo:
        given = cli_keys(argv)
        for k, v in DEMO_OVERRIDES.items():
            if k not in given:
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


class ClusterError(UserError):
    """A data-parallel job lost a rank (it died or cannot be reached), or its cluster cannot form."""


def setup_runtime(cfg, logger):
    """Execution mode, device and (for ``is_distributed``) the communication group.
    Returns ``(device, rank, world_size)``."""
    import mindspore as ms
    from .config import resolve_device
    from .perf import configure_runtime

    device = resolve_device(cfg)
    configure_runtime(mode=cfg.mode, device_target=device)
    from model import cpu_kernels
    cpu_kernels.set_enabled(cfg.cpu_kernels)
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
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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
    elif device != "CPU":
        ms.set_device(device, cfg.device_id)
    ms.set_seed(cfg.seed)
    return device, rank, world


def prepare_demo(cfg, logger, rank=0):
    """Write the demo dataset when it is not there yet (only on explicit ``demo: true``)."""
    from .cifar import write_synthetic
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


# --------------------------------------------------------------------------------------------
# Options of one script only (not config keys), taken out of argv before load_config
# --------------------------------------------------------------------------------------------
def pop_option(argv, name, what="a file name"):
    """Remove ``--name VALUE`` or ``--name=VALUE`` (an option of one script, not a config key) from
    `argv` and return VALUE, or None when absent. ConfigError when the value is missing or the
    option is given twice."""
    value = _pop_option_once(argv, name, what)
    if value is not None:
        again = _pop_option_once(argv, name, what)
        if again is not None:
            raise ConfigError(f"command line: {name} is given twice ({value!r} and {again!r}); give it once")
    return value


def _pop_option_once(argv, name, what):
    for i, tok in enumerate(argv):
        if tok == name:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"command line: {name} needs {what}")
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if tok.startswith(name + "="):
            value = tok[len(name) + 1:]
            if not value:
                raise ConfigError(f"command line: {name} needs {what}")
            del argv[i]
            return value
    return None


def pop_positionals(argv):
    """Remove and return the arguments that are not ``--key [value]`` pairs (e.g. image paths).

    A ``--key`` without ``=`` takes the next argument as its value, except a boolean key, which
    takes it only when it is a boolean word (``--demo true``; ``--demo cat.png`` = demo on +
    ``cat.png``). Arguments after a lone ``--`` are all positional."""
    from .config import SCHEMA_BY_NAME
    bool_words = ("true", "false", "yes", "no", "on", "off", "1", "0")
    flags, positional = [], []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            positional += argv[i + 1:]
            break
        if not tok.startswith("--"):
            positional.append(tok)
        else:
            flags.append(tok)
            name = tok[2:].replace("-", "_")
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if "=" not in name and nxt is not None and not nxt.startswith("--"):
                key = SCHEMA_BY_NAME.get(name)
                if key is None or key.type != "bool" or nxt.strip().lower() in bool_words:
                    flags.append(nxt)
                    i += 1
        i += 1
    argv[:] = flags
    return positional


# --------------------------------------------------------------------------------------------
# A model from a checkpoint (evl.py, export.py, infer.py)
# --------------------------------------------------------------------------------------------
def adopt_checkpoint_model(cfg, meta, argv, logger, keys=MODEL_KEYS, path=None):
    """A train.py checkpoint records its run's config: take `keys` (by default the model's arch and
    topology, and the image size) from it unless they were given on the command line. The saved
    config is read like a config file (a mapping, no key twice) and each value taken is validated
    against the schema; CheckpointError naming the checkpoint (`path`, by default
    ``cfg.checkpoint_path``) otherwise."""
    if "config" not in meta:
        return
    from .config import convert_value
    from .errors import CheckpointError
    from .strict_yaml import load_mapping
    source = f"checkpoint '{path or cfg.checkpoint_path}': its saved config (meta 'config')"
    saved = load_mapping(meta["config"], source, error=CheckpointError)
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

    if not cfg.checkpoint_path:
        raise ConfigError("checkpoint_path is not set; give --checkpoint_path FILE.ckpt (e.g. "
                          f"{cfg.save_checkpoint_path}/best.ckpt)")
    path = cfg.checkpoint_path
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
