"""megatron-core's DistributedDataParallel never frees itself (checked: 0.16.1, 0.19.2; torch 2.13).

`DistributedDataParallel.__init__` registers a backward hook on every parameter's gradient accumulator (an autograd
node, kept in its private list `grad_accs`); the hook is a closure over the DDP module. Autograd nodes are C++
objects Python's garbage collector cannot see into, and they stay alive as long as any tensor whose graph reaches
them does (the distributed optimizer's shards are views of the parameters, so the optimizer keeps them). To the
collector the hook is then an object referenced from outside, so everything it reaches (the DDP module, the
models, the optimizer and every process group they hold, with their gloo threads) lives until the process exits.
Harmless in a training process, which exits after one run; a process that runs several (tools/paper_mini's
workers, the test suite) kept every model it ever built: ~50 gloo threads and the weights per run.

`release_grad_hooks` empties each accumulator's hook table. torch keeps one table per node and hands it to every
handle `Node.register_hook` returns (`RemovableHandle.hooks_dict_ref`), so a no-op hook registered now gives access
to the table megatron's hook sits in; with it empty (and `grad_accs` dropped) nothing outside Python's view
refers back to the DDP module, and the whole cluster is ordinary garbage.
"""

from __future__ import annotations

CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")


def _no_op(*_args) -> None:
    return None


def release_grad_hooks(ddp) -> None:
    """Remove DDP's gradient hooks so `ddp` (and what it holds) can be freed; it must not train after."""
    grad_accs = getattr(ddp, "grad_accs", None)  # private in megatron-core 0.16.1 and 0.19.2
    for node in grad_accs or ():
        handle = node.register_hook(_no_op)
        hooks = handle.hooks_dict_ref()
        if hooks is not None:
            hooks.clear()  # megatron's hook and the no-op alike
    if grad_accs is not None:
        grad_accs.clear()


# Module globals of megatron.core.parallel_state that `destroy_model_parallel()` does not reset (megatron-core
# 0.16.1 and 0.19.2 alike): they keep the last run's groups alive until the next `initialize_model_parallel`
# replaces them.
_GROUPS_LEFT_BY_DESTROY = (
    "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP",
    "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP_GLOO",
)


def forget_parallel_groups() -> None:
    """Drop the references megatron-core keeps to a destroyed world's groups (call right after
    `parallel_state.destroy_model_parallel()`): the two globals above, and `RotaryEmbedding.forward`'s class-wide
    `functools.lru_cache` (megatron-core 0.16.1, 0.19.2), whose keys hold the last 32 RotaryEmbedding modules built
    in the process and with them their `cp_group`."""
    from megatron.core import parallel_state
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    for name in _GROUPS_LEFT_BY_DESTROY:
        if getattr(parallel_state, name, None) is not None:
            setattr(parallel_state, name, None)
    cache_clear = getattr(RotaryEmbedding.forward, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
