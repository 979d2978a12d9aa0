"""`make paper-mini`: TAID against the baselines across teacher sizes (the paper's capacity-gap experiment), at a
scale a 2-core CPU finishes in about an hour, with the results page written from the runs' raw numbers.

    python tools/paper_mini.py                 # the full experiment -> docs/results/paper_mini.md (+ .json, PNGs)
    python tools/paper_mini.py --quick         # a 1-2 minute pipeline check -> runs/paper_mini_quick/results/
    python tools/paper_mini.py --report-only   # rewrite the page and plots from docs/results/paper_mini.json

Steps, all through taidtron's own components:
  1. data: the Python 3.11 documentation from Debian's python3.11-doc package (tools/pydoc_corpus.py: fetched with
     apt-get, PSF licence), a sentencepiece tokenizer trained on it, a megatron indexed dataset. data.split gives
     whole pages to train / valid (the curves) / test (the table); no model trains on valid or test.
  2. teachers of several sizes pretrained on it with the trainer (`taid.loss=lm`, the overrides of
     tools/smoke_test.py's teacher pretraining);
  3. one student architecture distilled from each teacher with taid and every baseline, and trained without a
     teacher (`taid.loss=lm`, the floor), for each seed. Every student run has the same steps, batch and
     learning-rate schedule; seed k sets both the initialisation (`seed=k`) and the data order (`data.seed=k`),
     the same for every method, so runs of one seed see identical batches;
  4. each student measured on the test split against each teacher it is compared with (`taidtron.evaluate`,
     `taid.loss=fkl` so the teacher is built; fixed data seed, so every run is measured on the same tokens): its
     next-token loss and KL(teacher || student);
  5. `<out>/paper_mini.json` (final numbers and curves of every run), `paper_mini.md`, `paper_mini_*.png`.

Runs execute in --jobs worker processes (default: one per core, one thread each), each calling
`taidtron.trainer.fit` / `taidtron.evaluate.evaluate` in-process, so torch and megatron-core are imported once per
worker, not once per run. Every run starts from a fresh megatron state: its own world of one (process group and
megatron parallel state created for the run and destroyed after it), `seed_everything` before building, and
megatron's RNG tracker reset by it (tests/results/test_paper_mini.py checks that a run in a reused worker equals
`python -m taidtron.train`). Each run's output lives under <work-dir>/; a finished run is reused when its
configuration is unchanged, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shlex
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
for _path in (str(REPO), str(TOOLS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

CONFIG = REPO / "configs" / "paper_mini.yaml"
DEB_CACHE = REPO / "runs" / "pydoc_deb"
METHODS = ("taid", "fkl", "rkl", "tvd", "skew_fkl", "skew_rkl", "js")
FLOOR = "lm"
LABELS = {
    "taid": "TAID",
    "fkl": "FKL",
    "rkl": "RKL",
    "tvd": "TVD",
    "skew_fkl": "skew FKL",
    "skew_rkl": "skew RKL",
    "js": "JS",
    FLOOR: "no teacher (lm)",
}
# Teacher architectures (qwen2 family, untied output layer), smallest first. The student is configs/paper_mini.yaml's.
TEACHERS = {
    "S": {"num_layers": 2, "hidden_size": 192, "num_attention_heads": 6, "num_query_groups": 3, "ffn_hidden_size": 512},
    "M": {"num_layers": 4, "hidden_size": 256, "num_attention_heads": 8, "num_query_groups": 4, "ffn_hidden_size": 704},
    "L": {"num_layers": 6, "hidden_size": 320, "num_attention_heads": 8, "num_query_groups": 4, "ffn_hidden_size": 864},
}
# One colour per method in every plot (TAID's red is nobody else's).
METHOD_COLORS = {
    "taid": "tab:red",
    "fkl": "tab:blue",
    "rkl": "tab:orange",
    "tvd": "tab:green",
    "skew_fkl": "tab:purple",
    "skew_rkl": "tab:brown",
    "js": "tab:cyan",
    FLOOR: "black",
}
EVAL_DATA_SEED = 1234  # the test batches every run is measured on
VALID_KEYS = ("valid_student_lm_loss", "valid_kl_teacher_student", "valid_distill_loss")


@dataclass(frozen=True)
class Sweep:
    """What the experiment runs; every value is printed on the results page."""

    teachers: tuple[str, ...]
    """Teacher sizes (keys of TEACHERS), smallest first."""
    methods: tuple[str, ...]
    """Distillation objectives (taid.loss); the no-teacher floor is always run too."""
    seeds: tuple[int, ...]
    """Seed k: `seed=k` (initialisation) and `data.seed=k` (data order), identical across methods."""
    student_steps: int
    """Optimizer steps of every student run (distillation and floor)."""
    student_warmup: int
    teacher_steps: int
    """Optimizer steps of each teacher's pretraining."""
    teacher_lr: float
    """Peak learning rate of the teachers' pretraining (cosine to a tenth, warm-up a tenth of the steps)."""
    eval_interval: int
    """Validation every this many steps (the curves)."""
    test_batches: int | None
    """Global batches of the test split each student is measured on, the same for all runs (None: all of it)."""
    vocab_size: int
    """Tokenizer vocabulary (sentencepiece BPE) = the models' vocab_size."""
    max_pages: int | None
    """Pages of the manual in the corpus (None: all)."""


FULL = Sweep(
    teachers=("S", "M", "L"),
    methods=METHODS,
    seeds=(1, 2),
    student_steps=100,
    student_warmup=10,
    teacher_steps=1000,
    teacher_lr=2e-3,
    eval_interval=25,
    test_batches=24,  # of the test split's 50: every run is measured on the same 49K tokens
    vocab_size=2048,
    max_pages=None,
)
QUICK = Sweep(
    teachers=("S",),
    methods=("taid", "skew_fkl"),
    seeds=(1, 2),
    student_steps=12,
    student_warmup=2,
    teacher_steps=20,
    teacher_lr=3e-3,
    eval_interval=6,
    test_batches=2,
    vocab_size=512,
    max_pages=60,
)
TOKENIZER_COVERAGE = 0.9995  # characters rarer than this become <unk> (the manual quotes many scripts)


def rel(path: Path | str) -> str:
    """A path as the page shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------------------------
# 1. data


def prepare_data(work: Path, sweep: Sweep, deb: Path | None) -> dict:
    """Corpus, tokenizer and indexed dataset under <work>/data (each rebuilt only when its input changed); returns
    what the page reports about them."""
    from pydoc_corpus import build_corpus, fetch_deb

    from taidtron.data import build_indexed_dataset, load_tokenizer, train_sentencepiece
    from taidtron.data.loader import parse_split

    data = work / "data"
    corpus = build_corpus(deb or fetch_deb(DEB_CACHE), data, sweep.max_pages)
    tokenizer_path, prefix = data / "tokenizer.model", data / "pydoc_text_document"
    want = {"text_sha256": corpus["text_sha256"], "vocab_size": sweep.vocab_size, "coverage": TOKENIZER_COVERAGE}
    built = read_json(data / "build.json")
    if not (
        built
        and {k: built.get(k) for k in want} == want
        and tokenizer_path.is_file()
        and Path(f"{prefix}.idx").is_file()
    ):
        train_sentencepiece(
            [data / "pydoc.jsonl"],
            data / "tokenizer",
            vocab_size=sweep.vocab_size,
            character_coverage=TOKENIZER_COVERAGE,
        )
        stats = build_indexed_dataset(
            [data / "pydoc.jsonl"],
            prefix,
            tokenizer_path,
            workers=min(2, os.cpu_count() or 1),
            force=True,
            progress=False,
        )
        built = {
            **want,
            "tokenizer_fingerprint": load_tokenizer(tokenizer_path).fingerprint(),
            "tokens": stats["tokens"],
            "documents": stats["documents"],
        }
        write_json(data / "build.json", built)

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from taidtron.config import load_config

    dataset = IndexedDataset(str(prefix))
    lengths = [int(n) for n in dataset.sequence_lengths]  # copied: the array is a view of the dataset's mmap
    del dataset
    split = load_config(CONFIG).data.split
    bounds, cumulative = [0], 0.0
    for share in parse_split(split):  # megatron-core's rounding of the document ranges
        cumulative += share
        bounds.append(int(round(cumulative * len(lengths))))
    parts = {
        name: {"documents": end - beg, "tokens": sum(lengths[beg:end])}
        for name, beg, end in zip(("train", "valid", "test"), bounds, bounds[1:])
    }
    return {
        "corpus": corpus,
        "tokenizer": rel(tokenizer_path),
        "prefix": rel(prefix),
        "split": split,
        "parts": parts,
        **built,
    }


# ----------------------------------------------------------------------------------------------------------
# 2.-4. the runs


@dataclass
class Job:
    name: str
    kind: str
    """train (taidtron.trainer.fit) or eval (taidtron.evaluate.evaluate on the test split)."""
    overrides: list[str]
    marker: Path
    """Written when the job succeeded: its spec, time and (eval) metrics. Train: <run dir>/job.json."""
    deps: list[str] = field(default_factory=list)
    cost: float = 0.0
    """Estimated matmul FLOPs, to start the longest jobs first."""
    run_dir: Path | None = None
    max_batches: int | None = None
    spec: str = ""


def _arch(prefix: str, arch: dict) -> list[str]:
    return [f"{prefix}.{key}={value}" for key, value in arch.items()]


def _matmul_params(arch: dict, vocab: int) -> int:
    from taidtron.config import ModelConfig
    from taidtron.flops import matmul_params_per_token

    return matmul_params_per_token(ModelConfig(**arch, vocab_size=vocab), vocab)


def plan_jobs(work: Path, sweep: Sweep, data: dict) -> list[Job]:
    """Every run of the experiment, with its dependencies and its spec (a hash of what determines its result)."""
    from taidtron.config import load_config
    from taidtron.recipes import teacher_pretraining_overrides

    base = load_config(CONFIG)
    student_arch = {
        k: getattr(base.student, k)
        for k in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size")
    }
    tokens_per_step = base.parallel.global_batch_size * base.data.seq_length
    common = [
        f"data.blend=[{work / 'data' / 'pydoc_text_document'}]",
        f"data.tokenizer={work / 'data' / 'tokenizer.model'}",
        f"student.vocab_size={sweep.vocab_size}",
        f"teacher.vocab_size={sweep.vocab_size}",
        "logging.wandb_mode=disabled",
    ]
    student_cost = 6 * _matmul_params(student_arch, sweep.vocab_size) * tokens_per_step * sweep.student_steps
    jobs: list[Job] = []
    teacher_ckpt = {}
    for size in sweep.teachers:
        run_dir = work / "teachers" / size
        teacher_ckpt[size] = run_dir / "checkpoints"
        overrides = teacher_pretraining_overrides(
            CONFIG,
            [*common, *_arch("teacher", TEACHERS[size])],
            teacher_ckpt[size],
            run_dir,
            sweep.teacher_steps,
            sweep.teacher_lr,
        )
        overrides += [f"logging.eval_interval={sweep.eval_interval * 2}", "logging.eval_iters=4"]
        jobs.append(
            Job(
                f"teacher-{size}",
                "train",
                overrides,
                run_dir / "job.json",
                run_dir=run_dir,
                cost=6 * _matmul_params(TEACHERS[size], sweep.vocab_size) * tokens_per_step * sweep.teacher_steps,
            )
        )
    student = [
        *common,
        f"optim.train_steps={sweep.student_steps}",
        f"optim.warmup_steps={sweep.student_warmup}",
        f"logging.eval_interval={sweep.eval_interval}",
        "checkpoint.save_interval=0",
        "checkpoint.keep_last=1",
    ]
    for seed in sweep.seeds:
        seeded = [*student, f"seed={seed}", f"data.seed={seed}"]
        runs = [("floor", FLOOR, None)] + [(size, method, size) for size in sweep.teachers for method in sweep.methods]
        for group, method, size in runs:
            run_dir = work / "runs" / group / (method if size else "") / f"s{seed}"
            teacher = [*_arch("teacher", TEACHERS[size]), f"teacher.init={teacher_ckpt[size]}"] if size else []
            train = Job(
                f"train-{group}-{method}-s{seed}" if size else f"train-floor-s{seed}",
                "train",
                [*seeded, f"taid.loss={method}", *teacher, f"logging.run_dir={run_dir}"],
                run_dir / "job.json",
                deps=[f"teacher-{size}"] if size else [],
                run_dir=run_dir,
                cost=student_cost
                + (
                    2 * _matmul_params(TEACHERS[size], sweep.vocab_size) * tokens_per_step * sweep.student_steps
                    if size
                    else 0
                ),
            )
            jobs.append(train)
            for eval_size in [size] if size else sweep.teachers:
                measured = [
                    *student,
                    f"seed={seed}",
                    f"data.seed={EVAL_DATA_SEED}",
                    "taid.loss=fkl",
                    *_arch("teacher", TEACHERS[eval_size]),
                    f"teacher.init={teacher_ckpt[eval_size]}",
                    f"student.init={run_dir / 'checkpoints'}",
                    f"logging.run_dir={run_dir}",
                ]
                jobs.append(
                    Job(
                        f"eval-{train.name.removeprefix('train-')}-{eval_size}",
                        "eval",
                        measured,
                        run_dir / f"test_{eval_size}.json",
                        deps=[train.name, f"teacher-{eval_size}"],
                        max_batches=sweep.test_batches,
                        cost=0.0,
                    )
                )
    specs: dict[str, str] = {}
    fingerprint = {"tokenizer": data["tokenizer_fingerprint"], "text": data["text_sha256"]}
    for job in jobs:  # dependencies come first in the list
        # The resolved configuration, not the overrides: an edit of configs/paper_mini.yaml reruns what it changes.
        resolved = load_config(CONFIG, job.overrides).to_dict()
        payload = {
            "kind": job.kind,
            "config": resolved,
            "max_batches": job.max_batches,
            "data": fingerprint,
            "deps": [specs[d] for d in job.deps],
        }
        job.spec = specs[job.name] = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
    return jobs


def finished(job: Job) -> dict | None:
    """The job's marker when it holds this spec (a finished, still valid run), else None."""
    marker = read_json(job.marker)
    return marker if marker and marker.get("spec") == job.spec else None


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
    from taidtron.distributed import LaunchEnv, destroy_distributed, init_distributed, seed_everything
    from taidtron.evaluate import evaluate
    from taidtron.trainer import fit

    wall, cpu = time.perf_counter(), time.process_time()
    payload: dict = {}
    with _output_to(Path(job["log"])):
        try:
            # The index cache is per worker: two workers must never write the same megatron .npy files at once.
            cfg = load_config(CONFIG, [*job["overrides"], f"data.cache_dir={cache_dir}"])
            ctx = init_distributed(cfg.parallel, launch=LaunchEnv.single())
            try:
                cfg.validate_layout(ctx.world_size)
                seed_everything(cfg.seed, ctx)
                if job["kind"] == "train":
                    code = fit(cfg, ctx)
                    if code != 0:
                        raise RuntimeError(f"fit returned exit code {code}")
                else:
                    payload = evaluate(cfg, ctx, split="test", max_batches=job["max_batches"])
            finally:
                destroy_distributed()
        except Exception as exc:  # reported to the orchestrator; the traceback is in the job's log
            traceback.print_exc()
            return {"name": job["name"], "ok": False, "error": f"{type(exc).__name__}: {exc}", "log": job["log"]}
    timing = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    write_json(Path(job["marker"]), {"spec": job["spec"], **timing, **payload})
    return {"name": job["name"], "ok": True, **timing}


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def worker_main(jobs: mp.Queue, results: mp.Queue, threads: int, cache_dir: str) -> None:
    _die_with_parent()
    # Processes this worker forks (the checkpoint writer's queue manager) die with it too.
    os.register_at_fork(after_in_child=_die_with_parent)
    import torch

    torch.set_num_threads(threads)
    # One worker serves every job it is given: a run, failed or not, leaves no thread or model behind
    # (tests/train/test_teardown.py).
    while (job := jobs.get()) is not None:
        results.put({"started": job["name"], "pid": os.getpid()})
        try:
            results.put(execute(job, cache_dir))
        except BaseException as exc:  # keep serving: the orchestrator decides
            results.put({"name": job["name"], "ok": False, "error": repr(exc), "log": job["log"]})


def run_jobs(jobs: list[Job], work: Path, workers: int, threads: int) -> dict[str, dict]:
    """Run what is not finished yet on `workers` processes, longest ready job first; returns {name: result}."""
    results = {job.name: {"ok": True, "cached": True, **marker} for job in jobs if (marker := finished(job))}
    todo = {job.name: job for job in jobs if job.name not in results}
    total, started_at = len(jobs), time.time()
    print(
        f"{len(results)} of {total} runs already done; {len(todo)} to run on {workers} worker(s) x {threads} thread(s)",
        flush=True,
    )
    if not todo:
        return results
    context = mp.get_context("spawn")
    job_queue, result_queue = context.Queue(), context.Queue()
    pool: list = []

    def spawn(index: int):
        process = context.Process(
            target=worker_main,
            name=f"paper-mini-{index}",
            daemon=False,
            args=(job_queue, result_queue, threads, str(work / "cache" / f"worker{index}")),
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
                job_queue.put(
                    {
                        "name": job.name,
                        "kind": job.kind,
                        "overrides": job.overrides,
                        "spec": job.spec,
                        "marker": str(job.marker),
                        "max_batches": job.max_batches,
                        "log": str((job.run_dir or job.marker.parent) / f"{job.name}.log"),
                    }
                )
                in_flight[job.name] = None
                del todo[job.name]
            if not in_flight:
                break
            try:
                message = result_queue.get(timeout=10)
            except queue.Empty:
                dead = [p for p in pool if not p.is_alive()]
                for process in dead:  # a worker killed mid-run (e.g. out of memory): fail its job, replace it
                    lost = [n for n, pid in in_flight.items() if pid == process.pid]
                    for name in lost:
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
            elapsed = time.time() - started_at
            state = (
                f"{message['wall_s']:.0f} s (CPU {message['cpu_s']:.0f} s)"
                if message["ok"]
                else f"FAILED: {message['error']} (log: {message.get('log')})"
            )
            print(f"[{len(results)}/{total}] {name}: {state}; elapsed {elapsed / 60:.1f} min", flush=True)
    finally:
        for _ in pool:
            job_queue.put(None)
        for process in pool:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    return results


def cost_by_kind(jobs: list[Job], results: dict, sweep: Sweep) -> dict[str, dict]:
    """Runs, CPU and wall seconds per kind of job (finished ones, reused ones included: their marker keeps them)."""
    kinds: dict[str, dict] = {}
    for job in jobs:
        result = results.get(job.name, {})
        if not result.get("ok"):
            continue
        if job.kind == "eval":
            kind, steps = "held-out evaluation", 0
        elif job.name.startswith("teacher-"):
            kind, steps = f"teacher {job.name.removeprefix('teacher-')} pretraining", sweep.teacher_steps
        elif job.name.startswith("train-floor"):
            kind, steps = "student without teacher (floor)", sweep.student_steps
        else:
            kind, steps = f"student distilled from teacher {job.name.split('-')[1]}", sweep.student_steps
        entry = kinds.setdefault(kind, {"runs": 0, "cpu_s": 0.0, "wall_s": 0.0, "steps": 0, "reused": 0})
        entry["runs"] += 1
        entry["cpu_s"] += result["cpu_s"]
        entry["wall_s"] += result["wall_s"]
        entry["steps"] += steps
        entry["reused"] += bool(result.get("cached"))
    return kinds


# ----------------------------------------------------------------------------------------------------------
# 5. raw results


def _curve(rows: list[dict], key: str, every: int = 1) -> list[list[float]]:
    points = [[r["step"], r[key]] for r in rows if key in r]
    return [p for i, p in enumerate(points) if i % every == 0 or i == len(points) - 1]


def collect(work: Path, sweep: Sweep, jobs: list[Job], results: dict, data: dict, timing: dict) -> dict:
    """Everything the page shows, from the runs' files: one record per (method, teacher, seed)."""
    import yaml

    from taidtron.config import ModelConfig, load_config
    from taidtron.plan import stage_parameters
    from taidtron.plots import read_jsonl

    by_name = {job.name: job for job in jobs}

    def params(arch: dict) -> int:
        return stage_parameters(
            ModelConfig(**arch, vocab_size=sweep.vocab_size),
            tp=1,
            pp=1,
            stage=0,
            padded_vocab=math.ceil(sweep.vocab_size / 128) * 128,
        )

    base = load_config(CONFIG)
    student_arch = {
        f.name: getattr(base.student, f.name)
        for f in dataclasses.fields(base.student)
        if f.name not in ("init", "vocab_size")
    }
    teachers = {}
    for size in sweep.teachers:
        job = by_name[f"teacher-{size}"]
        rows = read_jsonl(job.run_dir / "metrics.jsonl") if (job.run_dir / "metrics.jsonl").is_file() else []
        evals = read_jsonl(job.run_dir / "eval.jsonl") if (job.run_dir / "eval.jsonl").is_file() else []
        arch = {
            **{
                f.name: getattr(base.teacher, f.name)
                for f in dataclasses.fields(base.teacher)
                if f.name not in ("init", "vocab_size")
            },
            **TEACHERS[size],
        }
        teachers[size] = {
            "arch": arch,
            "params": params(TEACHERS[size] | {"family": "qwen2"}),
            "final_train_loss": rows[-1]["loss"] if rows else None,
            "valid": _curve(evals, "valid_student_lm_loss"),
            "wall_s": results.get(job.name, {}).get("wall_s"),
            "cpu_s": results.get(job.name, {}).get("cpu_s"),
        }
    runs = []
    for seed in sweep.seeds:
        for method in (FLOOR, *sweep.methods):
            for size in sweep.teachers:
                train = by_name[f"train-floor-s{seed}" if method == FLOOR else f"train-{size}-{method}-s{seed}"]
                test = read_json(train.run_dir / f"test_{size}.json")
                rows = (
                    read_jsonl(train.run_dir / "metrics.jsonl") if (train.run_dir / "metrics.jsonl").is_file() else []
                )
                evals = read_jsonl(train.run_dir / "eval.jsonl") if (train.run_dir / "eval.jsonl").is_file() else []
                runs.append(
                    {
                        "method": method,
                        "teacher": size,
                        "seed": seed,
                        "run_dir": rel(train.run_dir),
                        "ok": bool(test) and bool(results.get(train.name, {}).get("ok")),
                        "test": {k.removeprefix("test_"): v for k, v in (test or {}).items() if k.startswith("test_")},
                        "test_tokens": (test or {}).get("tokens"),
                        "test_batches": (test or {}).get("batches"),
                        "valid": {k: _curve(evals, k) for k in VALID_KEYS if any(k in r for r in evals)},
                        "loss": _curve(rows, "loss", every=5),
                        "taid_t": _curve(rows, "taid_t"),
                        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows) if rows else None,
                        "wall_s": results.get(train.name, {}).get("wall_s"),
                        "cpu_s": results.get(train.name, {}).get("cpu_s"),
                    }
                )
    sample = next((j for j in jobs if j.name.startswith("train-") and j.name != "train-floor-s1"), jobs[-1])
    resolved = (
        yaml.safe_load((sample.run_dir / "config.yaml").read_text())
        if sample.run_dir and (sample.run_dir / "config.yaml").is_file()
        else {}
    )
    teacher_job = by_name[f"teacher-{sweep.teachers[0]}"]
    teacher_resolved = (
        yaml.safe_load((teacher_job.run_dir / "config.yaml").read_text())
        if (teacher_job.run_dir / "config.yaml").is_file()
        else {}
    )
    failures = {name: r.get("error") for name, r in results.items() if not r.get("ok")}
    return {
        "sweep": dataclasses.asdict(sweep),
        "labels": LABELS,
        "data": data,
        "timing": timing,
        "student": {"arch": student_arch, "params": params(student_arch)},
        "teachers": teachers,
        "runs": runs,
        "config": {k: resolved.get(k) for k in ("parallel", "taid", "optim", "data", "logging", "precision")},
        "teacher_optim": teacher_resolved.get("optim"),
        "teacher_seed": teacher_resolved.get("seed"),
        "failures": failures,
    }


# ----------------------------------------------------------------------------------------------------------
# the page


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cells(raw: dict, metric: str) -> dict[tuple[str, str], list[float]]:
    """(method, teacher) -> the metric of each seed (in seed order), finished runs only."""
    cells: dict[tuple[str, str], list[float]] = {}
    for run in raw["runs"]:
        if run["ok"] and metric in run["test"]:
            cells.setdefault((run["method"], run["teacher"]), []).append(run["test"][metric])
    return cells


def _paired(raw: dict, metric: str, method: str, other: str, size: str) -> list[float]:
    """other - method per seed (same initialisation and data order): > 0 means `method` is lower."""
    value = {
        (r["method"], r["seed"]): r["test"][metric]
        for r in raw["runs"]
        if r["teacher"] == size and r["ok"] and metric in r["test"]
    }
    return [
        value[(other, s)] - value[(method, s)]
        for s in raw["sweep"]["seeds"]
        if (other, s) in value and (method, s) in value
    ]


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def results_table(raw: dict, metric: str) -> list[str]:
    sizes, labels = raw["sweep"]["teachers"], raw["labels"]
    cells = _cells(raw, metric)
    header = "| method | " + " | ".join(f"teacher {s} ({raw['teachers'][s]['params'] / 1e6:.2f} M)" for s in sizes)
    lines = [header + " |", "|---|" + "---|" * len(sizes)]
    best = {
        s: min((statistics.mean(v), m) for (m, t), v in cells.items() if t == s and m != FLOOR)[1]
        for s in sizes
        if any(t == s and m != FLOOR for (m, t) in cells)
    }
    for method in (*raw["sweep"]["methods"], FLOOR):
        row = []
        for size in sizes:
            values = cells.get((method, size))
            if not values:
                row.append("—")
                continue
            text = _fmt(*_mean_std(values), len(values))
            row.append(f"**{text}**" if best.get(size) == method else text)
        lines.append(f"| {labels[method]} | " + " | ".join(row) + " |")
    return lines


def reading(raw: dict) -> list[str]:
    """The page's reading of the numbers: each sentence computed from them."""
    sweep, labels = raw["sweep"], raw["labels"]
    sizes, methods = sweep["teachers"], sweep["methods"]
    loss = _cells(raw, "student_lm_loss")
    n = len(sweep["seeds"])
    out = []
    # Does distillation beat training alone?
    for size in sizes:
        floor = loss.get((FLOOR, size))
        if not floor:
            continue
        better = [
            labels[m]
            for m in methods
            if loss.get((m, size)) and statistics.mean(loss[(m, size)]) < statistics.mean(floor)
        ]
        out.append(
            f"Teacher {size}: {len(better)} of {len(methods)} methods end below the no-teacher floor "
            f"({statistics.mean(floor):.4f}) in held-out next-token loss"
            + (f" ({', '.join(better)})." if better else ".")
        )
    # TAID against skew KL, per teacher, paired by seed.
    for other in ("skew_fkl", "skew_rkl"):
        if "taid" not in methods or other not in methods:
            continue
        gaps = {size: _paired(raw, "student_lm_loss", "taid", other, size) for size in sizes}
        gaps = {s: g for s, g in gaps.items() if g}
        if not gaps:
            continue
        parts = [f"{s}: {_fmt(*_mean_std(g), len(g))}" for s, g in gaps.items()]
        out.append(
            f"TAID's advantage over {labels[other]} (held-out loss of {labels[other]} minus TAID's, paired by "
            f"seed; > 0 favours TAID): " + "; ".join(parts) + "."
        )
        if len(gaps) >= 2:
            first, last = list(gaps)[0], list(gaps)[-1]
            change = statistics.mean(gaps[last]) - statistics.mean(gaps[first])
            spread = math.sqrt(
                sum(statistics.variance(gaps[s]) / len(gaps[s]) if len(gaps[s]) > 1 else 0.0 for s in (first, last))
            )
            means = [statistics.mean(g) for g in gaps.values()]
            monotone = all(b > a for a, b in zip(means, means[1:])) or all(b < a for a, b in zip(means, means[1:]))
            if spread > 0 and abs(change) > 2 * spread and monotone:
                verdict = "grows" if change > 0 else "shrinks"
                out.append(
                    f"From teacher {first} to {last} that advantage {verdict} by {abs(change):.4f} nats, more "
                    f"than twice its seed standard error ({spread:.4f}): at this scale TAID's advantage over "
                    f"{labels[other]} {verdict} with the teacher."
                )
            else:
                out.append(
                    f"From teacher {first} to {last} that advantage changes by {change:+.4f} nats (seed "
                    f"standard error {spread:.4f}{', not monotone across sizes' if not monotone else ''}): "
                    f"at this scale the data do not show TAID's advantage over {labels[other]} growing with "
                    f"the teacher."
                )
    # Seed spread against the differences between methods.
    stds = [statistics.stdev(v) for (m, _), v in loss.items() if len(v) > 1]
    if stds:
        ranges = []
        for size in sizes:
            means = [statistics.mean(loss[(m, size)]) for m in methods if loss.get((m, size))]
            if len(means) > 1:
                ranges.append(max(means) - min(means))
        spread_note = (
            (
                f"; the spread between the best and worst method's mean is {min(ranges):.4f}-"
                f"{max(ranges):.4f} nats per teacher"
            )
            if ranges
            else ""
        )
        out.append(
            f"Seed spread: the standard deviation over {n} seeds of a cell's held-out loss is "
            f"{min(stds):.4f}-{max(stds):.4f} nats (median {statistics.median(stds):.4f}){spread_note}. "
            f"With {n} seeds a standard deviation is itself uncertain by roughly "
            f"±{100 / math.sqrt(2 * (n - 1)):.0f}% of its value, so differences within about two standard "
            "deviations are not resolved here."
        )
    # Does a bigger teacher help each method?
    if len(sizes) >= 2:
        first, last = sizes[0], sizes[-1]
        moves = [
            f"{labels[m]} {statistics.mean(loss[(m, last)]) - statistics.mean(loss[(m, first)]):+.4f}"
            for m in methods
            if loss.get((m, first)) and loss.get((m, last))
        ]
        if moves:
            out.append(
                f"Held-out loss change from teacher {first} to {last} (negative: the bigger teacher gives a "
                f"better student): " + ", ".join(moves) + "."
            )
    # How adaptive was t? Compared with a straight line from t_start to t_end over the run.
    t_runs = [r for r in raw["runs"] if r["method"] == "taid" and r["ok"] and r["taid_t"]]
    if t_runs:
        taid, steps = raw["config"]["taid"], sweep["student_steps"]
        line = [
            t - (taid["t_start"] + (taid["t_end"] - taid["t_start"]) * step / steps)
            for r in t_runs
            for step, t in r["taid_t"]
        ]
        final = statistics.mean(r["taid_t"][-1][1] for r in t_runs)
        text = (
            f"TAID's t rose from {taid['t_start']:g} to {final:.3f} over {steps} steps, within "
            f"{max(map(abs, line)):.4f} of a straight line from t_start to t_end (largest excess above it "
            f"{max(line):+.4f})."
        )
        adaptive_max = taid["alpha"] * (1 - taid["t_start"])  # alpha * sigmoid(m) * (1 - t) < alpha * (1 - t_start)
        linear_step = (taid["t_end"] - taid["t_start"]) / steps
        if adaptive_max < linear_step:
            text += (
                f" The adaptive increment alpha·sigmoid(m)·(1−t) is below alpha·(1−t_start) = {adaptive_max:.2g} "
                f"per step, less than the linear floor's rise of {linear_step:.2g} per step, so in runs this "
                "short t is the linear floor: the adaptive rule is not exercised (it could only be in runs "
                f"longer than about {math.ceil((taid['t_end'] - taid['t_start']) / adaptive_max):,} steps)."
            )
        out.append(text)
    return out


def _hardware() -> dict:
    import torch

    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").is_file()
        else platform.processor()
    )
    from importlib.metadata import version

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "megatron_core": version("megatron-core"),
        "platform": platform.platform(),
    }


def write_plots(raw: dict, out: Path) -> list[str]:
    from taidtron.plots import Line, Panel, plot_panels

    sweep, labels = raw["sweep"], raw["labels"]
    sizes, methods = sweep["teachers"], (*sweep["methods"], FLOOR)
    style = {method: {"color": color} for method, color in METHOD_COLORS.items()}
    style[FLOOR]["linestyle"] = "--"
    style["taid"]["linewidth"] = 2.2
    written = []

    def mean_curve(method: str, size: str, key: str) -> Line | None:
        curves = [
            dict(map(tuple, r["valid"][key]))
            for r in raw["runs"]
            if r["method"] == method and r["teacher"] == size and r["ok"] and key in r["valid"]
        ]
        if not curves:
            return None
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        stats = [_mean_std([c[s] for c in curves]) for s in steps]
        return Line(
            labels[method],
            steps,
            [m for m, _ in stats],
            [e for _, e in stats],
            style={"marker": "o", "markersize": 3, **style.get(method, {})},
        )

    panels = []
    for key, title in (
        ("valid_student_lm_loss", "validation next-token loss"),
        ("valid_kl_teacher_student", "validation KL(teacher || student)"),
    ):
        for size in sizes:
            lines = [
                line
                for m in methods
                if (m != FLOOR or key == "valid_student_lm_loss") and (line := mean_curve(m, size, key))
            ]
            if lines:
                panels.append(Panel(f"teacher {size}: {title}", key.removeprefix("valid_"), lines))
    if panels:
        written.append(
            plot_panels(
                panels,
                out / "paper_mini_curves.png",
                ncols=len(sizes),
                title=f"student validation curves (mean ± std over {len(sweep['seeds'])} seeds)",
            )
        )
    teacher_lines = [
        Line(
            f"teacher {size} ({teacher['params'] / 1e6:.2f} M)",
            [p[0] for p in teacher["valid"]],
            [p[1] for p in teacher["valid"]],
            style={"marker": "o", "markersize": 3},
        )
        for size, teacher in raw["teachers"].items()
        if teacher["valid"]
    ]
    if teacher_lines:
        written.append(
            plot_panels(
                [Panel("teachers' pretraining: validation next-token loss", "valid_lm_loss", teacher_lines)],
                out / "paper_mini_teachers.png",
                ncols=1,
            )
        )
    t_lines = [
        Line(f"teacher {r['teacher']}, seed {r['seed']}", [p[0] for p in r["taid_t"]], [p[1] for p in r["taid_t"]])
        for r in raw["runs"]
        if r["method"] == "taid" and r["taid_t"]
    ]
    if t_lines:
        taid, steps = raw["config"]["taid"], sweep["student_steps"]
        t_lines.append(
            Line(
                "straight line t_start -> t_end",
                [0, steps],
                [taid["t_start"], taid["t_end"]],
                style={"color": "black", "linestyle": ":"},
            )
        )
        written.append(plot_panels([Panel("TAID interpolation t", "t", t_lines)], out / "paper_mini_t.png", ncols=1))
    panels = []
    for metric, title in (
        ("student_lm_loss", "held-out student next-token loss"),
        ("kl_teacher_student", "held-out KL(teacher || student)"),
    ):
        cells = _cells(raw, metric)
        lines = []
        for method in methods:
            present = [s for s in sizes if cells.get((method, s))]
            if present:
                stats = [_mean_std(cells[(method, s)]) for s in present]
                lines.append(
                    Line(
                        labels[method],
                        [raw["teachers"][s]["params"] / 1e6 for s in present],
                        [m for m, _ in stats],
                        [e for _, e in stats],
                        err_bars=True,
                        style={"marker": "o", "capsize": 3, **style.get(method, {})},
                    )
                )
        if lines:
            panels.append(Panel(title, metric, lines, xlabel="teacher parameters (M)", xscale="log"))
    if panels:
        written.append(plot_panels(panels, out / "paper_mini_vs_teacher.png", ncols=2))
    return [p.name for p in written]


def write_page(raw: dict, out: Path, raw_name: str = "paper_mini.json") -> Path:
    """docs/results/paper_mini.md (or --out) and its plots, from the raw results alone."""
    plots = write_plots(raw, out)
    sweep, data, timing, cfg = raw["sweep"], raw["data"], raw["timing"], raw["config"]
    corpus, taid, optim = data["corpus"], cfg["taid"], cfg["optim"]
    n = len(sweep["seeds"])
    quick = timing.get("quick")
    teacher_sizes = ", ".join(f"{raw['teachers'][s]['params'] / 1e6:.2f} M" for s in sweep["teachers"])
    lines = ["# TAID against the baselines at mini scale: the capacity-gap experiment", ""]
    if quick:
        lines += [
            "> **Quick mode** (`--quick`): a pipeline check with a handful of steps. The numbers below mean "
            "nothing about the methods.",
            "",
        ]
    lines += [
        f"Generated by `tools/paper_mini.py` from `{raw_name}` (the raw per-run numbers and curves, beside this page); "
        f"nothing on this page is typed by hand. Reproduce with `{timing['command']}`.",
        "",
        "The question (TAID paper, Shing et al., ICLR 2025): as the teacher grows, does TAID's student keep "
        "improving while skew KL's does not? The paper's teachers are 410M-6.9B parameters; here they are "
        f"{teacher_sizes} and the student "
        f"{raw['student']['params'] / 1e6:.2f} M, trained for minutes on a CPU. What holds here need not hold at "
        "scale, and the reverse.",
        "",
        "## Results",
        "",
        f"Held-out **student next-token loss** (nats per token; mean ± standard deviation over {n} seeds; lower is "
        "better; bold: the best distillation method per teacher). The no-teacher floor is the same run for every "
        "column.",
        "",
        *results_table(raw, "student_lm_loss"),
        "",
        f"Held-out **KL(teacher ‖ student)** per token (nats; mean ± std over {n} seeds). For the floor: the KL of the "
        "student trained alone to each teacher.",
        "",
        *results_table(raw, "kl_teacher_student"),
        "",
        "Teachers: "
        + "; ".join(f"{s} held-out next-token loss {_teacher_test_loss(raw, s)}" for s in sweep["teachers"])
        + ".",
        "",
        "## Reading",
        "",
        *[f"- {sentence}" for sentence in reading(raw)],
        "",
        "## Plots",
        "",
    ]
    captions = {
        "paper_mini_curves.png": "Validation curves per method and teacher (mean ± std over seeds).",
        "paper_mini_t.png": "TAID's t per step, every TAID run, against a straight line from t_start to t_end.",
        "paper_mini_vs_teacher.png": "Held-out student loss and KL against teacher size, per method.",
        "paper_mini_teachers.png": "The teachers' validation loss during their pretraining.",
    }
    for name in plots:
        lines += [f"![{captions.get(name, name)}]({name})", "", captions.get(name, ""), ""]
    teacher_rows = [
        f"| {s} | {raw['teachers'][s]['params']:,} | "
        + " | ".join(
            str(raw["teachers"][s]["arch"][k])
            for k in (
                "num_layers",
                "hidden_size",
                "num_attention_heads",
                "num_query_groups",
                "ffn_hidden_size",
                "family",
            )
        )
        + " |"
        for s in sweep["teachers"]
    ]
    student = raw["student"]
    parts = data["parts"]
    teacher_optim = raw.get("teacher_optim") or {}
    lines += [
        "## Setup",
        "",
        f"**Corpus.** The Python {corpus['version'].split('-')[0]} documentation, Debian package `{corpus['package']}` "
        f"{corpus['version']} (`apt-get download {corpus['package']}`; .deb SHA-256 `{corpus['deb_sha256']}`), "
        f"converted by `tools/pydoc_corpus.py`: the prose of each HTML page's main body, code blocks dropped, one "
        f"document per page, pages in SHA-256 order of their path. {corpus['documents']} pages, "
        f"{corpus['characters']:,} characters; text SHA-256 `{corpus['text_sha256']}`"
        f"{' (the reference build)' if corpus.get('matches_reference') else ''}. Licence: {corpus['licence']} The "
        "text is not committed; it is rebuilt from the package.",
        "",
        f"**Tokenizer and data.** sentencepiece BPE, {sweep['vocab_size']} pieces, character coverage "
        f"{TOKENIZER_COVERAGE}, trained on the whole corpus ({data['tokens']:,} tokens). data.split "
        f"`{data['split']}` by pages: train {parts['train']['documents']} pages / {parts['train']['tokens']:,} "
        f"tokens, valid {parts['valid']['documents']} / {parts['valid']['tokens']:,} (the curves: "
        f"{cfg['logging']['eval_iters']} batches every {sweep['eval_interval']} steps), test "
        f"{parts['test']['documents']} / "
        f"{parts['test']['tokens']:,} (the tables: the same {_test_batches(raw)} batches of "
        f"{cfg['parallel']['global_batch_size']} x {cfg['data']['seq_length']} tokens for every run, data seed "
        f"{EVAL_DATA_SEED}). No model trains on valid or test pages.",
        "",
        "**Models** (megatron-core GPT; the student is llama-style with tied embeddings, the teachers qwen2-style):",
        "",
        "| model | parameters | layers | hidden | heads | kv groups | ffn | family |",
        "|---|---|---|---|---|---|---|---|",
        f"| student | {student['params']:,} | "
        + " | ".join(
            str(student["arch"][k])
            for k in (
                "num_layers",
                "hidden_size",
                "num_attention_heads",
                "num_query_groups",
                "ffn_hidden_size",
                "family",
            )
        )
        + " |",
        *teacher_rows,
        "",
        f"**Teachers' pretraining.** `taid.loss=lm` through the trainer, {sweep['teacher_steps']} steps, AdamW lr "
        f"{teacher_optim.get('lr'):g} (warm-up {teacher_optim.get('warmup_steps')}, cosine to "
        f"{teacher_optim.get('min_lr'):g}), weight decay {teacher_optim.get('weight_decay'):g}, clip "
        f"{teacher_optim.get('clip_grad'):g}, seed {raw['teacher_seed']}, the same batch size as the students.",
        "",
        f"**Students.** Every run: {sweep['student_steps']} steps of {cfg['parallel']['global_batch_size']} x "
        f"{cfg['data']['seq_length']} tokens from scratch, AdamW lr {optim['lr']:g} (warm-up "
        f"{optim['warmup_steps']}, cosine to {optim['min_lr']:g}), betas ({optim['adam_beta1']:g}, "
        f"{optim['adam_beta2']:g}), weight decay {optim['weight_decay']:g}, clip {optim['clip_grad']:g}, "
        f"{cfg['precision']}. Seeds {list(sweep['seeds'])}: seed "
        "k sets the initialisation and the data order, the same for every method. The same settings for every "
        "method: no per-method tuning.",
        "",
        f"**Methods** (`taid.loss`): TAID with t_start {taid['t_start']}, t_end {taid['t_end']}, alpha "
        f"{taid['alpha']}, beta {taid['beta']}, adaptive {taid['adaptive']} (the paper's defaults); skew FKL / skew "
        f"RKL with skew {taid['skew']}; JS with beta {taid['js_beta']}; FKL, RKL, TVD without options; "
        f"lm_loss_weight {taid['lm_loss_weight']} (pure distillation, as the paper). The floor is `taid.loss=lm`. "
        "Definitions: docs/taid.md.",
        "",
        "## Run",
        "",
        f"Command: `{timing['command']}`. Hardware: {timing['hardware']['cpu']}, {timing['hardware']['cores']} cores; "
        f"Python {timing['hardware']['python']}, torch {timing['hardware']['torch']}, megatron-core "
        f"{timing['hardware']['megatron_core']}. {timing['workers']} worker processes x {timing['threads']} thread(s).",
        "",
        f"Wall time {timing['wall_s'] / 60:.1f} min in all (data {timing['data_wall_s'] / 60:.1f} min, runs "
        f"{timing['runs_wall_s'] / 60:.1f} min); the runs took {timing['cpu_s'] / 60:.1f} CPU-minutes, not counting "
        f"the workers' start-up ({timing['fresh_cpu_s'] / max(timing['runs_wall_s'], 1e-9):.2f} cores busy on "
        "average). "
        f"Load average "
        f"{timing['load_start']} at the start, {timing['load_end']} at the end (on a shared machine the wall time "
        "is inflated; the CPU time is the better measure of the cost). On a quiet machine with "
        f"{timing['workers']} cores the runs would take about {timing['cpu_s'] / timing['workers'] / 60:.0f} min "
        "(their CPU time spread over the workers; CPU time measured under contention tends to overstate it).",
    ]
    lines += [
        "",
        "Cost per kind of run (CPU time is the process's, model building, validation and checkpoints "
        "included; on a busy machine CPU seconds also grow, from contention for caches and cores):",
        "",
        "| runs | count | CPU s per run | CPU ms per step | wall s per run |",
        "|---|---|---|---|---|",
    ]
    for kind, entry in timing["by_kind"].items():
        per_step = f"{1000 * entry['cpu_s'] / entry['steps']:.0f}" if entry["steps"] else "—"
        lines.append(
            f"| {kind} | {entry['runs']} | {entry['cpu_s'] / entry['runs']:.1f} | {per_step} | "
            f"{entry['wall_s'] / entry['runs']:.1f} |"
        )
    if timing.get("reused"):
        lines += [
            "",
            f"{timing['reused']} of the runs were reused from an earlier invocation with the same "
            "configuration: their CPU time is in the totals, their wall time is not.",
        ]
    if raw["failures"]:
        lines += [
            "",
            "**Failed runs** (missing from the tables): "
            + "; ".join(f"{name}: {error}" for name, error in sorted(raw["failures"].items()))
            + ".",
        ]
    page = out / "paper_mini.md"
    tmp = out / ".paper_mini.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, page)
    return page


def _test_batches(raw: dict) -> str:
    counts = {r["test_batches"] for r in raw["runs"] if r.get("test_batches")}
    return " / ".join(str(c) for c in sorted(counts)) or "—"


def _teacher_test_loss(raw: dict, size: str) -> str:
    values = {
        round(r["test"]["teacher_lm_loss"], 6)
        for r in raw["runs"]
        if r["teacher"] == size and r["ok"] and "teacher_lm_loss" in r["test"]
    }
    return " / ".join(f"{v:.4f}" for v in sorted(values)) if values else "—"


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 page written, 1 some runs failed (page written without them), 2 bad input",
    )
    parser.add_argument("--quick", action="store_true", help="pipeline check: one teacher, two methods, few steps")
    parser.add_argument("--work-dir", help="runs, data and checkpoints (default runs/paper_mini[_quick])")
    parser.add_argument("--out", help="page, plots and raw JSON (default docs/results; quick: <work-dir>/results)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)"
    )
    parser.add_argument("--deb", help="a python3.11-doc .deb to build the corpus from (default: apt-get download)")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the page and plots from <out>/paper_mini.json"
    )
    args = parser.parse_args(argv)
    sweep = QUICK if args.quick else FULL
    work = Path(args.work_dir or REPO / "runs" / ("paper_mini_quick" if args.quick else "paper_mini")).resolve()
    out = Path(args.out or (work / "results" if args.quick else REPO / "docs" / "results")).resolve()
    raw_path = out / "paper_mini.json"

    def bad(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.jobs < 1:
        return bad(f"--jobs {args.jobs} must be >= 1.")
    if args.deb and not Path(args.deb).is_file():
        return bad(f"--deb {args.deb} does not exist; pass a python3.11-doc .deb file or leave it out to fetch one.")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return bad('matplotlib is not installed; pip install -e ".[plots]".')
    if args.report_only:
        if not raw_path.is_file():
            return bad(f"{raw_path} does not exist; run the experiment first (without --report-only).")
        print(f"wrote {write_page(json.loads(raw_path.read_text()), out)}")
        return 0

    from pydoc_corpus import CorpusError

    os.chdir(REPO)
    # Workers inherit these: one thread per process, no progress bars.
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    os.environ.update({"OMP_NUM_THREADS": str(threads), "TAIDTRON_NO_PROGRESS": "1", "CUDA_VISIBLE_DEVICES": ""})
    command = " ".join(["python tools/paper_mini.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    start = time.time()
    try:
        data = prepare_data(work, sweep, Path(args.deb) if args.deb else None)
    except (CorpusError, ValueError) as exc:
        return bad(str(exc))
    data_wall = time.time() - start
    print(f"data: {data['corpus']['documents']} pages, {data['tokens']:,} tokens ({data_wall:.0f} s)", flush=True)
    jobs = plan_jobs(work, sweep, data)
    runs_start = time.time()
    results = run_jobs(jobs, work, args.jobs, threads)
    timing = {
        "command": command,
        "quick": args.quick,
        "hardware": _hardware(),
        "workers": min(args.jobs, len(jobs)),
        "threads": threads,
        "wall_s": time.time() - start,
        "data_wall_s": data_wall,
        "runs_wall_s": time.time() - runs_start,
        "by_kind": cost_by_kind(jobs, results, sweep),
        "reused": sum(1 for r in results.values() if r.get("cached")),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    timing["cpu_s"] = sum(entry["cpu_s"] for entry in timing["by_kind"].values())
    timing["fresh_cpu_s"] = sum(r["cpu_s"] for r in results.values() if r.get("ok") and not r.get("cached"))
    raw = collect(work, sweep, jobs, results, data, timing)
    write_json(raw_path, raw)
    page = write_page(raw, out)
    print(
        f"wrote {rel(page)} and {rel(raw_path)} ({timing['wall_s'] / 60:.1f} min, {timing['cpu_s'] / 60:.1f} CPU-min)"
    )
    if raw["failures"]:
        print(f"{len(raw['failures'])} run(s) failed: " + ", ".join(sorted(raw["failures"])), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
