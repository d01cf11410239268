"""Where a training run is (:class:`RunState`: its position, best result and what a checkpoint of
it records) and the stop request of Ctrl-C / SIGTERM (:class:`StopRequest`)."""
import signal
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..checkpoint.checkpoint import CheckpointMeta

__all__ = ["RunState", "StopRequest"]


@dataclass
class RunState:
    """Where a run is: ``epoch`` finished epochs and ``step`` steps done in the next one (whose
    losses are ``epoch_losses[:step]``); the best validation top-1 so far; ``saved``, the position
    that is on disk (None before the first save)."""
    epoch: int = 0
    step: int = 0
    epoch_losses: List[float] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    saved: Optional[Tuple[int, int]] = None
    resumed_from: Optional[str] = field(default=None)
    class_names: Optional[List[str]] = None   # the training data's, recorded in every checkpoint

    @classmethod
    def resumed(cls, ckpt, class_names=None) -> "RunState":
        """The position a checkpoint (:class:`~src.checkpoint.checkpoint.Checkpoint`) recorded, as
        saved; `class_names`, the training data's now."""
        meta = ckpt.meta
        state = cls(epoch=meta.epoch or 0, step=meta.step_in_epoch, epoch_losses=list(meta.epoch_losses),
                    best_acc=-1.0 if meta.best_acc is None else meta.best_acc, best_epoch=meta.best_epoch or 0,
                    resumed_from=ckpt.path, class_names=class_names)
        state.saved = (state.epoch, state.step)
        return state

    def advance(self, step: int, loss: float):
        """Step ``step`` (1-based) of the current epoch is done, with this loss."""
        self.step = step
        self.epoch_losses[step - 1:] = [loss]

    def checkpoint_meta(self, cfg, global_step: int, epoch: int, step_in_epoch: int = 0) -> CheckpointMeta:
        """The metadata of a checkpoint written at (``epoch``, ``step_in_epoch``)."""
        return CheckpointMeta.of_run(cfg, epoch, global_step, self.best_acc, self.best_epoch, step_in_epoch,
                                     self.epoch_losses[:step_in_epoch], self.class_names)

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
