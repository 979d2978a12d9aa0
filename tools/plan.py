"""Will a taidtron config fit a cluster, and how fast will it run? The command line of `taidtron.plan`.

    python tools/plan.py configs/qwen2_72b_instruct_to_1.5b_instruct.yaml --nodes 16 --gpus-per-node 8
    python tools/plan.py configs/smoke.yaml parallel.tp=2 --nodes 1 --gpus-per-node 2 --json

What the memory and step-time figures count: `taidtron/plan.py`.
Exit status: 0 fits, 1 does not fit (the message says what to change), 2 invalid config or layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from taidtron import plan
from taidtron.config import ConfigError, load_config
from taidtron.plan import GIB, advice, plan_memory, plan_throughput, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1] + "\n" + plan.__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, as for taidtron.train")
    parser.add_argument("--nodes", type=int, required=True, help="nodes in the job")
    parser.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (= ranks) per node")
    parser.add_argument("--gpu-mem-gib", type=float, default=80.0, help="memory per GPU (H100 SXM: 80)")
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=989.0,
        help="peak dense bf16 TFLOP/s per GPU (H100 SXM: 989, H200: 989, A100: 312)",
    )
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation (0-1)")
    parser.add_argument(
        "--overhead-gib",
        type=float,
        default=4.0,
        help="per-GPU reserve for the CUDA context, NCCL buffers and fragmentation",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    world = args.nodes * args.gpus_per_node
    if world < 1 or not 0 < args.mfu <= 1:
        print("error: need --nodes >= 1, --gpus-per-node >= 1 and 0 < --mfu <= 1", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        cfg.validate_layout(world)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stages = plan_memory(cfg, world, overhead_gib=args.overhead_gib)
    thr = plan_throughput(cfg, world, gpu_tflops=args.gpu_tflops, mfu=args.mfu)
    budget = args.gpu_mem_gib * GIB
    worst = max(stages, key=lambda m: m.total)
    fits = worst.total <= budget
    if args.json:
        print(
            json.dumps(
                {
                    "config": args.config,
                    "overrides": args.overrides,
                    "nodes": args.nodes,
                    "gpus_per_node": args.gpus_per_node,
                    "world_size": world,
                    "gpu_mem_gib": args.gpu_mem_gib,
                    "tp": cfg.parallel.tp,
                    "pp": cfg.parallel.pp,
                    "dp": cfg.parallel.data_parallel_size(world),
                    "attention": {"student": cfg.student.attention, "teacher": cfg.teacher.attention},
                    "fits": fits,
                    "peak_gib": worst.total / GIB,
                    "peak_stage": worst.stage,
                    "stages": [{**asdict(m), "total": m.total} for m in stages],
                    "throughput": thr,
                },
                indent=2,
            )
        )
    else:
        print(render(cfg, args, world, stages, thr))
    if not fits:
        print(
            f"\nDOES NOT FIT: stage {worst.stage} needs {worst.total / GIB:.1f} GiB per GPU, "
            f"{args.gpu_mem_gib:g} GiB available. Try {advice(cfg, worst, budget)}.",
            file=sys.stderr,
        )
        return 1
    if not args.json:
        print(f"\nfits: peak {worst.total / GIB:.1f} GiB of {args.gpu_mem_gib:g} GiB (stage {worst.stage})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
