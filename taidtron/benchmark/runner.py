"""Run checks one after another, each in its own process group under a time budget, against one deadline, and write
each result the moment it finishes. Standard library only: it must start where torch is missing or broken.

    runner = Runner(out_dir, work_dir, deadline_s=420, env=env, cwd=repo)
    runner.run(checks)                     # in order; returns the records, also written to out_dir

Budgets and the deadline: check i may run until `deadline - (sum of the budgets of the checks after it)`. So every
check gets at least its own budget when the budgets add up to the deadline, and time an early check leaves unused
goes to the later ones. A check that reaches its end is killed with its whole process group (a hang, torchrun's
workers, compile helpers); a check with less than a second left is not started. Children also die with the runner
(`taidtron.lifetime.die_with_parent`), and on SIGTERM / SIGINT the runner kills them before it exits.

A check is a command (`python <command>`, `{result}` standing for its result file, read by `Check.read`, also when
the check was stopped: a check may rewrite its result as it goes, and keeps what it had) or a set
of pytest groups started side by side, each with a per-test timeout (pytest-timeout) and its own junit file, so a
hang costs one test and a group killed at the check's end loses only its own results.

Written to out_dir: `<check>.json` (small: the result, the summary line, the last lines of output) as each check
ends, and `summary.txt` (the table so far) after every check. Full outputs stay in work_dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from taidtron.io import atomic_write_json, atomic_write_text
from taidtron.lifetime import die_with_parent

# (result file, the command's output, its exit code) -> (status, one-line summary, metrics)
Reader = Callable[[Path, str, int], tuple[str, str, dict]]
OUTPUT_TAIL = 3000  # characters of a command's output kept in its JSON (the whole output stays in work_dir)


def read_status_json(path: Path, output: str, code: int) -> tuple[str, str, dict]:
    """A result file holding {status, summary, metrics} (what `taidtron.benchmark.environment` writes)."""
    data = json.loads(path.read_text())
    return data["status"], data.get("summary", ""), data.get("metrics", {})


@dataclass(frozen=True)
class TestGroup:
    """pytest arguments (paths, -m, -k, -n ...) of one group, run in its own pytest process."""

    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Check:
    name: str
    what: str
    budget_s: float
    command: tuple[str, ...] = ()
    """argv after the Python interpreter (a script, or -m module); `{result}` becomes the check's result file."""
    read: Reader = read_status_json
    needs_gpu: bool = True
    env: Mapping[str, str] = field(default_factory=dict)
    groups: tuple[TestGroup, ...] = ()
    """A test check: these pytest groups run side by side instead of `command`."""
    test_timeout_s: float = 60.0
    """pytest-timeout per test of a test check."""

    def describe(self) -> str:
        if self.groups:
            return " | ".join(f"{g.name}: pytest {' '.join(g.args)}" for g in self.groups)
        return "python " + " ".join(self.command)


@dataclass
class _Process:
    proc: subprocess.Popen
    log: Path
    started: float


class Runner:
    def __init__(
        self,
        out_dir: Path,
        work_dir: Path,
        *,
        deadline_s: float,
        env: Mapping[str, str],
        cwd: Path,
        python: str = sys.executable,
        header: Callable[[], str] = lambda: "",
    ):
        self.out_dir, self.work_dir, self.cwd, self.python = Path(out_dir), Path(work_dir), Path(cwd), python
        self.env = dict(env)
        self.start = time.monotonic()
        self.deadline_s = deadline_s
        self.deadline_at = self.start + deadline_s
        self.records: list[dict] = []
        self.header = header
        self._live: dict[int, subprocess.Popen] = {}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)

    # ---- the sequence ---------------------------------------------------------------------------------------------

    def run(self, checks: list[Check], skip: Callable[[Check], str | None] = lambda check: None) -> list[dict]:
        """Run `checks` in order; `skip(check)` names a reason not to start one (e.g. no CUDA device)."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for i, check in enumerate(checks):
                kept = sum(c.budget_s for c in checks[i + 1 :])  # the later checks' budgets stay theirs
                end_at = self.deadline_at - kept
                reason = skip(check)
                if reason:
                    record = self._not_run(check, reason)
                elif end_at - time.monotonic() < 1.0:
                    left = max(0.0, self.deadline_at - time.monotonic())
                    record = self._not_run(
                        check,
                        f"deadline: {left:.0f} s left of {self.deadline_s:.0f}, {kept:.0f} s kept for later checks",
                    )
                else:
                    print(f"== {check.name} (until {self.elapsed(end_at):.0f} s): {check.what}", flush=True)
                    record = self.run_tests(check, end_at) if check.groups else self.run_command(check, end_at)
                    print(f"   {record['status']} in {record['seconds']:.1f} s: {record['summary']}", flush=True)
                self.add(record)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.records

    def add(self, record: dict) -> None:
        """Keep a record and write it, and the summary table so far, to out_dir (atomically, at once)."""
        self.records.append(record)
        atomic_write_json(self.out_dir / f"{record['name']}.json", record, indent=1)
        atomic_write_text(self.out_dir / "summary.txt", self.summary() + "\n")

    def elapsed(self, at: float | None = None) -> float:
        return (time.monotonic() if at is None else at) - self.start

    def summary(self) -> str:
        width = max([len(r["name"]) for r in self.records] + [5])
        lines = [self.header()] if self.header() else []
        lines += [f"{'check':<{width}}  {'status':<11} {'seconds':>7}  result", "-" * (width + 100)]
        lines += [
            f"{r['name']:<{width}}  {r['status']:<11} {r.get('seconds', 0):>7.1f}  {r.get('summary', '')}"
            for r in self.records
        ]
        counts = {
            s: sum(r["status"] == s for r in self.records) for s in dict.fromkeys(r["status"] for r in self.records)
        }
        lines.append(
            f"\n{', '.join(f'{n} {s}' for s, n in counts.items())}; {self.elapsed():.0f} s of the "
            f"{self.deadline_s:.0f} s deadline"
        )
        return "\n".join(lines)

    # ---- one command ----------------------------------------------------------------------------------------------

    def run_command(self, check: Check, end_at: float) -> dict:
        result_file = self.work_dir / f"{check.name}.result"
        result_file.unlink(missing_ok=True)
        argv = [arg.replace("{result}", str(result_file)) for arg in check.command]
        started = time.monotonic()
        running = self._start(argv, self.work_dir / f"{check.name}.log", check.env)
        timed_out = not self._wait_any([running], end_at)
        if timed_out:
            self._kill(running)
        self._live.pop(running.proc.pid, None)
        output = _tail(running.log)
        record = {
            "name": check.name,
            "what": check.what,
            "command": "python " + " ".join(argv),
            "budget_s": check.budget_s,
            "seconds": round(time.monotonic() - started, 1),
            "exit_code": running.proc.returncode,
        }
        try:
            status, summary, metrics = check.read(result_file, output, running.proc.returncode)
        except Exception as exc:  # noqa: BLE001 - a result that cannot be read fails this check only
            last = (output.strip().splitlines() or ["(no output)"])[-1][:300]
            status, metrics = "fail", {}
            summary = f"no readable result ({type(exc).__name__}); exit {running.proc.returncode}: {last}"
            if timed_out:
                summary = "no result yet"
        if timed_out:  # what a check wrote before its end (a benchmark rewrites its result as it goes) is kept
            status, summary = "timeout", f"stopped at {record['seconds']:.0f} s; {summary}"
        return {**record, "status": status, "summary": summary, "metrics": metrics, "output_tail": output}

    # ---- pytest groups side by side -------------------------------------------------------------------------------

    def run_tests(self, check: Check, end_at: float) -> dict:
        started = time.monotonic()
        running, groups = {}, {}
        for group in check.groups:
            junit = self.work_dir / f"junit-{check.name}-{group.name}.xml"
            junit.unlink(missing_ok=True)
            argv = [
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--timeout={check.test_timeout_s:g}",
                f"--junitxml={junit}",
                *group.args,
            ]
            running[group.name] = (
                self._start(argv, self.work_dir / f"{check.name}-{group.name}.log", check.env),
                junit,
            )
            groups[group.name] = {"command": "python " + " ".join(argv), "status": "running"}

        def record() -> dict:
            return self._test_record(check, groups, time.monotonic() - started)

        pending = dict(running)
        while pending:
            self._wait_any([proc for proc, _ in pending.values()], end_at)
            at_end = time.monotonic() >= end_at
            for name, (proc, junit) in list(pending.items()):
                if proc.proc.poll() is None and not at_end:
                    continue
                if proc.proc.poll() is None:  # the check's end: stop the groups still running
                    self._kill(proc)
                    groups[name].update(status="timeout")
                else:
                    groups[name].update(_read_junit(junit))
                self._live.pop(proc.proc.pid, None)
                groups[name].update(
                    seconds=round(time.monotonic() - proc.started, 1),
                    exit_code=proc.proc.returncode,
                    output_tail=_tail(proc.log, 1500),
                )
                del pending[name]
            atomic_write_json(self.out_dir / f"{check.name}.json", record(), indent=1)  # each group as it ends
        return record()

    def _test_record(self, check: Check, groups: dict, seconds: float) -> dict:
        tests = {t: o for g in groups.values() for t, o in g.get("tests", {}).items()}
        counts = {k: sum(o["outcome"] == k for o in tests.values()) for k in ("passed", "failed", "skipped")}
        stopped = [n for n, g in groups.items() if g["status"] == "timeout"]
        unread = [n for n, g in groups.items() if g["status"] == "no_result"]
        empty = [n for n, g in groups.items() if g["status"] == "ended" and not g["tests"]]
        failed = [t for t, o in tests.items() if o["outcome"] == "failed"]
        skipped = [f"{t} ({o.get('reason', '')[:120]})" for t, o in tests.items() if o["outcome"] == "skipped"]
        summary = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        summary += f"; failed: {', '.join(failed)}" if failed else ""
        summary += f"; skipped: {', '.join(skipped)}" if skipped else ""
        summary += f"; stopped at the check's end, no results: {', '.join(stopped)}" if stopped else ""
        summary += f"; ended without a junit file: {', '.join(unread)}" if unread else ""
        summary += f"; collected no test: {', '.join(empty)}" if empty else ""
        if failed or unread or empty:
            status = "fail"  # a failure, a group that died, a group that found nothing to run
        elif stopped:
            status = "timeout"
        elif skipped or not counts["passed"]:
            status = "partial"
        else:
            status = "pass"
        return {
            "name": check.name,
            "what": check.what,
            "command": check.describe(),
            "budget_s": check.budget_s,
            "seconds": round(seconds, 1),
            "status": status,
            "summary": summary,
            "metrics": {**counts, "groups": groups},
        }

    # ---- processes ------------------------------------------------------------------------------------------------

    def _start(self, argv: list[str], log: Path, extra_env: Mapping[str, str]) -> _Process:
        parent = os.getpid()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [self.python, *argv],
                cwd=self.cwd,
                env={**self.env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole at its end
                preexec_fn=lambda: die_with_parent(parent),
            )
        self._live[proc.pid] = proc
        return _Process(proc, log, time.monotonic())

    def _wait_any(self, processes: list[_Process], end_at: float) -> bool:
        """Wait until one of `processes` has ended (True) or `end_at` has come (False)."""
        while not any(p.proc.poll() is not None for p in processes):
            if time.monotonic() >= end_at:
                return False
            time.sleep(0.1)
        return True

    def _kill(self, running: _Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait()
        self._live.pop(running.proc.pid, None)

    def _stop(self, signum, frame) -> None:
        """SIGTERM / SIGINT: kill every running check with its process group; what finished is already written."""
        for pid in list(self._live):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        print(f"gpu check stopped by signal {signum}; results so far are in {self.out_dir}", file=sys.stderr)
        os._exit(128 + signum)

    def _not_run(self, check: Check, reason: str) -> dict:
        return {
            "name": check.name,
            "what": check.what,
            "budget_s": check.budget_s,
            "status": "not_run",
            "seconds": 0.0,
            "summary": reason,
        }


def _tail(path: Path, limit: int = OUTPUT_TAIL) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _read_junit(path: Path) -> dict:
    """Test outcomes of one pytest run from its junit file: {status, tests: {name: {outcome, seconds, ...}}}."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {"status": "no_result", "tests": {}}
    tests = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        outcome = "failed" if problem is not None else "skipped" if skipped is not None else "passed"
        entry = {"outcome": outcome, "seconds": round(float(case.get("time", 0)), 1)}
        if problem is not None:
            entry["message"] = (problem.get("message") or "")[:500]
        if skipped is not None:
            entry["reason"] = skipped.get("message") or ""
        tests[name] = entry
    return {"status": "ended", "tests": tests}
