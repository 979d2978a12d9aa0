"""Random Hugging Face Llama / Qwen2 models of any size, written shard by shard: the inputs of the conversion's
memory benchmark (`tools/bench_convert_memory.py`) and tests, made locally (no hub).

    config = LlamaConfig(num_hidden_layers=32, hidden_size=512, ...)
    write_random_model(Path("/tmp/llama"), config, max_shard_bytes=32 * 2**20, dtype=torch.bfloat16)

The tensor names and shapes are transformers' own (the model class built on the meta device, no memory), the
config.json its config class writes, the shards and index those of `tools/convert.py export` (`ShardWriter`). Only
one shard's tensors are in memory at a time, so the model may be larger than the memory of the machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from taidtron.hf.shards import ShardWriter


def _random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Values like a trained model's in scale: norm weights near 1, biases and matrices small (std 0.02), so every
    mapping of the conversion is observable and the logits stay finite. Drawn 2**24 values at a time, so that a
    bf16 tensor needs no float32 copy of its own size."""
    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1)
    for start in range(0, flat.numel(), 2**24):
        values = torch.randn(min(2**24, flat.numel() - start), generator=generator)
        flat[start : start + values.numel()] = 1.0 + 0.2 * values if name.endswith("norm.weight") else 0.02 * values
    return out


def write_random_model(
    out: Path, config, *, max_shard_bytes: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> int:
    """Write a random model of `config` (a transformers LlamaConfig / Qwen2Config) to the new directory `out`:
    config.json and safetensors shards of at most `max_shard_bytes` with model.safetensors.index.json, the weights
    in `dtype` (give the config the same `dtype`, which is what its config.json says). Returns the bytes of the
    weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(param.shape) for name, param in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight")  # the embedding, stored once (as save_pretrained does)
    itemsize = torch.empty((), dtype=dtype).element_size()
    out.mkdir(parents=True)
    writer = ShardWriter(out, [torch.Size(s).numel() * itemsize for s in shapes.values()], max_shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    for name, shape in shapes.items():
        writer.add({name: _random_tensor(name, shape, dtype, generator)})
    writer.close()
    config.save_pretrained(out)
    return writer.total_bytes
