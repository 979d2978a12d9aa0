"""tools/plan.py: accepts the 1.5B configs on their documented clusters, rejects impossible layouts with a message
that says what to change, and counts exactly the parameters megatron-core builds on each rank."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import run_torchrun

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "tools" / "plan.py"

# (config, nodes, GPUs per node) as documented in docs/cluster.md and the configs' headers.
DOCUMENTED = [
    ("configs/qwen2_7b_to_1.5b.yaml", 4, 8),
    ("configs/qwen2_72b_instruct_to_1.5b_instruct.yaml", 16, 8),
]


def plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PLAN), *args], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("config,nodes,gpus", DOCUMENTED, ids=[Path(c).stem for c, _, _ in DOCUMENTED])
def test_accepts_1_5b_config_at_its_documented_cluster_size(config, nodes, gpus):
    proc = plan(config, "--nodes", str(nodes), "--gpus-per-node", str(gpus), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fits"] and out["world_size"] == nodes * gpus
    assert out["peak_gib"] < 80
    assert out["throughput"]["tokens_per_second"] > 0


def test_table_output_shows_every_stage_and_the_verdict():
    proc = plan(DOCUMENTED[1][0], "--nodes", "16", "--gpus-per-node", "8")
    assert proc.returncode == 0, proc.stderr
    assert "stage 0" in proc.stdout and "stage 1" in proc.stdout
    assert re.search(r"teacher weights bf16\s+\d", proc.stdout)
    assert "fits: peak" in proc.stdout


def test_rejects_72b_teacher_on_one_gpu_with_a_clear_message():
    proc = plan(DOCUMENTED[1][0], "parallel.tp=1", "parallel.pp=1", "parallel.sequence_parallel=false",
                "parallel.global_batch_size=8", "--nodes", "1", "--gpus-per-node", "1")
    assert proc.returncode == 1
    assert "DOES NOT FIT" in proc.stderr
    needed = float(re.search(r"needs ([\d.]+) GiB per GPU, 80 GiB available", proc.stderr).group(1))
    assert needed > 2 * 72.7e9 / 2**30  # at least the teacher's bf16 weights
    assert "parallel.pp" in proc.stderr and "parallel.tp" in proc.stderr  # says what to change


def test_rejects_a_layout_the_world_size_cannot_hold():
    proc = plan(DOCUMENTED[1][0], "--nodes", "1", "--gpus-per-node", "2")  # tp*pp = 4 > 2 GPUs
    assert proc.returncode == 2
    assert "not divisible by parallel.tp * parallel.pp" in proc.stderr


def test_rejects_too_small_gpus():
    proc = plan(DOCUMENTED[1][0], "--nodes", "16", "--gpus-per-node", "8", "--gpu-mem-gib", "40")
    assert proc.returncode == 1 and "DOES NOT FIT" in proc.stderr


# ---- parameter counts against models megatron-core actually builds --------------------------------------------------

TINY = {
    # student: tied embeddings and q/k/v bias (like Qwen2-1.5B); teacher: untied, no bias; vocabularies differ and
    # need padding, so the shared padded vocabulary is exercised too.
    "student": {"family": "qwen2", "num_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
                "num_query_groups": 2, "ffn_hidden_size": 96, "vocab_size": 250, "tie_embeddings": True},
    "teacher": {"family": "llama", "num_layers": 4, "hidden_size": 96, "num_attention_heads": 6,
                "num_query_groups": 2, "ffn_hidden_size": 160, "vocab_size": 300, "tie_embeddings": False},
    "parallel": {"micro_batch_size": 1, "global_batch_size": 2},
    "data": {"seq_length": 16},
    "precision": "fp32",
}

WORKER = '''
import sys
import torch
from taidtron.config import load_config
from taidtron.distributed import destroy_distributed, init_distributed
from taidtron.models import build_gpt
from tests.support import report

cfg = load_config(sys.argv[1])
ctx = init_distributed(cfg.parallel)
counts = {}
for role in ("student", "teacher"):
    model = build_gpt(getattr(cfg, role), cfg.parallel, padded_vocab_size=cfg.padded_vocab_size(),
                      max_seq_length=cfg.data.seq_length, pp_rank=ctx.pp_rank, params_dtype=torch.float32,
                      device=ctx.device)
    counts[role] = sum(p.numel() for p in model.parameters())
report(rank=ctx.rank, tp_rank=ctx.tp_rank, pp_rank=ctx.pp_rank, **counts)
destroy_distributed()
'''


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_weight_memory_equals_built_model_parameters_times_bytes(tmp_path, tp, pp):
    tree = json.loads(json.dumps(TINY))
    tree["parallel"].update(tp=tp, pp=pp)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tree))
    worker = tmp_path / "count_params.py"
    worker.write_text(WORKER)

    built = run_torchrun(worker, 2, str(config))
    assert len(built) == 2

    proc = plan(str(config), "--nodes", "1", "--gpus-per-node", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = json.loads(proc.stdout)["stages"]
    assert len(stages) == pp
    for rank in built:
        stage = stages[rank["pp_rank"]]
        assert stage["student_params"] == rank["student"], (rank, stage)
        assert stage["teacher_params"] == rank["teacher"], (rank, stage)
        assert stage["student_weights"] == 2 * rank["student"]  # bf16
        assert stage["student_grads"] == 4 * rank["student"]    # fp32 main gradients
        assert stage["teacher_weights"] == 2 * rank["teacher"]  # bf16, frozen
