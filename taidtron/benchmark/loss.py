"""Time and measure the fused TAID loss against the official formula, forward + backward, side by side.

    python tools/bench_loss.py --tokens 2048 --vocab 32000 --dtype fp32 --device cpu --json runs/bench_loss.json
    python tools/bench_loss.py --tokens 8192 --vocab 151936 --dtype bf16 --device cuda --compile   # the GPU table

On CPU each variant runs in its own fresh subprocess, so its extra peak memory is measured alone (peak resident
memory, VmHWM reset through /proc/self/clear_refs once the inputs exist, minus the resident memory with the inputs
in place; ru_maxrss where clear_refs is not writable). On CUDA all variants run one after another in one subprocess
(one start-up instead of one per variant): each starts from the inputs alone, and its extra peak is
torch.cuda.max_memory_allocated() minus the memory allocated with the inputs in place. "Extra" includes the gradient
of the student logits (every variant must produce it). Time is the median of --repeats steps after --warmup steps
(the speedup uses medians; the minimum is shown too); each step is `s.grad = None; loss(s, T).backward()`.

Variants:
  official   the SakanaAI/TAID formula (softmax / log_softmax / masked product in fp32)
  compiled   the same under torch.compile (only with --compile)
  chunked    taidtron.losses.vocab_parallel_taid_loss(..., impl="torch").mean(): the eager chunked path
  triton     the same with impl="triton": the Triton kernels (default on CUDA; on CPU only under TRITON_INTERPRET=1,
             where the timing means nothing)
  copy       not a loss: copies one logits-sized tensor, giving the memory bandwidth (read + write) of this run

Agreement: every loss variant also reports its loss and its gradient on 8 sampled rows; the driver compares the
losses with the official formula's and the gradient rows with the official formula evaluated in float64 on those
rows (tolerances relative to the largest reference gradient: 1e-4 in fp32, 2e-3 in fp16, 1e-2 in bf16, whose
gradients are rounded to 8 significant bits; losses 1e-4 relative).

Bandwidth floors, from the measured copy bandwidth: "3 passes" reads both logits and writes the gradient once (what a
loss that wrote the gradient during the forward could reach); "5 passes" adds the second read of both logits that
any loss with a separate backward makes (the statistics must be global, i.e. all-reduced over TP, and the upstream
gradient known, before any gradient element can be written): the floor of the Triton kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from taidtron.benchmark.measure import PeakMemory, copy_bandwidth, floor_ms, machine_name, malloc_trim
from taidtron.io import atomic_write_json

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
GRAD_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 1e-2}
LOSS_TOLERANCE = 1e-4
SAMPLED_ROWS = 8


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_loss.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=2048, help="number of token positions (rows of the logits)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (columns of the logits)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of both logits tensors")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before timing")
    p.add_argument("--t", type=float, default=0.4, help="TAID interpolation t")
    p.add_argument("--chunk-tokens", type=int, default=None, help="taidtron chunk size (default: automatic)")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd official formula")
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of official,compiled,chunked,triton,copy (default: official, "
        "compiled with --compile, chunked, triton when Triton can run here, copy)",
    )
    p.add_argument(
        "--triton-sweep",
        default=None,
        metavar="TILExBLOCK_VxWARPS[xSTAGES],...",
        help="also time the Triton kernels at these launch configurations (TILE_ELEMENTS, MAX_BLOCK_V, "
        "NUM_WARPS[, NUM_STAGES] of triton_taid.py), one row each, e.g. 2048x2048x8,512x512x2",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_grads", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- worker: variants measured in one fresh process -----------------------------------------------------------------


def official_formula(t: float):
    import torch
    import torch.nn.functional as F

    def official(logits, teacher_logits):  # the SakanaAI/TAID formula, up to the token mask (all ones)
        p_t = (1 - t) * logits.detach() + t * teacher_logits
        p_t = F.softmax(p_t, dim=-1, dtype=torch.float32)
        student_logprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        inf_mask = torch.isinf(logits)
        prod = torch.masked_fill(p_t * student_logprobs, inf_mask, 0)
        x = torch.sum(prod, dim=-1).view(-1)
        return -torch.mean(x)

    return official


def sampled_rows(tokens: int) -> list[int]:
    import torch

    return sorted(torch.randperm(tokens, generator=torch.Generator().manual_seed(1))[:SAMPLED_ROWS].tolist())


def _inputs(args):
    """Student and teacher logits, N(0, 2^2), the same in every process of one device. Filled block by block so no
    [tokens, vocab] temporary inflates the starting peak."""
    import torch

    dev = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    gen = torch.Generator(device=dev).manual_seed(0)
    student = torch.empty(args.tokens, args.vocab, dtype=dtype, device=dev)
    teacher = torch.empty_like(student)
    for rows in range(0, args.tokens, 16):
        for x in (student, teacher):
            block = x[rows : rows + 16]
            block.copy_(torch.randn(block.shape, generator=gen, device=dev).mul_(2))
    return student.requires_grad_(True), teacher


def _loss_function(variant: str, args):
    import torch

    from taidtron.losses import vocab_parallel_taid_loss

    if variant == "official":
        return official_formula(args.t)
    if variant == "compiled":
        return torch.compile(official_formula(args.t))
    if variant == "chunked" or variant.startswith("triton"):
        impl = "torch" if variant == "chunked" else "triton"
        return lambda a, b: vocab_parallel_taid_loss(a, b, args.t, chunk_tokens=args.chunk_tokens, impl=impl).mean()
    raise ValueError(f"unknown variant {variant}")


@contextlib.contextmanager
def _triton_launch(variant: str) -> Iterator[None]:
    """A sweep variant ("triton:TILExBLOCK_VxWARPS[xSTAGES]") runs with that launch configuration of
    `taidtron.losses.triton_taid` (its module settings), restored afterwards; the other variants run as they are."""
    if not variant.startswith("triton:"):
        yield
        return
    from taidtron.losses import triton_taid

    config = [int(x) for x in variant.split(":", 1)[1].split("x")]
    names = ("TILE_ELEMENTS", "MAX_BLOCK_V", "NUM_WARPS", "NUM_STAGES")
    saved = {name: getattr(triton_taid, name) for name in names}
    try:
        for name, value in zip(names, [*config[:3], config[3] if len(config) > 3 else None]):
            setattr(triton_taid, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(triton_taid, name, value)


def measure_variant(variant: str, student, teacher, args) -> dict:
    """Time and extra peak memory of one variant; its loss and sampled gradient rows go to --_grads."""
    import torch

    from taidtron.benchmark.measure import DeviceTimer

    student.grad = None
    gc.collect()
    malloc_trim()
    if student.device.type == "cuda":
        torch.cuda.empty_cache()
    if variant == "copy":
        return {"variant": "copy", **copy_bandwidth(teacher.detach(), repeats=args.repeats, warmup=args.warmup)}
    fn = _loss_function(variant, args)

    def step():
        student.grad = None
        loss = fn(student, teacher)
        loss.backward()
        return loss

    with _triton_launch(variant):
        probe = PeakMemory(student.device)
        timer = DeviceTimer(student.device)
        first_ms = timer(step) * 1e3  # the first step also pays for compilation
        for _ in range(max(0, args.warmup - 1)):
            step()
        times = sorted(timer(step) * 1e3 for _ in range(args.repeats))
        peak = probe.extra_bytes()
        loss = step()
    if args._grads is not None:
        rows = sampled_rows(args.tokens)
        torch.save(
            {"loss": float(loss), "grad_rows": student.grad[rows].double().cpu()},
            args._grads / f"{variant.replace(':', '_')}.pt",
        )
    return {
        "variant": variant,
        "median_ms": times[len(times) // 2],
        "times_ms": [round(x, 3) for x in times],
        "first_step_ms": round(first_ms, 1),
        "extra_peak_bytes": peak,
        "memory_method": probe.method,
        "loss": float(loss),
        "threads": torch.get_num_threads(),
    }


def worker(args) -> None:
    """Measure the variants of --_worker in order, printing each one's result as a JSON line when it is done."""
    import torch

    student, teacher = _inputs(args)
    if args._grads is not None:
        rows = sampled_rows(args.tokens)
        torch.save(
            {"student": student.detach()[rows].double().cpu(), "teacher": teacher[rows].double().cpu()},
            args._grads / "inputs.pt",
        )
    for variant in args._worker.split(","):
        try:
            result = measure_variant(variant, student, teacher, args)
        except Exception as exc:  # noqa: BLE001 - one variant failing (a compile, an OOM) leaves the others' rows
            result = {"variant": variant, "error": f"{type(exc).__name__}: {exc}"[-2000:]}
        print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---- driver ----------------------------------------------------------------------------------------------------------

RESULT_PREFIX = "bench_loss result: "
# Run order: the bandwidth and the baseline first, torch.compile's long first step last, so that a run stopped
# from outside (the GPU check's budget) has written the most; rows are shown in TABLE_ORDER.
RUN_ORDER = ("copy", "official", "chunked", "triton", "compiled")
TABLE_ORDER = ("official", "compiled", "chunked", "triton", "copy")


def _order(variants: list[str], order: tuple[str, ...]) -> list[str]:
    return sorted(variants, key=lambda v: order.index(v.split(":")[0]) if v.split(":")[0] in order else len(order))


def run_workers(variants: list[str], argv: list[str], device: str, grads: Path):
    """Yield each variant's result as its worker prints it. CPU: one process per variant (the resident-set peak needs
    a fresh process); CUDA: one process for all, in RUN_ORDER."""
    batches = [[v] for v in variants] if device == "cpu" else [_order(variants, RUN_ORDER)]
    for batch in batches:
        cmd = [sys.executable, "-m", "taidtron.benchmark.loss", *argv, "--_worker", ",".join(batch), "--_grads", grads]
        proc = subprocess.Popen(
            list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        done, other = set(), []
        for line in proc.stdout:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
                done.add(result["variant"])
                yield result
            else:
                other = [*other[-40:], line]
        proc.wait()
        for variant in batch:
            if variant not in done:
                yield {"variant": variant, "error": ("".join(other) or f"exit code {proc.returncode}")[-2000:]}


def agreement(grads: Path, args, variants: list[str]) -> dict:
    """Each variant's loss against the official formula's, its gradient rows against the official formula in float64
    on the same rows (the mean over all tokens: each row's gradient is divided by --tokens)."""
    import torch

    inputs = torch.load(grads / "inputs.pt")
    student = inputs["student"].clone().requires_grad_(True)
    p_t = torch.softmax((1 - args.t) * student.detach() + args.t * inputs["teacher"], dim=-1)
    (-(p_t * torch.log_softmax(student, dim=-1)).sum() / args.tokens).backward()
    reference = student.grad
    scale = reference.abs().max().item()
    official = torch.load(grads / "official.pt")["loss"] if (grads / "official.pt").is_file() else None
    out = {}
    for variant in variants:
        path = grads / f"{variant.replace(':', '_')}.pt"
        if variant == "copy" or not path.is_file():
            continue
        got = torch.load(path)
        grad_error = (got["grad_rows"] - reference).abs().max().item() / scale
        loss_error = abs(got["loss"] - official) / abs(official) if official is not None else None
        out[variant] = {
            "loss_relative_to_official": loss_error,
            "grad_error_relative_to_max": grad_error,
            "agrees": grad_error <= GRAD_TOLERANCE[args.dtype] and (loss_error is None or loss_error <= LOSS_TOLERANCE),
        }
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._worker:
        worker(args)
        return 0
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--device" not in raw:
        raw += ["--device", args.device]
    variants = args.variants.split(",") if args.variants else _default_variants(args)
    if args.triton_sweep:
        variants += [f"triton:{config}" for config in args.triton_sweep.split(",")]

    import torch

    grad_bytes = args.tokens * args.vocab * torch.tensor([], dtype=getattr(torch, DTYPES[args.dtype])).element_size()
    info = {
        "tokens": args.tokens,
        "vocab": args.vocab,
        "dtype": args.dtype,
        "device": args.device,
        "t": args.t,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "chunk_tokens": args.chunk_tokens,
        "triton_sweep": args.triton_sweep,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": machine_name(args.device),
        "loadavg_before": os.getloadavg(),
        "gradient_bytes": grad_bytes,
        "command": "python tools/bench_loss.py " + " ".join(raw),
        "agreement_tolerance": {"grad_relative_to_max": GRAD_TOLERANCE[args.dtype], "loss_relative": LOSS_TOLERANCE},
    }
    start, results = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="bench_loss-") as tmp:
        for result in run_workers(variants, raw, args.device, Path(tmp)):
            results.append(result)
            if (Path(tmp) / "inputs.pt").is_file():
                agreed = agreement(Path(tmp), args, [r["variant"] for r in results])
                for r in results:
                    r.update(agreed.get(r["variant"], {}))
            _summarize(info, results, grad_bytes, start)
            if args.json:  # after every variant: a run stopped from outside keeps what finished
                atomic_write_json(args.json, {"info": info, "results": results}, indent=1)
    results = [r for v in _order([r["variant"] for r in results], TABLE_ORDER) for r in results if r["variant"] == v]
    print(render(info, results))
    if args.json:
        atomic_write_json(args.json, {"info": info, "results": results}, indent=1)
        print(f"wrote {args.json}")
    checked = [r for r in results if "agrees" in r]
    failed = any("error" in r for r in results) or (checked and not info["all_agree"])
    return 1 if failed else 0


def _summarize(info: dict, results: list[dict], grad_bytes: int, start: float) -> None:
    """The floors (once the copy is measured), the ratios and the overall agreement, into `info` and the rows."""
    copy = next((r for r in results if r["variant"] == "copy" and "error" not in r), None)
    if copy:  # one logits tensor (= one gradient) moved per pass
        bandwidth = info["bandwidth_bytes_per_s"] = copy["bandwidth_bytes_per_s"]
        info["floor_3_passes_ms"] = floor_ms(3, grad_bytes, bandwidth)
        info["floor_5_passes_ms"] = floor_ms(5, grad_bytes, bandwidth)
    checked = [r for r in results if "agrees" in r]
    info["all_agree"] = bool(checked) and all(r["agrees"] for r in checked)
    info["loadavg_after"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - start, 1)
    _add_ratios(results, grad_bytes, info.get("floor_5_passes_ms"))


def _add_ratios(results: list[dict], grad_bytes: int, floor_5: float | None) -> None:
    base = next((r for r in results if r["variant"] == "official" and "error" not in r), None)
    for r in results:
        if "error" in r or r["variant"] == "copy":
            continue
        if base:
            r["speedup_vs_official"] = base["median_ms"] / r["median_ms"]
            r["memory_ratio_vs_official"] = base["extra_peak_bytes"] / max(r["extra_peak_bytes"], 1)
        r["extra_peak_vs_gradient"] = r["extra_peak_bytes"] / grad_bytes
        if floor_5:
            r["vs_floor_5_passes"] = r["median_ms"] / floor_5


def render(info: dict, results: list[dict]) -> str:
    width = max(10, *(len(r["variant"]) for r in results))
    lines = [
        f"TAID loss fwd+bwd, {info['tokens']} tokens x {info['vocab']} vocab, {info['dtype']}, {info['machine']}, "
        f"median of {info['repeats']}",
        f"{'variant':<{width}} {'median ms':>10} {'min ms':>8} {'speedup':>8} {'extra peak GB':>14} {'x grad':>7} "
        f"{'less memory':>12} {'x floor5':>9} {'loss':>10} {'agrees':>7}",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['variant']:<{width}} failed: {r['error'].strip().splitlines()[-1][:200]}")
        elif r["variant"] == "copy":
            lines.append(
                f"{'copy':<{width}} {r['median_ms']:>10.3f} {min(r['times_ms']):>8.3f}   "
                f"memory bandwidth (read + write of one logits tensor): {r['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s"
            )
        else:
            speed, memory = (
                (f"{r['speedup_vs_official']:.2f}x", f"{r['memory_ratio_vs_official']:.2f}x")
                if "speedup_vs_official" in r
                else ("-", "-")
            )
            floor = f"{r['vs_floor_5_passes']:.2f}x" if "vs_floor_5_passes" in r else "-"
            agrees = {True: "yes", False: "NO"}.get(r.get("agrees"), "-")
            lines.append(
                f"{r['variant']:<{width}} {r['median_ms']:>10.3f} {min(r['times_ms']):>8.3f} {speed:>8} "
                f"{r['extra_peak_bytes'] / 1e9:>14.3f} {r['extra_peak_vs_gradient']:>6.2f}x {memory:>12} "
                f"{floor:>9} {r['loss']:>10.6f} {agrees:>7}"
            )
    if "bandwidth_bytes_per_s" in info:
        lines.append(
            f"bandwidth floor at {info['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s: {info['floor_3_passes_ms']:.3f} ms "
            f"for 3 passes (read s and T, write the gradient), {info['floor_5_passes_ms']:.3f} ms for 5 (a separate "
            "backward reads s and T again: the Triton kernels' floor)"
        )
    tol = info["agreement_tolerance"]
    lines.append(
        f"agreement: losses within {tol['loss_relative']:g} of the official formula's, gradients on "
        f"{SAMPLED_ROWS} sampled rows within {tol['grad_relative_to_max']:g} of the largest float64 reference value: "
        f"{'all agree' if info['all_agree'] else 'NOT ALL AGREE'}"
    )
    method = next((r["memory_method"] for r in results if "memory_method" in r), "?")
    lines.append(
        f"(the gradient alone is {info['gradient_bytes'] / 1e9:.3f} GB; GB = 1e9 bytes; memory: {method}; "
        f"load average before/after: {info['loadavg_before'][0]:.2f}/{info['loadavg_after'][0]:.2f})"
    )
    return "\n".join(lines)


def _default_variants(args) -> list[str]:
    """official, compiled (--compile), chunked, triton where its kernels can run (CUDA, or the interpreter), copy."""
    import importlib.util

    triton_runs = importlib.util.find_spec("triton") is not None and (
        args.device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    )
    return (
        ["official"]
        + (["compiled"] if args.compile else [])
        + ["chunked"]
        + (["triton"] if triton_runs else [])
        + ["copy"]
    )


if __name__ == "__main__":
    sys.exit(main())
