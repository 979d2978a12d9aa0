"""torchrun worker of test_loader.py: build the datasets with torch.distributed (gloo) initialised, then save
this rank's training tokens per step. Args: dataset prefix, cache dir, output dir."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from taidtron.config import DataConfig
from taidtron.data.loader import build_data_iterators
from taidtron.data.tokenizer import load_tokenizer

prefix, cache_dir, out_dir = sys.argv[1:4]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
tok = load_tokenizer(str(Path(prefix).parent / "tokenizer.model"))
cfg = DataConfig(blend=[2, prefix, 1, prefix], seq_length=32, cache_dir=cache_dir)
train, make_valid = build_data_iterators(cfg, tok, micro_batch_size=2, global_batch_size=8, dp_rank=rank,
                                         dp_size=world, train_steps=3, eval_iters=2)
tokens = torch.cat([b["tokens"] for b in train]).view(3, 8 // world, 32)
assert len(list(make_valid())) == 2 * 8 // (2 * world)
os.makedirs(out_dir, exist_ok=True)
torch.save(tokens, Path(out_dir) / f"rank{rank}.pt")
dist.barrier()
dist.destroy_process_group()
