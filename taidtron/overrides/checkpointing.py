"""Workarounds for megatron-core's dist-checkpointing and distributed-optimizer internals (checked: 0.16.1, 0.19.2).

Each function names the private attribute it touches and why; `taidtron.checkpoint` and `taidtron.trainer` call
them, and nothing else in taidtron reaches into these internals.

- `prepare_writer`: `filesystem_async._results_queue`, the async writer's results queue.
- `materialize_optimizer_state`: `DistributedOptimizer._init_optimizer_states_with_dummy_values`.
- `load_optimizer_state`: `DistributedOptimizer._set_main_param_and_optimizer_states` (scoped, restored after the
  call) and torch Adam's per-parameter `step` tensors; on megatron-core 0.19, the saved param groups' `max_lr` and
  `min_lr`, which it matches param groups by.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal

import torch

from taidtron.overrides.optimizer import sub_optimizers
from taidtron.overrides.versions import megatron_core_at_least

CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")


def prepare_writer(start_method: str | None = None) -> None:
    """Create dist_checkpointing's write-results queue now, before the trainer installs its signal handlers.

    megatron-core makes it lazily at the first save, through a *spawn* multiprocessing Manager: 5-12 s and a
    re-import of `__main__` on CPU. Three fixes: (1) the Manager ignores SIGUSR1/SIGTERM, which SLURM and torchrun
    deliver to the whole job step on preemption (a dead Manager makes the preemption save itself fail); (2) it dies
    with the trainer (a trainer killed with SIGKILL would otherwise leave it behind, ~400 MB); (3) without CUDA it is
    forked (~0.4 s; safe with no CUDA context), with CUDA it stays spawned (`start_method` overrides the choice).
    Call from the main thread (the kernel ties the Manager's parent-death signal to the thread that starts it).
    """
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        return
    context = multiprocessing.get_context(start_method or ("spawn" if torch.cuda.is_available() else "fork"))
    manager = SyncManager(ctx=context)
    # Blocked, not ignored, while the Manager starts: the child inherits the mask and ignores them before unblocking,
    # and a stop signal meant for the trainer in the meantime stays pending instead of being lost.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _JOB_SIGNALS)
    try:
        manager.start(initializer=_writer_helper_init, initargs=(os.getpid(),))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    filesystem_async._results_queue = manager.Queue()


_JOB_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def _writer_helper_init(parent_pid: int) -> None:
    """First thing in the Manager process: ignore the job-wide stop signals, then die with the trainer."""
    from taidtron.lifetime import die_with_parent

    for sig in _JOB_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _JOB_SIGNALS)
    die_with_parent(parent_pid)


def materialize_optimizer_state(optimizer) -> None:
    """A fresh distributed optimizer has no Adam state (not even `step`) until its first step, and without
    TE/apex megatron's DistributedOptimizer.state_dict() requires it. megatron's own remedy is one step on zero
    grads with placeholder state, which loading then overwrites in place (model weights are reloaded after)."""
    for sub in sub_optimizers(optimizer):
        if hasattr(sub, "_init_optimizer_states_with_dummy_values") and len(sub.optimizer.state) == 0:
            sub._init_optimizer_states_with_dummy_values()


@contextlib.contextmanager
def _tolerate_missing_adam_step(optimizer):
    """megatron-core 0.16.1 without TE/apex (torch Adam): `load_parameter_state_from_fully_reshardable` leaves
    Adam's `step` out of the tensors it copies but copies every key of the destination state, which has `step`,
    so it raises KeyError('step'). `step` is restored from param_groups just before; hand it back unchanged.
    Scoped to this one call on these optimizer instances."""
    patched = []
    for sub in sub_optimizers(optimizer):
        original = getattr(sub, "_set_main_param_and_optimizer_states", None)
        if original is None:
            continue

        def with_step(model_param, tensors, _sub=sub, _original=original):
            group_index, group_order = _sub.model_param_group_index_map[model_param]
            main_param = _sub.optimizer.param_groups[group_index]["params"][group_order]
            state = _sub.optimizer.state[main_param]
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"]}
            return _original(model_param, tensors)

        sub._set_main_param_and_optimizer_states = with_step
        patched.append(sub)
    try:
        yield
    finally:
        for sub in patched:
            del sub._set_main_param_and_optimizer_states


def _unshare_adam_steps(optimizer) -> None:
    """megatron-core 0.16.1 without TE/apex restores torch Adam's per-parameter `step` as ONE tensor shared by every
    parameter (`DistributedOptimizer.load_state_dict`: `s["step"] = step` in a loop), and torch's load_state_dict
    keeps `step` tensors as they are. Adam then increments that tensor in place once per parameter, so after the
    first resumed step the bias correction uses step + (number of parameters) and the run diverges from the
    uninterrupted one. Give every parameter its own copy."""
    for sub in sub_optimizers(optimizer):
        inner = getattr(sub, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def _saved_param_groups(state) -> list[list[dict]]:
    """Every `param_groups` list in a loaded optimizer state dict, whatever the optimizer's nesting
    (`{"optimizer": {"param_groups": ...}}` for the distributed and mixed-precision optimizers, `{"param_groups":
    ...}` for FP32Optimizer, a list or dict of those for a ChainedOptimizer of several)."""
    if isinstance(state, dict):
        if isinstance(state.get("param_groups"), list):
            return [state["param_groups"]]
        return [groups for value in state.values() for groups in _saved_param_groups(value)]
    if isinstance(state, (list, tuple)):
        return [groups for value in state for groups in _saved_param_groups(value)]
    return []


def _match_saved_lr_bounds(optimizer, state_dict: dict) -> None:
    """megatron-core 0.19 (not 0.16.1) matches each saved param group to the current one by a key that includes
    `max_lr` and `min_lr` (`param_group_identifier_keys`, from `ParamGroupOverride`). A resume that changes
    optim.lr or optim.min_lr (checkpoint.override) then finds no saved group for the current ones and raises
    KeyError. The saved groups of the default schedule take the current groups' bounds, which come from this run's
    config (the optimizer's state is unaffected; `set_optimizer_hyperparameters` sets the same values after)."""
    current = {(g.get("max_lr"), g.get("min_lr")) for g in optimizer.param_groups if g.get("default_config", True)}
    if len(current) != 1:
        return  # no default group, or groups with bounds of their own: nothing taidtron changes on resume
    ((max_lr, min_lr),) = current
    for groups in _saved_param_groups(state_dict):
        for group in groups:
            if group.get("default_config", True) and "max_lr" in group:
                group["max_lr"], group["min_lr"] = max_lr, min_lr


def load_optimizer_state(optimizer, state_dict: dict) -> None:
    """`optimizer.load_state_dict(state_dict)` with the fixes above around it. Call under no_grad:
    DistributedOptimizer.load_state_dict copies into fp32 parameters in place."""
    if megatron_core_at_least("0.19"):
        _match_saved_lr_bounds(optimizer, state_dict)
    with _tolerate_missing_adam_step(optimizer):
        optimizer.load_state_dict(state_dict)
    _unshare_adam_steps(optimizer)
