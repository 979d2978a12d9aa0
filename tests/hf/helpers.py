"""Helpers of the conversion tests (and of the checkpoint tests that need an imported teacher): tiny random
Llama / Qwen2 models saved with transformers (no hub), and `run_cli` for the command-line tools."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tests.support import REPO_ROOT, run_cli

CONVERT = REPO_ROOT / "tools" / "convert.py"
SMOKE_VOCAB = 1024  # data/smoke/tokenizer.model: a teacher for the training runs must cover it


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """transformers initialises norms to one and biases to zero; random values make every mapping observable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def make_llama(path: Path, seed: int = 0) -> Path:
    """GQA (4 heads, 2 KV groups), untied, vocab 1000 (padded to 1024 inside taidtron), RoPE base 5e5."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    _randomize(model, seed)
    model.save_pretrained(path)
    return path


def make_qwen2(path: Path, seed: int = 0, vocab_size: int = SMOKE_VOCAB) -> Path:
    """QKV bias, tied embeddings, vocab 1024 (the smoke tokenizer's) unless told, RoPE base 1e6."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    _randomize(model, seed)
    model.save_pretrained(path)
    return path


def import_cli(hf_dir: Path, out: Path) -> Path:
    """`tools/convert.py import`, as a user runs it."""
    run_cli(str(CONVERT), "import", "--hf", str(hf_dir), "--out", str(out), "--no-progress")
    return out


@dataclass(frozen=True)
class Models:
    llama_hf: Path
    qwen2_hf: Path
    llama_ckpt: Path
    qwen2_ckpt: Path
