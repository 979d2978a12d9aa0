"""Everything that needs a GPU, in one call that ends within 7 minutes: the numbers first, the pass/fail tests last,
each result written to --out the moment it finishes.

    python3 tools/gpu_check.py --out DIR                   # every check (a CUDA device is required)
    python3 tools/gpu_check.py --dry-run                   # the plan: checks, budgets, deadline, commands
    python3 tools/gpu_check.py --only loss_bench,gpu_tests --out DIR

Made for a bare machine with one NVIDIA GPU, Python 3.12, a CUDA build of torch with its Triton, pytest,
pytest-xdist and pytest-timeout, and no internet; nothing needs to be installed first and `make` is not needed.
taidtron runs from this checkout (on the checks' PYTHONPATH). When megatron-core does not import, the wheels in
--wheels (default .whl/, git-ignored; docs/performance.md says how to fill it) are installed with `pip install
--no-index --no-deps --target <work>/site`, which goes on the checks' PYTHONPATH too. A second call finds them there.

Order and time: setup (the probe of torch and the device, the wheel install), then the checks in the order given
(--only keeps its order). Each runs in its own process group and may run until the deadline minus the budgets of the
checks after it (`taidtron.benchmark.runner`), so the budgets, which add up to the deadline, are each check's
minimum and time left over moves on. `gpu_tests` runs pytest groups side by side, with a timeout per test and a junit
file per group.

--out receives at most 8 small files: setup.json, one <check>.json per check, and summary.txt (the table), each
rewritten the moment something finishes: a run killed from outside keeps everything that had finished. Full outputs,
junit files and the smoke run stay in --work. Without a CUDA device the checks that need one are not run, the
report says "no CUDA device", and the exit status is 1. Exit status: 0 when every check passed (or is `partial`:
tests skipped where this machine lacks something, named in the summary), 1 otherwise, 2 for bad arguments.

The checks, in order:
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from taidtron.benchmark.runner import Check, Runner, TestGroup

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 420.0
SETUP_BUDGET_S = 40.0
LOSS_FLOOR_GOAL = 1.15  # fused loss time / five-pass floor (issue goal; docs/performance.md)
STEP_RATIO_GOAL = 1.05  # distillation step / (student step + teacher forward)


# ---- readers of each check's result ------------------------------------------------------------------------------


def read_loss_bench(path: Path, output: str, code: int) -> tuple[str, str, dict]:
    """tools/bench_loss.py's JSON: bandwidth, the five-pass floor, each variant's ms and extra GB, agreement."""
    data = json.loads(path.read_text())
    info, rows = data["info"], data["results"]
    parts = []
    if "bandwidth_bytes_per_s" in info:
        parts.append(
            f"copy {info['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s, 5-pass floor {info['floor_5_passes_ms']:.2f} ms"
        )
    for r in rows:
        if r["variant"] == "copy":
            continue
        if "error" in r:
            parts.append(f"{r['variant']} FAILED")
            continue
        text = f"{r['variant']} {r['median_ms']:.2f} ms / {r['extra_peak_bytes'] / 1e9:.2f} GB"
        if r["variant"] == "triton" and "vs_floor_5_passes" in r:
            goal = "met" if r["vs_floor_5_passes"] <= LOSS_FLOOR_GOAL else "NOT met"
            text += f" = {r['vs_floor_5_passes']:.2f}x floor (goal <= {LOSS_FLOOR_GOAL}x: {goal})"
        parts.append(text)
    disagree = [r["variant"] for r in rows if r.get("agrees") is False]
    parts.append("losses and gradients agree" if info.get("all_agree") else f"DISAGREE: {', '.join(disagree)}")
    ok = code == 0 and info.get("all_agree") and not any("error" in r for r in rows)
    return ("pass" if ok else "fail"), "; ".join(parts), data


def read_step_bench(path: Path, output: str, code: int) -> tuple[str, str, dict]:
    """tools/bench_step.py's JSON: per pair tokens/s, TFLOP/s, MFU, the step ratio, peak memory."""
    data = json.loads(path.read_text())
    parts = []
    for r in data["results"]:
        text = f"{r['pair']}: {r['tokens_per_s']:,.0f} tok/s, {r['model_tflops']:.0f} TFLOP/s"
        if "mfu" in r:
            text += f", MFU {r['mfu']:.1%}"
        if "ratio" in r:
            goal = "met" if r["ratio"] <= STEP_RATIO_GOAL else "NOT met"
            text += f", step ratio {r['ratio']:.3f} (goal <= {STEP_RATIO_GOAL}: {goal})"
        if "peak_memory_gib" in r:
            text += f", peak {r['peak_memory_gib']:.1f} GiB"
        parts.append(text)
    return ("pass" if code == 0 and data["results"] else "fail"), "; ".join(parts), data


def read_smoke(path: Path, output: str, code: int) -> tuple[str, str, dict]:
    """tools/smoke_test.py's printed summary: tokens/s, MFU and its [PASS]/[FAIL] lines."""
    metrics: dict = {}
    for line in output.splitlines():
        for key, label in (("tokens_per_s", "tokens/s (median)"), ("mfu", "MFU (median)")):
            if line.startswith(label):
                value = line[len(label) :].strip().replace(",", "")
                metrics[key] = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    checks = [line for line in output.splitlines() if line.startswith(("[PASS]", "[FAIL]"))]
    metrics["checks"] = checks
    summary = ", ".join(f"{k} {v:,.4g}" for k, v in metrics.items() if k != "checks")
    summary += f"; {sum(c.startswith('[PASS]') for c in checks)}/{len(checks)} smoke checks pass"
    return ("pass" if code == 0 and checks and "mfu" in metrics else "fail"), summary, metrics


def _bench_step(pairs: str, *extra: str) -> tuple[str, ...]:
    return ("tools/bench_step.py", "--pairs", pairs, "--device", "cuda", *extra, "--json", "{result}")


CHECKS = [
    Check(
        "versions",
        "torch, CUDA, cuDNN, NCCL, Triton, megatron-core, Transformer Engine; the device and the peak bf16 FLOP/s "
        "MFU divides by; the CUDA fusions the models use",
        25,
        ("-m", "taidtron.benchmark.environment", "--json", "{result}"),
    ),
    Check(
        "loss_bench",
        "TAID loss fwd+bwd at 8192 x 151936 bf16: official, torch.compile, torch chunked, Triton (ms, extra GB); "
        "the copy bandwidth and the five-pass floor; losses and gradients against float64",
        75,
        (
            "tools/bench_loss.py",
            *("--tokens", "8192", "--vocab", "151936", "--dtype", "bf16", "--device", "cuda", "--compile"),
            *("--repeats", "10", "--warmup", "2", "--json", "{result}"),
        ),
        read=read_loss_bench,
    ),
    Check(
        "throughput_7b",
        "one distillation step, Qwen2-1.5B <- Qwen2-7B (the largest real teacher one GPU holds, alone: about "
        "55-60 GiB), 4 x 4096 tokens: tokens/s, TFLOP/s, MFU, peak memory",
        75,
        _bench_step("1.5b-7b", "--no-baseline", "--repeats", "3", "--warmup", "1"),
        read=read_step_bench,
    ),
    Check(
        "step_overhead",
        "distillation step vs student step + teacher forward on the GPU (smoke and x4 pairs, bf16)",
        45,
        _bench_step("smoke,x4", "--repeats", "5", "--warmup", "2"),
        read=read_step_bench,
    ),
    Check(
        "smoke",
        "make smoke-test in bf16 (teacher pretraining, then distillation): its checks, tokens/s, MFU",
        60,
        ("tools/smoke_test.py", "--run-dir", "{work}/smoke", "logging.wandb_mode=disabled"),
        read=read_smoke,
    ),
    Check(
        "gpu_tests",
        "pytest -m gpu, four groups side by side: Triton kernels vs torch and float64 at full size; SDPA fused "
        "kernel vs local attention, TE vs local; CUDA RNG restored, resume with the distributed optimizer; 3 steps "
        "GPU vs CPU (fp32, bf16), host syncs per micro-batch, an injected inf, NCCL's device binding, DP overlap",
        100,
        groups=(
            TestGroup("kernels", ("tests/losses/test_triton_taid.py", "-m", "gpu")),
            TestGroup("attention", ("tests/models/test_attention.py", "-m", "gpu")),
            TestGroup(
                "checkpoint",
                ("tests/checkpoint/test_integrity.py", "tests/checkpoint/test_resume.py", "-m", "gpu", "-n", "2"),
            ),
            TestGroup(
                "train",
                (
                    *("tests/train/test_parallel_equivalence.py", "tests/train/test_gpu_step.py"),
                    *("tests/test_distributed.py", "-m", "gpu", "-n", "4"),
                ),
            ),
        ),
        test_timeout_s=90,
    ),
]
__doc__ += "\n".join(f"  {c.name:<15}{c.budget_s:>4.0f} s  {c.what}" for c in CHECKS) + "\n"


# ---- setup: torch, the device, megatron-core ---------------------------------------------------------------------

_TORCH_PROBE = """
import json
try:
    import torch
    info = dict(torch=torch.__version__, cuda=torch.cuda.is_available())
    if info["cuda"]:
        info.update(device=torch.cuda.get_device_name(), device_count=torch.cuda.device_count())
except Exception as exc:
    info = dict(torch=None, cuda=False, torch_error=f"{type(exc).__name__}: {exc}")
print(json.dumps(info))
"""
_MEGATRON_PROBE = """
import json
try:
    import megatron.core
    info = dict(megatron_core=megatron.core.__version__)
except Exception as exc:
    info = dict(megatron_error=f"{type(exc).__name__}: {exc}")
print(json.dumps(info))
"""


def check_env(site: Path) -> dict[str, str]:
    """The checks' environment: this checkout and the wheel folder first on PYTHONPATH, unbuffered, no bars."""
    env = dict(os.environ)
    paths = [str(REPO), str(site), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(PYTHONUNBUFFERED="1", TAIDTRON_NO_PROGRESS="1")
    return env


def _probe(code: str, env: dict[str, str], end_at: float, what: str) -> dict:
    """Run a probe in a fresh interpreter; its one JSON line, or {"<what>_error": why} when it gave none."""
    timeout = max(1.0, end_at - time.monotonic())
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {f"{what}_error": f"the probe did not finish within the setup budget ({timeout:.0f} s)"}
    except (IndexError, json.JSONDecodeError):
        return {f"{what}_error": f"the probe printed nothing readable: {proc.stderr.strip()[-300:]}"}


def install_wheels(wheels: Path, site: Path, end_at: float) -> str:
    """Install every wheel of `wheels` into `site` (offline, no dependency resolution: the folder holds exactly what
    the image lacks); returns what happened, in one line."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        return f"no wheels in {wheels}: fill it as docs/performance.md says (pip download ... megatron-core)"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    cmd += ["--upgrade", "--target", str(site), *map(str, found)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, end_at - time.monotonic()))
    except subprocess.TimeoutExpired:
        return "pip install of the wheels ran past the setup budget"
    if proc.returncode != 0:
        return f"pip install failed: {proc.stderr.strip()[-400:]}"
    return f"installed {', '.join(p.name for p in found)} into {site}"


def setup(wheels: Path, site: Path, end_at: float) -> dict:
    """The setup record: what torch sees; where there is a GPU, megatron-core importable (installed from the wheels
    when the image lacks it). Without a GPU nothing more is probed: no check will start."""
    start = time.monotonic()
    env = check_env(site)
    facts = {"torch": None, "cuda": False, **_probe(_TORCH_PROBE, env, end_at, "torch")}
    install = None
    if facts["cuda"]:
        facts.update(_probe(_MEGATRON_PROBE, env, end_at, "megatron"))
        if "megatron_error" in facts:
            install = install_wheels(wheels, site, end_at)
            facts.pop("megatron_error")
            facts.update(_probe(_MEGATRON_PROBE, env, end_at, "megatron"))
    facts["install"] = install
    if not facts["torch"]:
        summary = f"no CUDA device: torch does not import ({facts.get('torch_error')})"
    elif not facts["cuda"]:
        summary = f"no CUDA device: torch {facts['torch']} sees none (torch.cuda.is_available() is False)"
    else:
        summary = f"{facts['device']} ({facts['device_count']} visible), torch {facts['torch']}; megatron-core "
        summary += facts.get("megatron_core") or f"does NOT import: {facts['megatron_error']}"
    if install:
        summary += f"; {install}"
    return {
        "name": "setup",
        "what": "torch and the device (a probe), megatron-core (installed from the wheel folder when missing)",
        "budget_s": SETUP_BUDGET_S,
        "seconds": round(time.monotonic() - start, 1),
        "status": "pass" if facts["cuda"] and "megatron_core" in facts else "fail",
        "summary": summary,
        "metrics": facts,
    }


def skip_reason(facts: dict):
    """Why a check cannot start on this machine, or None."""

    def reason(check: Check) -> str | None:
        if not facts.get("torch"):
            return "no CUDA device: torch does not import"
        if check.needs_gpu and not facts.get("cuda"):
            return "no CUDA device visible"
        if "megatron_core" not in facts:
            return "megatron-core does not import (see setup)"
        return None

    return reason


# ---- command line ------------------------------------------------------------------------------------------------


class UsageError(ValueError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "runs/gpu_check/report", help="where the results go (default: %(default)s)"
    )
    parser.add_argument(
        "--work", type=Path, default=REPO / "runs/gpu_check/work", help="full outputs, junit files, the wheel site"
    )
    parser.add_argument(
        "--wheels", type=Path, default=REPO / ".whl", help="wheels to install when megatron-core is missing"
    )
    parser.add_argument(
        "--only", help=f"comma-separated checks, run in this order: {', '.join(c.name for c in CHECKS)}"
    )
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for everything (default 420)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan (checks, budgets, commands); run nothing"
    )
    return parser.parse_args(argv)


def select(only: str | None) -> list[Check]:
    if not only:
        return list(CHECKS)
    by_name = {c.name: c for c in CHECKS}
    names = [n for n in only.split(",") if n]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        raise UsageError(f"unknown check(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in names]


def plan(checks: list[Check], deadline: float) -> str:
    total = SETUP_BUDGET_S + sum(c.budget_s for c in checks)
    lines = [f"{'check':<15} {'budget':>7} {'ends by':>8}  command", f"{'setup':<15} {SETUP_BUDGET_S:>6.0f}s"]
    for i, check in enumerate(checks):
        end = deadline - sum(c.budget_s for c in checks[i + 1 :])
        lines.append(f"{check.name:<15} {check.budget_s:>6.0f}s {end:>7.0f}s  {check.describe()}")
    verdict = "fits" if total <= deadline else "DOES NOT FIT: the last checks may not run"
    lines.append(f"budgets add up to {total:.0f} s (setup included); deadline {deadline:.0f} s: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        checks = select(args.only)
        if args.deadline <= 0:
            raise UsageError("--deadline must be positive (seconds)")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan(checks, args.deadline))
        return 0
    out, work, wheels = (path.resolve() for path in (args.out, args.work, args.wheels))
    for stale in [out / "summary.txt", out / "setup.json", *(out / f"{c.name}.json" for c in CHECKS)]:
        stale.unlink(missing_ok=True)  # an earlier run's results must not pass for this run's
    facts: dict = {}
    runner = Runner(
        out,
        work,
        deadline_s=args.deadline,
        env=check_env(work / "site"),
        cwd=REPO,
        header=lambda: (
            f"taidtron GPU check, {time.strftime('%Y-%m-%d %H:%M %Z')}: {facts.get('device') or 'no CUDA device'}, "
            f"python {sys.version.split()[0]}, torch {facts.get('torch')}; deadline {args.deadline:.0f} s"
        ),
    )
    record = setup(wheels, work / "site", runner.start + SETUP_BUDGET_S)
    facts.update(record["metrics"])
    print(f"== setup: {record['status']} in {record['seconds']:.1f} s: {record['summary']}", flush=True)
    runner.add(record)
    checks = [dataclasses.replace(c, command=tuple(a.replace("{work}", str(work)) for a in c.command)) for c in checks]
    records = runner.run(checks, skip=skip_reason(facts))
    print("\n" + runner.summary())
    if not facts.get("cuda"):
        print(f"gpu_check: {record['summary'].split(';')[0]}; report in {out}", file=sys.stderr)
    return 0 if all(r["status"] in ("pass", "partial") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
