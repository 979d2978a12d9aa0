"""What does distillation cost beyond its two parts? One TAID optimizer step against a student-only training step
plus a teacher forward pass, on the same micro-batches, in the same run.

    python tools/bench_step.py                                   # smoke and x4 pairs, CPU fp32, median of 7
    python tools/bench_step.py --pairs smoke --device cuda --json runs/bench_step.json

For each pair, three things are timed, interleaved (so machine noise hits them alike), the median of --repeats
after --warmup rounds:
  distill   `Trainer.train_step` with `taid.loss=taid`: teacher forward (no grad) and student forward/backward in the
            pair, the fused TAID loss, gradient reduction, clipping, AdamW, the t update
  student   `Trainer.train_step` with `taid.loss=lm`: the same student architecture, megatron-core DDP, distributed
            optimizer and schedule, plain next-token cross-entropy, no teacher built
  teacher   the distillation trainer's own teacher module, forward only under no_grad, over the same micro-batches
ratio = distill / (student + teacher); 1.00 means distillation costs exactly a student step plus a teacher forward.
The loss alone (TAID vs cross-entropy, forward + backward on one micro-batch's logits, times the micro-batches)
shows how much of any excess the loss itself accounts for. On a GPU each time is taken between device syncs, and the
distillation step's tokens/s, model TFLOP/s, MFU (`taidtron.flops`) and peak memory are reported too.

Pairs (`--pairs`, comma-separated), each a config file with overrides; init checkpoints are dropped (random weights):
  smoke         configs/smoke.yaml (student 2 x 128, teacher 4 x 256, vocab 1024, 16 x 128 tokens per step)
  x4            smoke with every width doubled: about 4x the parameters and FLOPs
  1.5b-7b       configs/qwen2_7b_to_1.5b.yaml on one device: Qwen2-1.5B <- Qwen2-7B, 4 x 4096 tokens per step
  1.5b-72bw2    Qwen2-1.5B <- a 2-layer teacher at Qwen2-72B width, 4 x 4096 tokens per step
The last two need most of one GPU (1.5b-7b about 55-60 GiB): they run with --no-baseline only, since a second
trainer beside them would not fit on an H100. Each pair is built in its own distributed session
(`taidtron.train.session`) and freed before the next. Extra `section.key=value` arguments override every pair
(e.g. parallel.micro_batch_size=2).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from taidtron.benchmark.batches import synthetic_micro_batches
from taidtron.benchmark.measure import DeviceTimer, interleaved_rounds
from taidtron.io import atomic_write_json

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pair:
    config: str
    """A config file, relative to the repository root."""
    overrides: tuple[str, ...] = ()
    alone: bool = False
    """Needs most of one GPU: never built beside the student-only baseline trainer (--no-baseline only)."""


_SMOKE = "configs/smoke.yaml"
_WIDER = (
    "student.hidden_size=256",
    "student.ffn_hidden_size=704",
    "student.num_attention_heads=8",
    "student.num_query_groups=4",
    "teacher.hidden_size=512",
    "teacher.ffn_hidden_size=1408",
    "teacher.num_attention_heads=8",
    "teacher.num_query_groups=4",
)
_ONE_DEVICE = (
    "parallel.tp=1",
    "parallel.pp=1",
    "parallel.micro_batch_size=1",
    "parallel.global_batch_size=4",
    "data.seq_length=4096",
)
PAIRS = {
    "smoke": Pair(_SMOKE),
    "x4": Pair(_SMOKE, _WIDER),
    "1.5b-7b": Pair("configs/qwen2_7b_to_1.5b.yaml", _ONE_DEVICE, alone=True),
    "1.5b-72bw2": Pair(
        "configs/qwen2_72b_instruct_to_1.5b_instruct.yaml", (*_ONE_DEVICE, "teacher.num_layers=2"), alone=True
    ),
}


def load_pair(name: str, extra: list[str], precision: str):
    """The pair's TrainConfig: random weights, no warm-up, a schedule long enough never to end."""
    from taidtron.config import ConfigError, load_config

    pair = PAIRS[name]
    cfg = load_config(
        REPO / pair.config,
        [
            "student.init=null",
            "teacher.init=null",
            f"precision={precision}",
            "optim.warmup_steps=0",
            "optim.train_steps=100000",
            *pair.overrides,
            *extra,
        ],
    )
    if (cfg.parallel.tp, cfg.parallel.pp) != (1, 1):
        raise ConfigError(f"pair {name}: the benchmark runs in one process; set parallel.tp=1 parallel.pp=1.")
    return cfg


def bench_pair(name: str, cfg, *, repeats: int, warmup: int, baseline: bool) -> dict:
    """One pair in its own distributed session; its trainers are freed (and the CUDA cache emptied) before the next."""
    import torch

    from taidtron.distributed import LaunchEnv
    from taidtron.train import session

    with session(cfg, launch=LaunchEnv.single()) as ctx:
        result = _time_pair(name, cfg, ctx, repeats=repeats, warmup=warmup, baseline=baseline)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _time_pair(name: str, cfg, ctx, *, repeats: int, warmup: int, baseline: bool) -> dict:
    import torch

    from taidtron.distributed import seed_everything
    from taidtron.flops import peak_flops
    from taidtron.trainer import build_trainer

    device = ctx.device
    vocab = min(cfg.student.vocab_size, cfg.teacher.vocab_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    distill = build_trainer(cfg, ctx, vocab)
    trainers = {"distill": distill}
    if baseline:
        seed_everything(cfg.seed, ctx)  # the same student weights as the distillation trainer's
        lm = dataclasses.replace(cfg, taid=dataclasses.replace(cfg.taid, loss="lm"))
        trainers["student"] = build_trainer(lm, ctx, vocab)
    micro = distill.accumulation_steps
    batches = synthetic_micro_batches(micro, cfg.parallel.micro_batch_size, cfg.data.seq_length, vocab)
    teacher = distill.model.module.teacher

    def teacher_forward():
        with torch.no_grad():
            for batch in batches:
                tokens = batch["tokens"].to(device, non_blocking=True)  # as the trainer's micro-batch step
                teacher(tokens, batch["position_ids"].to(device, non_blocking=True), None)

    steps = {key: (lambda t=trainer: t.train_step(iter(batches))) for key, trainer in trainers.items()}
    if baseline:
        steps["teacher"] = teacher_forward
    timer = DeviceTimer(device)
    times = interleaved_rounds(steps, repeats=repeats, warmup=warmup, timer=timer, rotate=True)
    result = {
        "pair": name,
        "config": PAIRS[name].config,
        "overrides": list(PAIRS[name].overrides),
        "device": str(device),
        "precision": str(distill.params_dtype).removeprefix("torch."),
        "student_params": distill.student_params,
        "teacher_params": distill.teacher_params,
        "micro_batches": micro,
        "tokens_per_step": cfg.parallel.global_batch_size * cfg.data.seq_length,
        "repeats": repeats,
        "warmup": warmup,
        **{f"{key}_ms": statistics.median(values) * 1e3 for key, values in times.items()},
        **{f"{key}_min_ms": min(values) * 1e3 for key, values in times.items()},
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["tokens_per_s"] = result["tokens_per_step"] / (result["distill_ms"] / 1e3)
    result["model_tflops"] = distill.flops_per_token * result["tokens_per_s"] / 1e12
    peak = peak_flops(torch.cuda.get_device_name() if device.type == "cuda" else None)
    if peak is not None:
        result.update(peak_device=peak.device, peak_tflops=peak.tflops, mfu=result["model_tflops"] / peak.tflops)
    if baseline:
        parts = result["student_ms"] + result["teacher_ms"]
        result["ratio"] = result["distill_ms"] / parts
        result["ratio_of_minima"] = result["distill_min_ms"] / (result["student_min_ms"] + result["teacher_min_ms"])
        result.update(loss_alone(distill, trainers["student"], batches[0], vocab, timer, repeats, warmup))
        result["loss_excess_ms"] = (result["taid_loss_ms"] - result["ce_loss_ms"]) * micro
        result["excess_ms"] = result["distill_ms"] - parts
    for trainer in trainers.values():
        trainer.close()
    return result


def loss_alone(distill, student, batch: dict, vocab: int, timer, repeats: int, warmup: int) -> dict:
    """Forward + backward of each trainer's objective on one micro-batch's logits ([b, s, V_padded], the
    trainer's dtype), interleaved; medians in ms."""
    import torch

    device, dtype = distill.ctx.device, distill.params_dtype
    b, s = batch["tokens"].shape
    generator = torch.Generator(device=device).manual_seed(1)
    shape = (b, s, distill.padded_vocab_size)
    student_logits = (torch.randn(shape, generator=generator, device=device) * 3).to(dtype)
    teacher_logits = (torch.randn(shape, generator=generator, device=device) * 3).to(dtype)
    labels = batch["labels"].to(device)

    def run(objective, teacher):
        logits = student_logits.detach().requires_grad_(True)
        terms = objective(logits, teacher, labels, t=0.4, vocab_size=vocab, group=None)
        terms.total.sum().backward()

    runs = {
        "taid_loss": lambda: run(distill.objective, teacher_logits),
        "ce_loss": lambda: run(student.objective, None),
    }
    times = interleaved_rounds(runs, repeats=repeats, warmup=warmup, timer=timer)
    return {f"{key}_ms": statistics.median(values) * 1e3 for key, values in times.items()}


def render(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(
            f"{r['pair']}: student {r['student_params'] / 1e6:,.2f}M, teacher "
            f"{r['teacher_params'] / 1e6:,.2f}M params; {r['micro_batches']} micro-batches, "
            f"{r['tokens_per_step']:,} tokens/step; {r['device']} {r['precision']}; median of {r['repeats']}"
        )
        if "ratio" in r:
            lines.append(
                f"  distill {r['distill_ms']:10.2f} ms   student {r['student_ms']:10.2f} ms   teacher "
                f"{r['teacher_ms']:10.2f} ms   ratio {r['ratio']:.3f} (of minima {r['ratio_of_minima']:.3f})"
            )
            lines.append(
                f"  excess {r['excess_ms']:+.2f} ms; the loss alone: TAID {r['taid_loss_ms']:.2f} ms vs "
                f"cross-entropy {r['ce_loss_ms']:.2f} ms per micro-batch = {r['loss_excess_ms']:+.2f} ms "
                f"per step"
            )
        else:
            lines.append(f"  distill {r['distill_ms']:10.2f} ms")
        tail = f"  {r['tokens_per_s']:,.0f} tokens/s, {r['model_tflops']:.2f} model TFLOP/s"
        if "mfu" in r:
            tail += f", MFU {r['mfu']:.1%} of {r['peak_device']} {r['peak_tflops']:g} TFLOP/s"
        if "peak_memory_gib" in r:
            tail += f", peak {r['peak_memory_gib']:.1f} GiB"
        lines.append(tail)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_step.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every pair")
    parser.add_argument("--pairs", default="smoke,x4", help=f"comma-separated subset of {', '.join(PAIRS)}")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu"
    )
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on cuda, fp32 on cpu"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="time the distillation step only (throughput / MFU; no student or teacher baseline)",
    )
    parser.add_argument("--json", help="write the results here as JSON (atomically)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = [p for p in args.pairs.split(",") if p]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        return _usage_error(f"unknown pair(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PAIRS)}")
    if args.repeats < 1 or args.warmup < 0:
        return _usage_error("need --repeats >= 1 and --warmup >= 0")
    alone = [p for p in pairs if PAIRS[p].alone]
    if alone and not args.no_baseline:
        return _usage_error(
            f"pair {', '.join(alone)} needs most of one GPU's memory: its student-only baseline trainer must not "
            "be built beside it (out of memory on an H100); add --no-baseline or leave the pair out"
        )
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the trainer takes the GPU when it sees one

    import torch

    from taidtron.config import ConfigError

    if args.device == "cuda" and not torch.cuda.is_available():
        return _usage_error("--device cuda but torch sees no GPU; drop --device or use --device cpu")
    results = []
    try:
        for name in pairs:
            cfg = load_pair(name, args.overrides, args.precision)
            results.append(
                bench_pair(name, cfg, repeats=args.repeats, warmup=args.warmup, baseline=not args.no_baseline)
            )
            print(render(results[-1:]), flush=True)
            if args.json:  # after every pair: a run stopped from outside keeps what finished
                atomic_write_json(args.json, {"command": " ".join(sys.argv), "results": results})
    except ConfigError as exc:
        return _usage_error(" ".join(str(exc).split()))
    return 0


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
