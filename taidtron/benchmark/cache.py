"""Teacher cache measurements (docs/teacher_cache.md): what it stores, how fast it is written, how far a top-K cache
is from the full teacher, and what that does to a distilled student (the library of tools/bench_cache.py). The step
time from a cache, `bench_cache_pair` below, is measured by tools/bench_step.py --cache K.

    python tools/bench_cache.py bytes --json runs/cache_bench/bytes.json
    python tools/bench_cache.py write --config configs/smoke.yaml --json runs/cache_bench/write.json
    python tools/bench_cache.py error --config configs/smoke.yaml student.init=runs/smoke/distill/checkpoints \\
        --json runs/cache_bench/error_smoke.json
    python tools/bench_cache.py heldout --config configs/smoke.yaml --seeds 1,2,3 --top-k 32 \\
        --cache runs/smoke/cache_k32 --work runs/cache_bench/heldout --json runs/cache_bench/heldout.json

bytes    shards written through the format (`write_shard`) from teacher-like logits, for the smoke vocabulary (1,024)
         and Qwen2's (152,064), at K = 8, 32, 128 and the full vocabulary: bytes per token as files hold them
         (headers and per-sample digests included) against 16-bit full logits (2 bytes per vocabulary entry), and
         the storage of the 72B -> 1.5B run's 50.3B tokens.
write    the cache writer (`write_cache`, K = 32 and full) against the same teacher's forward pass alone over the same
         micro-batches, interleaved, median of --repeats: tokens/s of each and their ratio.
error    per token, on --batches global batches of the valid split: each objective (TAID at t = 0.4 and 1.0, and
         the baselines) from the records a cache stores at K = 8, 32, 128 (and the full vocabulary in float16),
         against the same objective from the teacher's own logits: |loss error| (nats) and the gradient error
         ||g_K - g|| / ||g|| over the vocabulary, mean and worst. The student is `student.init` (a distilled one).
heldout  for each seed: the run distilled online and from a K cache (written once, with the command), the same
         seed (`seed=`, which sets the student's initialisation; the data order is the config's); the final
         validation next-token loss of each, their paired differences, mean and 95% t-interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from taidtron.benchmark.measure import DeviceTimer, interleaved_rounds

REPO = Path(__file__).resolve().parents[2]
RUN_TOKENS_72B = 50.3e9
"""Tokens of the paper's TAID-LLM-1.5B run (configs/qwen2_72b_instruct_to_1.5b_instruct.yaml)."""
QWEN2_VOCAB = 152_064
T_STUDENT = {"taid@0.4": 0.4, "taid@1.0": 1.0}


# ---- bytes --------------------------------------------------------------------------------------------------------


def measure_bytes(seq: int = 128, samples: int = 2) -> list[dict]:
    import dataclasses

    import torch

    from taidtron.cache.format import CacheManifest, DataRef, id_bytes_for
    from taidtron.cache.writer import shard_records, write_shard
    from taidtron.checkpoint.meta import TokenizerRef
    from taidtron.config import ModelConfig

    rows = []
    for vocab in (1024, QWEN2_VOCAB):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn((samples, seq, vocab), generator=generator) * 4  # a peaked, teacher-like spread
        windows = torch.randint(0, vocab, (samples, seq + 1), generator=generator)
        for top_k in (8, 32, 128, vocab):
            manifest = CacheManifest(
                top_k=top_k,
                vocab_size=vocab,
                id_bytes=0 if top_k == vocab else id_bytes_for(vocab),
                log_prob_dtype="float16",
                shard_samples=samples,
                samples={"train": samples, "valid": 0},
                data=DataRef(prefixes=["-"], contents=["-"], weights=None, split=[1.0, 0, 0], seed=0, seq_length=seq),
                tokenizer=TokenizerRef(path="-", fingerprint="-"),
                teacher=None,
                teacher_model=dataclasses.replace(ModelConfig(), vocab_size=vocab),
            )
            with tempfile.TemporaryDirectory() as tmp:
                records = shard_records(logits, windows, manifest)
                size = write_shard(Path(tmp), manifest, "train", 0, [records], written_by="bench_cache bytes")
            per_token = size / (samples * seq)
            rows.append(
                {
                    "vocab": vocab,
                    "top_k": "full" if top_k == vocab else top_k,
                    "id_bytes": manifest.id_bytes,
                    "record_bytes_per_token": manifest.bytes_per_token(),
                    "file_bytes_per_token": per_token,
                    "fp16_logits_bytes_per_token": 2 * vocab,
                    "fraction_of_fp16_logits": per_token / (2 * vocab),
                    "tb_for_50_3b_tokens": per_token * RUN_TOKENS_72B / 1e12,
                }
            )
    return rows


def render_bytes(rows: list[dict]) -> str:
    lines = ["| vocabulary | K | bytes/token (file) | of fp16 logits | 50.3B tokens |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['vocab']:,} | {r['top_k']} | {r['file_bytes_per_token']:,.1f} | "
            f"{r['fraction_of_fp16_logits']:.2%} | {r['tb_for_50_3b_tokens']:,.1f} TB |"
        )
    return "\n".join(lines)


# ---- write throughput ---------------------------------------------------------------------------------------------


def measure_write(config: str, overrides: list[str], *, samples: int, repeats: int) -> dict:
    """write_cache over `samples` train samples at K = 32 and full, against the teacher forward alone."""
    import torch

    from taidtron.cache import CacheOptions, write_cache
    from taidtron.checkpoint import load_model_weights
    from taidtron.config import ROLES, load_config
    from taidtron.data import build_datasets, load_batches, load_shared_tokenizer
    from taidtron.distributed import LaunchEnv
    from taidtron.models import build_gpt
    from taidtron.train import session
    from taidtron.trainer import params_dtype_for

    cfg = load_config(config, overrides)
    with session(cfg, launch=LaunchEnv.single(), roles=("teacher",)) as ctx, tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_shared_tokenizer(cfg.data)
        gbs, mbs = cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size
        teacher = build_gpt(
            cfg.teacher,
            cfg.parallel,
            padded_vocab_size=cfg.padded_vocab_size(ROLES),
            max_seq_length=cfg.data.seq_length,
            pp_rank=0,
            params_dtype=params_dtype_for(cfg.precision, ctx.device),
            device=ctx.device,
        ).eval()
        if cfg.teacher.init:
            load_model_weights(teacher, cfg.teacher.init, group=None)
        train, _ = build_datasets(cfg.data, tokenizer, train_samples=cfg.optim.train_steps * gbs, valid_samples=0)
        micro = [list(range(a, a + mbs)) for a in range(0, samples, mbs)]

        def forward_alone(_round: int) -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for batch in load_batches(train, micro):  # the data reading the writer does, too
                    teacher(batch["tokens"], batch["position_ids"], None)
            return time.perf_counter() - start

        def write(top_k: int | None, round_: int) -> float:
            options = CacheOptions(
                out=f"{tmp}/k{top_k}_{round_}",
                top_k=top_k,
                splits=("train",),
                samples=(0, samples),
                shard_samples=samples,
            )
            return write_cache(cfg, ctx, options)["seconds"]

        times: dict[str, list[float]] = {"forward": [], "write_k32": [], "write_full": []}
        for round_ in range(repeats + 1):  # the first round warms up
            for key, run in (
                ("forward", forward_alone),
                ("write_k32", partial(write, 32)),
                ("write_full", partial(write, None)),
            ):
                seconds = run(round_)
                if round_:
                    times[key].append(seconds)
    tokens = samples * cfg.data.seq_length
    result = {"config": config, "overrides": overrides, "samples": samples, "tokens": tokens, "repeats": repeats}
    for key, values in times.items():
        result[f"{key}_s"] = statistics.median(values)
        result[f"{key}_tokens_per_s"] = tokens / statistics.median(values)
    for key in ("write_k32", "write_full"):
        result[f"{key}_vs_forward"] = result[f"{key}_tokens_per_s"] / result["forward_tokens_per_s"]
    return result


# ---- approximation error ------------------------------------------------------------------------------------------


def measure_error(config: str, overrides: list[str], *, batches: int, ks: list[int]) -> dict:
    import torch

    from taidtron.cache.format import CacheManifest, DataRef, id_bytes_for
    from taidtron.cache.reader import batch_records
    from taidtron.cache.writer import shard_records
    from taidtron.checkpoint.meta import TokenizerRef
    from taidtron.config import load_config
    from taidtron.data import build_data_iterators, load_shared_tokenizer
    from taidtron.distributed import LaunchEnv
    from taidtron.losses import FROM_LOG_PROBS, LOSSES, teacher_logits_from_records
    from taidtron.train import session
    from taidtron.trainer import build_trainer

    cfg = load_config(config, ["taid.loss=fkl", *overrides])
    objectives = [("taid@0.4", "taid", 0.4), ("taid@1.0", "taid", 1.0)]
    objectives += [(name, name, 0.0) for name in FROM_LOG_PROBS if name not in ("taid",)]
    options = {
        "skew_fkl": {"skew": cfg.taid.skew},
        "skew_rkl": {"skew": cfg.taid.skew},
        "js": {"beta": cfg.taid.js_beta},
    }
    with session(cfg, launch=LaunchEnv.single()) as ctx:
        tokenizer = load_shared_tokenizer(cfg.data)
        vocab = tokenizer.vocab_size
        trainer = build_trainer(cfg, ctx, vocab)
        pair = trainer.model.module.eval()
        _, make_valid = build_data_iterators(
            cfg.data,
            tokenizer,
            micro_batch_size=cfg.parallel.micro_batch_size,
            global_batch_size=cfg.parallel.global_batch_size,
            dp_rank=0,
            dp_size=1,
            train_steps=1,
            eval_iters=batches,
        )
        variants = [(str(k), k, "float16") for k in ks] + [("full float16", vocab, "float16")]
        errors = {(v, o): {"loss": [], "grad": [], "exact": []} for v, _, _ in variants for o, _, _ in objectives}
        for batch in make_valid():
            with torch.no_grad():
                student, teacher = pair(batch["tokens"], batch["position_ids"])
            windows = torch.cat([batch["tokens"], batch["labels"][:, -1:]], dim=-1)
            for label, top_k, dtype in variants:
                manifest = CacheManifest(
                    top_k=top_k,
                    vocab_size=vocab,
                    id_bytes=0 if top_k == vocab else id_bytes_for(vocab),
                    log_prob_dtype=dtype,
                    shard_samples=1,
                    samples={"train": 1, "valid": 0},
                    data=DataRef(prefixes=[], contents=[], weights=None, split=[1, 0, 0], seed=0, seq_length=1),
                    tokenizer=TokenizerRef(path="-", fingerprint="-"),
                    teacher=None,
                    teacher_model=cfg.teacher,
                )
                rows = shard_records(teacher, windows, manifest)  # what the writer stores, rounded as stored
                rebuilt = teacher_logits_from_records(
                    batch_records(rows), vocab_size=vocab, local_vocab=student.shape[-1], rank=0, like=student
                )
                for name, loss, t in objectives:
                    exact, g_exact = _loss_and_grad(LOSSES[loss], student, teacher, t, vocab, options.get(loss, {}))
                    approx, g_approx = _loss_and_grad(LOSSES[loss], student, rebuilt, t, vocab, options.get(loss, {}))
                    errors[(label, name)]["loss"].append((approx - exact).abs().flatten())
                    errors[(label, name)]["exact"].append(exact.flatten())
                    relative = (g_approx - g_exact).norm(dim=-1) / g_exact.norm(dim=-1).clamp_min(1e-30)
                    errors[(label, name)]["grad"].append(relative.flatten())
        trainer.close()
    rows = []
    for (label, name), values in errors.items():
        loss, grad = torch.cat(values["loss"]), torch.cat(values["grad"])
        rows.append(
            {
                "k": label,
                "objective": name,
                "tokens": loss.numel(),
                "loss_mean": torch.cat(values["exact"]).mean().item(),
                "loss_error_mean": loss.mean().item(),
                "loss_error_max": loss.max().item(),
                "grad_error_mean": grad.mean().item(),
                "grad_error_max": grad.max().item(),
            }
        )
    return {"config": config, "overrides": overrides, "batches": batches, "vocab": vocab, "rows": rows}


def _loss_and_grad(fn, student, teacher, t, vocab, options):
    import torch

    s = student.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = fn(s, teacher, t=t, vocab_size=vocab, group=None, **options)
        loss.sum().backward()
    return loss.detach(), s.grad[..., :vocab]


def render_error(result: dict) -> str:
    lines = [
        f"vocabulary {result['vocab']:,}, {result['rows'][0]['tokens']:,} tokens",
        "| K | objective | loss (mean) | loss error mean / worst (nats) | gradient error mean / worst (relative) |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['k']} | {r['objective']} | {r['loss_mean']:.3f} | {r['loss_error_mean']:.2e} / "
            f"{r['loss_error_max']:.2e} | "
            f"{r['grad_error_mean']:.2e} / {r['grad_error_max']:.2e} |"
        )
    return "\n".join(lines)


# ---- held-out student loss ----------------------------------------------------------------------------------------

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Student t quantiles (0.975) by degrees of freedom, for the paired interval."""


def _python(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO)


def _final_valid(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("final")][-1]["valid_student_lm_loss"]


def measure_heldout(
    config: str, overrides: list[str], *, seeds: list[int], top_k: int, work: Path, cache: Path | None
) -> dict:
    """Each run is a `python -m taidtron.train` of its own, the two arms of a seed side by side; a finished run
    (its final validation written) is reused, so an interrupted measurement continues."""
    cache = cache or work / f"cache_k{top_k}"
    # written once; run again, the command only completes what an interrupted write left
    writer = _python(
        "-m", "taidtron.cache_teacher", "--config", config, *overrides, "--out", str(cache), "--top-k", str(top_k)
    )
    if writer.wait():
        raise SystemExit(f"writing the cache {cache} failed")
    pairs = []
    for seed in seeds:
        jobs = {}
        for arm, extra in (("online", []), ("cache", [f"teacher.cache={cache}"])):
            run_dir = work / f"{arm}_seed{seed}"
            if (run_dir / "eval.jsonl").is_file() and '"final": true' in (run_dir / "eval.jsonl").read_text():
                continue
            if run_dir.exists():
                shutil.rmtree(run_dir)  # an unfinished run: start it again
            args = [*overrides, *extra, f"seed={seed}", f"logging.run_dir={run_dir}"]
            jobs[arm] = _python("-m", "taidtron.train", "--config", config, *args)
        if any(job.wait() for job in jobs.values()):
            raise SystemExit(f"a run of seed {seed} failed")
        losses = {arm: _final_valid(work / f"{arm}_seed{seed}") for arm in ("online", "cache")}
        pairs.append({"seed": seed, **losses, "difference": losses["cache"] - losses["online"]})
    differences = [p["difference"] for p in pairs]
    mean = statistics.mean(differences)
    half = T_975[len(differences) - 1] * statistics.stdev(differences) / math.sqrt(len(differences))
    return {
        "config": config,
        "overrides": overrides,
        "top_k": top_k,
        "cache": str(cache),
        "pairs": pairs,
        "mean_difference": mean,
        "interval_95": [mean - half, mean + half],
    }


# ---- the step from a cache (tools/bench_step.py --cache K) --------------------------------------------------------


def bench_cache_pair(name: str, cfg, *, repeats: int, warmup: int, top_k: int) -> dict:
    """The distillation step from a teacher cache (`teacher.cache`, top-`top_k`) against the student-only step and the
    online-teacher step, all three `Trainer.train_step` on the same micro-batches, interleaved, median of `repeats`:
      cache    the student's forward and backward, each micro-batch's records read from the cache's shard by the
               prefetch thread while the step runs (as in training), the teacher's logit shard rebuilt from them,
               the TAID loss, the same optimizer step; no teacher built
      student  `taid.loss=lm`, as `bench_pair`'s; online  `taid.loss=taid` with the teacher, as `bench_pair`'s distill
    A cache is keyed by sample number, so the micro-batches are the config's first global batch of real data (the
    cache is written for it first, from the randomly initialised teacher). ratios: cache / student (the cache's goal
    is <= 1.10) and cache / online. `rebuild_ms`: rebuilding the teacher's logits from the records alone, per step.
    Runs in its own distributed session, like `taidtron.benchmark.step.bench_pair`."""
    import torch

    from taidtron.cache import CacheOptions, TeacherCache, read_manifest, write_cache
    from taidtron.data import build_data_iterators, load_shared_tokenizer
    from taidtron.distributed import LaunchEnv, seed_everything
    from taidtron.losses import teacher_logits_from_records
    from taidtron.train import session
    from taidtron.trainer import build_trainer

    gbs = cfg.parallel.global_batch_size
    with session(cfg, launch=LaunchEnv.single()) as ctx, tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_shared_tokenizer(cfg.data)
        vocab = tokenizer.vocab_size
        options = CacheOptions(out=tmp, top_k=top_k, splits=("train",), samples=(0, gbs), shard_samples=gbs)
        write_cache(cfg, ctx, options)  # only the first global batch: the one the steps read
        cache = TeacherCache(Path(tmp), read_manifest(tmp))
        trainers = {}
        for key, run_cfg, teacher_cache in (
            ("cache", dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, cache=tmp)), cache),
            ("student", dataclasses.replace(cfg, taid=dataclasses.replace(cfg.taid, loss="lm")), None),
            ("online", cfg, None),
        ):
            seed_everything(cfg.seed, ctx)  # the same student weights in all three
            trainers[key] = build_trainer(run_cfg, ctx, vocab, teacher_cache=teacher_cache)
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
        like = like.to(ctx.device)

        def rebuild():
            for batch in records:
                teacher_logits_from_records(batch, vocab_size=vocab, local_vocab=like.shape[-1], rank=0, like=like)

        steps["rebuild"] = rebuild
        times = interleaved_rounds(steps, repeats=repeats, warmup=warmup, timer=DeviceTimer(ctx.device), rotate=True)
        for trainer in trainers.values():
            trainer.close()
        device = str(ctx.device)
    result = {
        "pair": name,
        "top_k": top_k,
        "device": device,
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


# ---- command line -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_cache.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=("bytes", "write", "error", "heldout"))
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of --config")
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--json", help="write the result here (atomically)")
    parser.add_argument("--repeats", type=int, default=3, help="write: timed rounds (median)")
    parser.add_argument("--samples", type=int, default=128, help="write: train samples written per round")
    parser.add_argument("--batches", type=int, default=4, help="error: global batches of the valid split")
    parser.add_argument("--ks", default="8,32,128", help="error: the K values")
    parser.add_argument("--seeds", default="1,2,3", help="heldout: seeds")
    parser.add_argument("--top-k", type=int, default=32, help="heldout: K of the cache")
    parser.add_argument("--work", default="runs/cache_bench/heldout", help="heldout: run directories")
    parser.add_argument("--cache", help="heldout: the cache to write or complete (default <work>/cache_k<K>)")
    args = parser.parse_intermixed_args(argv)
    from taidtron.io import atomic_write_json

    if args.what == "bytes":
        result = {"rows": measure_bytes()}
        print(render_bytes(result["rows"]))
    elif args.what == "write":
        result = measure_write(args.config, args.overrides, samples=args.samples, repeats=args.repeats)
        print(json.dumps(result, indent=1))
    elif args.what == "error":
        ks = [int(k) for k in args.ks.split(",")]
        result = measure_error(args.config, args.overrides, batches=args.batches, ks=ks)
        print(render_error(result))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        cache = Path(args.cache) if args.cache else None
        result = measure_heldout(
            args.config, args.overrides, seeds=seeds, top_k=args.top_k, work=Path(args.work), cache=cache
        )
        print(json.dumps(result, indent=1))
    if args.json:
        atomic_write_json(args.json, {"command": " ".join(sys.argv), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
