"""What a start checks of its `teacher.init` / `student.init` checkpoints before anything is built, through
`python -m taidtron.train`: the tokenizer the checkpoint records (an import's is its Hugging Face folder's) must be
`data.tokenizer`, and its vocabulary must be the config's `vocab_size` (padding is the only difference allowed).
Each refusal is one line and exit code 2, and nothing is written; a tokenizer an import could not record is said in
the start-up banner."""

from __future__ import annotations

from pathlib import Path

import pytest

from taidtron import checkpoint
from taidtron.data.tokenizer import load_tokenizer
from tests.hf.helpers import import_cli, make_qwen2
from tests.hf.test_tokenizer_identity import SMOKE_TOKENIZER, smoke_vocabulary_as_tokenizer_json

from .helpers import run_train, train_args


def refusal(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # "taidtron: error: ..." or "taidtron: configuration error: ..."
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("taidtron: ") and "error: " in line]
    print(line)
    return line


@pytest.fixture(scope="module")
def imports(tmp_path_factory) -> dict[str, Path]:
    """Imports of tiny Qwen2 models whose folders hold the smoke vocabulary as tokenizer.json, another tokenizer of
    the same size (the same pieces, other ids), and a 1,500-token model without a tokenizer."""
    root = tmp_path_factory.mktemp("init_checks")
    same, other = make_qwen2(root / "hf_same"), make_qwen2(root / "hf_other")
    smoke_vocabulary_as_tokenizer_json(same / "tokenizer.json")
    smoke_vocabulary_as_tokenizer_json(other / "tokenizer.json", reorder=True)
    return {
        "same": import_cli(same, root / "same"),
        "other": import_cli(other, root / "other"),
        "v1500": import_cli(make_qwen2(root / "hf_1500", vocab_size=1500), root / "v1500"),
    }


def test_a_teacher_of_another_tokenizer_is_refused_before_anything_is_built(imports, tmp_path):
    run = tmp_path / "run"
    line = refusal(run_train(train_args(run, imports["other"]), expect_ok=False))
    ours = load_tokenizer(SMOKE_TOKENIZER).fingerprint()
    theirs = checkpoint.read_meta(imports["other"]).tokenizer.fingerprint
    assert f"teacher.init {imports['other']} was trained with the tokenizer" in line
    assert ours[:12] in line and theirs[:12] in line  # both named
    assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()  # nothing built or written


def test_the_same_vocabulary_in_a_tokenizer_json_is_the_same_tokenizer(imports):
    meta = checkpoint.read_meta(imports["same"])
    data_tokenizer = checkpoint.TokenizerRef.of(SMOKE_TOKENIZER, load_tokenizer(SMOKE_TOKENIZER).fingerprint())
    checkpoint.check_tokenizer(meta, "teacher.init", data_tokenizer)  # no error: the fingerprints are equal
    assert meta.tokenizer.fingerprint == data_tokenizer.fingerprint


def test_a_vocabulary_other_than_the_configs_is_refused_both_ways(imports, teacher_ckpt, tmp_path):
    # Through the command line the config's architecture, resolved against the init checkpoint before anything is
    # built (taidtron/architecture.py), refuses it first, with both numbers.
    # a 1,500-token teacher under teacher.vocab_size=2000: both pad to whole multiples of 128 and loaded silently
    args = train_args(tmp_path / "larger", imports["v1500"], "teacher.vocab_size=2000", "student.vocab_size=2000")
    line = refusal(run_train(args, expect_ok=False))
    assert "teacher.vocab_size=2000 but the checkpoint has 1500" in line
    # a 1,024-token teacher under teacher.vocab_size=1000: 1000 pads to the same 1024 rows, so it loaded too
    line = refusal(
        run_train(train_args(tmp_path / "smaller", teacher_ckpt, "teacher.vocab_size=1000"), expect_ok=False)
    )
    assert "teacher.vocab_size=1000 but the checkpoint has 1024" in line
    assert not (tmp_path / "larger" / "config.yaml").exists()  # nothing built or written

    # The check at load time (build_trainer, the Checkpointer), for what reaches it without the config's resolution
    # (a trainer built in-process, a resumed student): the true vocabulary against the config's, padding aside.
    meta = checkpoint.read_meta(imports["v1500"])
    checkpoint.check_vocabulary(meta, 1500, "teacher.init", "teacher.vocab_size")  # equal: no error
    for config_vocab in (2000, 1400):
        with pytest.raises(checkpoint.CheckpointError) as refused:
            checkpoint.check_vocabulary(meta, config_vocab, "teacher.init", "teacher.vocab_size")
        message = str(refused.value)
        assert f"a vocabulary of 1500 tokens (padded to 1536 rows), but teacher.vocab_size={config_vocab}" in message
        assert "Set teacher.vocab_size=1500" in message


def test_an_import_without_a_tokenizer_trains_and_the_banner_says_it_was_not_checked(teacher_ckpt, tmp_path):
    assert not checkpoint.read_meta(teacher_ckpt).tokenizer.known
    proc = run_train(train_args(tmp_path / "run", teacher_ckpt, "optim.train_steps=2"))
    (note,) = [line for line in proc.stdout.splitlines() if line.startswith("not checked")]
    assert f"teacher.init {teacher_ckpt} records no tokenizer" in note and "--tokenizer" in note
