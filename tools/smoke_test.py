"""`make smoke-test`: pretrain a small teacher on the shipped corpus, distil it into a smaller student with TAID,
and print a summary (loss falls, t rises from t_start, tokens/s, validation LM loss of student and teacher).

Both stages are runs of the one trainer (`python -m taidtron.train`): the teacher is pretrained with `taid.loss=lm`
on the architecture of the config's teacher section, then distilled from. Runs on one GPU when present, else on CPU
in a few minutes. Everything goes to --run-dir (default runs/smoke):
  runs/smoke/teacher/          the pretrained teacher's checkpoints (`latest` -> iter_*), used as teacher.init
  runs/smoke/teacher_run/      its pretraining run: metrics.jsonl, config, wandb
  runs/smoke/distill/          the distillation run: metrics.jsonl, eval.jsonl, config.yaml, checkpoints/
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from taidtron.recipes import teacher_pretraining_overrides

REPO = Path(__file__).resolve().parents[1]


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
    teacher_dir, teacher_run, distill_dir = run_dir / "teacher", run_dir / "teacher_run", run_dir / "distill"
    device = "GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    for stale in (teacher_dir, teacher_run, distill_dir):  # fresh runs: the smoke test must not resume old ones
        shutil.rmtree(stale, ignore_errors=True)

    def train(name: str, launcher: list[str], overrides: list[str]) -> int:
        print(f"== {name}: " + " ".join(launcher[1:] + ["--config", args.config, *overrides]), flush=True)
        return subprocess.call([*launcher, "--config", args.config, *overrides], cwd=REPO)

    single = [sys.executable, "-m", "taidtron.train"]
    code = train(
        f"teacher pretraining on {device} ({args.teacher_steps} steps)",
        single,
        teacher_pretraining_overrides(
            Path(args.config), args.overrides, teacher_dir, teacher_run, args.teacher_steps, args.teacher_lr
        ),
    )
    if code != 0:
        print(f"teacher pretraining exited with {code}", file=sys.stderr)
        return code
    overrides = [f"teacher.init={teacher_dir}", f"logging.run_dir={distill_dir}", *args.overrides]
    launcher = (
        single
        if args.nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.nproc}",
            "-m",
            "taidtron.train",
        ]
    )
    code = train("distillation", launcher, overrides)
    if code != 0:
        print(f"distillation exited with {code}", file=sys.stderr)
        return code
    cfg = load_config(args.config, overrides)
    teacher_rows = read_jsonl(teacher_run / "metrics.jsonl")
    window = max(1, min(5, len(teacher_rows) // 2))
    first, last = (statistics.mean(r["loss"] for r in part) for part in (teacher_rows[:window], teacher_rows[-window:]))
    lines, ok = summarize(distill_dir, cfg.taid.t_start, cfg.taid.t_end)
    print("\n== smoke test summary (" + device + ")")
    print(f"teacher pretraining        LM loss {first:.4f} -> {last:.4f}")
    print("\n".join(lines))
    print(f"metrics: {distill_dir / 'metrics.jsonl'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
