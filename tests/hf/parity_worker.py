"""torchrun worker: taidtron's forward logits of a checkpoint vs transformers' logits of an HF directory.

    python -m torch.distributed.run --nproc-per-node N parity_worker.py TP PP HF_DIR:CKPT_DIR [HF_DIR:CKPT_DIR ...]

For each pair, every rank builds its pipeline stage of the GPTModel at tp=TP pp=PP (padded vocabulary as the
trainer pads it), loads CKPT_DIR with `checkpoint.load_model_weights` (dist_checkpointing reshards), runs one
forward on fixed tokens (activations passed between stages with send/recv), gathers the vocab shards, drops the
padding columns and compares with `AutoModelForCausalLM.from_pretrained(HF_DIR)` in fp32. Every rank reports
`parity`: {<hf dir name>: max abs logit difference} (the last stage's value, all-reduced).
"""

from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist

from taidtron import checkpoint
from taidtron.config import ParallelConfig
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.models import build_gpt
from tests.support import report

BATCH, SEQ = 2, 24


def taidtron_logits(ckpt: str, parallel: ParallelConfig, ctx, tokens: torch.Tensor) -> torch.Tensor | None:
    """Full-vocabulary logits [b, s, V] on the last stage's ranks, None elsewhere."""
    from megatron.core import parallel_state

    model_cfg = checkpoint.read_meta(ckpt).model
    multiple = 128 * parallel.tp
    padded = math.ceil(model_cfg.vocab_size / multiple) * multiple
    model = build_gpt(
        model_cfg,
        parallel,
        padded_vocab_size=padded,
        max_seq_length=SEQ,
        pp_rank=ctx.pp_rank,
        params_dtype=torch.float32,
        device=ctx.device,
    )
    checkpoint.load_model_weights(model, ckpt, group=ctx.dp_group)
    model.eval()
    positions = torch.arange(SEQ).expand(BATCH, -1)
    with torch.no_grad():
        if not ctx.is_first_stage:
            hidden = torch.empty(SEQ, BATCH, model_cfg.hidden_size)  # [s, b, h]
            dist.recv(hidden, parallel_state.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        out = model(tokens, positions, None)
        if not ctx.is_last_stage:
            dist.send(out.contiguous(), parallel_state.get_pipeline_model_parallel_next_rank())
            return None
    shards = [torch.empty_like(out) for _ in range(ctx.tp)]  # [b, s, V_padded / tp] each
    dist.all_gather(shards, out.contiguous(), group=ctx.tp_group)
    return torch.cat(shards, dim=-1)[..., : model_cfg.vocab_size]


def main() -> None:
    tp, pp, *pairs = sys.argv[1:]
    parallel = ParallelConfig(tp=int(tp), pp=int(pp))
    ctx = init_distributed(parallel)
    seed_everything(1234, ctx)
    from transformers import AutoModelForCausalLM

    parity: dict[str, float] = {}
    try:
        for pair in pairs:
            hf_dir, ckpt = pair.split(":")
            vocab = checkpoint.read_meta(ckpt).model.vocab_size
            tokens = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))
            ours = taidtron_logits(ckpt, parallel, ctx, tokens)
            diff = torch.zeros(1)
            if ours is not None:
                reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
                with torch.no_grad():
                    theirs = reference(tokens).logits
                assert theirs.shape == ours.shape, (theirs.shape, ours.shape)
                diff[0] = (theirs - ours).abs().max()
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)  # the last stage's value reaches rank 0
            parity[hf_dir.rstrip("/").split("/")[-1]] = diff.item()
        report(parity=parity)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
