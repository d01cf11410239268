"""The training and evaluation loops (train.py; evl.py evaluates with the same loop)."""
import math
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn

from ..data.records import LEFT_OUT
from ..platform.console import Progress
from ..platform.errors import UserError

__all__ = ["evaluate", "train_one_epoch", "TrainingDiverged"]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def _log_softmax(z: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):   # non-finite logits are reported by the caller
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def evaluate(net: nn.Cell, dataset, num_classes: int, reduce_fn: Optional[Callable] = None,
             progress: Optional[Progress] = None) -> Dict:
    """Top-1, top-5, mean cross-entropy and per-class accuracy of ``net`` on ``dataset``
    (columns ``image``, int ``label``), over the ``n`` records evaluated: a record labelled
    :data:`~src.data.records.LEFT_OUT` (an image ``skip_bad_images`` replaced) is counted in
    ``left_out`` only. ``reduce_fn`` sums the counts over data-parallel ranks, so every rank reports
    the accuracy of the whole validation set."""
    net.set_train(False)
    k = min(5, num_classes)
    correct1 = correct5 = 0
    loss_sum = 0.0
    n = left_out = 0
    per_class = np.zeros((2, num_classes), dtype=np.float64)  # correct, count
    full = None
    for images, labels in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        # Pad a short last batch to the full batch size: one compiled graph for every batch.
        b = images.shape[0]
        full = full or b
        if b < full:
            images = np.concatenate([images, np.zeros((full - b,) + images.shape[1:], images.dtype)])
        logits = net(ms.Tensor(images)).asnumpy()[:b].astype(np.float64)
        y = labels.astype(np.int64)
        kept = y != LEFT_OUT
        left_out += int(b - kept.sum())
        logits, y = logits[kept], y[kept]
        log_probs = _log_softmax(logits)
        loss_sum += float(-log_probs[np.arange(len(y)), y].sum())
        topk = np.argsort(-logits, axis=1)[:, :k]
        hit1 = topk[:, 0] == y
        correct1 += int(hit1.sum())
        correct5 += int((topk == y[:, None]).any(axis=1).sum())
        np.add.at(per_class[0], y, hit1.astype(np.float64))
        np.add.at(per_class[1], y, 1.0)
        n += len(y)
        if progress is not None:
            progress.update(1)
    totals = np.concatenate([[correct1, correct5, loss_sum, n, left_out], per_class.ravel()]).astype(np.float32)
    if reduce_fn is not None:
        totals = reduce_fn(totals)
    correct1, correct5, loss_sum, n, left_out = (float(v) for v in totals[:5])
    per_class = totals[5:].reshape(2, num_classes)
    n = max(n, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_acc = np.where(per_class[1] > 0, per_class[0] / np.maximum(per_class[1], 1), np.nan)
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "n": int(round(n)),
            "left_out": int(round(left_out)), "per_class_acc": per_class_acc.tolist(),
            "per_class_count": per_class[1].astype(int).tolist()}


def train_one_epoch(step_cell: nn.Cell, dataset, epoch: int, steps: int, skip: int = 0,
                    progress: Optional[Progress] = None, on_step: Optional[Callable] = None,
                    should_stop: Optional[Callable] = None, step_inputs: Optional[Callable] = None,
                    skipped_losses: Sequence[float] = ()) -> Dict:
    """Run ``steps`` optimiser steps of one epoch (after skipping ``skip`` batches, when resuming
    mid-epoch: they still pass through the pipeline, so that its random streams are where they were
    in the uninterrupted run). ``step_inputs(i)`` gives the step cell's inputs after the batch of
    step ``i`` (0-based: the drop-path factors, :class:`src.train.step.DropPathDraws`). Raises
    :class:`TrainingDiverged` at the first non-finite loss, before anything is saved.
    ``on_step(i, loss)`` is called after step ``i`` (1-based); when ``should_stop()`` turns true
    (Ctrl-C) the epoch ends early at a step boundary with ``interrupted`` set in the result. ``loss``
    is the mean over ``skipped_losses`` (the skipped steps', from the checkpoint) and this call's
    steps; ``images_per_s`` leaves out the first step (graph compilation); ``first_step_s`` is
    that step's time."""
    step_cell.set_train(True)
    skipped_losses = list(skipped_losses[:skip])
    losses = []
    images_seen = 0
    t0 = time.time()
    first_step_s = None
    interrupted = False
    for i, (images, target) in enumerate(dataset.create_tuple_iterator(num_epochs=1)):
        if i >= steps:
            break
        if i < skip:
            continue
        t_step = time.time()
        out = step_cell(images, target, *(step_inputs(i) if step_inputs is not None else ()))
        loss = float((out[0] if isinstance(out, tuple) else out).asnumpy())
        if first_step_s is None:
            first_step_s = time.time() - t_step  # includes the graph compilation in a new process
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} at epoch {epoch} step {i + 1}; stopping without "
                                   "saving this state (lower lr, or check the data / AMP settings)")
        losses.append(loss)
        images_seen += images.shape[0]
        if on_step is not None:
            on_step(i + 1, loss)
        if progress is not None:
            progress.update(1, loss=loss)
        if should_stop is not None and should_stop() and i + 1 < steps:
            interrupted = True
            break
    dt = time.time() - t0
    # Throughput without the first step, which pays for the graph compilation.
    n = len(losses)
    per_image = images_seen / max(n, 1)
    images_per_s = ((images_seen - per_image) / max(dt - first_step_s, 1e-9) if n > 1
                    else images_seen / max(dt, 1e-9))
    return {"loss": float(np.mean(skipped_losses + losses)) if losses else float("nan"), "images": images_seen,
            "time": dt, "steps": n, "interrupted": interrupted, "first_step_s": first_step_s or 0.0,
            "images_per_s": images_per_s}
