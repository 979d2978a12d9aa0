"""The real trainer and its processes: a SIGKILLed trainer (or torchrun) leaves no process behind, a rank that fails
under torchrun stops the others at once (no 30 s wait for torchrun's SIGKILL), a preempted healthy job still saves
and exits 75, and a second SIGTERM/SIGINT stops a rank at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.support import REPO_ROOT, RESULTS_ENV, free_port, still_running, subprocess_env
from tests.train.test_training_run import TINY

pytestmark = pytest.mark.serial  # timing assertions: run alone, not beside other tests (make test)

WORKER = Path(__file__).with_name("crash_worker.py")
LONG_RUN = [*TINY, "optim.train_steps=500", "optim.warmup_steps=1", "logging.eval_interval=0"]
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc-per-node=2",
    "--nnodes=1",
    "--master-addr=127.0.0.1",
]
# What launch/torchrun.sh sets: SIGUSR1 forwarded too, and 600 s for the ranks to save after a signal.
TORCHRUN_ENV = {
    "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600",
}


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before {what}:\n{proc.stderr.read()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.2)


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def start_training(
    run_dir: Path, *overrides: str, torchrun: bool = False, env: dict | None = None, stdout=subprocess.PIPE
) -> subprocess.Popen:
    """`python -m taidtron.train` on configs/smoke.yaml with LONG_RUN (under torchrun with 2 ranks when asked),
    its stderr piped."""
    launcher = [*TORCHRUN, f"--master-port={free_port()}"] if torchrun else [sys.executable]
    return subprocess.Popen(
        [
            *launcher,
            "-m",
            "taidtron.train",
            "--config",
            "configs/smoke.yaml",
            *LONG_RUN,
            *overrides,
            f"logging.run_dir={run_dir}",
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(**(TORCHRUN_ENV if torchrun else {}), **(env or {})),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def descendants(proc: subprocess.Popen) -> dict[int, str]:
    """pid -> the start of its command line, for every process below `proc`."""
    return {p.pid: " ".join(p.cmdline()[:4]) for p in psutil.Process(proc.pid).children(recursive=True)}


def kill_then_survivors(proc: subprocess.Popen, described: dict[int, str], wait_s: float) -> list[str]:
    """SIGKILL `proc`; the command lines of `described` still running `wait_s` seconds later (killed, so that a
    failing test leaves nothing behind)."""
    proc.kill()
    proc.wait(timeout=30)
    survivors = still_running(list(described), wait_s=wait_s)
    for pid in survivors:
        psutil.Process(pid).kill()
    return [described[pid] for pid in survivors]


def test_kill_9_of_a_trainer_after_its_first_save_leaves_no_process_behind(tmp_path):
    proc = start_training(
        tmp_path,
        "checkpoint.save_interval=1",
        "logging.wandb_mode=offline",
        env={"WANDB_SILENT": "true"},
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: (tmp_path / "checkpoints" / "latest").is_file(), proc, what="first checkpoint")
    described = descendants(proc)
    # the checkpoint writer's Manager at least (wandb's service processes too)
    assert any("taidtron.train" in cmd for cmd in described.values()), described
    survivors = kill_then_survivors(proc, described, wait_s=5)
    assert survivors == [], f"still running 5 s after the trainer's SIGKILL: {survivors}"


@pytest.mark.multiprocess
def test_kill_9_of_torchrun_ends_its_ranks_and_their_helpers(tmp_path):
    """The agent killed with SIGKILL cannot stop its ranks; they notice it is gone and end within a second or two
    (before: they trained on, then hung in a collective for its 30-minute timeout), and their helpers end with them."""
    proc = start_training(tmp_path, "checkpoint.save_interval=1", torchrun=True, stdout=subprocess.DEVNULL)
    wait_for(lambda: (tmp_path / "checkpoints" / "latest").is_file(), proc, what="first checkpoint")
    described = descendants(proc)
    assert sum("taidtron.train" in cmd for cmd in described.values()) >= 2, described  # the two ranks at least
    survivors = kill_then_survivors(proc, described, wait_s=10)
    assert survivors == [], f"still running 10 s after torchrun's SIGKILL: {survivors}"


@pytest.mark.multiprocess
@pytest.mark.parametrize("where", ["start-up", "step-2"])
def test_a_rank_failing_under_torchrun_stops_the_other_ranks_at_once(where, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    proc = subprocess.Popen(
        [
            *TORCHRUN,
            f"--master-port={free_port()}",
            str(WORKER),
            "1",
            where,
            "--config",
            "configs/smoke.yaml",
            *LONG_RUN,
            f"logging.run_dir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(**TORCHRUN_ENV, **{RESULTS_ENV: str(results)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, sigterm_at = [], None
    # On an overloaded machine the run may not get that far: kill torchrun (its ranks end with it) at a deadline
    # that does not depend on a line arriving.
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    for line in proc.stdout:  # torchrun logs when it signals the surviving rank; read it as it comes
        lines.append(line)
        if sigterm_at is None and "closing signal SIGTERM" in line:
            sigterm_at = time.monotonic()
    watchdog.cancel()
    proc.wait(timeout=60)
    ended_at = time.monotonic()
    output = "".join(lines)
    assert proc.returncode != 0 and (results / "rank1.json").is_file(), output[-4000:]  # the failure happened
    assert sigterm_at is not None, output[-4000:]
    timing = f"torchrun ended {ended_at - sigterm_at:.1f} s after it sent SIGTERM to the surviving rank"
    # Before: the survivor ignored that SIGTERM and torchrun SIGKILLed it 30 s later (its fixed timeout on failure).
    assert "SIGKILL" not in output, f"{timing}\n{output[-4000:]}"
    # The survivor stops either on torchrun's SIGTERM (it says so) or, when its next collective notices first that
    # the failed rank's connection is gone, on that error: both end the job at once, neither saves.
    stopped_on_signal = "the job has failed and cannot save; stopping now" in output
    stopped_on_collective = "Connection closed by peer" in output
    assert stopped_on_signal or stopped_on_collective, f"{timing}\n{output[-4000:]}"
    assert ended_at - sigterm_at < 15, f"{timing}\n{output[-4000:]}"  # torchrun itself kills at 30 s
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()


@pytest.mark.multiprocess
def test_sigterm_to_torchrun_of_a_healthy_job_saves_on_every_rank_and_exits_75(tmp_path):
    proc = start_training(tmp_path, torchrun=True)
    wait_for(lambda: steps_logged(tmp_path) >= 2, proc, what="two optimizer steps")
    proc.send_signal(signal.SIGTERM)  # a scheduler stopping the job: torchrun forwards it to both ranks
    stdout, stderr = proc.communicate(timeout=300)
    output = stdout + stderr
    steps = steps_logged(tmp_path)
    assert f"saved at step {steps}; exiting with 75" in output, output[-4000:]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"iter_{steps:07d}"
    assert "SIGKILL" not in output and "stopping now" not in output, output[-4000:]


@pytest.mark.multiprocess
def test_ctrl_c_to_torchrun_sh_saves_on_every_rank_and_the_launcher_exits_75(tmp_path):
    """launch/torchrun.sh keeps the ranks' word: plain torchrun exits 1 with a SignalException traceback here."""
    proc = subprocess.Popen(
        ["launch/torchrun.sh", "configs/smoke.yaml", *LONG_RUN, f"logging.run_dir={tmp_path}"],
        cwd=REPO_ROOT,
        env=subprocess_env(NPROC="2", MASTER_PORT=str(free_port())),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: steps_logged(tmp_path) >= 2, proc, what="two optimizer steps")
    proc.send_signal(
        signal.SIGINT
    )  # what Ctrl-C in its terminal sends (the ranks, in their own sessions, do not get it)
    stdout, stderr = proc.communicate(timeout=300)
    output = stdout + stderr
    steps = steps_logged(tmp_path)
    assert proc.returncode == 75, output[-4000:]
    assert f"saved at step {steps}; exiting with 75" in output, output[-4000:]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"iter_{steps:07d}"
    assert "Traceback" not in output and "stopping now" not in output, output[-4000:]


def test_a_second_sigterm_or_sigint_stops_at_once_without_saving(tmp_path):
    proc = start_training(tmp_path)
    wait_for(lambda: steps_logged(tmp_path) >= 1, proc, what="one optimizer step")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # two pending SIGTERMs would merge into one; a save takes seconds
    second = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)  # the process itself (a few lines of output cannot fill the pipes)
    took = time.monotonic() - second
    _, stderr = proc.communicate(timeout=60)
    # Before: the second signal was only recorded; the rank saved and exited 75 (or 1 on a traceback).
    assert proc.returncode == 128 + signal.SIGINT, (
        f"exit {proc.returncode} {took:.1f} s after the second signal\n{stderr[-3000:]}"
    )
    assert took < 15, f"{took:.1f} s from the second signal to the exit"  # generous: a shared, loaded CI machine
    assert "SIGINT received again: stopping now, without saving" in stderr
    assert not (tmp_path / "checkpoints" / "latest").exists()
