"""The parts of a training run that train.py strings together: the run's position and best result
(:class:`RunState`), the stop request of Ctrl-C / SIGTERM, loading a resumed training state, the
checks that keep the ranks of a data-parallel run in step, and what a checkpoint records."""
import os
import signal
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np

from .errors import CheckpointError, ClusterError, first_line
from .fileio import atomic_output

__all__ = ["RunState", "StopRequest", "load_training_state", "check_same_start", "is_communication_failure",
           "dump_weights"]


@dataclass
class RunState:
    """Where a run is: ``epoch`` finished epochs and ``step`` steps done in the next one; the best
    validation top-1 so far; ``saved``, the position that is on disk (None before the first save)."""
    epoch: int = 0
    step: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    saved: Optional[Tuple[int, int]] = None
    resumed_from: Optional[str] = field(default=None)

    def checkpoint_meta(self, cfg, global_step: int, epoch: int, step_in_epoch: int = 0) -> dict:
        """What a checkpoint written at (``epoch``, ``step_in_epoch``) records besides the weights
        and the optimiser state: enough to resume, and the run's config to rebuild the model."""
        return {"epoch": epoch, "global_step": global_step, "step_in_epoch": step_in_epoch,
                "best_acc": self.best_acc, "best_epoch": self.best_epoch, "arch": cfg.arch,
                "num_classes": cfg.num_classes, "image_size": cfg.image_size, "dataset": cfg.dataset_choose,
                "config": cfg.to_yaml()}

    def where(self) -> str:
        return f"epoch {self.epoch + 1} step {self.step}" if self.step else f"the end of epoch {self.epoch}"


class StopRequest:
    """SIGINT/SIGTERM: the first asks the loop to stop at the next step boundary (it then saves a
    resumable checkpoint); a second one aborts at once. With a ``reduce_fn`` (data parallel) every
    rank asks the same question after every step, so all stop at the same step (a SIGTERM from a
    cluster scheduler reaches the ranks at different moments)."""

    def __init__(self, logger, reduce_fn: Optional[Callable] = None):
        self.requested = False
        self._logger = logger
        self._reduce_fn = reduce_fn
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # MindSpore's runtime relays Ctrl-C (SIGINT) to the process as SIGTERM once it has run
        name = "SIGTERM (kill, or Ctrl-C relayed by MindSpore)" if signum == signal.SIGTERM else \
            signal.Signals(signum).name
        self._logger.warning(f"{name}: stopping after the current step and saving a "
                             "resumable checkpoint (send it again to abort without saving)")

    def __call__(self) -> bool:
        if self._reduce_fn is None:
            return self.requested
        return float(self._reduce_fn(np.array([float(self.requested)], np.float32))[0]) > 0


def load_training_state(step_cell, params, path):
    """The weights and optimiser state of a resumed run into `step_cell`. The learning-rate schedule
    is not taken from the file: it follows this run's config (e.g. a larger epoch_size extends it)
    at the restored global step."""
    import mindspore as ms
    state = {k: v for k, v in params.items() if not isinstance(v, str)}
    for p in step_cell.get_parameters():
        if p.name == "learning_rate":  # this run's own schedule (also: no "not loaded" warning)
            state[p.name] = ms.Parameter(ms.Tensor(p.asnumpy()), name=p.name)
    try:
        ms.load_param_into_net(step_cell, state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"resume: '{path}' does not fit this run's training state: "
                              f"{first_line(exc)}") from None


def check_same_start(reduce_fn, world, rank, epoch, step, save_dir):
    """Every rank must start at the same (epoch, step): a resumed run on several machines needs the
    same last.ckpt on each (sum and sum of squares agree only when all values are equal)."""
    x = np.array([epoch, step, epoch * epoch, step * step], np.float64)
    total = reduce_fn(x.astype(np.float32)).astype(np.float64)
    if not np.allclose(total[:2] ** 2, world * total[2:]):
        raise ClusterError(f"rank {rank} starts at epoch {epoch + 1} step {step}, another rank elsewhere: "
                           f"resuming needs the same {save_dir}/last.ckpt on every machine (a shared "
                           "folder, or copy it) before all ranks are started again")


def is_communication_failure(exc):
    """Whether a RuntimeError of MindSpore comes from a collective operation or the cluster."""
    text = str(exc)
    return any(k in text for k in ("AllReduce", "AllGather", "Broadcast", "collective", "cluster"))


def dump_weights(net, folder, rank):
    """Test hook (``CONVMLP_DUMP_WEIGHTS_DIR``): this rank's model parameters, BatchNorm statistics
    included, to ``folder/rank<R>.npz``."""
    os.makedirs(folder, exist_ok=True)
    with atomic_output(os.path.join(folder, f"rank{rank}.npz")) as tmp:
        np.savez(tmp, **{p.name: p.asnumpy() for p in net.get_parameters()})
