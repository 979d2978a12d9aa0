"""Time and measure one transformer layer's forward + backward with each core attention, side by side.

    python tools/bench_attention.py --seq 2048 4096 --repeats 5 --json runs/bench_attention.json

The layer is one megatron-core decoder layer of a model in a taidtron config (default: the student of
configs/qwen2_72b_instruct_to_1.5b_instruct.yaml, Qwen2-1.5B: width 1536, 12 heads, 2 KV groups, head dim 128,
SwiGLU 8960), built by `taidtron.models.layer_spec` exactly as training builds it, with RoPE, at tp=1, micro-batch
--batch. One step is `x.grad = None; layer.zero_grad(); layer(x).backward(g)`.

Time: per sequence length, one process builds the layer once per attention with the same weights and runs their
steps in turn, --repeats rounds after --warmup rounds; the speed-up is the median over rounds of (baseline time /
time) in the same round, so load on a shared machine hits both alike. Times shown are medians over rounds.
Memory: each (sequence length, attention) runs --warmup + 1 steps in its own fresh process, so its extra peak is
measured alone (the method of tools/bench_loss.py):
  * CPU: peak resident memory (VmHWM, reset through /proc/self/clear_refs once the layer and its input exist) minus
    the resident memory at that point;
  * CUDA: torch.cuda.max_memory_allocated() minus the memory allocated with the layer and its input in place.
Extra memory holds everything a step allocates: saved activations, attention temporaries, input and weight grads.

Attention (the first given is the baseline):
  local   megatron-core's DotProductAttention (unfused: [b, heads, s, s] scores and probabilities kept)
  sdpa    taidtron's SDPAttention (torch scaled_dot_product_attention: flash kernels)
  te      Transformer Engine's spec (only on a GPU with TE usable by megatron-core)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from taidtron.benchmark.measure import DeviceTimer, PeakMemory, interleaved_rounds, machine_name
from taidtron.io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
DEFAULT_CONFIG = "configs/qwen2_72b_instruct_to_1.5b_instruct.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_attention.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="taidtron YAML config the layer shape comes from")
    p.add_argument("--model", choices=["student", "teacher"], default="student", help="which model's layer")
    p.add_argument("--seq", type=int, nargs="+", default=[2048, 4096], help="sequence lengths")
    p.add_argument("--batch", type=int, default=1, help="micro-batch size")
    p.add_argument(
        "--attention",
        nargs="+",
        default=["local", "sdpa"],
        choices=["local", "sdpa", "te"],
        help="implementations; the first is the baseline of the ratios",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="parameters and activations")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per run (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per run before timing")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--_worker", nargs="+", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- workers: fresh processes ---------------------------------------------------------------------------------------


def _setup(args):
    """Process groups (world of one), the model config, and a builder of (layer, step) for one attention."""
    import torch
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer.spec_utils import build_module

    from taidtron.config import ParallelConfig, load_config
    from taidtron.distributed import init_distributed, seed_everything
    from taidtron.models import layer_spec, resolve_attention, transformer_config

    model = getattr(load_config(_config_path(args.config)), args.model)
    parallel = ParallelConfig()
    ctx = init_distributed(parallel)
    dtype, dev = getattr(torch, DTYPES[args.dtype]), ctx.device
    config = transformer_config(model, parallel, params_dtype=dtype, use_cpu_initialization=dev.type == "cpu")
    rope = RotaryEmbedding(kv_channels=model.kv_channels, rotary_percent=1.0, rotary_base=int(model.rotary_base))

    def build(attention: str, seq: int):
        if attention == "te" and resolve_attention("auto") != "te":
            raise SystemExit("--attention te needs Transformer Engine usable by megatron-core and a GPU")
        seed_everything(1234, ctx)  # same weights for every attention
        spec = layer_spec(1, "auto" if attention == "te" else attention).submodules.layer_specs[0]
        layer = build_module(spec, config=config, layer_number=1).to(dev)
        rotary = rope(seq).to(dev)  # [s, 1, 1, d]
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(seq, args.batch, model.hidden_size, generator=gen, device=dev, dtype=dtype)
        x.requires_grad_(True)
        g = torch.randn(seq, args.batch, model.hidden_size, generator=gen, device=dev, dtype=dtype)

        def step():
            x.grad = None
            layer.zero_grad(set_to_none=True)
            out, _ = layer(x, attention_mask=None, rotary_pos_emb=rotary)  # [s, b, h]
            out.backward(g)
            return float(out.detach().double().abs().mean())  # equal across attentions: they compute one thing

        return type(layer.self_attention.core_attention).__name__, step

    return torch, dev, build


def time_worker(args, seq: int) -> dict:
    torch, dev, build = _setup(args)
    steps = {a: build(a, seq) for a in args.attention}
    checksum = {a: step() for a, (_, step) in steps.items()}  # equal across attentions: they compute one thing
    times = interleaved_rounds(
        {a: step for a, (_, step) in steps.items()},
        repeats=args.repeats,
        warmup=max(0, args.warmup - 1),
        timer=DeviceTimer(dev),
    )
    times = {a: [t * 1e3 for t in values] for a, values in times.items()}
    base = args.attention[0]
    return {
        "seq": seq,
        "threads": torch.get_num_threads(),
        "results": {
            a: {
                "core_attention": steps[a][0],
                "median_ms": statistics.median(times[a]),
                "min_ms": min(times[a]),
                "times_ms": [round(t, 1) for t in times[a]],
                "output_mean_abs": checksum[a],
                "speedup_vs_baseline": statistics.median(b / t for b, t in zip(times[base], times[a])),
            }
            for a in steps
        },
    }


def memory_worker(args, attention: str, seq: int) -> dict:
    torch, dev, build = _setup(args)
    _, step = build(attention, seq)
    probe = PeakMemory(dev, require_reset=True)  # the layer and its input are in place
    for _ in range(max(1, args.warmup) + 1):
        step()
    return {"attention": attention, "seq": seq, "extra_peak_bytes": probe.extra_bytes(), "memory_method": probe.method}


# ---- driver -------------------------------------------------------------------------------------------------------


def _config_path(config: str) -> Path:
    return Path(config) if Path(config).is_absolute() else REPO_ROOT / config


def run_worker(worker_args: list[str], argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "taidtron.benchmark.attention", *argv, "--_worker", *worker_args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _last_line(error: str) -> str:
    return error.strip().splitlines()[-1][:200]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._worker:
        kind, *rest = args._worker
        result = time_worker(args, int(rest[0])) if kind == "time" else memory_worker(args, rest[0], int(rest[1]))
        print(json.dumps(result))
        return 0
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--device" not in raw:
        raw += ["--device", args.device]
    load_before = os.getloadavg()
    import torch

    from taidtron.config import load_config

    model = getattr(load_config(_config_path(args.config)), args.model)
    info = {
        "config": args.config,
        "model": args.model,
        "hidden": model.hidden_size,
        "heads": model.num_attention_heads,
        "groups": model.num_query_groups,
        "head_dim": model.kv_channels,
        "ffn": model.ffn_hidden_size,
        "batch": args.batch,
        "dtype": args.dtype,
        "device": args.device,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": machine_name(args.device),
        "command": "python tools/bench_attention.py " + " ".join(raw),
    }
    print(
        f"one decoder layer fwd+bwd: {args.model} of {args.config} (h={model.hidden_size}, "
        f"{model.num_attention_heads} heads, {model.num_query_groups} KV groups, d={model.kv_channels}, "
        f"ffn={model.ffn_hidden_size}), batch {args.batch}, {args.dtype}, {info['machine']}, median of "
        f"{args.repeats} rounds"
    )
    print(
        f"{'seq':>6} {'attention':<10} {'core module':<20} {'median ms':>10} {'min ms':>9} {'speed-up':>9} "
        f"{'extra peak MiB':>15} {'less memory':>12}"
    )
    rows, ok = [], True
    for seq in args.seq:
        timing = run_worker(["time", str(seq)], raw)
        memory = {a: run_worker(["memory", a, str(seq)], raw) for a in args.attention}
        base_mem = memory[args.attention[0]].get("extra_peak_bytes")
        for a in args.attention:
            if "error" in timing or "error" in memory[a]:
                ok = False
                print(f"{seq:>6} {a:<10} failed: {_last_line(timing.get('error') or memory[a]['error'])}")
                continue
            r = {"seq": seq, "attention": a, **timing["results"][a], "threads": timing["threads"], **memory[a]}
            r["memory_ratio_vs_baseline"] = base_mem / max(r["extra_peak_bytes"], 1) if base_mem else None
            rows.append(r)
            ratio = f"{r['memory_ratio_vs_baseline']:.2f}x" if base_mem else "-"
            print(
                f"{seq:>6} {a:<10} {r['core_attention']:<20} {r['median_ms']:>10.1f} {r['min_ms']:>9.1f} "
                f"{r['speedup_vs_baseline']:>8.2f}x {r['extra_peak_bytes'] / 2**20:>15.1f} {ratio:>12}"
            )
    info["loadavg_before"], info["loadavg_after"] = load_before, os.getloadavg()
    method = next((r["memory_method"] for r in rows), "?")
    print(
        f"(speed-up: median over rounds of the same-round time ratio; memory: {method}; load average "
        f"before/after: {load_before[0]:.2f}/{info['loadavg_after'][0]:.2f})"
    )
    if args.json:
        atomic_write_json(args.json, {"info": info, "results": rows}, indent=1)
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
