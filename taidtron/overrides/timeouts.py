"""A longer collective timeout for a while (checked: torch 2.13, megatron-core 0.16.1 and 0.19.2).

torch sets a process group's timeout when the group is created and offers no public way to change it later:
`torch.distributed.distributed_c10d._set_pg_timeout` (which megatron-core's `parallel_state.update_pg_timeout` also
calls) changes it, and the current value is only readable from the backend's `options._timeout`. Used around
checkpoint loading, where ranks wait in collectives while others read a large teacher from a shared file system.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

import torch.distributed as dist
from torch.distributed import distributed_c10d

CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")


def _backends(group: dist.ProcessGroup) -> list:
    """The backends (gloo, NCCL) behind a process group, one per device type it serves."""
    return [group._get_backend(device) for device in group._device_types]


def current_timeout(group: dist.ProcessGroup | None = None) -> datetime.timedelta:
    """The timeout of `group`'s collectives (None: the default group); the longest when its backends differ."""
    group = group or distributed_c10d._get_default_group()
    return max(backend.options._timeout for backend in _backends(group))


@contextlib.contextmanager
def collective_timeout(groups: list[dist.ProcessGroup | None], timeout: datetime.timedelta) -> Iterator[None]:
    """Within the block, collectives of `groups` (None: the default group) time out after at least `timeout`; the
    previous timeouts come back after it. Does nothing outside a torch.distributed world."""
    if not dist.is_initialized():
        yield
        return
    default = distributed_c10d._get_default_group()
    unique = {id(g or default): g or default for g in groups}.values()
    previous = [(group, current_timeout(group)) for group in unique]
    for group, before in previous:
        if timeout > before:
            distributed_c10d._set_pg_timeout(timeout, group)
    try:
        yield
    finally:
        for group, before in previous:
            if timeout > before:
                distributed_c10d._set_pg_timeout(before, group)
