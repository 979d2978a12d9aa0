"""Single-process worker: save/load behaviour of taidtron.checkpoint on a real student + distributed optimizer.

    python -m torch.distributed.run --nproc-per-node 1 ckpt_worker.py WORK_DIR

Prints one `RESULT <case> <OK|FAIL> <message>` line per case; tests/checkpoint/test_integrity.py asserts them.
Cases:
  keep_last          four saves with keep_last=2 leave the newest two iterations, `latest` names the newest
  rng_roundtrip      Python/NumPy/torch/megatron-tracker random streams continue identically after a load
  corrupt:<how>      a damaged checkpoint raises CheckpointError and leaves the model's weights untouched
  loads_without_digests  a checkpoint whose taidtron.json has no digests (written before them) loads exactly
  architecture       loading into a model of another shape raises CheckpointError naming the field
  non_finite:<what>  a NaN weight / an inf Adam moment: the save raises SaveError before writing, `latest` unchanged
  prune_killed       a kill while keep_last removes an old iteration leaves no partial `iter_*`, only a hidden
                     `.trash_*` that the next save removes
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from taidtron import checkpoint
from taidtron.config import load_config
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.trainer import build_trainer
from tests import support

TINY = [
    "student.num_layers=2",
    "student.hidden_size=64",
    "student.num_attention_heads=4",
    "student.num_query_groups=2",
    "student.ffn_hidden_size=128",
    "student.vocab_size=256",
    "student.tie_embeddings=false",
    "teacher.num_layers=2",
    "teacher.hidden_size=64",
    "teacher.num_attention_heads=4",
    "teacher.num_query_groups=2",
    "teacher.ffn_hidden_size=128",
    "teacher.vocab_size=256",
    "data.seq_length=16",
    "parallel.micro_batch_size=1",
    "parallel.global_batch_size=1",
]


def report(case: str, ok: bool, message: str) -> None:
    support.report(**{case: {"ok": ok, "message": message}})


def draws() -> list:
    """One draw from every random stream a checkpoint restores; on a GPU also the CUDA default generator, and the
    model-parallel tracker's stream is a CUDA one (on CPU the tracker forks the CPU generator)."""
    from megatron.core import tensor_parallel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tensor_parallel.get_cuda_rng_tracker().fork():
        tracked = torch.rand(3, device=device).tolist()
    cuda = torch.rand(3, device="cuda").tolist() if device == "cuda" else None
    return [random.random(), float(np.random.rand()), torch.rand(3).tolist(), tracked, cuda]


def synthetic_batches(seq: int = 16):
    generator = torch.Generator().manual_seed(0)
    while True:
        tokens = torch.randint(0, 256, (1, seq + 1), generator=generator)
        yield {
            "tokens": tokens[:, :-1],
            "labels": tokens[:, 1:],
            "loss_mask": torch.ones(1, seq),
            "position_ids": torch.arange(seq).expand(1, -1),
        }


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def main() -> None:
    work = Path(sys.argv[1])
    cfg = load_config(None, TINY)
    ctx = init_distributed(cfg.parallel)
    seed_everything(cfg.seed, ctx)
    trainer = build_trainer(cfg, ctx, 256)
    trainer.train_step(synthetic_batches())  # the distributed optimizer has state to save only after a step
    student = trainer.model.module.student
    meta = checkpoint.CheckpointMeta(
        model=cfg.student,
        padded_vocab_size=trainer.padded_vocab_size,
        source=checkpoint.WeightsSource(kind="training", description="ckpt_worker"),
        trainer=trainer.state_dict(),
    )
    ckpt_dir = work / "run"
    try:
        # keep_last -------------------------------------------------------------------------------------------
        for step in range(1, 5):
            checkpoint.save_checkpoint(
                ckpt_dir, step, model=student, optimizer=trainer.optimizer, meta=meta, keep_last=2, ctx=ctx
            )
        left = sorted(p.name for p in ckpt_dir.iterdir())
        report(
            "keep_last",
            left == ["iter_0000003", "iter_0000004", "latest"] and (ckpt_dir / "latest").read_text() == "iter_0000004",
            f"left {left}",
        )

        # rng_roundtrip ---------------------------------------------------------------------------------------
        checkpoint.save_checkpoint(
            ckpt_dir, 5, model=student, optimizer=trainer.optimizer, meta=meta, keep_last=2, ctx=ctx
        )
        expected = draws()
        draws()  # move every stream further, then load: the streams must rewind to the saved point
        checkpoint.load_checkpoint(ckpt_dir, model=student, optimizer=trainer.optimizer, ctx=ctx)
        got = draws()
        report("rng_roundtrip", got == expected, f"on {ctx.device.type}: expected {expected} got {got}")

        # non_finite:* --------------------------------------------------------------------------------------
        def poison_weight():
            param = next(student.parameters())
            saved = param.detach().clone()
            with torch.no_grad():
                param.view(-1)[0] = float("nan")
            return lambda: param.data.copy_(saved)

        def poison_moment():
            inner = trainer.optimizer.optimizer
            state = next(s for s in inner.state.values() if "exp_avg_sq" in s)
            saved = state["exp_avg_sq"].clone()
            state["exp_avg_sq"].view(-1)[0] = float("inf")
            return lambda: state["exp_avg_sq"].copy_(saved)

        for what, poison, needle in (("weight", poison_weight, "student "), ("moment", poison_moment, "exp_avg_sq")):
            undo = poison()
            try:
                checkpoint.save_checkpoint(
                    ckpt_dir, 6, model=student, optimizer=trainer.optimizer, meta=meta, keep_last=2, ctx=ctx
                )
            except checkpoint.SaveError as exc:
                left = sorted(p.name for p in ckpt_dir.iterdir())
                ok = (
                    left == ["iter_0000004", "iter_0000005", "latest"]
                    and (ckpt_dir / "latest").read_text() == "iter_0000005"
                )
                report(f"non_finite:{what}", ok and needle in str(exc), f"left {left}: {exc}")
            else:
                report(f"non_finite:{what}", False, "saved a state holding NaN/inf")
            finally:
                undo()

        # prune_killed ---------------------------------------------------------------------------------------
        class Killed(BaseException):
            pass

        real_rmtree = shutil.rmtree

        def killed_midway(path, ignore_errors=False):
            if Path(path).name.startswith(".trash_"):
                next(p for p in Path(path).iterdir() if p.is_file()).unlink()  # some files are gone, then the kill
                raise Killed()
            return real_rmtree(path, ignore_errors=ignore_errors)

        prune_dir = work / "prune"
        for step in (1, 2):
            checkpoint.save_checkpoint(
                prune_dir, step, model=student, optimizer=trainer.optimizer, meta=meta, keep_last=2, ctx=ctx
            )
        checkpoint.store.shutil.rmtree = killed_midway
        try:
            checkpoint.save_checkpoint(
                prune_dir, 3, model=student, optimizer=trainer.optimizer, meta=meta, keep_last=2, ctx=ctx
            )
            report("prune_killed", False, "the simulated kill did not happen")
        except Killed:
            left = sorted(p.name for p in prune_dir.iterdir())
            complete = [step for step, _ in checkpoint.complete_iterations(prune_dir)]
            checkpoint.store.shutil.rmtree = real_rmtree
            checkpoint.save_checkpoint(
                prune_dir, 4, model=student, optimizer=trainer.optimizer, meta=meta, keep_last=2, ctx=ctx
            )
            after = sorted(p.name for p in prune_dir.iterdir())
            ok = (
                left == [".trash_iter_0000001", "iter_0000002", "iter_0000003", "latest"]
                and complete == [3, 2]
                and after == ["iter_0000003", "iter_0000004", "latest"]
            )
            report("prune_killed", ok, f"after the kill {left} (complete: {complete}); after the next save {after}")
        finally:
            checkpoint.store.shutil.rmtree = real_rmtree

        # corrupt:* ------------------------------------------------------------------------------------------
        good = ckpt_dir / "iter_0000005"

        def truncate(name):
            def damage(d: Path):
                target = d / name if name != "distcp" else sorted(d.glob("*.distcp"))[0]
                size = target.stat().st_size
                with open(target, "r+b") as f:
                    f.truncate(size // 2)

            return damage

        def delete_distcp(d: Path):
            sorted(d.glob("*.distcp"))[-1].unlink()

        def garble_meta(d: Path):
            text = (d / checkpoint.META_FILE).read_text()
            (d / checkpoint.META_FILE).write_text(text[: len(text) // 2])

        def legacy_truncated(d: Path):  # format 1 without a manifest: the DCP index must still catch it
            meta_file = d / checkpoint.META_FILE
            data = json.loads(meta_file.read_text())
            legacy = {
                k: data[k]
                for k in (
                    "model",
                    "padded_vocab_size",
                    "trainer",
                    "content_id",
                    "saved_at",
                    "layout",
                    "has_optimizer",
                    "has_rng",
                )
            }
            meta_file.write_text(json.dumps({**legacy, "format_version": 1}))
            truncate("distcp")(d)

        def latest_missing(d: Path):
            shutil.rmtree(d)

        def overwrite_distcp(d: Path):  # other bytes, same size: only the recorded digests tell
            target = max(d.glob("*.distcp"), key=lambda p: p.stat().st_size)
            with open(target, "r+b") as f:
                f.seek(target.stat().st_size // 2)
                f.write(b"\xff" * 64)

        cases = {
            "truncated_distcp": truncate("distcp"),
            "deleted_distcp": delete_distcp,
            "garbled_meta": garble_meta,
            "truncated_index": truncate(".metadata"),
            "deleted_common": lambda d: (d / "common.pt").unlink(),
            "legacy_truncated": legacy_truncated,
            "latest_missing_dir": latest_missing,
            "overwritten_distcp": overwrite_distcp,
        }
        before = weights(student)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(1.0)  # so that any partial load would show
        moved = weights(student)
        for name, damage in cases.items():
            run = work / f"corrupt_{name}"
            shutil.copytree(good, run / good.name)
            (run / "latest").write_text(good.name)
            damage(run / good.name)
            try:
                checkpoint.load_checkpoint(run, model=student, optimizer=trainer.optimizer, ctx=ctx)
            except checkpoint.CheckpointError as exc:
                untouched = all(torch.equal(moved[k], v) for k, v in weights(student).items())
                report(f"corrupt:{name}", untouched, f"{'untouched' if untouched else 'WEIGHTS CHANGED'}: {exc}")
            except Exception as exc:  # noqa: BLE001 - any other type is the failure being tested for
                report(f"corrupt:{name}", False, f"{type(exc).__name__} instead of CheckpointError: {exc}")
            else:
                report(f"corrupt:{name}", False, "loaded without error")
        checkpoint.load_checkpoint(good, model=student, optimizer=trainer.optimizer, ctx=ctx)
        restored = all(torch.equal(before[k], v) for k, v in weights(student).items())
        report("intact_after_corrupt_attempts", restored, "the undamaged checkpoint still loads exactly")

        # a checkpoint written before digests were recorded still loads (its bytes cannot be checked) -----------
        legacy = work / "no_digests" / good.name
        shutil.copytree(good, legacy)
        recorded = json.loads((legacy / checkpoint.META_FILE).read_text())
        del recorded["digests"]
        (legacy / checkpoint.META_FILE).write_text(json.dumps(recorded))
        with torch.no_grad():
            for p in student.parameters():
                p.add_(1.0)
        checkpoint.load_checkpoint(legacy, model=student, optimizer=trainer.optimizer, ctx=ctx)
        loaded = all(torch.equal(before[k], v) for k, v in weights(student).items())
        report("loads_without_digests", loaded, "a checkpoint without digests loads exactly")

        # architecture ---------------------------------------------------------------------------------------
        from taidtron.models import build_gpt

        other = load_config(None, TINY + ["student.hidden_size=96"])
        wider = build_gpt(
            other.student,
            other.parallel,
            padded_vocab_size=256,
            max_seq_length=16,
            pp_rank=0,
            params_dtype=torch.float32,
            device=ctx.device,
        )
        try:
            checkpoint.load_model_weights(wider, good, group=ctx.dp_group)
        except checkpoint.CheckpointError as exc:
            report("architecture", "hidden_size" in str(exc), str(exc))
        else:
            report("architecture", False, "loaded a 64-wide checkpoint into a 96-wide model")
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
