"""What do checkpoint digests cost? The library behind `tools/bench_checkpoint.py` (figures in docs/checkpoints.md).

Every save hashes the files it wrote (XXH3-128, `taidtron.checkpoint.file_digest`) and every load reads them against
the recorded digests; this times that against a plain read of the same bytes.

    python tools/bench_checkpoint.py --gib 1 --repeats 3 --json runs/bench_checkpoint.json

1. per GiB: a file of --gib GiB in --dir, read back while it is still in the page cache (as a save hashes its files
   right after writing them): a plain read into a buffer (the baseline) and `file_digest` (read + hash), the
   median of --repeats interleaved rounds (`measure.interleaved_rounds`); seconds per GiB each and their ratio.
2. the smoke save: the smoke student (configs/smoke.yaml) and its distributed optimizer saved with `save_checkpoint`
   in a world of one, --repeats times; the digest step alone (hashing the files of the saved iteration) timed
   right after each save, and its share of the save.
3. a 1.5B student: the Qwen2-1.5B student of configs/qwen2_72b_instruct_to_1.5b_instruct.yaml with its optimizer
   state (bf16 weights, fp32 main weights and two Adam moments: 14 bytes per parameter) at the per-GiB digest time of
   1., for one process; a save splits it between the ranks that wrote the files, each hashing its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_read(path: Path) -> None:
    buffer = bytearray(2**20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def per_gib(directory: Path, gib: float, repeats: int) -> dict:
    from taidtron.benchmark.measure import interleaved_rounds
    from taidtron.checkpoint import file_digest

    path = directory / "bench_digest.bin"
    chunk = os.urandom(2**20)
    with open(path, "wb") as f:
        for _ in range(int(gib * 1024)):
            f.write(chunk)
    try:
        times = interleaved_rounds(  # one untimed round: the file in the page cache, as a file just written is
            {"read": lambda: plain_read(path), "digest": lambda: file_digest(path)},
            repeats=repeats,
            warmup=1,
            timer=timed,
            rotate=True,
        )
    finally:
        path.unlink()
    read_s, digest_s = statistics.median(times["read"]) / gib, statistics.median(times["digest"]) / gib
    return {"gib": gib, "read_s_per_gib": read_s, "digest_s_per_gib": digest_s, "ratio": digest_s / read_s}


def smoke_save(directory: Path, repeats: int) -> dict:
    from taidtron import checkpoint, overrides
    from taidtron.config import load_config
    from taidtron.distributed import LaunchEnv, destroy_distributed, init_distributed, seed_everything
    from taidtron.trainer import build_trainer

    cfg = load_config("configs/smoke.yaml", ["teacher.init=null", "precision=fp32"])
    ctx = init_distributed(cfg.parallel, launch=LaunchEnv.single())
    seed_everything(cfg.seed, ctx)
    trainer = build_trainer(cfg, ctx, cfg.student.vocab_size)
    try:
        overrides.prepare_writer()
        overrides.materialize_optimizer_state(trainer.optimizer)  # state to save without a training step
        meta = checkpoint.CheckpointMeta(
            model=cfg.student,
            padded_vocab_size=trainer.padded_vocab_size,
            source=checkpoint.WeightsSource(kind="init", description="bench_checkpoint"),
            trainer=trainer.state_dict(),
        )
        saves, digests, size = [], [], 0
        ckpt_dir = directory / "smoke_save"
        for step in range(1, repeats + 1):
            saves.append(
                timed(
                    lambda s=step: checkpoint.save_checkpoint(
                        ckpt_dir, s, model=trainer.student, optimizer=trainer.optimizer, meta=meta, ctx=ctx, keep_last=1
                    )
                )
            )
            files = [p for p in checkpoint.find_latest(ckpt_dir).iterdir() if p.name != checkpoint.META_FILE]
            size = sum(p.stat().st_size for p in files)
            digests.append(timed(lambda f=files: [checkpoint.file_digest(p) for p in f]))
    finally:
        trainer.close()
        destroy_distributed()
    save_s, digest_s = statistics.median(saves), statistics.median(digests)
    return {"bytes": size, "save_s": save_s, "digest_s": digest_s, "digest_share_of_save": digest_s / save_s}


def student_1_5b(digest_s_per_gib: float) -> dict:
    from taidtron.config import load_config, padded_vocab_size
    from taidtron.plan import stage_parameters

    cfg = load_config("configs/qwen2_72b_instruct_to_1.5b_instruct.yaml", [])
    padded = padded_vocab_size([cfg.student], 1)
    params = stage_parameters(cfg.student, tp=1, pp=1, stage=0, padded_vocab=padded)
    size = params * 14
    return {"parameters": params, "bytes": size, "digest_s_one_process": size / 2**30 * digest_s_per_gib}


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=positive(float), default=1.0, help="size of the file timed per GiB (default 1)")
    parser.add_argument("--repeats", type=positive(int), default=3, help="median of this many (default 3)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory under runs/)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the smoke save in a world of one on CPU
    Path("runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir or "runs", prefix="bench_checkpoint_") as tmp:
        results = {"per_gib": per_gib(Path(tmp), args.gib, args.repeats)}
        results["smoke_save"] = smoke_save(Path(tmp), args.repeats)
    results["student_1_5b"] = student_1_5b(results["per_gib"]["digest_s_per_gib"])
    g, s, b = results["per_gib"], results["smoke_save"], results["student_1_5b"]
    print(
        f"per GiB (warm)   read {g['read_s_per_gib']:.3f} s, read + XXH3 digest {g['digest_s_per_gib']:.3f} s "
        f"(x{g['ratio']:.2f})\n"
        f"smoke save       {s['bytes'] / 2**20:.1f} MiB in {s['save_s']:.3f} s; digests {s['digest_s'] * 1e3:.1f} ms "
        f"({s['digest_share_of_save']:.1%} of the save)\n"
        f"1.5B student     {b['parameters'] / 1e9:.2f}B parameters, {b['bytes'] / 2**30:.1f} GiB with optimizer state: "
        f"digests {b['digest_s_one_process']:.1f} s in one process (split between the ranks that write)"
    )
    if args.json:
        from taidtron.io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0
