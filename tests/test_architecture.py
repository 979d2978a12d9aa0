"""A model section that names only `init` takes its architecture from the checkpoint (taidtron/architecture.py):
resolved at config load, refused with both values when a key the config sets contradicts it, equal to the same
architecture written out in full (also for a resume's comparison)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from taidtron.checkpoint import CheckpointMeta, WeightsSource, compare_configs
from taidtron.config import ConfigError, ModelConfig, load_config

ARCHITECTURE = dict(
    family="qwen2",
    num_layers=3,
    hidden_size=96,
    num_attention_heads=6,
    num_query_groups=2,
    ffn_hidden_size=160,
    vocab_size=1000,
    rotary_base=1e6,
    norm_epsilon=1e-5,
    add_qkv_bias=True,
    tie_embeddings=True,
)
"""Not one of ModelConfig's defaults, so that a key left at its default shows."""


def recorded(directory: Path, **architecture) -> Path:
    """An iteration directory with the taidtron.json of a checkpoint of this architecture: all that resolving a
    config reads (no tensor)."""
    meta = CheckpointMeta(
        model=ModelConfig(**architecture),
        padded_vocab_size=1024,
        source=WeightsSource(kind="init", description="tests/test_architecture.py"),
    )
    directory.mkdir(parents=True)
    (directory / "taidtron.json").write_text(meta.to_json())
    return directory


def written_out(role: str, ckpt: Path) -> list[str]:
    """The section as `tools/convert.py import` prints it, as overrides."""
    return [f"{role}.{key}={value}" for key, value in ARCHITECTURE.items()] + [f"{role}.init={ckpt}"]


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return recorded(tmp_path / "ckpt" / "iter_0000000", **ARCHITECTURE)


def test_a_section_with_only_init_takes_the_checkpoints_architecture(ckpt, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(f"student:\n  init: {ckpt}\nteacher:\n  init: {ckpt}\n  attention: local\n")
    cfg = load_config(path)
    for role in ("student", "teacher"):
        model = getattr(cfg, role)
        assert {key: getattr(model, key) for key in ARCHITECTURE} == ARCHITECTURE, role
        assert model.init == str(ckpt)
    assert (cfg.student.attention, cfg.teacher.attention) == ("auto", "local")  # not architecture: the config's


def test_a_run_directory_as_init_follows_latest(tmp_path):
    run = tmp_path / "run" / "checkpoints"
    recorded(run / "iter_0000010", **{**ARCHITECTURE, "num_layers": 5})
    (run / "latest").write_text("iter_0000010")
    assert load_config(None, [f"student.init={run}"]).student.num_layers == 5


def test_resolved_equals_written_out_in_full_and_a_resume_sees_no_change(ckpt):
    resolved = load_config(None, [f"student.init={ckpt}", f"teacher.init={ckpt}"]).to_dict()
    full = load_config(None, written_out("student", ckpt) + written_out("teacher", ckpt)).to_dict()
    assert resolved == full
    assert compare_configs(full, resolved) == [] and compare_configs(resolved, full) == []


def test_keys_the_section_sets_may_repeat_the_checkpoint_and_null_means_unset(ckpt):
    cfg = load_config(
        None,
        [
            f"student.init={ckpt}",
            "student.family=qwen2",
            "student.rotary_base=1000000",  # a command-line string, read as the config reads it
            "student.num_query_groups=null",
            "student.add_qkv_bias=None",
        ],
    )
    assert (cfg.student.rotary_base, cfg.student.num_query_groups, cfg.student.add_qkv_bias) == (1e6, 2, True)


def test_a_key_that_contradicts_the_checkpoint_is_refused_naming_both_values(ckpt):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"student.init={ckpt}", "student.hidden_size=128", "student.tie_embeddings=false"])
    message = str(error.value)
    assert "student.hidden_size=128 but the checkpoint has 96" in message, message
    assert "student.tie_embeddings=False but the checkpoint has True" in message, message
    assert str(ckpt) in message and "Remove student.hidden_size, student.tie_embeddings" in message, message
    assert "\n" not in message


def test_an_init_that_is_not_a_checkpoint_is_one_error_naming_the_key(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^student\.init=.*empty: .* is not a taidtron checkpoint"):
        load_config(None, [f"student.init={tmp_path / 'empty'}"])


def test_a_missing_init_is_refused_only_when_the_section_has_nothing_else(tmp_path):
    missing = tmp_path / "not_yet"
    with pytest.raises(ConfigError, match="does not exist, and the student section sets no architecture key"):
        load_config(None, [f"student.init={missing}"])
    # a section of its own: left as written (the checkpoint is checked when the run loads it), e.g. a cluster config
    # planned where its paths do not exist, or the smoke teacher before its pretraining run writes it
    cfg = load_config(None, [f"student.init={missing}", "student.num_layers=4"])
    assert cfg.student.num_layers == 4 and cfg.student.hidden_size == ModelConfig().hidden_size
    cluster = load_config("configs/qwen2_72b_instruct_to_1.5b_instruct.yaml")
    assert (cluster.teacher.num_layers, cluster.student.num_layers) == (80, 28)


def test_the_teacher_of_a_run_without_one_is_not_resolved(tmp_path):
    missing = tmp_path / "not_yet"
    cfg = load_config(None, [f"teacher.init={missing}", "taid.loss=lm"])  # `lm` builds no teacher
    assert cfg.teacher.init == str(missing)
    with pytest.raises(ConfigError, match="teacher section sets no architecture key"):
        load_config(None, [f"teacher.init={missing}"])


def test_resolved_architecture_is_what_a_new_run_records(ckpt, tmp_path):
    from taidtron.config import save_config

    cfg = load_config(None, [f"student.init={ckpt}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert dataclasses.asdict(again.student) == dataclasses.asdict(cfg.student)
