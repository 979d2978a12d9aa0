"""Time and measure the fused TAID loss against the official formula, forward + backward, side by side.

    python tools/bench_loss.py --tokens 2048 --vocab 32000 --dtype fp32 --device cpu --json runs/bench_loss.json
    python tools/bench_loss.py --tokens 8192 --vocab 151936 --dtype bf16 --device cuda --compile   # the GPU table

Each variant runs in its own fresh subprocess, so its extra peak memory is measured alone:
  * CPU: peak resident memory (VmHWM, reset through /proc/self/clear_refs once the inputs exist) minus the resident
    memory with the inputs in place. Falls back to ru_maxrss when clear_refs is not writable.
  * CUDA: torch.cuda.max_memory_allocated() minus the memory allocated with the inputs in place.
"Extra" includes the gradient of the student logits (every variant must produce it).
Time is the median of --repeats steps after --warmup steps (the speedup uses medians; the minimum is shown too);
each step is `s.grad = None; loss(s, T).backward()`.

Variants:
  official   the SakanaAI/TAID formula (softmax / log_softmax / masked product in fp32)
  compiled   the same under torch.compile (only with --compile)
  chunked    taidtron.losses.vocab_parallel_taid_loss(..., impl="torch").mean(): the eager chunked path
  triton     the same with impl="triton": the Triton kernels (default on CUDA; on CPU only under TRITON_INTERPRET=1,
             where the timing means nothing)
  copy       not a loss: copies one logits-sized tensor, giving the memory bandwidth (read + write) of this run
  loss:NAME  taidtron.losses.LOSSES[NAME] (any registered loss; taid and fkl on their torch path), e.g. loss:fkl,
             loss:akl; ctkd with a temperature that requires grad (its initial 1 + 20 sigmoid(1)), dkd with random
             labels. Compare them with --baseline loss:fkl.

Bandwidth floors, from the measured copy bandwidth: "3 passes" reads both logits and writes the gradient once (what a
loss that wrote the gradient during the forward could reach); "5 passes" adds the second read of both logits that
any loss with a separate backward makes (the statistics must be global, i.e. all-reduced over TP, and the upstream
gradient known, before any gradient element can be written): the floor of the Triton kernels.
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
    p.add_argument(
        "--baseline",
        default="official",
        help="the variant the speedup and memory ratios are against (default official), e.g. loss:fkl",
    )
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

    def official(logits, teacher_logits):  # the SakanaAI/TAID formula, up to the token mask (all ones)
        p_t = (1 - t) * logits.detach() + t * teacher_logits
        p_t = F.softmax(p_t, dim=-1, dtype=torch.float32)
        student_logprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        inf_mask = torch.isinf(logits)
        prod = torch.masked_fill(p_t * student_logprobs, inf_mask, 0)
        x = torch.sum(prod, dim=-1).view(-1)
        return -torch.mean(x)

    return official


def _registered_loss(args, name: str, s):
    """A loss of the registry with the options it needs, reduced to a mean like the other variants."""
    import torch

    from taidtron.losses import LOSSES

    options = {"impl": "torch"} if name in ("taid", "fkl") else {}
    if name == "ctkd":
        options["temperature"] = (1 + 20 * torch.sigmoid(torch.ones((), device=s.device))).requires_grad_(True)
    if name == "dkd":
        generator = torch.Generator(device=s.device).manual_seed(1)
        options["labels"] = torch.randint(0, args.vocab, (args.tokens,), generator=generator, device=s.device)

    def loss(a, b):
        return LOSSES[name](a, b, t=args.t, vocab_size=None, group=None, chunk_tokens=args.chunk_tokens, **options)

    return lambda a, b: loss(a, b).mean()


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

    if args._worker == "copy":
        return _copy_worker(args, s, te)
    if args._worker == "chunked" or args._worker.startswith("triton"):
        impl = "torch" if args._worker == "chunked" else "triton"
        if args._worker.startswith("triton:"):  # a launch configuration of the sweep
            from taidtron.losses import triton_taid

            config = [int(x) for x in args._worker.split(":", 1)[1].split("x")]
            triton_taid.TILE_ELEMENTS, triton_taid.MAX_BLOCK_V, triton_taid.NUM_WARPS = config[:3]
            triton_taid.NUM_STAGES = config[3] if len(config) > 3 else None
        fn = lambda a, b: vocab_parallel_taid_loss(  # noqa: E731
            a, b, args.t, chunk_tokens=args.chunk_tokens, impl=impl
        ).mean()
    elif args._worker == "official":
        fn = _official(args.t)
    elif args._worker == "compiled":
        fn = torch.compile(_official(args.t))
    elif args._worker.startswith("loss:"):
        fn = _registered_loss(args, args._worker.split(":", 1)[1], s)
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


def _copy_worker(args, s, te) -> dict:
    """Memory bandwidth of this device in this run: the median time to copy one logits-sized tensor."""
    import torch

    with torch.no_grad():
        dst = torch.empty_like(te)
        times = []
        for i in range(args.warmup + args.repeats):
            if s.device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                dst.copy_(te)
                b.record()
                torch.cuda.synchronize()
                ms = a.elapsed_time(b)
            else:
                t0 = time.perf_counter()
                dst.copy_(te)
                ms = (time.perf_counter() - t0) * 1e3
            if i >= args.warmup:
                times.append(ms)
    times.sort()
    median = times[len(times) // 2]
    return {
        "variant": "copy",
        "median_ms": median,
        "times_ms": [round(x, 3) for x in times],
        "bandwidth_bytes_per_s": 2 * te.numel() * te.element_size() / (median / 1e3),
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
    variants = args.variants.split(",") if args.variants else _default_variants(args)
    if args.triton_sweep:
        variants += [f"triton:{config}" for config in args.triton_sweep.split(",")]

    import torch

    grad_bytes = args.tokens * args.vocab * torch.tensor([], dtype=getattr(torch, DTYPES[args.dtype])).element_size()
    results = [run_variant(v, raw) for v in variants]
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
        "machine": _machine(args.device),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "gradient_bytes": grad_bytes,
        "command": "python tools/bench_loss.py " + " ".join(raw),
    }
    base = next((r for r in results if r["variant"] == args.baseline and "error" not in r), None)
    info["baseline"] = args.baseline
    print(
        f"loss fwd+bwd, {args.tokens} tokens x {args.vocab} vocab, {args.dtype}, {info['machine']}, "
        f"median of {args.repeats}; ratios against {args.baseline}"
    )
    width = max(10, *(len(v) for v in variants))
    print(
        f"{'variant':<{width}} {'median ms':>10} {'min ms':>8} {'speedup':>8} {'extra peak GB':>14} {'x grad':>7} "
        f"{'less memory':>12} {'loss':>10}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<{width}} failed: {r['error'].strip().splitlines()[-1][:200]}")
            continue
        if r["variant"] == "copy":
            print(
                f"{'copy':<{width}} {r['median_ms']:>10.3f} {min(r['times_ms']):>8.3f}   "
                f"memory bandwidth (read + write of one logits tensor): {r['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s"
            )
            continue
        speed = memory = "-"
        if base:
            r["speedup_vs_baseline"] = base["median_ms"] / r["median_ms"]
            r["memory_ratio_vs_baseline"] = base["extra_peak_bytes"] / max(r["extra_peak_bytes"], 1)
            speed, memory = f"{r['speedup_vs_baseline']:.2f}x", f"{r['memory_ratio_vs_baseline']:.2f}x"
        r["extra_peak_vs_gradient"] = r["extra_peak_bytes"] / grad_bytes
        print(
            f"{r['variant']:<{width}} {r['median_ms']:>10.3f} {min(r['times_ms']):>8.3f} {speed:>8} "
            f"{r['extra_peak_bytes'] / 1e9:>14.3f} {r['extra_peak_vs_gradient']:>6.2f}x {memory:>12} "
            f"{r['loss']:>10.6f}"
        )
    copy = next((r for r in results if r["variant"] == "copy" and "error" not in r), None)
    if copy:  # one logits tensor (= one gradient) moved per pass
        bandwidth = copy["bandwidth_bytes_per_s"]
        info["bandwidth_bytes_per_s"] = bandwidth
        info["floor_3_passes_ms"] = 3 * grad_bytes / bandwidth * 1e3
        info["floor_5_passes_ms"] = 5 * grad_bytes / bandwidth * 1e3
        print(
            f"bandwidth floor at {bandwidth / 1e12:.2f} TB/s: {info['floor_3_passes_ms']:.3f} ms for 3 passes "
            f"(read s and T, write the gradient), {info['floor_5_passes_ms']:.3f} ms for 5 (a separate backward "
            "reads s and T again: the Triton kernels' floor)"
        )
    method = next((r["memory_method"] for r in results if "memory_method" in r), "?")
    print(
        f"(the gradient alone is {grad_bytes / 1e9:.3f} GB; GB = 1e9 bytes; memory: {method}; "
        f"load average before/after: {load_before[0]:.2f}/{os.getloadavg()[0]:.2f})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps({"info": info, "results": results}, indent=1))
        os.replace(tmp, args.json)  # atomic: a reader never sees half a file
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in results) else 1


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
