"""Run the experiment's jobs on a pool of worker processes, longest ready job first.

Each worker imports torch and megatron-core once and runs job after job in-process: a train job through
`taidtron.train.run`, a test measurement through `taidtron.train.session` + `taidtron.evaluate.evaluate`, each in its
own world of one (process groups and megatron's state built for the run and torn down after it). A run in a reused
worker equals the same run in a fresh process (tests/results/test_paper_mini.py). Every worker runs one thread, so no
number depends on the machine's core count or on how many workers there are; its output goes to the job's log. A
worker dies with the experiment (`taidtron.lifetime`), and so does every process it forks.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import shutil
import sys
import time
import traceback
from pathlib import Path

from taidtron.experiments.paper_mini.jobs import Job, finished
from taidtron.experiments.paper_mini.paths import CONFIG
from taidtron.io import atomic_write_json

THREADS_PER_WORKER = 1
"""Intra-op threads of every run. Fixed, not the core count: torch's CPU reductions split work by thread, so a
different thread count gives (slightly) different numbers."""
# The code paths this experiment's numbers come from, pinned for x86 CPUs with AVX2 (the results page's machine):
# torch's vectorized kernels, MKL's GEMMs and oneDNN otherwise pick wider instructions (AVX-512) or other blockings
# on another CPU, which round differently. On an AVX2 machine these are what the libraries choose anyway.
PINNED_CODE_PATHS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
X86_AVX2_OR_WIDER = ("AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX")


@contextlib.contextmanager
def _output_to(log: Path):
    """Send this process's stdout/stderr (file descriptors, so C++ and child output too) to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def execute(job: dict, cache_dir: str) -> dict:
    """Run one job in this process, in its own world of one; write its marker on success."""
    from taidtron.config import load_config
    from taidtron.distributed import LaunchEnv
    from taidtron.evaluate import evaluate
    from taidtron.train import run, session

    wall, cpu = time.perf_counter(), time.process_time()
    payload: dict = {}
    with _output_to(Path(job["log"])):
        try:
            # The index cache is per worker: two workers must never write the same megatron .npy files at once.
            cfg = load_config(CONFIG, [*job["overrides"], f"data.cache_dir={cache_dir}"])
            if job["kind"] == "train":
                code = run(cfg, launch=LaunchEnv.single())
                if code != 0:
                    raise RuntimeError(f"the run returned exit code {code}")
            else:
                with session(cfg, launch=LaunchEnv.single()) as ctx:
                    payload = evaluate(cfg, ctx, split="test", max_batches=job["max_batches"])
        except Exception as exc:  # reported to the orchestrator; the traceback is in the job's log
            traceback.print_exc()
            return {"name": job["name"], "ok": False, "error": f"{type(exc).__name__}: {exc}", "log": job["log"]}
    timing = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    atomic_write_json(Path(job["marker"]), {"spec": job["spec"], **timing, **payload}, indent=1)
    return {"name": job["name"], "ok": True, **timing}


def worker_main(parent: int, jobs: mp.Queue, results: mp.Queue, cache_dir: str) -> None:
    from taidtron import lifetime

    lifetime.die_with_parent(parent)  # a spawned child: no fork hook ran, it asks itself
    lifetime.install()  # what this worker forks (the checkpoint writer's queue manager) dies with it
    import torch

    torch.set_num_threads(THREADS_PER_WORKER)
    # One worker serves every job it is given: a run, failed or not, leaves no thread or model behind
    # (tests/train/test_teardown.py).
    while (job := jobs.get()) is not None:
        results.put({"started": job["name"], "pid": os.getpid()})
        try:
            results.put(execute(job, cache_dir))
        except BaseException as exc:  # keep serving: the orchestrator decides
            results.put({"name": job["name"], "ok": False, "error": repr(exc), "log": job["log"]})


def _message(job: Job) -> dict:
    return {
        "name": job.name,
        "kind": job.kind,
        "overrides": job.overrides,
        "spec": job.spec,
        "marker": str(job.marker),
        "max_batches": job.max_batches,
        "log": str((job.run_dir or job.marker.parent) / f"{job.name}.log"),
    }


def worker_environment() -> dict[str, str]:
    """What every worker runs with: one thread, no progress bars, no GPU and, on x86 with AVX2, PINNED_CODE_PATHS."""
    import torch

    env = {"OMP_NUM_THREADS": str(THREADS_PER_WORKER), "TAIDTRON_NO_PROGRESS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if torch.backends.cpu.get_cpu_capability() in X86_AVX2_OR_WIDER:
        env.update(PINNED_CODE_PATHS)
    return env


def run_jobs(jobs: list[Job], work: Path, workers: int) -> dict[str, dict]:
    """Run what is not finished yet on `workers` processes, longest ready job first; returns {name: result}."""
    results = {job.name: {"ok": True, "cached": True, **marker} for job in jobs if (marker := finished(job))}
    todo = {job.name: job for job in jobs if job.name not in results}
    total, started_at = len(jobs), time.time()
    print(f"{len(results)} of {total} runs already done; {len(todo)} to run on {workers} worker(s)", flush=True)
    if not todo:
        return results
    # Spawned workers inherit these: one thread per process, no progress bars, no GPU, the pinned code paths.
    os.environ.update(worker_environment())
    context = mp.get_context("spawn")
    job_queue, result_queue = context.Queue(), context.Queue()

    def spawn(index: int):
        process = context.Process(
            target=worker_main,
            name=f"paper-mini-{index}",
            args=(os.getpid(), job_queue, result_queue, str(work / "cache" / f"worker{index}")),
        )
        process.start()
        return process

    pool = [spawn(i) for i in range(min(workers, len(todo)))]
    in_flight: dict[str, int | None] = {}  # job name -> worker pid once started
    try:
        while todo or in_flight:
            for name, job in list(todo.items()):
                failed = [d for d in job.deps if d in results and not results[d]["ok"]]
                if failed:
                    results[name] = {"ok": False, "error": f"skipped: {failed[0]} failed"}
                    del todo[name]
            ready = sorted(
                (j for j in todo.values() if all(results.get(d, {}).get("ok") for d in j.deps)), key=lambda j: -j.cost
            )
            for job in ready[: max(0, len(pool) - len(in_flight))]:
                if job.run_dir is not None and job.kind == "train":
                    shutil.rmtree(job.run_dir, ignore_errors=True)  # a stale or half-written run must not resume
                job.marker.unlink(missing_ok=True)
                job_queue.put(_message(job))
                in_flight[job.name] = None
                del todo[job.name]
            if not in_flight:
                break
            try:
                message = result_queue.get(timeout=10)
            except queue.Empty:
                for process in [p for p in pool if not p.is_alive()]:  # killed mid-run (e.g. out of memory)
                    for name in [n for n, pid in in_flight.items() if pid == process.pid]:
                        results[name] = {"ok": False, "error": f"worker exited with {process.exitcode}"}
                        del in_flight[name]
                    pool[pool.index(process)] = spawn(len(pool) + len(results))
                continue
            if "started" in message:
                in_flight[message["started"]] = message["pid"]
                continue
            name = message["name"]
            in_flight.pop(name, None)
            results[name] = message
            state = (
                f"{message['wall_s']:.0f} s (CPU {message['cpu_s']:.0f} s)"
                if message["ok"]
                else f"FAILED: {message['error']} (log: {message.get('log')})"
            )
            elapsed = (time.time() - started_at) / 60
            print(f"[{len(results)}/{total}] {name}: {state}; elapsed {elapsed:.1f} min", flush=True)
    finally:
        for _ in pool:
            job_queue.put(None)
        for process in pool:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    return results
