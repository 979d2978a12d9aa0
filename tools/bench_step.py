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
distillation step's tokens/s, model TFLOP/s and MFU (`taidtron.flops`) are reported too.

Pairs (`--pairs`, comma-separated), each a config file with overrides; init checkpoints are dropped (random weights):
  smoke         configs/smoke.yaml (student 2 x 128, teacher 4 x 256, vocab 1024, 16 x 128 tokens per step)
  x4            smoke with every width doubled: about 4x the parameters and FLOPs
  1.5b-7b       configs/qwen2_7b_to_1.5b.yaml on one device: Qwen2-1.5B <- Qwen2-7B, 4 x 4096 tokens per step
  1.5b-72bw2    Qwen2-1.5B <- a 2-layer teacher at Qwen2-72B width, 4 x 4096 tokens per step
Extra `section.key=value` arguments override every pair (e.g. parallel.micro_batch_size=2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_SMOKE = "configs/smoke.yaml"
_WIDER = [
    "student.hidden_size=256",
    "student.ffn_hidden_size=704",
    "student.num_attention_heads=8",
    "student.num_query_groups=4",
    "teacher.hidden_size=512",
    "teacher.ffn_hidden_size=1408",
    "teacher.num_attention_heads=8",
    "teacher.num_query_groups=4",
]
_ONE_DEVICE = [
    "parallel.tp=1",
    "parallel.pp=1",
    "parallel.micro_batch_size=1",
    "parallel.global_batch_size=4",
    "data.seq_length=4096",
]
PAIRS = {
    "smoke": (_SMOKE, []),
    "x4": (_SMOKE, _WIDER),
    "1.5b-7b": ("configs/qwen2_7b_to_1.5b.yaml", _ONE_DEVICE),
    "1.5b-72bw2": ("configs/qwen2_72b_instruct_to_1.5b_instruct.yaml", [*_ONE_DEVICE, "teacher.num_layers=2"]),
}
VARIANTS = ("distill", "student", "teacher")


def synthetic_micro_batches(num: int, micro_batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    """The step's micro-batches, built once; every variant reads the same ones."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num):
        tokens = torch.randint(0, vocab, (micro_batch, seq + 1), generator=generator)
        batches.append(
            {
                "tokens": tokens[:, :-1],
                "labels": tokens[:, 1:],
                "loss_mask": torch.ones(micro_batch, seq),
                "position_ids": torch.arange(seq).expand(micro_batch, -1),
            }
        )
    return batches


class Timer:
    """Wall time of a callable; on CUDA between device syncs, so queued kernels are counted."""

    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


def bench_config(config: str, overrides: list[str], precision: str, ctx):
    """A pair's config as the benchmark runs it: random weights (init checkpoints dropped), no warm-up, a long
    schedule, the layout checked against this world."""
    from taidtron.config import load_config

    cfg = load_config(
        REPO / config,
        [
            "student.init=null",
            "teacher.init=null",
            f"precision={precision}",
            "optim.warmup_steps=0",
            "optim.train_steps=100000",
            *overrides,
        ],
    )
    cfg.validate_layout(ctx.world_size)
    return cfg


def bench_pair(
    name: str, config: str, overrides: list[str], ctx, *, repeats: int, warmup: int, precision: str, baseline: bool
) -> dict:
    import torch

    from taidtron.config import ConfigError, TAIDConfig
    from taidtron.distributed import seed_everything
    from taidtron.flops import peak_flops
    from taidtron.trainer import Trainer

    cfg = bench_config(config, overrides, precision, ctx)
    if (cfg.parallel.tp, cfg.parallel.pp) != (1, 1):
        raise ConfigError(f"pair {name}: the benchmark runs in one process; set parallel.tp=1 parallel.pp=1.")
    vocab = min(cfg.student.vocab_size, cfg.teacher.vocab_size)
    common = dict(
        parallel=cfg.parallel,
        optim=cfg.optim,
        seq_length=cfg.data.seq_length,
        precision=cfg.precision,
        ctx=ctx,
        vocab_size=vocab,
    )
    seed_everything(cfg.seed, ctx)
    distill = Trainer(student=cfg.student, teacher=cfg.teacher, taid=cfg.taid, **common)
    trainers = {"distill": distill}
    if baseline:
        seed_everything(cfg.seed, ctx)  # the same student weights as the distillation trainer's
        trainers["student"] = Trainer(student=cfg.student, teacher=None, taid=TAIDConfig(loss="lm"), **common)
    micro = distill.accumulation_steps
    batches = synthetic_micro_batches(micro, cfg.parallel.micro_batch_size, cfg.data.seq_length, vocab)
    teacher = distill.model.module.teacher
    device = ctx.device

    def teacher_forward():
        with torch.no_grad():
            for batch in batches:
                tokens = batch["tokens"].to(device, non_blocking=True)  # as the trainer's micro-batch step
                teacher(tokens, batch["position_ids"].to(device, non_blocking=True), None)

    steps = {key: (lambda t=trainer: t.train_step(iter(batches))) for key, trainer in trainers.items()}
    if baseline:
        steps["teacher"] = teacher_forward
    timer = Timer(device)
    times: dict[str, list[float]] = {key: [] for key in steps}
    order = list(steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for round_ in range(warmup + repeats):
        for key in order[round_ % len(order) :] + order[: round_ % len(order)]:  # rotate who goes first
            seconds = timer(steps[key])
            if round_ >= warmup:
                times[key].append(seconds)
    result = {
        "pair": name,
        "config": config,
        "overrides": overrides,
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
    distill_s = result["distill_ms"] / 1e3
    result["tokens_per_s"] = result["tokens_per_step"] / distill_s
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
    del trainers, distill, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
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
    times: dict[str, list[float]] = {key: [] for key in runs}
    for round_ in range(warmup + repeats):
        for key, fn in runs.items():
            seconds = timer(fn)
            if round_ >= warmup:
                times[key].append(seconds)
    return {f"{key}_ms": statistics.median(values) * 1e3 for key, values in times.items()}


def bench_cache_pair(
    name: str, config: str, overrides: list[str], ctx, *, repeats: int, warmup: int, precision: str, top_k: int
) -> dict:
    """The distillation step from a teacher cache (`teacher.cache`, top-`top_k`) against the student-only step and the
    online-teacher step, all three `Trainer.train_step` on the same micro-batches, interleaved, median of `repeats`:
      cache    the student's forward and backward, each micro-batch's records read from the cache's shard by the
               prefetch thread while the step runs (as in training), the teacher's logit shard rebuilt from them,
               the TAID loss, the same optimizer step; no teacher built
      student  `taid.loss=lm`, as `bench_pair`'s; online  `taid.loss=taid` with the teacher, as `bench_pair`'s distill
    A cache is keyed by sample number, so the micro-batches are the config's first global batch of real data (the
    cache is written for it first, from the randomly initialised teacher). ratios: cache / student (the cache's goal
    is <= 1.10) and cache / online. `rebuild_ms`: rebuilding the teacher's logits from the records alone, per step."""
    import tempfile

    import torch

    from taidtron.cache import CacheOptions, TeacherCache, read_manifest, write_cache
    from taidtron.config import TAIDConfig
    from taidtron.data import build_data_iterators, load_shared_tokenizer
    from taidtron.distributed import seed_everything
    from taidtron.losses import teacher_logits_from_records
    from taidtron.trainer import Trainer

    cfg = bench_config(config, overrides, precision, ctx)
    tokenizer = load_shared_tokenizer(cfg.data)
    vocab, gbs = tokenizer.vocab_size, cfg.parallel.global_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        options = CacheOptions(out=tmp, top_k=top_k, splits=("train",), samples=(0, gbs), shard_samples=gbs)
        write_cache(cfg, ctx, options)  # only the first global batch: the one the steps read
        cache = TeacherCache(Path(tmp), read_manifest(tmp))
        common = dict(
            student=cfg.student,
            parallel=cfg.parallel,
            optim=cfg.optim,
            seq_length=cfg.data.seq_length,
            precision=cfg.precision,
            ctx=ctx,
            vocab_size=vocab,
        )
        trainers = {}
        for key, teacher, taid, teacher_cache in (
            ("cache", None, cfg.taid, cache),
            ("student", None, TAIDConfig(loss="lm"), None),
            ("online", cfg.teacher, cfg.taid, None),
        ):
            seed_everything(cfg.seed, ctx)  # the same student weights in all three
            trainers[key] = Trainer(teacher=teacher, taid=taid, teacher_cache=teacher_cache, **common)
        train_iter, _ = build_data_iterators(
            cfg.data,
            tokenizer,
            micro_batch_size=cfg.parallel.micro_batch_size,
            global_batch_size=gbs,
            dp_rank=0,
            dp_size=1,
            train_steps=1,
            eval_iters=0,
            dataset_samples=cache.dataset_samples,
        )
        batches = [next(train_iter) for _ in range(trainers["cache"].accumulation_steps)]
        columns = slice(0, vocab)
        steps = {
            "cache": lambda: trainers["cache"].train_step(cache.attach(iter(batches), "train", columns=columns)),
            "student": lambda: trainers["student"].train_step(iter(batches)),
            "online": lambda: trainers["online"].train_step(iter(batches)),
        }
        records = [next(cache.attach(iter([batch]), "train", columns=columns)) for batch in batches]
        like = torch.empty((1, 1, trainers["cache"].padded_vocab_size), dtype=trainers["cache"].params_dtype)

        def rebuild():
            for batch in records:
                teacher_logits_from_records(
                    batch, vocab_size=vocab, local_vocab=like.shape[-1], rank=0, like=like.to(ctx.device)
                )

        steps["rebuild"] = rebuild
        timer = Timer(ctx.device)
        times: dict[str, list[float]] = {key: [] for key in steps}
        order = list(steps)
        for round_ in range(warmup + repeats):
            for key in order[round_ % len(order) :] + order[: round_ % len(order)]:
                seconds = timer(steps[key])
                if round_ >= warmup:
                    times[key].append(seconds)
        for trainer in trainers.values():
            trainer.close()
    result = {
        "pair": name,
        "top_k": top_k,
        "config": config,
        "overrides": overrides,
        "device": str(ctx.device),
        "micro_batches": len(batches),
        "tokens_per_step": gbs * cfg.data.seq_length,
        "repeats": repeats,
        **{f"{key}_ms": statistics.median(values) * 1e3 for key, values in times.items()},
    }
    result["cache_vs_student"] = result["cache_ms"] / result["student_ms"]
    result["cache_vs_online"] = result["cache_ms"] / result["online_ms"]
    return result


def render_cache(r: dict) -> str:
    return (
        f"{r['pair']} from a top-{r['top_k']} cache: cache {r['cache_ms']:.2f} ms   student {r['student_ms']:.2f} ms   "
        f"online {r['online_ms']:.2f} ms   cache/student {r['cache_vs_student']:.3f}   cache/online "
        f"{r['cache_vs_online']:.3f}   (rebuilding the teacher logits: {r['rebuild_ms']:.2f} ms per step)"
    )


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
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
    parser.add_argument(
        "--cache",
        type=int,
        metavar="K",
        help="also time the step from a top-K teacher cache against the student and online steps (bench_cache_pair)",
    )
    parser.add_argument("--json", help="write the results here as JSON (atomically)")
    args = parser.parse_args(argv)
    pairs = [p for p in args.pairs.split(",") if p]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        print(
            f"error: unknown pair(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PAIRS)}",
            file=sys.stderr,
        )
        return 2
    if args.repeats < 1 or args.warmup < 0:
        print("error: need --repeats >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the trainer takes the GPU when it sees one

    import torch

    from taidtron.config import ConfigError, ParallelConfig
    from taidtron.distributed import LaunchEnv, destroy_distributed, init_distributed

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; drop --device or use --device cpu", file=sys.stderr)
        return 2
    ctx = init_distributed(ParallelConfig(global_batch_size=1), launch=LaunchEnv.single())
    results = []
    try:
        for name in pairs:
            config, overrides = PAIRS[name]
            results.append(
                bench_pair(
                    name,
                    config,
                    [*overrides, *args.overrides],
                    ctx,
                    repeats=args.repeats,
                    warmup=args.warmup,
                    precision=args.precision,
                    baseline=not args.no_baseline,
                )
            )
            print(render(results[-1:]), flush=True)
            if args.cache:
                cached = bench_cache_pair(
                    name,
                    config,
                    [*overrides, *args.overrides],
                    ctx,
                    repeats=args.repeats,
                    warmup=args.warmup,
                    precision=args.precision,
                    top_k=args.cache,
                )
                results[-1]["cache"] = cached
                print(render_cache(cached), flush=True)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
