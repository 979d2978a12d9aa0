"""`python tools/convert.py export --ckpt runs/smoke/teacher --out X`, the exact command, on a teacher checkpoint
made the way `make smoke-test` makes it: it exits 0 with the teacher and the tokenizer it was trained with, and
transformers' logits equal taidtron's. Also on the format 1 metadata the previous smoke test wrote (`source` a
string: the export crashed with AttributeError and left `.tmp_X` behind), and with a damaged tokenizer (exit 2,
nothing left behind)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from taidtron import checkpoint
from tests.support import REPO_ROOT, run_cli, run_torchrun

from .helpers import CONVERT

PARITY_WORKER = Path(__file__).with_name("parity_worker.py")
FORMAT_1_SMOKE_TEACHER = REPO_ROOT / "tests" / "checkpoint" / "assets" / "format_1" / "smoke_teacher.json"
TEACHER_STEPS = 3


def make_smoke_teacher(run_dir: Path) -> Path:
    """The teacher of `make smoke-test`, shortened to TEACHER_STEPS steps: tools/smoke_test.py's own teacher
    pretraining on configs/smoke.yaml, written to `run_dir`/teacher; returns that path (what `--ckpt` names).

    The one place that knows how the smoke test makes its teacher: the trainer with `taid.loss=lm` and the
    overrides tools/smoke_test.py derives from the config's teacher section; `run_dir`/teacher holds `latest`."""
    teacher = run_dir / "teacher"
    from taidtron.recipes import teacher_pretraining_overrides as pretraining_overrides

    overrides = pretraining_overrides(
        REPO_ROOT / "configs" / "smoke.yaml",
        [f"data.cache_dir={run_dir / 'index_cache'}", "logging.wandb_mode=disabled"],
        teacher,
        run_dir / "teacher_run",
        TEACHER_STEPS,
        3e-3,
    )
    run_cli("-m", "taidtron.train", "--config", "configs/smoke.yaml", *overrides)
    return teacher


@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory) -> Path:
    return make_smoke_teacher(tmp_path_factory.mktemp("workdir") / "runs" / "smoke")


def export_command(workdir: Path, *extra: str, expect_ok: bool = True):
    """The command as a user types it, from the directory holding runs/smoke/teacher."""
    return run_cli(
        str(CONVERT), "export", "--ckpt", "runs/smoke/teacher", "--out", "X", *extra, expect_ok=expect_ok, cwd=workdir
    )


def copy_workdir(smoke_teacher: Path, workdir: Path) -> Path:
    shutil.copytree(smoke_teacher, workdir / "runs" / "smoke" / "teacher")
    return workdir


def test_export_of_the_smoke_teacher_ships_its_tokenizer_and_matches_transformers(smoke_teacher, tmp_path):
    workdir = copy_workdir(smoke_teacher, tmp_path)
    export_command(workdir)
    out = workdir / "X"
    assert sorted(p.name for p in workdir.iterdir()) == ["X", "runs"]  # no .tmp_X
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer_config.json",
    } <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 4 and config["vocab_size"] == 1024

    # The tokenizer the teacher was trained with, declared as the class that reads it. (transformers 5's
    # AutoTokenizer overrides the declared class for model_type qwen2 with its byte-level Qwen2Tokenizer; see
    # docs/checkpoints.md.)
    import sentencepiece
    from transformers import LlamaTokenizer

    trained_with = REPO_ROOT / "data" / "smoke" / "tokenizer.model"
    assert (out / "tokenizer.model").read_bytes() == trained_with.read_bytes()
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    text = "Mia has a red ball. She plays with Tom!"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(trained_with))
    assert LlamaTokenizer.from_pretrained(out)(text)["input_ids"] == sp.encode(text)
    assert config["eos_token_id"] == sp.eos_id()

    (result,) = run_torchrun(PARITY_WORKER, 1, "1", "1", f"{out}:{smoke_teacher}")
    print(result["parity"])
    assert list(result["parity"].values())[0] <= 1e-4


def as_format_1(meta: dict) -> dict:
    """taidtron.json of the smoke teacher as the previous taidtron wrote it (format 1): `source` a string, only the
    tokenizer's fingerprint, no step."""
    return {
        "format_version": 1,
        "has_optimizer": False,
        "has_rng": meta["has_rng"],
        "layout": meta["layout"],
        "model": meta["model"],
        "padded_vocab_size": meta["padded_vocab_size"],
        "tokenizer_fingerprint": meta["tokenizer"]["fingerprint"],
        "source": "tools/smoke_test.py pretraining",
        "content_id": meta["content_id"],
        "saved_at": meta["saved_at"],
        "files": meta["files"],
    }


def test_export_of_a_format_1_smoke_teacher_works_and_leaves_no_temporary_directory(smoke_teacher, tmp_path):
    workdir = copy_workdir(smoke_teacher, tmp_path)
    meta_file = checkpoint.resolve_iteration_dir(workdir / "runs" / "smoke" / "teacher") / checkpoint.META_FILE
    legacy = as_format_1(json.loads(meta_file.read_text()))
    assert legacy.keys() == json.loads(FORMAT_1_SMOKE_TEACHER.read_text()).keys()  # the real format 1 shape
    meta_file.write_text(json.dumps(legacy))
    proc = export_command(workdir)
    assert "AttributeError" not in proc.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["X", "runs"]
    assert (workdir / "X" / "config.json").is_file()
    # format 1 did not record which tokenizer: the export says so instead of guessing
    assert not (workdir / "X" / "tokenizer.model").exists()
    assert "--tokenizer" in proc.stderr, proc.stderr[-2000:]


def test_export_with_a_damaged_tokenizer_exits_2_and_leaves_nothing(smoke_teacher, tmp_path):
    workdir = copy_workdir(smoke_teacher, tmp_path)
    (workdir / "broken.model").write_bytes(b"\n\x05not a sentencepiece model")
    proc = export_command(workdir, "--tokenizer", "broken.model", expect_ok=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "broken.model" in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in workdir.iterdir()) == ["broken.model", "runs"]
