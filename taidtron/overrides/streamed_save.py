"""A dist-checkpoint save that asks for each tensor as it writes it, so that a model never has to be in memory whole
(checked: megatron-core 0.16.1 and 0.19.2, torch 2.13).

megatron-core's own torch_dist writer (`FileSystemWriterAsync.prepare_write_data`) resolves every tensor of the
state dict before it writes the first byte; that is right for a training save, whose tensors exist anyway, and
wrong for `tools/convert.py import`, whose 72B model would then have to be built in host memory first. This
strategy writes the same format from a sharded state dict whose tensors live on the meta device (shapes only):
each tensor chunk comes from `materialize(key, offsets, sizes)` at the moment torch's own DCP writer stores it,
one file per chunk, and is dropped after.

What it relies on of megatron-core's torch_dist format, which its loader reads back:
- the DCP key of a ShardedTensor is its `key`, of a ShardedObject its `unique_key`, main replicas only (what the
  private `strategies.torch._replace_state_dict_keys_with_sharded_keys` does, restated here with public names);
- `strategies.torch.mcore_to_pyt_state_dict` turns those groups into what torch DCP saves, and
  `MCoreSavePlanner` plans them (both used as megatron-core uses them, with the meta tensors as data);
- `metadata.json` (backend `torch_dist`, version 1) and the common state (`common.pt` on 0.16; on 0.19 a
  `common_state` ShardedObject handed to this strategy with the rest) are written by `dist_checkpointing.save`
  itself, which calls this strategy for the sharded part;
- megatron-core 0.19 replaces any strategy that is not a `strategies.torch.TorchDistSaveShardedStrategy` with its
  default one (which would resolve every meta tensor at once), so from 0.19 the strategy subclasses that class and
  overrides its `save`; 0.16's `strategies.base.SaveShardedStrategy` is gone in 0.19.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from taidtron.overrides.versions import megatron_core_at_least

CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")

Materialize = Callable[[str, tuple[int, ...], tuple[int, ...]], torch.Tensor]
"""(DCP key, chunk offsets, chunk sizes) -> the chunk's values, a tensor of exactly `sizes` (layer axis included)."""


def streamed_save_strategy(materialize: Materialize):
    """A megatron-core SaveShardedStrategy for `dist_checkpointing.save(..., sharded_strategy=...)` that writes
    megatron's torch_dist format tensor by tensor, taking each tensor from `materialize` (see the module docstring).
    For a world of one: the conversion's."""
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedObject, is_main_replica
    from megatron.core.dist_checkpointing.strategies.torch import MCoreSavePlanner, mcore_to_pyt_state_dict

    if megatron_core_at_least("0.19"):
        from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy as SaveStrategy
    else:
        from megatron.core.dist_checkpointing.strategies.base import SaveShardedStrategy as SaveStrategy
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.planner import WriteItemType

    class _MaterializingPlanner(MCoreSavePlanner):
        """megatron-core's planner, except that a tensor's data comes from `materialize` when it is written."""

        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)  # a ShardedObject, already serialised
            chunk = write_item.tensor_data.chunk
            offsets, sizes = tuple(chunk.offsets), tuple(chunk.sizes)
            tensor = materialize(write_item.index.fqn, offsets, sizes)
            if tuple(tensor.shape) != sizes or tensor.dtype != write_item.tensor_data.properties.dtype:
                raise RuntimeError(
                    f"materialize gave {write_item.index.fqn} at {offsets} a {tensor.dtype} tensor of shape "
                    f"{tuple(tensor.shape)}; the checkpoint plans {write_item.tensor_data.properties.dtype} {sizes}"
                )
            return tensor

    class _StreamedSave(SaveStrategy):
        def __init__(self) -> None:
            super().__init__("torch_dist", 1)  # what megatron-core's loader reads

        @property
        def can_handle_sharded_objects(self) -> bool:
            return True

        def save(self, sharded_state_dict, checkpoint_dir: str | Path) -> None:
            groups = defaultdict(list)
            for item in nested_values(sharded_state_dict):
                if is_main_replica(item.replica_id):
                    groups[item.unique_key if isinstance(item, ShardedObject) else item.key].append(item)
            state = mcore_to_pyt_state_dict(dict(groups), is_loading=False)
            # One file per chunk, written in plan order by one thread: torch's writer keeps the tensors of the file
            # it is writing, so one file per chunk is what keeps one tensor in memory at a time.
            writer = FileSystemWriter(str(checkpoint_dir), single_file_per_rank=False, thread_count=1)
            planner = _MaterializingPlanner(dedup_replicated_tensors=False, flatten_state_dict=False)
            try:
                dcp.save(state, storage_writer=writer, planner=planner)
            except CheckpointException as exc:  # torch wraps what `materialize` raised: hand that on as it was
                failures = [f[0] if isinstance(f, tuple) else f for f in exc.failures.values()]
                if len(failures) == 1 and isinstance(failures[0], Exception):
                    raise failures[0] from None
                raise

    return _StreamedSave()
