"""The device a script runs on: which one (``device_target: auto`` picks Ascend, then GPU, then
CPU), the one place where MindSpore's mode, device and CPU threads are set, the C++ CPU kernels
switch, the data-parallel group under msrun, and the precision settings the device cannot run."""
import logging
import os
import platform

from .cpu import cap_onednn_isa, uses_only_conv_kernel
from .errors import ClusterError, ConfigError, first_line

__all__ = ["resolve_device", "configure_runtime", "setup_runtime", "check_precision"]

_LOG = logging.getLogger(__name__)


def _device_available(target):
    """Whether this MindSpore build can run on `target` (quiet check of the loaded plugins)."""
    if target == "CPU":
        return True
    try:
        from mindspore._c_expression import MSContext  # the check behind device_context.*.is_available
        return bool(MSContext.get_instance().is_pkg_support_device(target))
    except Exception:  # pragma: no cover - private API changed
        import mindspore as ms
        module = {"GPU": ms.device_context.gpu, "Ascend": ms.device_context.ascend}[target]
        return bool(module.is_available())


def resolve_device(cfg):
    """Return the device to use: `cfg.device_target`, or for ``auto`` the first of Ascend, GPU, CPU
    that this MindSpore build supports. Logs the choice; does not modify `cfg`.
    Raises ConfigError when an explicitly requested device is not available."""
    if cfg.device_target != "auto":
        if not _device_available(cfg.device_target):
            raise ConfigError(f"device_target {cfg.device_target} is not available in this MindSpore "
                              f"installation; expected one of the available devices or 'auto'")
        _LOG.info("device: %s (from config)", cfg.device_target)
        return cfg.device_target
    for target in ("Ascend", "GPU", "CPU"):
        if _device_available(target):
            _LOG.info("device: %s (device_target auto: first available of Ascend, GPU, CPU)", target)
            return target
    return "CPU"  # pragma: no cover


def configure_runtime(threads=None, mode="graph", device_target=None, device_id=None, own_convolutions=True):
    """Set the oneDNN ISA cap, the execution mode, the device and the CPU kernels' thread count.
    This is the one place where the device is set.

    Args:
        threads: threads of MindSpore's CPU kernels; ``None`` keeps MindSpore's default.
        mode: ``"graph"`` (``GRAPH_MODE``, what train.py uses) or ``"pynative"``.
        device_target: ``"CPU"``, ``"GPU"``, ``"Ascend"`` or ``None`` (MindSpore's default).
        device_id: the device index (GPU/Ascend); ``None`` leaves it to MindSpore (and to msrun).
        own_convolutions: whether MindSpore's own CPU convolutions will run in this process; False
            when every convolution runs the C++ kernel (:func:`uses_only_conv_kernel`), which
            leaves oneDNN uncapped.

    Returns the dict of what was set, for the run log.
    """
    applied = {}
    if platform.machine().lower() in ("x86_64", "amd64") and (device_target or "CPU") == "CPU":
        applied["oneDNN ISA"] = cap_onednn_isa(own_convolutions)
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    applied["mode"] = mode
    if device_target:
        try:
            if device_id is None or device_target == "CPU":
                ms.set_device(device_target)
            else:
                ms.set_device(device_target, device_id)
        except RuntimeError:
            # MindSpore refuses set_device once its runtime ran (a second call in one process,
            # e.g. in tests); that is fine when the device is already the one asked for.
            if ms.get_context("device_target") != device_target:
                raise
        applied["device_target"] = device_target
    if threads is not None:
        ms.device_context.cpu.op_tuning.threads_num(int(threads))
        applied["threads"] = int(threads)
    return applied


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


def cpu_kernels_wanted(cfg, device=None) -> bool:
    """Whether a network of this run gets the C++ CPU kernels (``model.cpu_kernels.apply_cpu_kernels``):
    the config key ``cpu_kernels`` on the CPU (`device`, by default MindSpore's device target)."""
    if device is None:
        import mindspore as ms
        device = ms.get_context("device_target")
    return bool(cfg.cpu_kernels) and device == "CPU"


def setup_runtime(cfg, logger, cpu_kernels_on=None):
    """Execution mode, device, oneDNN's cap (whether the C++ convolution kernels will run:
    ``cpu_kernels_on``, default :func:`cpu_kernels_wanted`) and (for ``is_distributed``) the
    communication group. Returns ``(device, rank, world_size)``."""
    import mindspore as ms

    device = resolve_device(cfg)
    kernels = cpu_kernels_wanted(cfg, device) if cpu_kernels_on is None else cpu_kernels_on
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
