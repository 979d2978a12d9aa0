"""The experiment end to end: data, the jobs, the runs, the raw results, the page (`tools/paper_mini.py` is its
command line)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from taidtron.experiments.paper_mini.dataset import prepare_data
from taidtron.experiments.paper_mini.design import Design
from taidtron.experiments.paper_mini.jobs import GENERAL, TARGET, Job, plan_jobs
from taidtron.experiments.paper_mini.page import write_page
from taidtron.experiments.paper_mini.paths import CONFIG, rel
from taidtron.experiments.paper_mini.results import collect
from taidtron.experiments.paper_mini.runner import PINNED_CODE_PATHS, THREADS_PER_WORKER, run_jobs, worker_environment
from taidtron.io import atomic_write_json

RAW_NAME = "paper_mini.json"


def hardware() -> dict:
    """What the numbers were computed on: a rerun elsewhere may round differently."""
    from importlib.metadata import version

    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return {
        "cpu": model or platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "megatron_core": version("megatron-core"),
        "platform": platform.platform(),
        "pinned": {k: v for k, v in worker_environment().items() if k in PINNED_CODE_PATHS},
    }


def cost_by_kind(jobs: list[Job], results: dict) -> dict[str, dict]:
    """Runs, CPU and wall seconds per line of the cost table (finished runs, reused ones included)."""
    kinds: dict[str, dict] = {}
    for job in jobs:
        result = results.get(job.name, {})
        if not result.get("ok"):
            continue
        entry = kinds.setdefault(job.cost_group, {"runs": 0, "cpu_s": 0.0, "wall_s": 0.0, "steps": 0, "reused": 0})
        entry["runs"] += 1
        entry["cpu_s"] += result["cpu_s"]
        entry["wall_s"] += result["wall_s"]
        entry["steps"] += job.steps
        entry["reused"] += bool(result.get("cached"))
    return kinds


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_experiment(design: Design, work: Path, out: Path, *, jobs: int, deb: Path | None, command: str, quick: bool):
    """Everything, then the raw results and the page in `out`. Returns (page, raw results)."""
    from taidtron.config import load_config

    load_start, start = _load(), time.time()
    base = load_config(CONFIG, list(design.run_overrides))
    splits = {GENERAL: base.data.split, TARGET: design.transfer.split if design.transfer else base.data.split}
    data = prepare_data(work, design, deb, splits)
    data_wall = time.time() - start
    print(
        f"data: {data['corpus']['documents']} pages; tokens {data['tokens']} ({data_wall:.0f} s)",
        flush=True,
    )
    planned, cells = plan_jobs(work, design, {"tokenizer": data["tokenizer_fingerprint"], "text": data["text_sha256"]})
    runs_start = time.time()
    results = run_jobs(planned, work, jobs)
    by_kind = cost_by_kind(planned, results)
    timing = {
        "command": command,
        "quick": quick,
        "hardware": hardware(),
        "workers": min(jobs, len(planned)),
        "threads": THREADS_PER_WORKER,
        "wall_s": time.time() - start,
        "data_wall_s": data_wall,
        "runs_wall_s": time.time() - runs_start,
        "by_kind": by_kind,
        "cpu_s": sum(entry["cpu_s"] for entry in by_kind.values()),
        "reused": sum(1 for r in results.values() if r.get("cached")),
        "load_start": load_start,
        "load_end": _load(),
    }
    raw = collect(design, planned, cells, results, data, timing)
    atomic_write_json(out / RAW_NAME, raw, indent=1)
    page = write_page(raw, out, RAW_NAME)
    minutes = f"{timing['wall_s'] / 60:.1f} min, {timing['cpu_s'] / 60:.1f} CPU-min"
    print(f"wrote {rel(page)} and {rel(out / RAW_NAME)} ({minutes})")
    return page, raw
