"""Time and measure the fused TAID loss against the official formula, forward + backward, side by side.

    python tools/bench_loss.py --tokens 2048 --vocab 32000 --dtype fp32 --device cpu --json runs/bench_loss.json

Each variant runs in its own fresh subprocess, so its extra peak memory is measured alone:
  * CPU: peak resident memory (VmHWM, reset through /proc/self/clear_refs once the inputs exist) minus the resident
    memory with the inputs in place. Falls back to ru_maxrss when clear_refs is not writable.
  * CUDA: torch.cuda.max_memory_allocated() minus the memory allocated with the inputs in place.
"Extra" includes the gradient of the student logits (both variants must produce it), as in reference/gpu_probe.py.
Time is the median of --repeats steps after --warmup steps (the speedup uses medians; the minimum is shown too);
each step is `s.grad = None; loss(s, T).backward()`.

Variants:
  official   the SakanaAI/TAID formula (softmax / log_softmax / masked product in fp32), as in gpu_probe.py
  compiled   the same under torch.compile (only with --compile)
  taidtron   taidtron.losses.vocab_parallel_taid_loss(...).mean()
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="number of token positions (rows of the logits)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (columns of the logits)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of both logits tensors")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before timing")
    p.add_argument("--t", type=float, default=0.4, help="TAID interpolation t")
    p.add_argument("--chunk-tokens", type=int, default=None, help="taidtron chunk size (default: automatic)")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd official formula")
    p.add_argument("--variants", default=None, help="comma-separated subset of official,compiled,taidtron")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- worker: one variant in a fresh process -----------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _official(t):
    import torch
    import torch.nn.functional as F

    def official(logits, teacher_logits):  # reference/gpu_probe.py, verbatim up to the token mask (all ones)
        p_t = (1 - t) * logits.detach() + t * teacher_logits
        p_t = F.softmax(p_t, dim=-1, dtype=torch.float32)
        student_logprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        inf_mask = torch.isinf(logits)
        prod = torch.masked_fill(p_t * student_logprobs, inf_mask, 0)
        x = torch.sum(prod, dim=-1).view(-1)
        return -torch.mean(x)

    return official


def worker(args) -> dict:
    import torch

    from taidtron.losses import vocab_parallel_taid_loss

    dev = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    gen = torch.Generator(device=dev).manual_seed(0)
    # Fill the inputs row block by row block, so no [tokens, vocab] temporary inflates the starting peak.
    s = torch.empty(args.tokens, args.vocab, dtype=dtype, device=dev)
    te = torch.empty_like(s)
    for rows in range(0, args.tokens, 16):
        for x in (s, te):
            block = x[rows : rows + 16]
            block.copy_(torch.randn(block.shape, generator=gen, device=dev).mul_(2))
    s.requires_grad_(True)
    _malloc_trim()  # give freed heap pages back, so the starting RSS holds the inputs and nothing reusable

    if args._worker == "taidtron":
        fn = lambda a, b: vocab_parallel_taid_loss(a, b, args.t, chunk_tokens=args.chunk_tokens).mean()  # noqa: E731
    elif args._worker == "official":
        fn = _official(args.t)
    elif args._worker == "compiled":
        fn = torch.compile(_official(args.t))
    else:
        raise SystemExit(f"unknown variant {args._worker}")

    def step():
        s.grad = None
        loss = fn(s, te)
        loss.backward()
        return loss

    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        method = "torch.cuda.max_memory_allocated - allocated with inputs"
    else:
        base = _rss_bytes()
        method = "VmHWM after clear_refs - RSS with inputs" if _reset_hwm() else "ru_maxrss - RSS with inputs"

    t0 = time.perf_counter()
    loss = step()  # the first step also pays for compilation
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(max(0, args.warmup - 1)):
        step()
    times = []
    for _ in range(args.repeats):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)

    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    elif method.startswith("VmHWM"):
        peak = _hwm_bytes() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times.sort()
    return {
        "variant": args._worker,
        "median_ms": times[len(times) // 2],
        "times_ms": [round(x, 3) for x in times],
        "first_step_ms": round(first_ms, 1),
        "extra_peak_bytes": int(peak),
        "memory_method": method,
        "loss": float(loss),  # the same value for every variant: a sanity check that they compute one thing
        "threads": torch.get_num_threads(),
    }


# ---- driver -------------------------------------------------------------------------------------------------------


def run_variant(variant: str, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_worker", variant]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"variant": variant, "error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._worker:
        print(json.dumps(worker(args)))
        return 0
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--device" not in raw:
        raw += ["--device", args.device]
    load_before = os.getloadavg()
    variants = ["official"] + (["compiled"] if args.compile else []) + ["taidtron"]
    if args.variants:
        variants = args.variants.split(",")

    import torch

    grad_bytes = args.tokens * args.vocab * torch.tensor([], dtype=getattr(torch, DTYPES[args.dtype])).element_size()
    results = [run_variant(v, raw) for v in variants]
    info = {
        "tokens": args.tokens, "vocab": args.vocab, "dtype": args.dtype, "device": args.device, "t": args.t,
        "repeats": args.repeats, "warmup": args.warmup, "chunk_tokens": args.chunk_tokens,
        "torch": torch.__version__, "python": platform.python_version(), "machine": _machine(args.device),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "gradient_bytes": grad_bytes,
        "command": "python tools/bench_loss.py " + " ".join(raw),
    }
    base = next((r for r in results if r["variant"] == "official" and "error" not in r), None)
    print(f"TAID loss fwd+bwd, {args.tokens} tokens x {args.vocab} vocab, {args.dtype}, {info['machine']}, "
          f"median of {args.repeats}")
    print(f"{'variant':<10} {'median ms':>10} {'min ms':>8} {'speedup':>8} {'extra peak MB':>14} {'less memory':>12} "
          f"{'loss':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<10} failed: {r['error'].strip().splitlines()[-1][:200]}")
            continue
        speed = memory = "-"
        if base:
            r["speedup_vs_official"] = base["median_ms"] / r["median_ms"]
            r["memory_ratio_vs_official"] = base["extra_peak_bytes"] / max(r["extra_peak_bytes"], 1)
            speed, memory = f"{r['speedup_vs_official']:.2f}x", f"{r['memory_ratio_vs_official']:.2f}x"
        mb = r["extra_peak_bytes"] / 2**20
        print(f"{r['variant']:<10} {r['median_ms']:>10.1f} {min(r['times_ms']):>8.1f} {speed:>8} {mb:>14.1f} "
              f"{memory:>12} {r['loss']:>10.6f}")
    print(f"(the gradient alone is {grad_bytes / 2**20:.1f} MB; memory: {results[0].get('memory_method', '?')}; "
          f"load average before/after: {load_before[0]:.2f}/{os.getloadavg()[0]:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=1))
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in results) else 1


def _machine(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model}, {os.cpu_count()} cpus"


if __name__ == "__main__":
    sys.exit(main())
