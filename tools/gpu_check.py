"""`make gpu-check`: everything that needs a GPU, in one call of at most 8 minutes, one JSON and one table.

    python tools/gpu_check.py                         # run every check (a CUDA device is required)
    python tools/gpu_check.py --dry-run               # list the checks, budgets and commands; runs nothing
    python tools/gpu_check.py --only versions,loss_bench --out runs/gpu_check.json

Made for a fresh machine with one NVIDIA GPU, Python 3.12, a CUDA build of torch (with its Triton) and no internet.
What taidtron needs beyond such an image comes as wheels from a local folder (--wheels, default .whl/, git-ignored):
if megatron-core does not import, they are installed with `pip install --no-index --no-deps --target
runs/gpu_check/site` and that folder is put on every check's PYTHONPATH. Fill the folder on a machine with internet
(docs/performance.md, "GPU check"):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl megatron-core==0.19.2

Every check runs in its own process group with its own time budget (cut to what is left of --deadline), so a
crash, an out-of-memory or a hang fails that check alone and the rest still run; checks that would start after the
deadline are reported as not run. A check the machine cannot run (Transformer Engine not installed, one GPU where
two are needed) is reported as unavailable, with the reason. Exit status: 0 when every selected check passed or was
unavailable, 1 otherwise, 2 for bad arguments or a missing wheel folder. The checks, in order:
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "runs" / "gpu_check" / "site"
PLAN_MFU = 0.4  # tools/plan.py's default --mfu: the throughput the cluster plan assumes


@dataclass
class Check:
    name: str
    what: str
    budget_s: int
    command: list[str]
    """argv after the Python interpreter (a script or -m module); `{json}` is replaced by the check's result file."""
    parse: str = "json"
    """How the result is read: `json` (the file the command wrote), `pytest` (its junit XML), `smoke` (stdout)."""
    needs_gpu: bool = True
    env: dict[str, str] = field(default_factory=dict)


def _probe(name: str) -> list[str]:
    return ["tools/gpu_check.py", "--probe", name, "--json", "{json}"]


def _throughput(pair: str) -> list[str]:
    """One distillation step of a tools/bench_step.py pair on the GPU, without the student/teacher baseline."""
    return [
        "tools/bench_step.py",
        "--pairs",
        pair,
        "--device",
        "cuda",
        "--no-baseline",
        "--repeats",
        "3",
        "--warmup",
        "1",
        "--json",
        "{json}",
    ]


CHECKS = [
    Check(
        "versions",
        "torch, CUDA, cuDNN, NCCL, Triton, megatron-core, Transformer Engine; the device and the peak "
        "bf16 FLOP/s MFU uses; no gloo side groups next to NCCL; the CUDA fusions enabled",
        60,
        _probe("versions"),
        needs_gpu=False,
    ),
    Check(
        "gpu_tests",
        "pytest -m gpu: Triton vs torch loss and float64 on sampled rows at 8192x151936 and at the "
        "72B last stage [1, 4096, 76032] bf16; SDPA fused kernel vs local attention (bf16, 4096 tokens); CUDA RNG "
        "restored by a checkpoint; resume with the distributed optimizer; 3 steps GPU vs CPU (fp32 TF32 off, "
        "bf16)",
        200,
        ["-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider", "--junitxml={json}"],
        parse="pytest",
    ),
    Check(
        "loss_bench",
        "TAID loss fwd+bwd at 8192 x 151936 bf16: official, torch.compile, torch chunked, Triton (ms, extra peak GB)",
        120,
        [
            "tools/bench_loss.py",
            "--tokens",
            "8192",
            "--vocab",
            "151936",
            "--dtype",
            "bf16",
            "--device",
            "cuda",
            "--compile",
            "--repeats",
            "20",
            "--warmup",
            "3",
            "--json",
            "{json}",
        ],
    ),
    Check(
        "smoke",
        "make smoke-test in bf16 (teacher pretraining, then distillation): its checks, tokens/s, MFU",
        150,
        ["tools/smoke_test.py", "--run-dir", "runs/gpu_check/smoke", "logging.wandb_mode=disabled"],
        parse="smoke",
        env={"TAIDTRON_NO_PROGRESS": "1"},
    ),
    Check(
        "throughput_72b_width",
        "one distillation step, Qwen2-1.5B student <- 2-layer teacher at Qwen2-72B width, "
        f"4 x 4096 tokens: model TFLOP/s and MFU against tools/plan.py's {PLAN_MFU:.0%}",
        90,
        _throughput("1.5b-72bw2"),
    ),
    Check(
        "host_syncs",
        "host-device syncs of one distillation step (torch.cuda.set_sync_debug_mode), at 2 and 4 "
        "micro-batches: none may come per micro-batch",
        60,
        _probe("host_syncs"),
    ),
    Check(
        "inf_gradient",
        "an injected inf gradient: the step must not update the weights, the next step trains on",
        60,
        _probe("inf_gradient"),
    ),
    Check(
        "step_overhead",
        "tools/bench_step.py on the GPU: distillation step vs student step + teacher forward (smoke and x4 pairs)",
        75,
        [
            "tools/bench_step.py",
            "--pairs",
            "smoke,x4",
            "--device",
            "cuda",
            "--repeats",
            "5",
            "--warmup",
            "2",
            "--json",
            "{json}",
        ],
    ),
    Check(
        "throughput_7b",
        "one distillation step, Qwen2-1.5B <- Qwen2-7B (the largest real teacher that fits one "
        "GPU), 4 x 4096 tokens: tokens/s, TFLOP/s, MFU, peak memory",
        90,
        _throughput("1.5b-7b"),
    ),
    Check(
        "te_vs_local",
        "Transformer Engine spec vs the local spec on one checkpoint written by the local spec "
        "(its missing _extra_state tolerated): logits in bf16 (needs TE installed)",
        60,
        _probe("te_vs_local"),
    ),
    Check(
        "dp_overlap",
        "data-parallel overlap (grad reduce-scatter, param all-gather) on NCCL: needs 2 GPUs; the "
        "same code runs on gloo in tests/train/test_parallel_equivalence.py",
        120,
        _probe("dp_overlap"),
    ),
]
__doc__ += "\n".join(f"  {c.name:<21}{c.what}" for c in CHECKS) + "\n"


# ---- running the checks -------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when gpu_check dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _check_env(check: Check) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(SITE)] if SITE.is_dir() else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(check.env)
    return env


def run_check(check: Check, timeout: float, work: Path) -> dict:
    result_file = work / f"{check.name}.{'xml' if check.parse == 'pytest' else 'json'}"
    argv = [sys.executable, *(arg.replace("{json}", str(result_file)) for arg in check.command)]
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=_check_env(check),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: torchrun workers and compile helpers too
        output, _ = proc.communicate()
        timed_out = True
    seconds = time.monotonic() - start
    record = {
        "name": check.name,
        "what": check.what,
        "command": " ".join(argv[1:]),
        "budget_s": round(timeout),
        "seconds": round(seconds, 1),
        "exit_code": proc.returncode,
        "output_tail": output[-4000:],
    }
    if timed_out:
        return {**record, "status": "timeout", "summary": f"stopped after {timeout:.0f} s"}
    try:
        metrics, status, summary = PARSERS[check.parse](result_file, output, proc.returncode)
    except Exception as exc:  # noqa: BLE001 - a result we cannot read fails this check only
        metrics, status = {}, "fail"
        summary = f"no readable result ({type(exc).__name__}: {exc}); exit {proc.returncode}"
    return {**record, "status": status, "summary": summary, "metrics": metrics}


def _parse_json(path: Path, output: str, code: int):
    data = json.loads(path.read_text())
    if "status" in data:  # a probe of this script
        return data.get("metrics", {}), data["status"], data.get("summary", "")
    if "results" in data and data["results"] and "variant" in data["results"][0]:  # bench_loss.py
        rows = {r["variant"]: r for r in data["results"]}
        parts = [
            f"{v} {r['median_ms']:.2f} ms / {r['extra_peak_bytes'] / 1e9:.2f} GB"
            for v, r in rows.items()
            if "error" not in r and v != "copy"
        ]
        failed = [v for v, r in rows.items() if "error" in r]
        summary = "; ".join(parts) + (f"; failed: {', '.join(failed)}" if failed else "")
        return data, "pass" if code == 0 and not failed else "fail", summary
    results = data["results"]  # bench_step.py
    parts = []
    for r in results:
        text = f"{r['pair']}: {r['tokens_per_s']:,.0f} tok/s, {r['model_tflops']:.0f} TFLOP/s"
        if "mfu" in r:
            text += f", MFU {r['mfu']:.1%}"
        if "ratio" in r:
            text += f", ratio {r['ratio']:.3f}"
        if "peak_memory_gib" in r:
            text += f", {r['peak_memory_gib']:.0f} GiB"
        parts.append(text)
    return data, "pass" if code == 0 else "fail", "; ".join(parts)


def _parse_pytest(path: Path, output: str, code: int):
    import xml.etree.ElementTree as ET

    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcomes[name] = {
            "outcome": "failed" if failed else "skipped" if skipped else "passed",
            "seconds": float(case.get("time", 0)),
        }
    counts = {k: sum(o["outcome"] == k for o in outcomes.values()) for k in ("passed", "failed", "skipped")}
    status = "pass" if code == 0 and counts["passed"] and not counts["failed"] and not counts["skipped"] else "fail"
    failed = [n for n, o in outcomes.items() if o["outcome"] != "passed"]
    summary = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped" + (
        f" ({', '.join(failed)})" if failed else ""
    )
    return {"tests": outcomes, **counts}, status, summary


def _parse_smoke(path: Path, output: str, code: int):
    metrics = {}
    for line in output.splitlines():
        for key, label in (("tokens_per_s", "tokens/s (median)"), ("mfu", "MFU (median)")):
            if line.startswith(label):
                value = line[len(label) :].strip().replace(",", "")
                metrics[key] = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    checks = [line for line in output.splitlines() if line.startswith(("[PASS]", "[FAIL]"))]
    metrics["checks"] = checks
    summary = ", ".join(f"{k} {v:,.4g}" for k, v in metrics.items() if k != "checks")
    summary += f"; {sum(c.startswith('[PASS]') for c in checks)}/{len(checks)} smoke checks pass"
    return metrics, "pass" if code == 0 and checks and "mfu" in metrics else "fail", summary


PARSERS = {"json": _parse_json, "pytest": _parse_pytest, "smoke": _parse_smoke}


def install_wheels(wheels: Path) -> tuple[bool, str]:
    """Make megatron-core importable for the checks: nothing to do when it already imports, else install the wheels
    of `wheels` into SITE (offline, no dependency resolution: the folder holds exactly what the image lacks)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import megatron.core"],
        env=_check_env(Check("", "", 0, [])),
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0:
        return True, "megatron-core imports"
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        return False, (
            f"megatron-core does not import and {wheels} holds no wheels; fill it as described in "
            f"docs/performance.md (pip download ... -d {wheels} megatron-core==0.19.2)"
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(SITE),
            *map(str, found),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return False, f"pip install of {', '.join(p.name for p in found)} failed: {proc.stderr.strip()[-500:]}"
    return True, f"installed {', '.join(p.name for p in found)} into {SITE.relative_to(REPO)}"


def render(records: list[dict]) -> str:
    width = max(len(r["name"]) for r in records)
    lines = [f"{'check':<{width}}  {'status':<8} {'seconds':>7}  result", "-" * (width + 90)]
    for r in records:
        lines.append(f"{r['name']:<{width}}  {r['status']:<8} {r.get('seconds', 0):>7.1f}  {r.get('summary', '')}")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan (checks, budgets, commands) and exit")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(c.name for c in CHECKS)}")
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds for the whole run (default 8 minutes)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="folder of wheels to install offline")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check.json", help="the JSON report")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: run one probe in this process
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return run_probe(args.probe, args.json)

    checks = CHECKS
    if args.only:
        names = [n for n in args.only.split(",") if n]
        unknown = sorted(set(names) - {c.name for c in CHECKS})
        if unknown or not names:
            print(
                f"error: unknown check(s) {', '.join(unknown) or '(none)'}; choose from "
                f"{', '.join(c.name for c in CHECKS)}",
                file=sys.stderr,
            )
            return 2
        checks = [c for c in CHECKS if c.name in names]
    if args.deadline <= 0:
        print("error: --deadline must be positive (seconds)", file=sys.stderr)
        return 2

    if args.dry_run:
        print(f"gpu-check plan: {len(checks)} checks, deadline {args.deadline:.0f} s, wheels from {args.wheels}")
        for c in checks:
            print(
                f"  {c.name:<21} budget {c.budget_s:>4} s  {sys.executable} "
                f"{' '.join(a.replace('{json}', 'RESULT') for a in c.command)}"
            )
            print(f"  {'':<21} {c.what}")
        print(f"report: {args.out}")
        return 0

    start = time.monotonic()
    gpu = _has_gpu()
    installed, install_note = install_wheels(args.wheels)
    print(f"== gpu-check: {install_note}; GPU: {gpu or 'none'}", flush=True)
    if not installed:
        print(f"error: {install_note}", file=sys.stderr)
        return 2
    records = []
    with tempfile.TemporaryDirectory(prefix="taidtron-gpu-check-") as tmp:
        for check in checks:
            left = args.deadline - (time.monotonic() - start)
            if check.needs_gpu and not gpu:
                record = {
                    "name": check.name,
                    "what": check.what,
                    "status": "not_run",
                    "seconds": 0.0,
                    "summary": "no CUDA device visible",
                }
            elif left < min(20.0, check.budget_s):
                record = {
                    "name": check.name,
                    "what": check.what,
                    "status": "not_run",
                    "seconds": 0.0,
                    "summary": f"deadline: {max(left, 0):.0f} s left of {args.deadline:.0f}",
                }
            else:
                print(f"== {check.name} (budget {min(check.budget_s, left):.0f} s): {check.what}", flush=True)
                record = run_check(check, min(check.budget_s, left), Path(tmp))
                print(f"   {record['status']} in {record['seconds']:.1f} s: {record['summary']}", flush=True)
            records.append(record)
            write_json(
                args.out,
                {
                    "install": install_note,
                    "gpu": gpu,
                    "deadline_s": args.deadline,
                    "elapsed_s": round(time.monotonic() - start, 1),
                    "checks": records,
                },
            )
    print()
    print(render(records))
    print(
        f"\n{sum(r['status'] == 'pass' for r in records)}/{len(records)} checks pass, "
        f"{sum(r['status'] == 'unavailable' for r in records)} unavailable on this machine, in "
        f"{time.monotonic() - start:.0f} s; report: {args.out}"
    )
    return 0 if all(r["status"] in ("pass", "unavailable") for r in records) else 1


def _has_gpu() -> str | None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')",
        ],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() or None


# ---- probes: checks written here, each run in its own process (`--probe NAME --json PATH`) --------------------------


def run_probe(name: str, out: Path) -> int:
    probe = PROBES[name]
    try:
        status, summary, metrics = probe()
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the driver reads the file
        import traceback

        status, summary, metrics = "fail", f"{type(exc).__name__}: {exc}", {"traceback": traceback.format_exc()}
    write_json(out, {"status": status, "summary": summary, "metrics": metrics})
    print(f"{name}: {status}: {summary}")
    return 0 if status == "pass" else 1


def _world_of_one():
    from taidtron.config import ParallelConfig
    from taidtron.distributed import LaunchEnv, init_distributed

    return init_distributed(ParallelConfig(global_batch_size=1), launch=LaunchEnv.single())


def _smoke_trainer(ctx, *extra: str, micro_batches: int = 4):
    """A Trainer on the smoke pair (random weights, bf16 on GPU) and its fixed micro-batches."""
    from taidtron.config import load_config
    from taidtron.distributed import seed_everything
    from taidtron.trainer import build_trainer
    from tools.bench_step import synthetic_micro_batches

    cfg = load_config(
        REPO / "configs" / "smoke.yaml",
        [
            "teacher.init=null",
            "optim.warmup_steps=0",
            "parallel.micro_batch_size=4",
            f"parallel.global_batch_size={4 * micro_batches}",
            *extra,
        ],
    )
    seed_everything(cfg.seed, ctx)
    trainer = build_trainer(cfg, ctx, cfg.student.vocab_size)
    batches = synthetic_micro_batches(micro_batches, 4, cfg.data.seq_length, cfg.student.vocab_size)
    return trainer, batches


def probe_versions():
    import importlib.metadata as md

    import torch

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    from taidtron.flops import peak_flops

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else None
    metrics = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "triton": version("triton"),
        "megatron_core": version("megatron-core"),
        "transformer_engine": version("transformer-engine"),
        "device": name,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        metrics.update(
            nccl=".".join(map(str, torch.cuda.nccl.version())),
            capability=f"{props.major}.{props.minor}",
            memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
        )
    peak = peak_flops(name)
    metrics["peak"] = {"device": peak.device, "bf16_dense_tflops": peak.tflops} if peak else None

    from megatron.core import parallel_state

    from taidtron.models.gpt import fusions, transformer_engine_usable

    metrics["te_usable"] = transformer_engine_usable()
    ctx = _world_of_one()
    try:
        parallel_state.get_data_parallel_group_gloo()
        gloo_group = True
    except AssertionError:
        gloo_group = False
    metrics.update(
        backend=str(ctx.device),
        gloo_side_groups=ctx.gloo_groups,
        gloo_dp_group_built=gloo_group,
        fusions=fusions(ctx.device.type),
    )
    problems = [
        p
        for p, bad in (
            ("no CUDA device", not cuda),
            ("device not in taidtron.flops' peak table", not peak),
            ("gloo side groups built next to NCCL", gloo_group),
        )
        if bad
    ]
    summary = (
        f"{name}, torch {torch.__version__} CUDA {torch.version.cuda} NCCL {metrics.get('nccl')} Triton "
        f"{metrics['triton']} megatron-core {metrics['megatron_core']} TE {metrics['transformer_engine']}; "
        f"peak {peak.tflops if peak else '?'} TFLOP/s ({peak.device if peak else 'unknown device'}); fusions "
        f"{','.join(k.removesuffix('_fusion') for k, v in metrics['fusions'].items() if v) or 'none'}"
    )
    return (
        ("fail" if problems else "pass"),
        summary + (f"; PROBLEMS: {', '.join(problems)}" if problems else ""),
        metrics,
    )


def probe_host_syncs():
    """Syncs recorded by torch's sync debug mode during one warm step, at 2 and at 4 micro-batches (the same trainer,
    only `accumulation_steps` changed): a sync inside the micro-batch loop shows as a difference."""
    import collections
    import warnings

    import torch

    ctx = _world_of_one()
    trainer, batches = _smoke_trainer(ctx, micro_batches=4)
    counts, where = {}, {}
    for micro in (2, 4):
        trainer.accumulation_steps = micro
        trainer.train_step(iter(batches[:micro]))  # warm: lazy allocations, compiled fusions
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_step(iter(batches[:micro]))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchronizing" in str(w.message)]
        counts[micro] = len(syncs)
        where[micro] = dict(collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs))
    per_micro_batch = {
        loc: (where[4].get(loc, 0) - where[2].get(loc, 0)) / 2
        for loc in where[4]
        if where[4].get(loc, 0) != where[2].get(loc, 0)
    }
    metrics = {"syncs_per_step": counts, "locations": where, "per_micro_batch": per_micro_batch}
    summary = f"{counts[2]} syncs per step at 2 micro-batches, {counts[4]} at 4" + (
        f"; per micro-batch: {per_micro_batch}" if per_micro_batch else "; none per micro-batch"
    )
    return ("pass" if not per_micro_batch else "fail"), summary, metrics


def probe_inf_gradient():
    """Written against the documented behaviour of a non-finite step: skipped (no update, counted), training goes
    on. The inf enters one student weight's gradient through a tensor hook; the step either returns (skipped) or
    raises FloatingPointError; either way no weight may change, and the next clean step must train."""
    import dataclasses

    import torch

    ctx = _world_of_one()
    trainer, batches = _smoke_trainer(ctx)
    trainer.train_step(iter(batches))
    params = dict(trainer.student.named_parameters())
    before = {k: p.detach().clone() for k, p in params.items()}
    target = next(iter(params))
    handle = params[target].register_hook(lambda g: torch.full_like(g, float("inf")))
    outcome = {}
    try:
        result = trainer.train_step(iter(batches))
        outcome["returned"] = {k: v for k, v in dataclasses.asdict(result).items()}
    except FloatingPointError as exc:
        outcome["raised"] = str(exc)
    finally:
        handle.remove()
    trainer.sync_weights()
    changed = [k for k, p in params.items() if not torch.equal(p.detach(), before[k])]
    outcome["counters"] = {
        k: v for k, v in vars(trainer).items() if "skip" in k.lower() and isinstance(v, (int, float))
    }
    clean = trainer.train_step(iter(batches))
    trainer.sync_weights()
    finite = all(torch.isfinite(p).all() for p in params.values())
    moved = any(not torch.equal(p.detach(), before[k]) for k, p in params.items())
    metrics = {
        **outcome,
        "weights_changed_by_bad_step": changed,
        "clean_step_loss": clean.loss,
        "weights_finite_after": bool(finite),
    }
    ok = not changed and finite and moved and clean.loss == clean.loss
    how = "raised" if "raised" in outcome else "returned"
    summary = (
        f"bad step {how}; {len(changed)} weights changed by it; next step loss {clean.loss:.4f}, weights "
        f"{'finite' if finite else 'NOT finite'}; skip counters {outcome['counters'] or 'none found'}"
    )
    return ("pass" if ok else "fail"), summary, metrics


def probe_te_vs_local():
    import torch

    from taidtron.models.gpt import transformer_engine_usable

    if not transformer_engine_usable():
        return "unavailable", "Transformer Engine is not installed here (megatron-core HAVE_TE is False)", {}
    from taidtron import checkpoint
    from taidtron.config import ModelConfig, ParallelConfig
    from taidtron.distributed import seed_everything
    from taidtron.models import build_gpt

    ctx = _world_of_one()
    base = dict(
        family="qwen2",
        num_layers=2,
        hidden_size=256,
        num_attention_heads=8,
        num_query_groups=4,
        ffn_hidden_size=704,
        vocab_size=1024,
    )
    models = {}
    for attention in ("sdpa", "auto"):
        seed_everything(3, ctx)
        models[attention] = build_gpt(
            ModelConfig(**base, attention=attention),
            ParallelConfig(),
            padded_vocab_size=1024,
            max_seq_length=256,
            pp_rank=0,
            params_dtype=torch.bfloat16,
            device=ctx.device,
        )
    with tempfile.TemporaryDirectory() as tmp:
        meta = checkpoint.CheckpointMeta(
            model=ModelConfig(**base, attention="sdpa"),
            padded_vocab_size=1024,
            source=checkpoint.WeightsSource(kind="init", description="gpu_check"),
        )
        checkpoint.save_checkpoint(tmp, 0, model=models["sdpa"], meta=meta)
        checkpoint.load_model_weights(models["auto"], tmp, group=ctx.dp_group)
    tokens = torch.randint(0, 1024, (2, 256), device=ctx.device)
    positions = torch.arange(256, device=ctx.device).expand(2, -1)
    with torch.no_grad():
        local, te = (models[k](tokens, positions, None).float() for k in ("sdpa", "auto"))
    error = ((te - local).abs().max() / local.abs().max()).item()
    return (
        ("pass" if error < 2e-2 else "fail"),
        f"TE logits vs local: max error {error:.2e} of the largest logit",
        {"max_error_relative_to_max": error},
    )


def probe_dp_overlap():
    """With 2 GPUs: the step worker of tests/train at dp=2 (NCCL, distributed optimizer: overlapped reduce-scatter
    and param all-gather) against dp=1 on one GPU, fp32 with TF32 off, from the same initial checkpoints."""
    import torch

    if torch.cuda.device_count() < 2:
        return (
            "unavailable",
            (
                f"{torch.cuda.device_count()} GPU visible: overlapped data-parallel communication "
                "needs dp >= 2; on gloo it is checked by tests/train/test_parallel_equivalence.py"
            ),
            {},
        )
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from taidtron.checkpoint import resolve_iteration_dir

    worker = REPO / "tests" / "train" / "step_worker.py"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        student_init, teacher_init = root / "student_init", root / "teacher_init"
        runs = {"init": (1, "init", {"CUDA_VISIBLE_DEVICES": ""}), "dp1": (1, "train", {}), "dp2": (2, "train", {})}
        reports = {}
        for name, (nproc, mode, env) in runs.items():
            out = root / name
            out.mkdir()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    f"--nproc-per-node={nproc}",
                    "--standalone",
                    str(worker),
                    str(out),
                    mode,
                    str(student_init),
                    str(teacher_init),
                    "precision=fp32",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                env={**os.environ, "TAIDTRON_TEST_RESULTS": str(out), "NVIDIA_TF32_OVERRIDE": "0", **env},
            )
            if proc.returncode != 0:
                return "fail", f"{name} exited {proc.returncode}", {"output": proc.stderr[-3000:]}
            reports[name] = json.loads((out / "rank0.json").read_text())
        weights = {}
        for name in ("dp1", "dp2"):
            dcp_to_torch_save(resolve_iteration_dir(root / name / "student"), root / f"{name}.pt")
            weights[name] = {
                k: v
                for k, v in torch.load(root / f"{name}.pt", weights_only=False).items()
                if torch.is_tensor(v) and not k.endswith("_extra_state")
            }
    worst = max(
        ((weights["dp2"][k] - w).abs().max() / w.abs().max().clamp_min(1e-12)).item() for k, w in weights["dp1"].items()
    )
    loss_diff = max(abs(a - b) / abs(b) for a, b in zip(reports["dp2"]["loss"], reports["dp1"]["loss"]))
    metrics = {
        "loss_max_rel_diff": loss_diff,
        "weights_max_diff_relative_to_max": worst,
        "dp1": reports["dp1"],
        "dp2": reports["dp2"],
    }
    ok = loss_diff < 1e-5 and worst < 1e-4
    return ("pass" if ok else "fail"), f"dp=2 vs dp=1: loss {loss_diff:.2e}, weights {worst:.2e}", metrics


PROBES = {
    "versions": probe_versions,
    "host_syncs": probe_host_syncs,
    "inf_gradient": probe_inf_gradient,
    "te_vs_local": probe_te_vs_local,
    "dp_overlap": probe_dp_overlap,
}


if __name__ == "__main__":
    sys.exit(main())
