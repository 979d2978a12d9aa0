"""Every run config loads, passes the start-up layout checks at the world size it is written for, and describes the
published models; the launch scripts are valid shell and write the job shape once."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from taidtron.checkpoint import MODEL_FIELDS_REQUIRED
from taidtron.config import ModelConfig, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# The world size each config is laid out for (nodes x GPUs per node; the YAML header says which cluster).
WORLD_SIZES = {
    "smoke.yaml": 2,  # launch/slurm/smoke.sbatch: 2 tasks
    "qwen2_7b_to_1.5b.yaml": 32,  # 4 nodes x 8 GPUs
    "qwen2_72b_instruct_to_1.5b_instruct.yaml": 128,  # 16 nodes x 8 GPUs
    "paper_mini.yaml": 1,  # tools/paper_mini.py: each run in a world of one
}

# Parameter counts of the published checkpoints (Hugging Face model cards: 1.54B, 7.62B, 72.7B), to the precision
# they are published with; computed below from the config's shapes as Hugging Face lays them out.
PUBLISHED_PARAMS_B = {
    ("qwen2_7b_to_1.5b.yaml", "student"): 1.54,
    ("qwen2_7b_to_1.5b.yaml", "teacher"): 7.62,
    ("qwen2_72b_instruct_to_1.5b_instruct.yaml", "student"): 1.54,
    ("qwen2_72b_instruct_to_1.5b_instruct.yaml", "teacher"): 72.7,
}


def hf_parameter_count(m: ModelConfig) -> int:
    """Qwen2ForCausalLM's parameters from its config: embeddings, q/k/v (+bias), o, gate/up/down, 2 norms per layer,
    the final norm and an untied lm_head."""
    kv = m.num_query_groups * m.kv_channels
    attention = m.hidden_size * (m.hidden_size + 2 * kv) + (m.hidden_size + 2 * kv) * m.add_qkv_bias
    attention += m.hidden_size * m.hidden_size
    layer = attention + 3 * m.hidden_size * m.ffn_hidden_size + 2 * m.hidden_size
    embeddings = m.vocab_size * m.hidden_size * (1 if m.tie_embeddings else 2)
    return m.num_layers * layer + embeddings + m.hidden_size


def test_every_config_has_a_documented_world_size():
    assert CONFIGS, "configs/ is empty"
    missing = [p.name for p in CONFIGS if p.name not in WORLD_SIZES]
    assert not missing, f"add the intended world size of {missing} to WORLD_SIZES in {__file__}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads_and_passes_layout_checks_at_its_world_size(path):
    if path.name not in WORLD_SIZES:
        pytest.skip("no world size documented (see test_every_config_has_a_documented_world_size)")
    cfg = load_config(path)
    cfg.validate_layout(WORLD_SIZES[path.name])
    # Both models' logits are sharded identically: one padded vocabulary covering both, divisible by 128 * tp.
    vocab = cfg.padded_vocab_size()
    assert vocab >= max(cfg.student.vocab_size, cfg.teacher.vocab_size)
    assert vocab % (128 * cfg.parallel.tp) == 0


@pytest.mark.parametrize("name,role", sorted(PUBLISHED_PARAMS_B))
def test_qwen2_configs_match_the_published_parameter_counts(name, role):
    model = getattr(load_config(REPO / "configs" / name), role)
    published = PUBLISHED_PARAMS_B[(name, role)]
    digits = len(str(published).split(".")[1])
    assert round(hf_parameter_count(model) / 1e9, digits) == published


def test_1_5b_students_are_qwen2_1_5b():
    """Both 1.5B configs distil into the same published architecture (Qwen2-1.5B and its Instruct share it)."""
    a = load_config(REPO / "configs/qwen2_7b_to_1.5b.yaml").student
    b = load_config(REPO / "configs/qwen2_72b_instruct_to_1.5b_instruct.yaml").student
    shape = [k for k in MODEL_FIELDS_REQUIRED if k != "family"]  # what a checkpoint records of an architecture
    assert [getattr(a, k) for k in shape] == [getattr(b, k) for k in shape]
    assert (a.num_layers, a.hidden_size, a.num_attention_heads, a.num_query_groups, a.ffn_hidden_size) == (
        28,
        1536,
        12,
        2,
        8960,
    )


# ---- launch scripts ----------------------------------------------------------------------------------------------

SCRIPTS = sorted(
    [
        *(REPO / "launch").glob("*.sh"),
        *(REPO / "launch/slurm").glob("*.sbatch"),
        *(REPO / "tests/slurm").glob("*.sh"),
        *(REPO / "tests/multinode").glob("*.sh"),
    ]
)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_launch_script_is_valid_bash(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", sorted((REPO / "launch/slurm").glob("*.sbatch")), ids=lambda p: p.name)
def test_sbatch_writes_the_job_shape_once_and_requeues_on_exit_75(script):
    text = script.read_text()
    directives = re.findall(r"^#SBATCH\s+(--[\w-]+)", text, flags=re.M)
    assert len(directives) == len(set(directives)), f"an #SBATCH option appears twice in {script.name}"
    assert "--requeue" in directives and "--signal" in directives
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    # Node and task counts are never repeated as numbers in the script body: srun derives them from SLURM_*.
    assert not re.search(r"--(nodes|nnodes|ntasks|ntasks-per-node|nproc-per-node|gpus-per-node)[= ]\d", body)
    assert re.search(r'-eq 75 \]; then\s+echo [^\n]*\n\s+scontrol requeue "\$SLURM_JOB_ID"', body)
    # the entry point: taidtron.train, or $MODULE, which launch/common.sh resolves (taidtron.train by default)
    assert re.search(r'-m (taidtron\.train|"\$MODULE") --config "\$CONFIG" .*"\$\{OVERRIDES\[@\]\}"', body, flags=re.S)
