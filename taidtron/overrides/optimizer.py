"""megatron-core's optimizer step, split so that a non-finite step is refused before anything changes (checked:
0.16.1, 0.19.2).

`MegatronOptimizer.step()` (MixedPrecisionOptimizer, FP32Optimizer, ChainedOptimizer alike) is `prepare_grads()`
(copy to the main grads; with an fp16 grad scaler, unscale and check for inf/nan), the global gradient norm and
clipping inside `clip_grad_norm()`, then `step_with_ready_grads()` (Adam, copy back to the model, the distributed
optimizer's parameter all-gather). Without a grad scaler (bf16, fp32: taidtron's precisions) nothing in it checks
the gradients: a NaN norm makes clipping a no-op (`clip_coeff < 1.0` is false for NaN) and the update is applied.

`step_if_finite` calls the same public methods in the same order, but computes the gradient norm first (always,
also when clipping is off: megatron then reports 0) and stops before `step_with_ready_grads()` when the loss or the
norm is not finite. Only public names are used; it lives here because it restates the body of `step()` and must
be re-checked when megatron-core changes it. 0.19 adds two things to `step()` that taidtron does not use: separate
norms and clipping for parameters tagged with a `grad_norm_group` (multi-token prediction heads), and
`OptimizerConfig.grad_norm_skip_threshold` (ChainedOptimizer; infinite by default, and a NaN norm passes it too).
"""

from __future__ import annotations

import math

import torch

CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")


def step_if_finite(optimizer, *, loss: float, clip_grad: float) -> tuple[bool, float]:
    """One optimizer step unless `loss` (global, identical on every rank) or the global gradient norm is not
    finite. Returns (applied, gradient norm before clipping). Every rank of the model takes the same decision: the
    norm is all-reduced over megatron's gradient-statistics group (the model-parallel group, whose replicas hold
    identical data-parallel-reduced gradients; the whole world with the distributed optimizer)."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    found_inf = optimizer.prepare_grads()  # True only with an fp16 grad scaler, which has then backed off
    if found_inf:
        return False, math.nan
    grad_norm = float(optimizer.get_grad_norm())
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return False, grad_norm
    if clip_grad > 0.0:
        for sub in sub_optimizers(optimizer):
            if getattr(sub, "is_stub_optimizer", False):
                continue
            params = sub.get_parameters()
            if params:
                decoupled = sub.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8
                clip_grad_by_total_norm_fp32(
                    params, max_norm=clip_grad, total_norm=grad_norm, use_decoupled_grad=decoupled
                )
    return bool(optimizer.step_with_ready_grads()), grad_norm


def set_optimizer_hyperparameters(
    optimizer, *, lr: float, min_lr: float, betas: tuple[float, float], eps: float
) -> None:
    """Give every parameter group the config's learning-rate bounds and Adam hyper-parameters after a resume.

    megatron-core (0.16.1, 0.19.2) keeps `max_lr` and `min_lr` in each param group (`_get_param_groups`: the
    `ParamGroupOverride` fields, from OptimizerConfig.lr/min_lr), and `OptimizerParamScheduler.get_lr` prefers them
    to its own `max_lr`/`min_lr`. Loading the optimizer state restores the param groups saved in the checkpoint, so
    a learning rate changed on resume (checkpoint.override) would reach the scheduler but not the groups, and the
    old schedule would silently continue. Adam's `betas` and `eps` come back from the checkpoint the same way.
    Groups with a learning rate of their own (`default_config` false: a per-group lr override, which taidtron does
    not create) keep theirs."""
    for group in optimizer.param_groups:
        if group.get("default_config", True):
            if "max_lr" in group:
                group["max_lr"] = lr
            if "min_lr" in group:
                group["min_lr"] = min_lr
        if "betas" in group:
            group["betas"] = betas
        if "eps" in group:
            group["eps"] = eps


def sub_optimizers(optimizer) -> list:
    """The torch-level optimizers under a megatron optimizer: a ChainedOptimizer's `chained_optimizers` (one per
    dtype/expert group), else the optimizer itself (0.16.1: both wrap a torch optimizer as `.optimizer`)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def optimizer_has_state(optimizer) -> bool:
    """Whether every sub-optimizer's torch optimizer holds per-parameter state (Adam's moments exist only after the
    first step, and megatron's DistributedOptimizer.state_dict() asserts on them). Walks `chained_optimizers` and the
    wrapped torch optimizer's `.optimizer.state`."""
    return all(len(getattr(getattr(sub, "optimizer", None), "state", {"": 0})) > 0 for sub in sub_optimizers(optimizer))


def optimizer_state_tensors(optimizer):
    """(kind, tensor) for this rank's optimizer state: the fp32 main parameters ("main parameters") and every tensor
    of Adam's per-parameter state by its key (exp_avg, exp_avg_sq, step). Walks `chained_optimizers` and the wrapped
    torch optimizer's `param_groups` / `state`, which megatron-core 0.16.1 exposes without an accessor."""
    for sub in sub_optimizers(optimizer):
        inner = getattr(sub, "optimizer", None)
        for group in getattr(inner, "param_groups", []):
            for param in group["params"]:
                yield "main parameters", param
                for kind, tensor in inner.state.get(param, {}).items():
                    if isinstance(tensor, torch.Tensor):
                        yield kind, tensor


def set_schedule_horizon(scheduler, steps: int) -> None:
    """Make megatron's OptimizerParamScheduler decay the learning rate (and ramp weight decay) over `steps`.
    0.16.1 has no setter: the horizon lives in the attributes `lr_decay_steps` and `wd_incr_steps`, which its
    load_state_dict restores from the checkpoint; a resume that extends or stretches the run writes them."""
    scheduler.lr_decay_steps = steps
    scheduler.wd_incr_steps = steps


def saved_schedule_horizon(scheduler_state: dict) -> int:
    """The horizon an OptimizerParamScheduler was saved with: its state dict's `lr_decay_steps` (0.16.1)."""
    return int(scheduler_state["lr_decay_steps"])
