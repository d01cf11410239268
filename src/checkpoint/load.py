"""A model from the config or from a checkpoint: building the configured network, taking a
train.py checkpoint's model settings from its saved config, loading its weights for evaluation,
export and inference, and loading a whole training state for a resumed run."""
from model import TOPOLOGY_KEYS, check_fit, require_convmlp

from ..config import convert_value
from ..platform.device import cpu_kernels_wanted
from ..platform.errors import CheckpointError, ConfigError, first_line
from .checkpoint import Checkpoint, saved_config_source

__all__ = ["build_model", "describe_model", "inference_network", "require_checkpoint_path", "adopt_checkpoint_model",
           "load_checkpoint_model", "check_arch", "load_training_state", "MODEL_KEYS", "DEPLOY_KEYS"]

# What a train.py checkpoint's saved config says about the model it holds (see adopt_checkpoint_model).
MODEL_KEYS = ("arch",) + TOPOLOGY_KEYS + ("image_size",)


# ... and how its inputs were prepared and named (export.py, infer.py).
DEPLOY_KEYS = MODEL_KEYS + ("dataset_choose", "mean", "std", "interpolation", "crop_pct", "train_data_path")


def build_model(cfg, kernels=None, **kwargs):
    """``create_model`` for the config: ``arch`` with any custom-topology keys that are set; then,
    where `kernels` (default :func:`~src.platform.device.cpu_kernels_wanted`: config key
    ``cpu_kernels`` on the CPU), the C++ kernel cells swapped in (same parameters and names)."""
    from model import create_model
    from model.cpu_kernels import apply_cpu_kernels
    topo = {k: getattr(cfg, k) for k in TOPOLOGY_KEYS if getattr(cfg, k) is not None}
    net = create_model(cfg.arch, num_classes=cfg.num_classes, **topo, **kwargs)
    if cpu_kernels_wanted(cfg) if kernels is None else kernels:
        net = apply_cpu_kernels(net)
    return net


def describe_model(cfg) -> str:
    """How messages name the configured network: ``arch``, or where a topology key makes it another
    network than the released variant, ``custom ConvMLP`` with its whole topology (``blocks [1, 1,
    1], dims [32, 64, 128], ...``)."""
    from model import complete_topology, default_cfgs
    topo = complete_topology(cfg.arch, {k: getattr(cfg, k) for k in TOPOLOGY_KEYS})
    released = default_cfgs[cfg.arch]
    if all(_as_list(topo[k]) == _as_list(released[k]) for k in TOPOLOGY_KEYS):
        return cfg.arch
    shown = ", ".join(f"{k} {_shown(topo[k])}" for k in TOPOLOGY_KEYS)
    return f"custom ConvMLP ({shown})"


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _shown(value):
    """A topology value as written in a config file (``[2, 2, 2]``, ``64``; ratios without ``.0``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def inference_network(net, cfg, kernels=None):
    """What evaluates `net`: the fused evaluation cell over its parameters
    (``model.cpu_kernels.fuse_for_inference``) where `kernels` (default as :func:`build_model`) and
    float32 (``amp_level`` O0), else `net` itself."""
    from model.cpu_kernels import fuse_for_inference
    if (cpu_kernels_wanted(cfg) if kernels is None else kernels) and cfg.amp_level == "O0":
        return fuse_for_inference(net)
    return net


# --------------------------------------------------------------------------------------------
# A model from a checkpoint (evl.py, export.py, infer.py)
# --------------------------------------------------------------------------------------------
def require_checkpoint_path(cfg):
    """``cfg.checkpoint_path``, or a ConfigError saying how to give it."""
    if not cfg.checkpoint_path:
        raise ConfigError("checkpoint_path is not set; give --checkpoint_path FILE.ckpt (e.g. "
                          f"{cfg.save_checkpoint_path}/best.ckpt)")
    return cfg.checkpoint_path


def check_arch(meta, arch, path, what="checkpoint"):
    """CheckpointError when a checkpoint's recorded ``arch`` (its :class:`CheckpointMeta`) is not the
    run's `arch`."""
    if meta.arch is not None and meta.arch != arch:
        raise CheckpointError(f"{what}: '{path}' is a {meta.arch} checkpoint but arch is {arch}; pass "
                              f"--arch {meta.arch}")


def adopt_checkpoint_model(cfg, ckpt, logger, keys=MODEL_KEYS):
    """A train.py checkpoint (`ckpt`, a :class:`Checkpoint`) records its run's config: take `keys` (by
    default the model's arch and topology, and the image size) from it unless they were given on the
    command line (``cfg.command_line_keys``). The saved config is read like a config file (a
    mapping, no key twice) and each value taken is validated against the schema; CheckpointError
    naming the checkpoint otherwise."""
    saved = ckpt.meta.saved_config(ckpt.path)
    if saved is None:
        return
    source = saved_config_source(ckpt.path)
    taken = []
    for key in keys:
        if key in saved and key not in cfg.command_line_keys:
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


def load_checkpoint_model(path, cfg, logger, keys=MODEL_KEYS, classes_from_head=True, features_only=False,
                          out_indices=None, kernels=None):
    """The model of the checkpoint at `path` with its weights, in inference mode (where `kernels`,
    default as :func:`build_model`, the fused evaluation cell, :func:`inference_network`); returns
    ``(net, meta)``, `meta` the checkpoint's :class:`CheckpointMeta`.

    Arch, topology and image size (and any other `keys`) come from a train.py checkpoint's saved
    config unless given on the command line (``cfg.command_line_keys``); ``num_classes`` comes from
    the checkpoint's head unless given
    (or unless ``classes_from_head`` is off and the dataset has a class count: evl.py keeps the
    dataset's, so that a checkpoint for another class count is an error naming both counts). With
    ``use_ema`` the model holds the checkpoint's EMA weights (``ema.*``).
    CheckpointError when the file is missing or unreadable, has no head, or does not fit the model.
    ``features_only``: the backbone returning every feature level (``create_model(...,
    features_only=True)``) from a classifier's or a backbone's checkpoint; ``out_indices``: its
    levels (None: every level; ConfigError naming a level that does not exist).
    """
    import mindspore as ms

    ckpt = Checkpoint.read(path)
    meta = ckpt.meta
    params = ckpt.model_entries(cfg.use_ema)
    if cfg.use_ema:
        logger.info(f"use_ema: the EMA weights of {path}")
    adopt_checkpoint_model(cfg, ckpt, logger, keys)
    check_arch(meta, cfg.arch, path, "checkpoint_path")
    require_convmlp(params, path)
    if features_only:   # the backbone: a classifier's head is not part of it
        net = build_model(cfg, kernels, features_only=True, out_indices=out_indices)
        check_fit(net, params, path)
        ms.load_param_into_net(net, {k: v for k, v in params.items() if not isinstance(v, str)})
        net.set_train(False)
        return net, meta
    head = params.get("head.weight")
    if head is None or isinstance(head, str) or len(head.shape) != 2:
        raise CheckpointError(f"'{path}' has no classifier head (head.weight): it is a backbone for "
                              "fine-tuning (pth2ckpt.py without the head); use a checkpoint written by "
                              "train.py or converted with its head")
    from_head = classes_from_head or cfg.num_classes is None
    if from_head and "num_classes" not in cfg.command_line_keys and cfg.num_classes != int(head.shape[0]):
        logger.info(f"num_classes={int(head.shape[0])} from the checkpoint's head")
        cfg.num_classes = int(head.shape[0])
    net = build_model(cfg, kernels)
    check_fit(net, params, path)
    ms.load_param_into_net(net, {k: v for k, v in params.items() if not isinstance(v, str)})
    net.set_train(False)
    return inference_network(net, cfg, kernels), meta


def load_training_state(step_cell, optimizer, ckpt):
    """The weights and optimiser state of the checkpoint `ckpt` (a :class:`Checkpoint`) into
    `step_cell`, and its global step into `optimizer`. The learning-rate schedule is not taken from
    the file: it follows this run's config (e.g. a larger epoch_size extends it) at the restored
    global step."""
    import mindspore as ms
    state = ckpt.tensors()
    for p in step_cell.get_parameters():
        if p.name == "learning_rate":  # this run's own schedule (also: no "not loaded" warning)
            state[p.name] = ms.Parameter(ms.Tensor(p.asnumpy()), name=p.name)
    try:
        ms.load_param_into_net(step_cell, state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"resume: '{ckpt.path}' does not fit this run's training state: "
                              f"{first_line(exc)}") from None
    step = ckpt.meta.global_step
    if step is not None and int(optimizer.global_step.asnumpy()[0]) != step:
        optimizer.global_step.set_data(ms.Tensor([step], ms.int32))
