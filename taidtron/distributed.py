"""Process groups: rank discovery (torchrun, SLURM srun, DeepSpeed launcher), the device, megatron parallel_state.

The rest of taidtron receives a `ParallelContext` and passes its groups explicitly; nothing else reads the
environment or megatron's global parallel state for group handles.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from taidtron.config import ParallelConfig


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, whichever launcher started it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str
    node_rank: int = 0
    """Index of this rank's node in the job (SLURM_NODEID, torchrun's GROUP_RANK, DeepSpeed's CROSS_RANK)."""

    @classmethod
    def single(cls, port: int = 0) -> LaunchEnv:
        """A world of one on this host (a plain `python -m taidtron.train`, or a tool such as the converter)."""
        return cls(0, 1, 0, "127.0.0.1", port or free_port(), "single")


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        # Without scontrol (unusual inside a job) a single-node list is the host itself.
        return nodelist.split(",")[0].split("[")[0]


def read_launch_env(environ: dict[str, str] | None = None) -> LaunchEnv:
    """torchrun and DeepSpeed's launcher export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; srun-native tasks export
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID. A plain `python -m taidtron.train` is a world of one."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "deepspeed" if "CROSS_RANK" in env or "DS_ACCELERATOR" in env else "torchrun"
        return LaunchEnv(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", 29500)),
            launcher,
            int(env.get("GROUP_RANK", env.get("CROSS_RANK", 0))),
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        return LaunchEnv(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            int(env.get("MASTER_PORT", 20000 + job_id % 20000)),
            "slurm",
            int(env.get("SLURM_NODEID", 0)),
        )
    return LaunchEnv.single(int(env.get("MASTER_PORT") or 0))


def log_placement(launch: LaunchEnv) -> None:
    """One line per rank saying where it runs and where it meets the others: the first thing to read when a
    multi-node job hangs at start-up or lands on the wrong hosts. One write, so ranks sharing stderr do not mix."""
    import socket

    try:
        address = socket.gethostbyname(launch.master_addr)
    except OSError:
        address = "unresolved"
    line = (
        f"taidtron rank {launch.rank}/{launch.world_size}: host={socket.gethostname()} node={launch.node_rank} "
        f"local_rank={launch.local_rank} rendezvous={launch.master_addr}:{launch.master_port} ({address}) "
        f"launcher={launch.launcher}\n"
    )
    os.write(2, line.encode())


def free_port() -> int:
    """A world of one still needs a rendezvous port; a fixed one collides with other jobs on the host."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ParallelContext:
    """Groups and coordinates of this rank. Teacher and student share all of them."""

    rank: int
    world_size: int
    device: torch.device
    tp_group: dist.ProcessGroup
    pp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup
    model_parallel_group: dist.ProcessGroup
    """The ranks holding one copy of the model between them (tp x pp): parameter counts, megatron's
    gradient-norm reduction."""
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp: int
    pp: int
    dp: int
    gloo_groups: bool = False
    """Whether megatron's side groups on gloo exist (`init_distributed` creates them only when gloo is the backend;
    the distributed optimizer is told the same)."""

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(
    parallel: ParallelConfig,
    *,
    launch: LaunchEnv | None = None,
    timeout_minutes: int = 30,
    gloo_groups: bool | None = None,
) -> ParallelContext:
    """Start torch.distributed (NCCL on GPU, gloo on CPU), install the CPU overrides when there is no GPU, and build
    megatron's tensor/pipeline/data-parallel groups in its default order (tp fastest, then dp, then pp).

    `launch`: where this process sits; by default read from the launcher's environment (`read_launch_env`). Tools
    that must stay a world of one even inside a SLURM allocation pass `LaunchEnv.single()`.
    `gloo_groups`: whether megatron also builds its gloo side groups; None (the default) means exactly when gloo is
    the backend (CPU). Tests pass False on CPU to run the GPU setting."""
    from megatron.core import parallel_state

    launch = launch or read_launch_env()
    parallel.data_parallel_size(launch.world_size)  # fails early with a clear message
    if launch.world_size > 1:
        log_placement(launch)
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
        device, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
    else:
        from taidtron.overrides import cpu

        cpu.install()
        device, backend = torch.device("cpu"), "gloo"

    if not dist.is_initialized():
        _start_process_group(backend, launch, datetime.timedelta(minutes=timeout_minutes), device=device)
    # megatron-core creates a gloo twin of every data-parallel group by default, for CPU-side exchanges taidtron never
    # makes (its checkpoints gather optimizer state over the main groups). Next to NCCL each twin is a full mesh of TCP
    # connections opened at start-up by every rank and never used (at 128 ranks, thousands of sockets): build them
    # only where gloo is the backend anyway.
    if gloo_groups is None:
        gloo_groups = dist.get_backend() == "gloo"
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tp,
            pipeline_model_parallel_size=parallel.pp,
            distributed_timeout_minutes=timeout_minutes,
            create_gloo_process_groups=gloo_groups,
        )
    return ParallelContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        device=device,
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        pp_group=parallel_state.get_pipeline_model_parallel_group(),
        dp_group=parallel_state.get_data_parallel_group(),
        model_parallel_group=parallel_state.get_model_parallel_group(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        tp=parallel.tp,
        pp=parallel.pp,
        dp=parallel_state.get_data_parallel_world_size(),
        gloo_groups=gloo_groups,
    )


def _start_process_group(
    backend: str, launch: LaunchEnv | None, timeout: datetime.timedelta, device: torch.device | None = None
) -> None:
    """The one place taidtron creates a torch.distributed world. `launch` None: a private world of one on an
    in-memory store (no port, no environment). On NCCL the world is bound to this rank's GPU (`device_id`): its
    communicator is created at once on the right device instead of at the first collective, from whichever device is
    current then, and megatron's subgroups are split from it rather than built from scratch."""
    options = {"device_id": device} if backend == "nccl" else {}
    if launch is None:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout, **options)
    elif launch.launcher in ("torchrun", "deepspeed"):
        # env:// lets torchrun's workers share the agent's rendezvous store.
        dist.init_process_group(
            backend=backend, rank=launch.rank, world_size=launch.world_size, timeout=timeout, **options
        )
    else:
        # srun-native tasks and single processes: rank 0 hosts the store; the environment stays untouched so
        # child processes (e.g. a later run started from this one) pick their own port.
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timeout,
            **options,
        )


@contextlib.contextmanager
def world_of_one() -> Iterator[None]:
    """A private single-process gloo world for library code that assumes torch.distributed (megatron-core's dataset
    builders call get_rank() unguarded), destroyed on exit. Inside an existing world it does nothing."""
    if dist.is_initialized():
        yield
        return
    _start_process_group("gloo", None, datetime.timedelta(minutes=30))
    try:
        yield
    finally:
        dist.destroy_process_group()


def seed_everything(seed: int, ctx: ParallelContext) -> None:
    """Same seed on every data-parallel replica, different per pipeline stage (megatron's convention); the
    model-parallel RNG tracker gets its TP-dependent streams."""
    from megatron.core import tensor_parallel

    stage_seed = seed + 100 * ctx.pp_rank
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)


def destroy_model_parallel() -> None:
    """Tear down megatron's parallel groups and what megatron keeps of them; the torch.distributed world stays (a
    process may build another layout on the same ranks)."""
    from megatron.core import parallel_state

    from taidtron import overrides

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
        overrides.forget_parallel_groups()


def destroy_distributed() -> None:
    destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
