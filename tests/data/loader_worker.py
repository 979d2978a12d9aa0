"""torchrun worker of test_loader.py: build the datasets with torch.distributed (gloo) initialised, then report
this rank's training tokens per step and its number of validation micro-batches. Args: dataset prefix, cache dir."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from taidtron.config import DataConfig
from taidtron.data.loader import build_data_iterators
from taidtron.data.tokenizer import load_tokenizer
from tests.support import report

prefix, cache_dir = sys.argv[1:3]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
tok = load_tokenizer(str(Path(prefix).parent / "tokenizer.model"))
cfg = DataConfig(blend=[2, prefix, 1, prefix], seq_length=32, cache_dir=cache_dir)
train, make_valid = build_data_iterators(
    cfg, tok, micro_batch_size=2, global_batch_size=8, dp_rank=rank, dp_size=world, train_steps=3, eval_iters=2
)
tokens = torch.cat([b["tokens"] for b in train]).view(3, 8 // world, 32)  # [step, samples of this rank, seq]
report(tokens=tokens.tolist(), valid_micro_batches=len(list(make_valid())))
dist.barrier()
dist.destroy_process_group()
