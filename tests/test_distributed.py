"""`read_launch_env`: where a process sits in the job, for each launcher taidtron supports (no process is started);
megatron's gloo side groups, built only where gloo is the backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from taidtron.distributed import LaunchEnv, read_launch_env
from tests.support import gpu_env, require_gpu, run_torchrun

WORKER = Path(__file__).with_name("gloo_groups_worker.py")


def test_torchrun_environment():
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "node-a",
        "MASTER_PORT": "29411",
        "TORCHELASTIC_RUN_ID": "x",
    }
    assert read_launch_env(env) == LaunchEnv(5, 8, 1, "node-a", 29411, "torchrun")


def test_deepspeed_launcher_is_recognised_by_its_own_variables():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "3",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
        "CROSS_RANK": "0",
    }
    assert read_launch_env(env).launcher == "deepspeed"


def test_srun_native_tasks_take_rank_and_size_from_slurm():
    env = {
        "SLURM_PROCID": "9",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu-node-07",
        "MASTER_ADDR": "gpu-node-07",
    }
    launch = read_launch_env(env)
    assert launch == LaunchEnv(9, 16, 1, "gpu-node-07", 20000 + 123456 % 20000, "slurm")


def test_srun_without_master_addr_uses_the_first_node_of_the_allocation():
    # without scontrol on this machine the single-node fallback applies; with it, `scontrol show hostnames`
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu-node-07", "MASTER_PORT": "31000"}
    launch = read_launch_env(env)
    assert (launch.master_addr, launch.master_port) == ("gpu-node-07", 31000)


def test_torchrun_variables_win_over_slurm_ones():
    # torchrun started inside an allocation: its RANK/WORLD_SIZE describe the worker, SLURM_* the task
    env = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert read_launch_env(env).launcher == "torchrun" and read_launch_env(env).rank == 1


@pytest.mark.parametrize("env", [{}, {"MASTER_PORT": ""}])
def test_a_plain_process_is_a_world_of_one_on_a_free_port(env):
    launch = read_launch_env(env)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.launcher) == (0, 1, 0, "single")
    assert 0 < launch.master_port < 65536
    assert LaunchEnv.single(12345).master_port == 12345


@pytest.mark.multiprocess
@pytest.mark.parametrize("setting", ["default", "off"])
def test_gloo_side_groups_only_where_gloo_is_the_backend(setting):
    """On gloo (CPU) megatron's gloo side groups are built by default; `gloo_groups=False` (what NCCL gets) builds
    none, and training, saving and loading with the distributed optimizer at dp=2 work without them."""
    results = run_torchrun(WORKER, 2, setting)
    expected = setting == "default"
    for r in results:
        assert r["dp"] == 2
        assert r["gloo_groups"] == r["gloo_dp_group_built"] == r["optimizer_gloo_group"] == expected, r
        assert all(loss == loss and loss > 0 for loss in r["losses"]), r


@pytest.mark.gpu
def test_gpu_world_is_nccl_bound_to_the_rank_device_without_gloo_side_groups():
    """On a GPU: NCCL bound to the rank's device (`device_id`: eager communicator, subgroups split from it), no gloo
    side groups by default, and a step, a save and a load with the distributed optimizer work so."""
    require_gpu()
    (r,) = run_torchrun(WORKER, 1, "default", env=gpu_env())
    assert (r["backend"], r["bound_device"]) == ("nccl", "cuda:0"), r
    assert r["gloo_groups"] is r["gloo_dp_group_built"] is r["optimizer_gloo_group"] is False, r
    assert all(loss == loss and loss > 0 for loss in r["losses"]), r
