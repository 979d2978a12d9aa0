"""Fixtures of the checkpoint tests: tiny random HF models (no hub), their imports, and a training helper.

Everything is session-scoped and built once: two Llama/Qwen2 models made with transformers' config classes and
saved with `save_pretrained` (safetensors), converted with `tools/convert.py import`, and used both for logit
parity and as the teacher of the short training runs (a checkpoint teacher is identical under every tp/pp,
which a random teacher is not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, free_port

CONVERT = REPO_ROOT / "tools" / "convert.py"
SMOKE_VOCAB = 1024  # data/smoke/tokenizer.model: a teacher for the training runs must cover it


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
                "TAIDTRON_NO_PROGRESS": "1", "MASTER_PORT": str(free_port())})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_cli(*args: str, expect_ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python <args>` from the repository root; fails the test with the output when the exit code surprises."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=_subprocess_env(), cwd=REPO_ROOT)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-6000:]}\n"
                    f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


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
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    _randomize(model, seed)
    model.save_pretrained(path)
    return path


def make_qwen2(path: Path, seed: int = 0) -> Path:
    """QKV bias, tied embeddings, vocab 1024 (the smoke tokenizer's), RoPE base 1e6."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=SMOKE_VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    _randomize(model, seed)
    model.save_pretrained(path)
    return path


@dataclass(frozen=True)
class Models:
    llama_hf: Path
    qwen2_hf: Path
    llama_ckpt: Path
    qwen2_ckpt: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("hf")
    llama_hf, qwen2_hf = make_llama(root / "llama"), make_qwen2(root / "qwen2")
    out = Models(llama_hf, qwen2_hf, root / "llama_ckpt", root / "qwen2_ckpt")
    for hf_dir, ckpt in ((llama_hf, out.llama_ckpt), (qwen2_hf, out.qwen2_ckpt)):
        run_cli(str(CONVERT), "import", "--hf", str(hf_dir), "--out", str(ckpt), "--no-progress")
    return out


def teacher_overrides(ckpt: Path) -> list[str]:
    """The teacher section of a run whose teacher is an imported checkpoint (what `convert import` prints)."""
    model = json.loads((ckpt / "taidtron.json").read_text())["model"]
    return [f"teacher.{k}={v}" for k, v in model.items() if k != "init"] + [f"teacher.init={ckpt}"]


def train_args(run_dir: Path, teacher_ckpt: Path, *extra: str) -> list[str]:
    """A tiny distillation on the smoke corpus: 2-layer 64-wide student, imported Qwen2 teacher, fp32."""
    return [
        "--config", "configs/smoke.yaml",
        "student.num_layers=2", "student.hidden_size=64", "student.num_attention_heads=4",
        "student.num_query_groups=2", "student.ffn_hidden_size=128", f"student.vocab_size={SMOKE_VOCAB}",
        *teacher_overrides(teacher_ckpt),
        "precision=fp32", "data.seq_length=32", f"data.cache_dir={run_dir.parent / 'index_cache'}",
        "parallel.micro_batch_size=2", "parallel.global_batch_size=4",
        "optim.lr=3e-3", "optim.warmup_steps=1",
        "logging.eval_interval=0", "logging.eval_iters=1", "logging.wandb_mode=disabled",
        f"logging.run_dir={run_dir}", *extra,
    ]


def run_train(args: list[str], nproc: int = 1, expect_ok: bool = True) -> subprocess.CompletedProcess:
    if nproc == 1:
        return run_cli("-m", "taidtron.train", *args, expect_ok=expect_ok)
    launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
                "--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "taidtron.train"]
    return run_cli(*launcher, *args, expect_ok=expect_ok)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def restart_from(source_run: Path, step: int, new_run: Path) -> None:
    """Lay out `new_run` as the first half of an interrupted run: its checkpoint at `step` (as `latest`) and the
    metrics rows it had written up to that step."""
    from shutil import copytree

    name = f"iter_{step:07d}"
    copytree(source_run / "checkpoints" / name, new_run / "checkpoints" / name)
    (new_run / "checkpoints" / "latest").write_text(name)
    rows = [row for row in read_metrics(source_run) if row["step"] <= step]
    (new_run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
