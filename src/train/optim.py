"""AdamW (decoupled weight decay, bias-corrected, as ``torch.optim.AdamW`` in the official recipe)
and the per-step learning-rate schedule of the official fine-tune recipe.

MindSpore's ``nn.AdamWeightDecay`` has no bias correction (BERT style); fine-tuning from ImageNet
weights with a short warmup is sensitive to that, so this module implements the PyTorch update:

    p <- p * (1 - lr * wd)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)

With the C++ kernel (``cpu_kernel``, on the CPU) the whole update is one kernel over all
parameters (``src/train/csrc/adamw.cc``, built and cached by :func:`model.cpu_kernels.build_library`;
torch's element-wise formula); otherwise MindSpore's fused
``AdamWeightDecay`` runs once per parameter tensor with the bias correction folded into its
learning rate, epsilon and weight decay.
"""
import math
import os
from typing import List

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor

from model.cpu_kernels import build_library

__all__ = ["AdamW", "param_groups_weight_decay", "cosine_schedule", "describe_schedule", "log_schedule"]

_adamw = ops.MultitypeFuncGraph("adamw")


@_adamw.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                 "Tensor", "Tensor")
def _adamw_update(update, beta1, beta2, eps, lr, wd, param, m, v, grad):
    # one parameter's step: `update` is MindSpore's AdamWeightDecay, applied to it and its moments
    update(param, m, v, lr, beta1, beta2, eps, wd, ops.cast(grad, param.dtype))
    return True


def param_groups_weight_decay(params, weight_decay: float) -> List[dict]:
    """Weight decay on matrices and conv kernels only; none on norms, biases or other 1-D
    parameters (the official recipe, via timm's ``param_groups_weight_decay``)."""
    decay, no_decay = [], []
    for p in params:
        (no_decay if len(p.shape) <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"order_params": list(params)}]


_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_kernel = []   # the AdamWUpdate op of this process, once created


def adamw_kernel():
    """The Custom op ``(hyper, wd, *params, *first_moments, *second_moments, *grads) -> (1,)`` that
    applies torch.optim.AdamW's update to every parameter and moment in place
    (``src/train/csrc/adamw.cc``; ``hyper`` float64 ``[lr, beta1, beta2, eps, step]``, ``wd``
    float64 per parameter), or None where it cannot be built (one warning)."""
    if not _kernel:
        lib = build_library("convmlp_adamw", _CSRC, {"adamw.cc": ["-pthread"]}, pool=True)
        op = None
        if lib is not None:
            op = ops.Custom(f"{lib}:AdamWUpdate", out_shape=lambda *shapes: [1],
                            out_dtype=lambda *types: ms.float32, func_type="aot")
            # it writes its parameter inputs in place: a memory side effect, so that the graph reads
            # the parameters again after it (e.g. the EMA update in the same step), not before
            op.add_prim_attr("side_effect_mem", True)
        _kernel.append(op)
    return _kernel[0]


class AdamW(nn.Optimizer):
    """Bias-corrected AdamW with per-group weight decay and a per-step learning-rate array.

    ``loss_scale`` divides the incoming gradients (use it with a fixed loss scale so that the
    update sees true gradients). The moments are saved in checkpoints as ``adam_m.*``/``adam_v.*``
    and the step as ``global_step``, which also indexes the learning-rate array on resume.
    ``cpu_kernel``: the whole update as one C++ kernel (:func:`adamw_kernel`) for float32 parameters;
    default on where the device target is the CPU (train.py passes the config key ``cpu_kernels``).
    """

    def __init__(self, params, learning_rate, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 loss_scale=1.0, cpu_kernel=None):
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.beta1 = Tensor(beta1, ms.float32)
        self.beta2 = Tensor(beta2, ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.moments1 = self._parameters.clone(prefix="adam_m", init="zeros")
        self.moments2 = self._parameters.clone(prefix="adam_v", init="zeros")
        weight_decays = self.weight_decay if self.is_group else (self.weight_decay,) * len(self._parameters)
        # nn.Optimizer stores weight_decay multiplied by loss_scale (its optimisers decay the still
        # scaled gradients); this update is decoupled, so take the plain value back.
        weight_decays = [float(w.asnumpy() if hasattr(w, "asnumpy") else w) / float(loss_scale)
                         for w in weight_decays]
        self.wd_values = tuple(Tensor(w, ms.float32) for w in weight_decays)
        self.per_tensor_update = ops.operations.AdamWeightDecay()   # one parameter at a time (hyper_map)
        # one kernel for all parameters: float32 parameters (their gradients are float32 too) on the CPU
        if cpu_kernel is None:
            cpu_kernel = ms.get_context("device_target") == "CPU"
        self.update_all = (adamw_kernel() if cpu_kernel and all(p.dtype == ms.float32 for p in self._parameters)
                           else None)
        self.all_at_once = self.update_all is not None
        if self.all_at_once:
            self.betas_eps = Tensor(np.array([beta1, beta2, eps], np.float64))
            self.wd_all = Tensor(np.array(weight_decays, np.float64))

    def construct(self, gradients):
        gradients = self.flatten_gradients(gradients)
        gradients = self.scale_grad(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        if self.all_at_once:
            hyper = ops.concat((ops.cast(lr, ms.float64).reshape((1,)), self.betas_eps,
                                ops.cast(self.global_step, ms.float64).reshape((1,))))
            return self.update_all(hyper, self.wd_all, *self._parameters, *self.moments1, *self.moments2,
                                   *gradients)
        t = ops.cast(self.global_step, ms.float32).reshape(())
        bc1 = 1.0 - ops.pow(self.beta1, t)
        sqrt_bc2 = ops.sqrt(1.0 - ops.pow(self.beta2, t))
        # MindSpore's fused AdamWeightDecay kernel (no bias correction) computes exactly the
        # PyTorch update with lr' = lr*sqrt(bc2)/bc1, eps' = eps*sqrt(bc2), wd' = wd*bc1/sqrt(bc2):
        # lr'*wd' = lr*wd and lr'*m/(sqrt(v)+eps') = lr/bc1 * m/(sqrt(v/bc2)+eps).
        lr_eff = lr * sqrt_bc2 / bc1
        eps_eff = self.eps * sqrt_bc2
        wd_scale = bc1 / sqrt_bc2
        weight_decays = tuple(w * wd_scale for w in self.wd_values)
        return self.hyper_map(ops.partial(_adamw, self.per_tensor_update, self.beta1, self.beta2, eps_eff, lr_eff),
                              weight_decays, self._parameters, self.moments1, self.moments2, gradients)


def cosine_schedule(base_lr: float, min_lr: float, warmup_lr: float, warmup_epochs: float,
                    epochs: int, steps_per_epoch: int, cooldown_epochs: int = 0) -> np.ndarray:
    """Per-step learning rates: linear warmup from ``warmup_lr`` to ``base_lr`` over
    ``warmup_epochs``, cosine decay to ``min_lr`` at the end of ``epochs - cooldown_epochs``, then
    ``min_lr`` for the cool-down epochs (timm's cosine scheduler with ``cooldown_epochs``). A run
    too short for warm-up + cool-down (``epochs <= warmup + cooldown``) has no cool-down.

    One value per optimiser step (the array is indexed by the optimiser's ``global_step``), so a
    resumed run continues at exactly the right value. One extra value pads the end.
    """
    if epochs - cooldown_epochs <= warmup_epochs:  # a short run: no room for a cool-down
        cooldown_epochs = 0
    total = max(1, epochs * steps_per_epoch)
    decay_end = max(1, (epochs - cooldown_epochs) * steps_per_epoch)
    warm = min(int(round(warmup_epochs * steps_per_epoch)), decay_end)
    lrs = np.empty(total + 1, dtype=np.float32)
    for s in range(total + 1):
        if s < warm:
            lrs[s] = warmup_lr + (base_lr - warmup_lr) * s / warm
        else:
            frac = min(1.0, (s - warm) / max(1, decay_end - warm))
            lrs[s] = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * frac))
    return lrs


def _lr_text(x: float) -> str:
    """``3e-04``, ``2.5e-04``, ``0``: a learning rate as the plan states it."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def _epochs(n: float, what: str) -> str:
    """``1 warm-up epoch``, ``40 cosine epochs``."""
    return f"{n:g} {what} epoch{'' if n == 1 else 's'}"


def describe_schedule(epoch_size: int, warmup_epochs: float, cooldown_epochs: int, lr: float, min_lr: float,
                      warmup_lr: float):
    """The plan of :func:`cosine_schedule` in words, and a warning or None.

    ``epoch_size`` counts every epoch: warm-up, cosine decay and cool-down. Returns ``(text,
    warning)``; the warning says when the cool-down takes more than a third of the run, when
    warm-up + cool-down leave no room for the cool-down (it is dropped and the cosine runs to the
    end), or when the warm-up fills the whole run (the ramp is compressed to the run, no decay).

        >>> describe_schedule(60, 10, 10, 3e-4, 1e-5, 1e-6)[0]
        'lr plan (60 epochs): 10 warm-up epochs from 1e-06 to 3e-04, 40 cosine epochs to 1e-05, 10 cool-down epochs at 1e-05'
    """
    lr_s, min_s, warm_s = _lr_text(lr), _lr_text(min_lr), _lr_text(warmup_lr)
    head = f"lr plan ({epoch_size} epoch{'' if epoch_size == 1 else 's'}):"
    if warmup_epochs >= epoch_size:
        text = f"{head} warm-up from {warm_s} to {lr_s} over the whole run, no cosine decay, no cool-down"
        warning = (f"warmup_epochs {warmup_epochs:g} >= epoch_size {epoch_size}: the warm-up is squeezed into "
                   f"the run and the learning rate never decays to {min_s}; lower --warmup_epochs or raise "
                   "--epoch_size")
        return text, warning
    dropped = cooldown_epochs > 0 and epoch_size - cooldown_epochs <= warmup_epochs
    cooldown = 0 if dropped else cooldown_epochs
    cosine = epoch_size - warmup_epochs - cooldown
    parts = [f"{_epochs(warmup_epochs, 'warm-up')} from {warm_s} to {lr_s}" if warmup_epochs > 0 else "no warm-up",
             f"{_epochs(cosine, 'cosine')} {'to' if warmup_epochs > 0 else f'from {lr_s} to'} {min_s}",
             f"{_epochs(cooldown, 'cool-down')} at {min_s}" if cooldown > 0 else "no cool-down"]
    text = f"{head} " + ", ".join(parts)
    warning = None
    if dropped:
        warning = (f"warmup_epochs {warmup_epochs:g} + cooldown_epochs {cooldown_epochs} >= epoch_size "
                   f"{epoch_size}: no room for the cool-down, so it is dropped and the cosine decay runs to the "
                   "last epoch; set --cooldown_epochs 0 to say so, or raise --epoch_size to keep it")
    elif 3 * cooldown > epoch_size:
        warning = (f"the cool-down takes {cooldown} of the {epoch_size} epochs (more than a third of the run) at "
                   f"the final lr {min_s}, because epoch_size counts the cool-down; shorten it with "
                   "--cooldown_epochs or raise --epoch_size")
    return text, warning


def log_schedule(cfg, logger, rank=0):
    """Log :func:`describe_schedule` for the config (the warning as a warning); rank 0 only, as the
    plan is the same on every rank."""
    if rank != 0:
        return
    text, warning = describe_schedule(cfg.epoch_size, cfg.warmup_epochs, cfg.cooldown_epochs, cfg.lr, cfg.min_lr,
                                      cfg.warmup_lr)
    logger.info(text)
    if warning:
        logger.warning(warning)
