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

from taidtron.config import ModelConfig
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
    proc = plan(
        DOCUMENTED[1][0],
        "parallel.tp=1",
        "parallel.pp=1",
        "parallel.sequence_parallel=false",
        "parallel.global_batch_size=8",
        "--nodes",
        "1",
        "--gpus-per-node",
        "1",
    )
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
    "student": {
        "family": "qwen2",
        "num_layers": 4,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_query_groups": 2,
        "ffn_hidden_size": 96,
        "vocab_size": 250,
        "tie_embeddings": True,
    },
    "teacher": {
        "family": "llama",
        "num_layers": 4,
        "hidden_size": 96,
        "num_attention_heads": 6,
        "num_query_groups": 2,
        "ffn_hidden_size": 160,
        "vocab_size": 300,
        "tie_embeddings": False,
    },
    "parallel": {"micro_batch_size": 1, "global_batch_size": 2},
    "data": {"seq_length": 16},
    "precision": "fp32",
}

WORKER = """
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
"""


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
        assert stage["student_grads"] == 4 * rank["student"]  # fp32 main gradients
        assert stage["teacher_weights"] == 2 * rank["teacher"]  # bf16, frozen


# ---- activation memory against what megatron-core layers keep for the backward pass --------------------------------

SAVED_WORKER = """
import json, sys
import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.spec_utils import build_module
from taidtron.config import ModelConfig, ParallelConfig
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.models import layer_spec, transformer_config
from tests.support import report

model = json.loads(sys.argv[1])
ctx = init_distributed(ParallelConfig())
seed_everything(1, ctx)
rows = []
for attention in ("local", "sdpa"):
    cfg = ModelConfig(**model, attention=attention)
    config = transformer_config(cfg, ParallelConfig(), params_dtype=torch.bfloat16, use_cpu_initialization=True)
    layer = build_module(layer_spec(1, attention).submodules.layer_specs[0], config=config, layer_number=1)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    for seq in (256, 512):
        rotary = RotaryEmbedding(kv_channels=cfg.kv_channels, rotary_percent=1.0, rotary_base=10000)(seq)
        x = torch.randn(seq, 1, cfg.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        kept = {}  # storage -> bytes: views of one tensor (q, k, v of the fused QKV output) count once

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                kept[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _ = layer(x, attention_mask=None, rotary_pos_emb=rotary)
        rows.append({"attention": attention, "seq": seq, "bytes": sum(kept.values()),
                     "core": type(layer.self_attention.core_attention).__name__})
report(rows=rows)
destroy_distributed()
"""


@pytest.mark.multiprocess
def test_attention_memory_follows_what_the_layers_keep_for_backward(tmp_path):
    """One bf16 decoder layer on CPU, each attention, two sequence lengths; every tensor autograd keeps is counted.
    SDPA keeps nothing that grows with the sequence per token (no [seq, seq] tensor); the local module does, and
    the planner's local-minus-flash difference per token is what the layers really keep in addition."""
    from taidtron import plan as planner

    model = {
        "family": "qwen2",
        "num_layers": 1,
        "hidden_size": 256,
        "num_attention_heads": 8,
        "num_query_groups": 2,
        "ffn_hidden_size": 704,
    }
    worker = tmp_path / "saved_worker.py"
    worker.write_text(SAVED_WORKER)
    (result,) = run_torchrun(worker, 1, json.dumps(model))
    rows = result["rows"]
    kept = {(r["attention"], r["seq"]): r["bytes"] / r["seq"] for r in rows}  # bytes per token
    assert {r["core"] for r in rows} == {"DotProductAttention", "SDPAttention"} and len(kept) == 4, rows

    def planned(attention: str, seq: int) -> float:
        return planner.layer_activation_bytes(ModelConfig(**model, attention=attention), tp=1, sp=False, seq=seq)

    # Growth per token from 256 to 512 tokens: none with SDPA; with the local module the [heads, seq, seq] fp32
    # softmax output and bf16 probabilities (6 bytes per head and key; its cached causal mask adds ~2%).
    assert kept["sdpa", 512] == pytest.approx(kept["sdpa", 256], rel=1e-3)
    assert planned("sdpa", 512) == planned("sdpa", 256)
    growth = kept["local", 512] - kept["local", 256]
    assert growth == pytest.approx(planned("local", 512) - planned("local", 256), rel=0.03), kept
    # What local keeps beyond flash, per token. Not exact: SDPA also keeps its output before the reshape to
    # [s, b, h] (2 bytes per channel, 4% of this small layer's activations) and local the repeated k and v.
    for seq in (256, 512):
        extra = kept["local", seq] - kept["sdpa", seq]
        assert extra == pytest.approx(planned("local", seq) - planned("sdpa", seq), rel=0.05), (seq, kept)


def test_plan_reads_each_models_attention_setting():
    config = DOCUMENTED[1][0]
    flash = json.loads(plan(config, "--nodes", "16", "--gpus-per-node", "8", "--json").stdout)
    local = json.loads(
        plan(
            config,
            "student.attention=local",
            "teacher.attention=local",
            "--nodes",
            "16",
            "--gpus-per-node",
            "8",
            "--json",
        ).stdout
    )
    teacher_only = json.loads(
        plan(config, "teacher.attention=local", "--nodes", "16", "--gpus-per-node", "8", "--json").stdout
    )
    assert flash["attention"] == {"student": "auto", "teacher": "auto"}
    assert local["attention"] == {"student": "local", "teacher": "local"}
    for a, b in zip(flash["stages"], local["stages"]):
        assert b["activations"] > 3 * a["activations"] and b["teacher_transient"] > 5 * a["teacher_transient"]
        assert b["student_weights"] == a["student_weights"] and b["logits"] == a["logits"]
    # the teacher's setting changes only its no-grad transient, not the student's saved activations
    assert [s["activations"] for s in teacher_only["stages"]] == [s["activations"] for s in flash["stages"]]
    assert teacher_only["stages"][0]["teacher_transient"] == local["stages"][0]["teacher_transient"]
    assert local["peak_gib"] - flash["peak_gib"] > 10  # what the [seq, seq] probabilities cost at 4096 tokens
    proc = plan(config, "student.attention=flash", "--nodes", "16", "--gpus-per-node", "8")
    assert proc.returncode == 2 and "attention='flash' is not supported" in proc.stderr
