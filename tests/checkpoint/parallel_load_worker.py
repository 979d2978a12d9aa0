"""torchrun worker (2 ranks, dp=2): how taidtron.checkpoint loads at scale, and what it tolerates missing.

    python -m torch.distributed.run --nproc-per-node 2 parallel_load_worker.py WORK_DIR

Every rank reports {case: {"ok": bool, "message": str}} through `tests.support.report`. Cases:
  parallel_read        with group=dp the two replicas each read about half of the checkpoint's bytes (and together
                       all of it), where group=None makes each read all of it; both give the saved weights exactly
  timeout              the collective timeout of the dp and default groups is LOAD_TIMEOUT while reading, and the
                       previous one again afterwards
  extra_state          a model with Transformer Engine-style `_extra_state` entries (a stand-in module: the final
                       norm, plus one per layer) loads a local-spec checkpoint that lacks them
  other_missing_key    a model with one more parameter than the checkpoint is refused, naming it, weights untouched
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemReader

from taidtron import checkpoint, overrides
from taidtron.config import ParallelConfig
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.models import build_gpt
from taidtron.overrides.norms import RMSNorm
from tests import support

MODEL = support.tiny_model_config()


class ExtraStateNorm(RMSNorm):
    """A norm with a Transformer Engine-style extra state (TE modules keep FP8 metadata there)."""

    def get_extra_state(self):
        return io.BytesIO(b"fp8 metadata")

    def set_extra_state(self, state) -> None:
        raise AssertionError("a checkpoint without _extra_state must not set it")


class ExtraStateOnly(torch.nn.Module):
    """A submodule with nothing but an extra state, as TE attaches to each layer."""

    def get_extra_state(self):
        return io.BytesIO(b"fp8 metadata")

    def set_extra_state(self, state) -> None:
        raise AssertionError("a checkpoint without _extra_state must not set it")


class NormWithBias(RMSNorm):
    """A norm with one parameter the checkpoint does not have."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias = torch.nn.Parameter(torch.zeros_like(self.weight))


def build(ctx):
    return build_gpt(
        MODEL,
        ParallelConfig(),
        padded_vocab_size=256,
        max_seq_length=16,
        pp_rank=0,
        params_dtype=torch.float32,
        device=ctx.device,
    )


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def swap_final_norm(model, cls) -> None:
    old = model.decoder.final_layernorm
    new = cls(model.config, MODEL.hidden_size, eps=MODEL.norm_epsilon)
    model.decoder.final_layernorm = new.to(old.weight.device)


class ReadCounter:
    """Bytes this rank reads from checkpoint files (wraps FileSystemReader.read_data, which every load uses)."""

    def __init__(self, group):
        self.group = group
        self.bytes = 0
        self.timeouts: list = []
        self._original = FileSystemReader.read_data
        counter = self

        def read_data(reader, plan, planner):
            counter.bytes += sum(reader.storage_data[item.storage_index].length for item in plan.items)
            counter.timeouts.append((overrides.current_timeout(counter.group), overrides.current_timeout(None)))
            return counter._original(reader, plan, planner)

        FileSystemReader.read_data = read_data

    def take(self) -> tuple[int, set]:
        """(bytes read, timeouts (dp group, default group) seen while reading) since the last call."""
        value, self.bytes = self.bytes, 0
        seen, self.timeouts = set(self.timeouts), []
        return value, seen


def main() -> None:
    work = Path(sys.argv[1])
    ctx = init_distributed(ParallelConfig())
    seed_everything(1, ctx)
    results: dict[str, dict] = {}

    def report(case: str, ok: bool, message: str) -> None:
        results[case] = {"ok": bool(ok), "message": message}

    try:
        saved = build(ctx)
        ckpt = work / "weights"
        meta = checkpoint.CheckpointMeta(
            model=MODEL,
            padded_vocab_size=256,
            source=checkpoint.WeightsSource(kind="init", description="parallel_load"),
        )
        checkpoint.save_model(ckpt, model=saved, meta=meta, ctx=ctx)
        want = weights(saved)
        total = sum(p.stat().st_size for p in ckpt.glob("*.distcp"))

        # parallel_read + timeout -----------------------------------------------------------------------------
        counter = ReadCounter(ctx.dp_group)
        before = overrides.current_timeout(ctx.dp_group), overrides.current_timeout(None)
        seed_everything(2, ctx)
        model = build(ctx)
        checkpoint.load_model_weights(model, ckpt, group=ctx.dp_group)
        parallel_bytes, during = counter.take()
        parallel_ok = same(weights(model), want)
        seed_everything(3, ctx)
        model = build(ctx)
        checkpoint.load_model_weights(model, ckpt, group=None)
        alone_bytes, _ = counter.take()
        alone_ok = same(weights(model), want)
        counts = [None, None]
        dist.all_gather_object(counts, (parallel_bytes, alone_bytes))
        split = [c[0] for c in counts]
        report(
            "parallel_read",
            parallel_ok
            and alone_ok
            and all(c[1] >= total * 0.99 for c in counts)
            and sum(split) <= total * 1.05
            and max(split) <= 0.75 * total,
            f"checkpoint tensor files {total} B; bytes read per rank with group=dp {split}, with group=None "
            f"{[c[1] for c in counts]}; weights exact: {parallel_ok}, {alone_ok}",
        )
        after = overrides.current_timeout(ctx.dp_group), overrides.current_timeout(None)
        report(
            "timeout",
            during == {(checkpoint.LOAD_TIMEOUT, checkpoint.LOAD_TIMEOUT)} and after == before,
            f"before {before}, while reading {during}, after {after}",
        )

        # extra_state -----------------------------------------------------------------------------------------
        seed_everything(4, ctx)
        model = build(ctx)
        swap_final_norm(model, ExtraStateNorm)
        for layer in model.decoder.layers:
            layer.te_stand_in = ExtraStateOnly()
        names = sorted(k for k in model.state_dict() if k.endswith("_extra_state"))
        try:
            checkpoint.load_model_weights(model, ckpt, group=ctx.dp_group)
        except Exception as exc:  # noqa: BLE001 - any failure is the result being tested
            report("extra_state", False, f"{type(exc).__name__}: {exc}")
        else:
            stand_ins = {
                "decoder.final_layernorm._extra_state",
                "decoder.layers.0.te_stand_in._extra_state",
                "decoder.layers.1.te_stand_in._extra_state",
            }
            report(
                "extra_state",
                same(weights(model), want) and stand_ins <= set(names),
                f"loaded exactly; the model's _extra_state entries: {names}",
            )

        # other_missing_key -----------------------------------------------------------------------------------
        seed_everything(5, ctx)
        model = build(ctx)
        swap_final_norm(model, NormWithBias)
        untouched = weights(model)
        try:
            checkpoint.load_model_weights(model, ckpt, group=ctx.dp_group)
        except checkpoint.CheckpointError as exc:
            report(
                "other_missing_key",
                "decoder.final_layernorm.bias" in str(exc) and same(weights(model), untouched),
                str(exc),
            )
        except Exception as exc:  # noqa: BLE001
            report("other_missing_key", False, f"{type(exc).__name__} instead of CheckpointError: {exc}")
        else:
            report("other_missing_key", False, "loaded a checkpoint that lacks decoder.final_layernorm.bias")
    finally:
        support.report(**results)
        destroy_distributed()


if __name__ == "__main__":
    main()
