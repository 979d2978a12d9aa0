"""`make smoke-test`: pretrain a small teacher on the shipped corpus, distil it into a smaller student with TAID,
and print a summary (loss falls, t rises from t_start, tokens/s, validation LM loss of student and teacher).

Runs on one GPU when present, else on CPU in a few minutes. Everything goes to --run-dir (default runs/smoke):
  runs/smoke/teacher/      the pretrained teacher (a taidtron checkpoint, as `tools/convert.py import` writes)
  runs/smoke/distill/      the distillation run: metrics.jsonl, eval.jsonl, config.yaml, checkpoints/
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pretrain_teacher(config_path: Path, overrides: list[str], out_dir: Path, steps: int, lr: float) -> dict:
    """Plain next-token training of the config's teacher section, single process; saves a taidtron checkpoint."""
    import torch
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    from tqdm import tqdm

    from taidtron import checkpoint
    from taidtron.config import ParallelConfig, load_config
    from taidtron.data import build_data_iterators, load_shared_tokenizer
    from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
    from taidtron.models import build_gpt

    cfg = load_config(config_path, [*overrides, "teacher.init=null"])
    single = ParallelConfig(micro_batch_size=cfg.parallel.global_batch_size,
                            global_batch_size=cfg.parallel.global_batch_size)  # one process, no model parallelism
    ctx = init_distributed(single)
    seed_everything(cfg.seed, ctx)
    tokenizer = load_shared_tokenizer(cfg.data)
    model = build_gpt(cfg.teacher, single, padded_vocab_size=cfg.padded_vocab_size(),
                      max_seq_length=cfg.data.seq_length, pp_rank=0, params_dtype=torch.float32,
                      device=ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    micro_batches, _ = build_data_iterators(
        cfg.data, tokenizer, micro_batch_size=cfg.parallel.global_batch_size,
        global_batch_size=cfg.parallel.global_batch_size, dp_rank=0, dp_size=1, train_steps=steps, eval_iters=0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.device.type == "cuda")
    losses = []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc="teacher pretraining", unit="step", dynamic_ncols=True):
        batch = {k: v.to(ctx.device) for k, v in next(micro_batches).items()}
        with autocast:
            logits = model(batch["tokens"], batch["position_ids"], None)  # [b, s, V_padded], causal
        token_loss = vocab_parallel_cross_entropy(logits.float(), batch["labels"])
        loss = (token_loss * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    if out_dir.exists():
        shutil.rmtree(out_dir)
    meta = checkpoint.CheckpointMeta(
        model=cfg.teacher, padded_vocab_size=cfg.padded_vocab_size(),
        source=checkpoint.WeightsSource(kind="pretraining", description="tools/smoke_test.py teacher pretraining"),
        tokenizer=checkpoint.TokenizerRef.of(cfg.data.tokenizer, tokenizer.fingerprint()),
        seq_length=cfg.data.seq_length)
    checkpoint.save_checkpoint(out_dir, steps, model=model, meta=meta)
    destroy_distributed()
    tokens = steps * cfg.parallel.global_batch_size * cfg.data.seq_length
    return {"first_loss": statistics.mean(losses[:5]), "last_loss": statistics.mean(losses[-5:]),
            "tokens_per_s": tokens / seconds, "seconds": seconds}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(run_dir: Path, t_start: float, t_end: float) -> tuple[list[str], bool]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    evals = [row for row in read_jsonl(run_dir / "eval.jsonl") if row.get("final")]
    window = max(1, len(rows) // 10)
    first_loss = statistics.mean(r["loss"] for r in rows[:window])
    last_loss = statistics.mean(r["loss"] for r in rows[-window:])
    ts = [r["taid_t"] for r in rows]
    monotone = all(b >= a for a, b in zip(ts, ts[1:]))
    in_range = all(t_start - 1e-12 <= t <= t_end + 1e-12 for t in ts)
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in rows[1:] or rows)
    checks = {
        "distillation loss falls": last_loss < first_loss,
        "t rises monotonically within [t_start, t_end]": monotone and in_range and ts[-1] > ts[0],
        "t starts at t_start": abs(ts[0] - t_start) < 1e-12,
    }
    lines = [
        f"steps                     {len(rows)}",
        f"distillation loss         {first_loss:.4f} (first {window} steps) -> {last_loss:.4f} (last {window})",
        f"taid t                    {ts[0]:.4f} -> {ts[-1]:.4f} (monotone: {monotone})",
        f"tokens/s (median)         {tokens_per_s:,.0f}",
    ]
    mfu = [r["mfu"] for r in rows if "mfu" in r]
    if mfu:
        lines.append(f"MFU (median)              {statistics.median(mfu):.3%}")
    if evals:
        final = evals[-1]
        lines.append(f"valid LM loss  student    {final['valid_student_lm_loss']:.4f}")
        lines.append(f"valid LM loss  teacher    {final['valid_teacher_lm_loss']:.4f}")
    lines += [f"[{'PASS' if ok else 'FAIL'}] {name}" for name, ok in checks.items()]
    return lines, all(checks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/smoke.yaml"), help="smoke experiment file")
    parser.add_argument("--run-dir", default="runs/smoke", help="where the teacher and the distillation run go")
    parser.add_argument("--teacher-steps", type=int, default=200, help="teacher pretraining steps")
    parser.add_argument("--teacher-lr", type=float, default=3e-3, help="teacher peak learning rate")
    parser.add_argument("--nproc", type=int, default=1, help="ranks for the distillation (torchrun); 1 = one process")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides for the distillation run")
    args = parser.parse_args()

    import torch

    from taidtron.config import load_config

    run_dir = Path(args.run_dir)
    teacher_dir, distill_dir = run_dir / "teacher", run_dir / "distill"
    device = "GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"== smoke test on {device}: teacher pretraining ({args.teacher_steps} steps)", flush=True)
    teacher = pretrain_teacher(Path(args.config), args.overrides, teacher_dir, args.teacher_steps, args.teacher_lr)
    print(f"teacher LM loss {teacher['first_loss']:.3f} -> {teacher['last_loss']:.3f} "
          f"({teacher['tokens_per_s']:,.0f} tokens/s, {teacher['seconds']:.0f} s)", flush=True)

    if distill_dir.exists():
        shutil.rmtree(distill_dir)  # a fresh run: the smoke test must not resume an old one
    overrides = [f"teacher.init={teacher_dir}", f"logging.run_dir={distill_dir}", *args.overrides]
    launcher = [sys.executable, "-m", "taidtron.train"] if args.nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}", "-m",
        "taidtron.train"]
    print("== distillation: " + " ".join(launcher[1:] + ["--config", args.config, *overrides]), flush=True)
    code = subprocess.call([*launcher, "--config", args.config, *overrides], cwd=REPO)
    if code != 0:
        print(f"distillation exited with {code}", file=sys.stderr)
        return code
    cfg = load_config(args.config, overrides)
    lines, ok = summarize(distill_dir, cfg.taid.t_start, cfg.taid.t_end)
    print("\n== smoke test summary (" + device + ")")
    print(f"teacher pretraining        LM loss {teacher['first_loss']:.4f} -> {teacher['last_loss']:.4f}")
    print("\n".join(lines))
    print(f"metrics: {distill_dir / 'metrics.jsonl'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
