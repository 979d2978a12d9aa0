"""The config tree: YAML + dotted overrides, one clear error per mistake, layout checks for both models."""

from __future__ import annotations

import pytest

from taidtron.config import ConfigError, ModelConfig, TrainConfig, load_config, save_config
from taidtron.config_docs import config_help

QWEN2_1_5B = dict(
    family="qwen2",
    num_layers=28,
    hidden_size=1536,
    num_attention_heads=12,
    num_query_groups=2,
    ffn_hidden_size=8960,
    vocab_size=151936,
    tie_embeddings=True,
)
QWEN2_72B = dict(
    family="qwen2",
    num_layers=80,
    hidden_size=8192,
    num_attention_heads=64,
    num_query_groups=8,
    ffn_hidden_size=29568,
    vocab_size=152064,
)


def test_cli_overrides_win_over_the_yaml_file_and_are_typed(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("optim:\n  lr: 1.0e-3\nparallel:\n  tp: 2\n")
    cfg = load_config(path, ["optim.lr=5e-4", "--parallel.pp=2", "taid.adaptive=false", "student.init=null"])
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.parallel.tp == 2 and cfg.parallel.pp == 2
    assert cfg.taid.adaptive is False and cfg.student.init is None


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-4", "data.blend=[0.3, a, 0.7, b]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown config key(s) optim.lrr"),
        (["optim.lr=fast"], "optim.lr must be of type float"),
        (["parallel.sequence_parallel=true"], "needs parallel.tp > 1"),
        (["taid.beta=1.0"], "taid.beta=1.0 must be in [0, 1)"),
        (["student.num_query_groups=3"], "must be a multiple of student.num_query_groups (3)"),
        (["teacher.family=gpt"], "teacher.family='gpt' is not supported"),
        (["optim.lr=[1"], "override optim.lr=[1 is not a valid YAML value"),
        (["parallel.tp=true"], "parallel.tp must be a number"),
        (["logging.log_interval=0"], "logging.log_interval=0 must be >= 1"),
        (["precision=fp16"], "precision='fp16'"),
        (["optim"], "must look like section.key=value"),
    ],
)
def test_each_mistake_raises_one_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_qwen2_1_5b_student_refuses_tp4_because_it_has_two_kv_groups():
    cfg = TrainConfig(student=ModelConfig(**QWEN2_1_5B), teacher=ModelConfig(**QWEN2_72B))
    cfg.parallel.tp = 4
    cfg.parallel.global_batch_size = 8
    with pytest.raises(ConfigError, match=r"student has 2 key/value groups.*tp <= 2"):
        cfg.validate_layout(world_size=8)


def test_pipeline_stages_must_divide_both_models_layers():
    cfg = TrainConfig(student=ModelConfig(**QWEN2_1_5B), teacher=ModelConfig(**QWEN2_72B))
    cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.global_batch_size = 2, 8, 8
    with pytest.raises(ConfigError, match=r"student.num_layers \(28\) is not divisible by parallel.pp \(8\)"):
        cfg.validate_layout(world_size=16)
    cfg.parallel.pp = 4
    cfg.validate_layout(world_size=16)


def test_both_vocabularies_pad_to_one_size_divisible_by_128_times_tp():
    cfg = TrainConfig(student=ModelConfig(**QWEN2_1_5B), teacher=ModelConfig(**QWEN2_72B))
    cfg.parallel.tp = 2
    assert cfg.padded_vocab_size() == 152064
    cfg.student.vocab_size, cfg.teacher.vocab_size = 1003, 1000
    assert cfg.padded_vocab_size() == 1024


def test_help_lists_every_key_with_its_docstring():
    text = config_help()
    assert "taid.t_start=0.4  Interpolation t at step 0." in text
    assert "parallel.tp=1  Tensor-parallel degree. 1 means disabled." in text
