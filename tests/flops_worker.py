"""torchrun worker: both models of a pair built at the layout of the command line, their parameters counted by
`taidtron.flops.count_parameters` (each parameter once) and naively (every rank's tensors summed).

    flops_worker.py TP PP
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from taidtron.config import ModelConfig, ParallelConfig, padded_vocab_size
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.flops import count_parameters
from taidtron.models import build_gpt
from tests.support import report

# Replicated across TP: RMSNorm weights (and nothing else: no row-parallel biases in these models); the student's
# tied embedding has a copy on the last stage when pp > 1; qwen2's QKV bias is column-parallel (sharded).
MODELS = {
    "student": ModelConfig(
        family="llama",
        num_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=96,
        vocab_size=250,
        tie_embeddings=True,
    ),
    "teacher": ModelConfig(
        family="qwen2",
        num_layers=4,
        hidden_size=96,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=160,
        vocab_size=250,
        tie_embeddings=False,
    ),
}


def main() -> None:
    tp, pp = int(sys.argv[1]), int(sys.argv[2])
    parallel = ParallelConfig(tp=tp, pp=pp, global_batch_size=1)
    ctx = init_distributed(parallel)
    seed_everything(1, ctx)
    vocab = padded_vocab_size(list(MODELS.values()), tp)
    counts = {}
    for role, model_cfg in MODELS.items():
        model = build_gpt(
            model_cfg,
            parallel,
            padded_vocab_size=vocab,
            max_seq_length=32,
            pp_rank=ctx.pp_rank,
            params_dtype=torch.float32,
            device=ctx.device,
        )
        naive = torch.tensor([sum(p.numel() for p in model.parameters())], dtype=torch.float64)
        dist.all_reduce(naive)
        counts[role] = count_parameters(
            model,
            tp_group=ctx.tp_group,
            model_parallel_group=parallel_state.get_model_parallel_group(),
            device=ctx.device,
        )
        counts[f"{role}_naive"] = int(naive.item())
    report(padded_vocab=vocab, **counts)
    destroy_distributed()


if __name__ == "__main__":
    main()
