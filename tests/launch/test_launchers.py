"""The launch scripts' command line: every launcher takes `CONFIG [section.key=value ...]` the same way, rejects a
bad one with one line and exit 2, finds the project's Python without an activated venv, and every launch command
that README.md and docs/ show runs as written, up to the point where it would start ranks or submit a job.

The scripts run for real here, with DRY_RUN=1 (they print the command they would run instead of running it).
Submission is the one thing stood in for: `sbatch` is replaced by a stand-in that sets the job variables sbatch
would set (from the #SBATCH lines and the options) and runs the batch script; `make slurm-test` and
`make multinode-test` submit the same scripts to real SLURM clusters.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from taidtron.config import load_config

REPO = Path(__file__).resolve().parents[2]
LAUNCHERS = ["launch/torchrun.sh", "launch/deepspeed.sh", "launch/slurm/pretrain.sbatch", "launch/slurm/smoke.sbatch"]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# The sbatch stand-in: the options the documented commands use, the job variables sbatch sets from them.
SBATCH_STAND_IN = textwrap.dedent("""\
    #!{python}
    import os, re, sys
    args = sys.argv[1:]
    known = ("--nodes", "--gpus-per-node", "--job-name", "--time", "--chdir", "--output", "--ntasks")
    opts = {{}}
    while args and args[0].startswith("-"):
        key, _, value = args.pop(0).partition("=")
        if key not in known or not value:
            sys.exit(f"sbatch stand-in: option {{key}} (as --opt=value) is not one it knows: {{known}}")
        opts[key] = value
    script, script_args = args[0], args[1:]
    for line in open(script):
        if m := re.match(r"#SBATCH\\s+(--[\\w-]+)=(\\S+)", line):
            opts.setdefault(m.group(1), m.group(2))
    nodes, gpus = int(opts["--nodes"]), int(opts.get("--gpus-per-node", 0))
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_JOB_NAME=opts["--job-name"], SLURM_JOB_NUM_NODES=str(nodes),
               SLURM_JOB_NODELIST=f"node[1-{{nodes}}]", SLURM_CPUS_ON_NODE="64", SLURM_NTASKS=opts.get("--ntasks", ""))
    if gpus:
        env["SLURM_GPUS_ON_NODE"] = str(gpus)
    os.execve("/bin/bash", ["bash", script, *script_args], env)
""")


def run(
    cmd: str | list[str], cwd: Path = REPO, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run like a user whose shell has no venv activated: PATH without the venv, no PYTHON, no SLURM job."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PYTHON", "VIRTUAL_ENV"))}
    base["PATH"] = os.pathsep.join(
        p for p in base.get("PATH", "").split(os.pathsep) if not Path(p, "activate").exists()
    )
    base.update(env or {})
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        shell=isinstance(cmd, str),
        executable="/bin/bash" if isinstance(cmd, str) else None,
    )


def dry_run_command(stdout: str) -> list[str]:
    lines = stdout.strip().splitlines()
    assert lines, "DRY_RUN=1 printed nothing"
    return shlex.split(lines[-1])


# ---- one way to take the config -----------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize(
    "args, says",
    [
        ([], "missing CONFIG"),
        (["configs/no_such.yaml"], "configs/no_such.yaml does not exist"),
        (["optim.lr=1e-4", "configs/smoke.yaml"], "the first argument must be the config file"),
    ],
)
def test_a_bad_config_argument_is_one_line_and_exit_2(launcher, args, says):
    proc = run(["bash", launcher, *args], env={"DRY_RUN": "1"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_help_prints_the_usage_line(launcher):
    proc = run(["bash", launcher, "--help"])
    assert proc.returncode == 0
    assert "CONFIG [section.key=value ...]" in proc.stdout


def test_sbatch_scripts_outside_a_job_say_to_submit_them():
    proc = run(["bash", "launch/slurm/pretrain.sbatch", "configs/smoke.yaml"])
    assert proc.returncode == 2 and "not inside a SLURM job; submit it: sbatch" in proc.stderr, proc.stderr


# ---- the ranks' word -------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "override, says",
    [
        ("optim.bogus=1", "taidtron: configuration error: unknown config key(s) optim.bogus"),
        ("parallel.tp=3", "taidtron: error: world size 2 is not divisible by parallel.tp * parallel.pp = 3 * 1"),
    ],
)
def test_bad_input_through_torchrun_sh_is_one_line_once_and_exit_2(override, says):
    """Both ranks refuse it; torchrun.sh prints the line once, no torchrun report (plain torchrun: the line per rank,
    then a 40-70 line ChildFailedError traceback and exit 1)."""
    proc = run(["launch/torchrun.sh", "configs/smoke.yaml", override], env={"NPROC": "2"}, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), proc.stderr
    assert proc.stdout == ""


# ---- the project's Python --------------------------------------------------------------------------------------


def test_launchers_use_the_repo_venv_when_no_python_is_given(tmp_path):
    """Without an activated venv, `python` on PATH lacks torch; the launchers must pick <repo>/.venv/bin/python (and
    torchrun.sh runs it to count GPUs, so this also shows that interpreter imports torch)."""
    if not (REPO / ".venv/bin/python").exists():
        pytest.skip("no .venv in this checkout (make install creates it)")
    (tmp_path / "hostfile").write_text("localhost slots=1\n")
    venv_python = str(REPO / ".venv/bin/python")
    torchrun = run(["launch/torchrun.sh", "configs/smoke.yaml"], env={"DRY_RUN": "1"})
    deepspeed = run(
        ["launch/deepspeed.sh", "configs/smoke.yaml"], env={"DRY_RUN": "1", "HOSTFILE": str(tmp_path / "hostfile")}
    )
    sbatch = run(
        ["bash", "launch/slurm/smoke.sbatch", "configs/smoke.yaml"],
        env={"DRY_RUN": "1", "SLURM_JOB_ID": "1", "SLURM_JOB_NAME": "smoke"},
    )
    for proc in (torchrun, deepspeed, sbatch):
        assert proc.returncode == 0, proc.stderr
    assert dry_run_command(torchrun.stdout)[0] == venv_python
    assert dry_run_command(deepspeed.stdout)[0] == venv_python
    assert dry_run_command(sbatch.stdout)[:4] == ["srun", "--wait=60", "--label", venv_python]


def test_python_from_the_environment_wins_and_python3_is_the_last_resort(tmp_path):
    given = run(
        ["launch/torchrun.sh", "configs/smoke.yaml"], env={"DRY_RUN": "1", "NPROC": "1", "PYTHON": "/opt/py/bin/python"}
    )
    assert given.returncode == 0, given.stderr
    assert dry_run_command(given.stdout)[0] == "/opt/py/bin/python"
    # A checkout without .venv: the launchers fall back to python3 from PATH.
    (tmp_path / "launch").mkdir()
    for name in ("common.sh", "torchrun.sh"):
        (tmp_path / "launch" / name).write_bytes((REPO / "launch" / name).read_bytes())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/smoke.yaml").write_text("{}\n")
    bare = run(["bash", "launch/torchrun.sh", "configs/smoke.yaml"], cwd=tmp_path, env={"DRY_RUN": "1", "NPROC": "1"})
    assert bare.returncode == 0, bare.stderr
    assert dry_run_command(bare.stdout)[0] == "python3"


# ---- torchrun.sh on several nodes ------------------------------------------------------------------------------


def test_torchrun_on_several_nodes_meets_at_a_c10d_store_hosted_by_node_rank_0():
    env = {"DRY_RUN": "1", "NPROC": "2", "NNODES": "2", "MASTER_ADDR": "node-a", "MASTER_PORT": "29411"}
    host = dry_run_command(run(["launch/torchrun.sh", "configs/smoke.yaml"], env={**env, "NODE_RANK": "0"}).stdout)
    other = dry_run_command(run(["launch/torchrun.sh", "configs/smoke.yaml"], env={**env, "NODE_RANK": "1"}).stdout)
    for cmd in (host, other):
        assert {"--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node-a:29411"} <= set(cmd)
        assert "--standalone" not in cmd
    assert "--rdzv-conf=is_host=true" in host and "--rdzv-conf=is_host=false" in other
    missing = run(["launch/torchrun.sh", "configs/smoke.yaml"], env={"DRY_RUN": "1", "NPROC": "1", "NNODES": "2"})
    assert missing.returncode == 2 and "needs MASTER_ADDR" in missing.stderr and missing.stderr.count("\n") == 1


@pytest.mark.parametrize("launcher", ["launch/torchrun.sh", "launch/deepspeed.sh"])
def test_taidtron_module_picks_what_the_ranks_run(launcher, tmp_path):
    (tmp_path / "hostfile").write_text("gpu-node-01 slots=8\n")
    env = {"DRY_RUN": "1", "NPROC": "2", "HOSTFILE": str(tmp_path / "hostfile")}
    args = [launcher, "configs/smoke.yaml", "--out", "runs/x", "--top-k", "32", "parallel.tp=2"]
    default = dry_run_command(run(args[:2], env=env).stdout)
    assert "taidtron.train" in default and "taidtron.cache_teacher" not in default
    proc = run(args, env={**env, "TAIDTRON_MODULE": "taidtron.cache_teacher"})
    cmd = dry_run_command(proc.stdout)
    module = cmd.index("taidtron.cache_teacher")
    assert cmd[module + 1 :] == ["--config", "configs/smoke.yaml", "--out", "runs/x", "--top-k", "32", "parallel.tp=2"]
    wrong = run(args[:2], env={**env, "TAIDTRON_MODULE": "os"})
    assert wrong.returncode == 2 and "TAIDTRON_MODULE=os is not an entry point" in wrong.stderr
    assert wrong.stderr.count("\n") == 1


# ---- every documented launch command -----------------------------------------------------------------------------


def documented_launch_commands() -> list:
    """Every line of a ```bash block in README.md / docs/*.md that runs a launch/ script."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if re.search(r"launch/\S+\.(sh|sbatch)\b", line):
                    found.append(pytest.param(doc.name, line, id=f"{doc.name}: {line}"))
    return found


@pytest.mark.parametrize("doc, command", documented_launch_commands())
def test_documented_launch_command_runs_as_written(doc, command, tmp_path):
    """The command, run as written from a checkout (with the hostfile the docs ask for), gets as far as the
    command it would run; that command's config and overrides pass every start-up check at its world size."""
    for name in ("launch", "configs", "tools", ".venv"):
        if (REPO / name).exists():
            (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "hostfile").write_text("gpu-node-01 slots=8\ngpu-node-02 slots=8\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(SBATCH_STAND_IN.format(python=sys.executable))
    (bin_dir / "sbatch").chmod(0o755)
    env = {"DRY_RUN": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = run(command, cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"{doc}: `{command}` exited {proc.returncode}: {proc.stderr}"
    cmd = dry_run_command(proc.stdout)

    config = cmd[cmd.index("--config") + 1]
    overrides = cmd[cmd.index("--config") + 2 :]
    if "taidtron.cache_teacher" in cmd:  # the cache writer's own options follow the config
        from taidtron.cache_teacher import parse_args

        overrides = parse_args(cmd[cmd.index("taidtron.cache_teacher") + 1 :]).overrides
    world = world_size(cmd, command)
    cfg = load_config(tmp_path / config, overrides)
    cfg.validate_layout(world)


def world_size(cmd: list[str], command: str) -> int:
    """The ranks the printed command would start."""

    def flag(name: str) -> int:
        return int(next(a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")))

    if cmd[0] == "srun":
        if any(a.startswith("--ntasks=") for a in cmd):
            return flag("ntasks")
        script = REPO / re.search(r"launch/\S+\.sbatch", command).group(0)  # the job shape is the script's
        return int(re.search(r"^#SBATCH --ntasks=(\d+)", script.read_text(), flags=re.MULTILINE).group(1))
    if "taidtron.torchrun" in cmd:
        return flag("nproc-per-node") * flag("nnodes")
    if "deepspeed.launcher.runner" in cmd:
        return 16  # the test's hostfile: 2 hosts x 8 slots
    raise AssertionError(f"unknown launcher command {cmd} from `{command}`")


# ---- where each rank says it runs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ, launcher",
    [
        (
            {
                "SLURM_PROCID": "5",
                "SLURM_NTASKS": "8",
                "SLURM_LOCALID": "1",
                "SLURM_NODEID": "2",
                "SLURM_JOB_ID": "7",
                "MASTER_ADDR": "head",
            },
            "slurm",
        ),
        (
            {
                "RANK": "5",
                "WORLD_SIZE": "8",
                "LOCAL_RANK": "1",
                "GROUP_RANK": "2",
                "MASTER_ADDR": "head",
                "MASTER_PORT": "29500",
            },
            "torchrun",
        ),
        (
            {
                "RANK": "5",
                "WORLD_SIZE": "8",
                "LOCAL_RANK": "1",
                "CROSS_RANK": "2",
                "MASTER_ADDR": "head",
                "MASTER_PORT": "29500",
            },
            "deepspeed",
        ),
    ],
)
def test_each_launcher_gives_the_rank_its_node(environ, launcher, capfd):
    from taidtron.distributed import log_placement, read_launch_env

    launch = read_launch_env(environ)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.node_rank, launch.launcher) == (
        5,
        8,
        1,
        2,
        launcher,
    )
    log_placement(launch)
    line = capfd.readouterr().err
    assert re.fullmatch(
        r"taidtron rank 5/8: host=\S+ node=2 local_rank=1 rendezvous=head:\d+ \(\S+\) "
        rf"launcher={launcher}\n",
        line,
    ), line
