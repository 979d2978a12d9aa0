"""Every workaround for megatron-core internals, in one place, each checked against the versions listed here.

taidtron uses megatron-core through its public API everywhere else. Where that API is missing something (CPU runs)
or has a bug on the path taidtron takes (no Transformer Engine / apex), the fix lives in this package, names the
private attribute it touches, the version it was checked against and why:

    cpu.py            torch.cuda redirections so megatron-core runs on CPU with gloo (only without a GPU)
    checkpointing.py  the dist-checkpoint writer's results queue; the distributed optimizer's dummy Adam state,
                      its `step` KeyError and its shared `step` tensor on load
    datasets.py       the compiled `helpers_cpp` module GPTDataset needs, built and injected when missing
    norms.py          a torch RMSNorm tagged `sequence_parallel` for `finalize_model_grads` (megatron's own torch norm
                      wrapper refuses sequence parallelism)
    optimizer.py      the optimizer step restated from its public parts (prepare_grads, get_grad_norm, clipping,
                      step_with_ready_grads), so that a step with a non-finite loss or gradient norm is refused;
                      the param groups' own `max_lr`/`min_lr` (and Adam's betas/eps), which a resume restores from
                      the checkpoint, set back to the config's; the optimizer state walked through
                      `chained_optimizers` / `.optimizer.state` (the non-finite check before a save, "has it
                      stepped yet"); the LR scheduler's horizon (`lr_decay_steps`, `wd_incr_steps`) read and written
    pipeline.py       a P2PCommunicator whose backward sends only the student's half of the pair's activation
                      gradient (the schedule receives gradients in the activation's shape otherwise); the pair's
                      pipeline config, a copy of the student's TransformerConfig with `hidden_size` reassigned after
                      validation to size the p2p buffers
    teardown.py       what megatron-core leaves alive when a run ends: DistributedDataParallel's gradient hooks
                      (they keep the models, optimizer and process groups for the life of the process), two
                      parallel_state groups `destroy_model_parallel` does not reset, RotaryEmbedding's forward cache
    timeouts.py       a longer collective timeout while a checkpoint loads: torch's `_set_pg_timeout` and the
                      backends' `options._timeout` (torch 2.13; megatron-core's own `update_pg_timeout` uses the same)
    transformer_engine.py  a broken Transformer Engine install named with its fix, before megatron-core's import of
                      it fails (its `fp8_utils` imports `transformer_engine.pytorch` unguarded)

No other module of taidtron patches or pokes at a library, and only `taidtron/distributed.py` and this package read
megatron's global `parallel_state`. Each module above declares the megatron-core versions it was checked on
(`CHECKED_MEGATRON_CORE`: 0.16.1, the newest for Python 3.11, and 0.19.2, the newest for 3.12) and branches with
`megatron_core_at_least` where a version changed what it works around (`versions.py`).
`tests/overrides/test_megatron_version.py` holds the rest of taidtron to that (private names, attribute writes on
library objects, walks of internal structures, `parallel_state`) and fails when the installed megatron-core is
missing from any module's list: re-check that module, then add the version.
"""

from __future__ import annotations

from taidtron.overrides.checkpointing import load_optimizer_state, materialize_optimizer_state, prepare_writer
from taidtron.overrides.datasets import ensure_dataset_helpers
from taidtron.overrides.optimizer import (
    optimizer_has_state,
    optimizer_state_tensors,
    saved_schedule_horizon,
    set_optimizer_hyperparameters,
    set_schedule_horizon,
    step_if_finite,
)
from taidtron.overrides.teardown import forget_parallel_groups, release_grad_hooks
from taidtron.overrides.timeouts import collective_timeout, current_timeout
from taidtron.overrides.versions import (
    checked_everywhere,
    megatron_core_at_least,
    megatron_core_version,
    unchecked_megatron_core,
)

__all__ = [
    "checked_everywhere",
    "collective_timeout",
    "current_timeout",
    "ensure_dataset_helpers",
    "forget_parallel_groups",
    "load_optimizer_state",
    "materialize_optimizer_state",
    "megatron_core_at_least",
    "megatron_core_version",
    "optimizer_has_state",
    "optimizer_state_tensors",
    "prepare_writer",
    "release_grad_hooks",
    "saved_schedule_horizon",
    "set_optimizer_hyperparameters",
    "set_schedule_horizon",
    "step_if_finite",
    "unchecked_megatron_core",
]
