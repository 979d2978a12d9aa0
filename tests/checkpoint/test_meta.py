"""taidtron.json has a schema: `CheckpointMeta` round-trips, every malformed file is a CheckpointError naming the
file, the field and the problem, and format 1 files (written by taidtron before the schema) are migrated on read.

The format 1 files in assets/format_1/ were written by the previous taidtron (commit d75004b) itself: a training
checkpoint (2 steps of a tiny distillation), an import (`tools/convert.py import` of a tiny Qwen2) and
tools/smoke_test.py's teacher after 3 steps (whose `source` is a string)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taidtron import checkpoint
from taidtron.checkpoint import CheckpointError, CheckpointMeta, Layout, TeacherSource, WeightsSource
from taidtron.config import ModelConfig

ASSETS = Path(__file__).with_name("assets") / "format_1"


def write_meta(directory: Path, raw: dict | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / checkpoint.META_FILE).write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return directory


def saved_meta() -> dict:
    """A format 2 file as save_checkpoint writes it."""
    meta = CheckpointMeta(
        model=ModelConfig(family="qwen2", num_layers=2, hidden_size=64, vocab_size=1000),
        padded_vocab_size=1024,
        source=WeightsSource(kind="training", description="a run"),
        tokenizer=checkpoint.TokenizerRef(path="/data/tok.model", fingerprint="ab" * 32),
        seq_length=128,
        teacher=TeacherSource(path="/ckpt/teacher", hash="cd" * 32),
        trainer={"step": 7, "consumed_samples": 28, "taid": {"t": 0.5}, "scheduler": {}},
        config={"seed": 1},
        step=7,
        content_id="0" * 32,
        saved_at="2025-01-01T00:00:00+0000",
        params_dtype="float32",
        layout=Layout(tp=2, pp=1, dp=1),
        has_optimizer=True,
        has_rng=True,
        files={"common.pt": 10},
    )
    return json.loads(meta.to_json())


def test_written_metadata_reads_back_equal(tmp_path):
    raw = saved_meta()
    meta = checkpoint.read_meta(write_meta(tmp_path / "iter_0000007", raw))
    assert json.loads(meta.to_json()) == raw
    assert meta.model.add_qkv_bias is True and meta.layout == Layout(tp=2, pp=1, dp=1)
    assert meta.teacher == TeacherSource(path="/ckpt/teacher", hash="cd" * 32)


def _broken(change) -> dict:
    raw = saved_meta()
    change(raw)
    return raw


@pytest.mark.parametrize(
    "change,needles",
    [
        (lambda m: m.pop("padded_vocab_size"), ["`padded_vocab_size`", "is missing"]),
        (lambda m: m["source"].pop("kind"), ["`source.kind`", "is missing"]),
        (lambda m: m["model"].pop("hidden_size"), ["`model.hidden_size`", "is missing"]),
        (lambda m: m.update(source="tools/smoke_test.py pretraining"), ["`source`", "must be an object", "str"]),
        (lambda m: m.update(step="7"), ["`step`", "must be an integer", "str"]),
        (lambda m: m.update(has_rng=1), ["`has_rng`", "must be true or false"]),
        (lambda m: m["layout"].update(tp=2.0), ["`layout.tp`", "must be an integer", "float"]),
        (lambda m: m["files"].update({"x.distcp": "10"}), ["`files.x.distcp`", "must be an integer"]),
        (lambda m: m.update(teacher={"path": "/t"}), ["`teacher.hash`", "is missing"]),
        (lambda m: m["model"].update(family="mistral"), ["`model`", "mistral"]),
        (lambda m: m["source"].update(kind="download"), ["`source`", "download"]),
        (lambda m: m.update(color="red"), ["`color`", "not a field"]),
    ],
)
def test_malformed_metadata_names_file_field_and_problem(tmp_path, change, needles):
    directory = write_meta(tmp_path / "iter_0000007", _broken(change))
    with pytest.raises(CheckpointError) as info:
        checkpoint.read_meta(directory)
    message = str(info.value)
    assert str(directory / checkpoint.META_FILE) in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    "version,needle",
    [(3, "upgrade taidtron"), (None, "no format_version"), ("2", "format_version '2'"), (True, "format_version True")],
)
def test_unknown_format_version_is_refused(tmp_path, version, needle):
    raw = saved_meta()
    raw["format_version"] = version
    with pytest.raises(CheckpointError, match=needle):
        checkpoint.read_meta(write_meta(tmp_path / "iter_0000007", raw))


def test_a_field_added_to_model_config_later_takes_its_default(tmp_path):
    raw = saved_meta()
    raw["model"].pop("init")  # stands for any ModelConfig field newer than the checkpoint
    assert checkpoint.read_meta(write_meta(tmp_path / "iter_0000007", raw)).model.init is None


# ----------------------------------------------------------------------------------------------------------
# format 1


def _format_1(name: str, tmp_path: Path) -> Path:
    """The asset in an iteration directory named as where it was written (format 1 did not record the step)."""
    step = {"training": 2, "hf_import": 0, "smoke_teacher": 3}[name]
    directory = tmp_path / (checkpoint.iteration_name(step) if step else "qwen2_ckpt")
    return write_meta(directory, (ASSETS / f"{name}.json").read_text())


def test_format_1_training_checkpoint_is_migrated(tmp_path):
    raw = json.loads((ASSETS / "training.json").read_text())
    meta = checkpoint.read_meta(_format_1("training", tmp_path))
    assert meta.format_version == checkpoint.FORMAT_VERSION
    assert meta.source.kind == "training"
    assert meta.trainer == raw["trainer"] and meta.step == raw["trainer"]["step"]
    assert meta.teacher == TeacherSource(**raw["teacher_source"])
    assert meta.tokenizer.path == raw["config"]["data"]["tokenizer"]
    assert meta.tokenizer.fingerprint == raw["tokenizer_fingerprint"]
    assert meta.seq_length == raw["config"]["data"]["seq_length"]
    assert meta.has_optimizer and meta.has_rng and meta.files == raw["files"]
    assert meta.model == ModelConfig(**raw["model"])


def test_format_1_import_is_migrated(tmp_path):
    raw = json.loads((ASSETS / "hf_import.json").read_text())
    meta = checkpoint.read_meta(_format_1("hf_import", tmp_path))
    assert meta.source.kind == "hf_import" and meta.source.path == raw["source"]["path"]
    assert meta.source.hf_config == raw["hf_config"]
    assert meta.content_id == raw["content_id"] and meta.params_dtype == raw["params_dtype"]
    assert not meta.has_optimizer and meta.trainer is None and meta.tokenizer is None and meta.step == 0


def test_format_1_smoke_teacher_with_a_string_source_is_migrated(tmp_path):
    raw = json.loads((ASSETS / "smoke_teacher.json").read_text())
    assert isinstance(raw["source"], str)  # what made `convert.py export` crash before the schema
    meta = checkpoint.read_meta(_format_1("smoke_teacher", tmp_path))
    assert meta.source == WeightsSource(kind="pretraining", description=raw["source"])
    assert meta.step == 3  # from the directory name: format 1 did not record it
    assert meta.tokenizer is None  # format 1 recorded only the fingerprint


def test_format_1_file_without_architecture_says_how_to_recreate_it(tmp_path):
    directory = write_meta(
        tmp_path / "iter_0000000", {"has_optimizer": False, "format_version": 1, "layout": {"tp": 1, "pp": 1, "dp": 1}}
    )
    with pytest.raises(CheckpointError, match="records no model architecture.*Re-create the checkpoint"):
        checkpoint.read_meta(directory)


def test_format_1_with_a_wrong_type_is_still_a_named_error(tmp_path):
    raw = json.loads((ASSETS / "training.json").read_text())
    raw["layout"]["dp"] = "1"
    with pytest.raises(CheckpointError, match="`layout.dp` must be an integer"):
        checkpoint.read_meta(write_meta(tmp_path / "iter_0000002", raw))
