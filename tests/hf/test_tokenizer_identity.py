"""The tokenizer travels with an import: `tools/convert.py import` records the fingerprint of the Hugging Face
folder's tokenizer (tokenizer.json, else tokenizer.model; `--tokenizer` names another), the same fingerprint the data
pipeline computes for `data.tokenizer`, so a tokenizer.json holding the smoke vocabulary equals the smoke
sentencepiece model. A folder without a tokenizer is recorded as `unknown`, and the import says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from taidtron import checkpoint
from taidtron.data.tokenizer import load_tokenizer
from tests.support import run_cli

from .helpers import CONVERT, make_qwen2

SMOKE_TOKENIZER = Path("data/smoke/tokenizer.model")


def smoke_vocabulary_as_tokenizer_json(out: Path, *, reorder: bool = False) -> Path:
    """A Hugging Face tokenizer.json (a `tokenizers` Unigram model) with the smoke sentencepiece model's pieces and
    scores: the same vocabulary in another format. `reorder`: the same pieces and special ids, the ordinary pieces in
    reverse order, i.e. another tokenizer of exactly the same size, whose ids name other tokens."""
    import sentencepiece
    from tokenizers import Tokenizer, models

    sp = sentencepiece.SentencePieceProcessor(model_file=str(SMOKE_TOKENIZER))
    pieces = [(sp.IdToPiece(i), sp.GetScore(i)) for i in range(sp.GetPieceSize())]
    if reorder:  # the special pieces lead (ids 0-3 here) and keep their ids
        first = next(i for i in range(len(pieces)) if not (sp.IsControl(i) or sp.IsUnknown(i)))
        pieces = pieces[:first] + pieces[first:][::-1]
    Tokenizer(models.Unigram(pieces, unk_id=sp.unk_id())).save(str(out))
    return out


def import_cmd(hf: Path, out: Path, *extra: str, expect_ok: bool = True):
    return run_cli(
        str(CONVERT), "import", "--hf", str(hf), "--out", str(out), "--no-progress", *extra, expect_ok=expect_ok
    )


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> Path:
    """A tiny Qwen2 (vocabulary 1024, the smoke tokenizer's) saved by transformers, without tokenizer files."""
    return make_qwen2(tmp_path_factory.mktemp("tok_identity") / "qwen2")


def with_files(hf_model: Path, where: Path, **files: Path) -> Path:
    """A copy of `hf_model` with tokenizer files added (name -> source)."""
    shutil.copytree(hf_model, where)
    for name, source in files.items():
        shutil.copy(source, where / name.replace("_", "."))
    return where


def test_the_smoke_vocabulary_as_tokenizer_json_has_the_fingerprint_of_the_sentencepiece_model(tmp_path):
    as_json = load_tokenizer(smoke_vocabulary_as_tokenizer_json(tmp_path / "tokenizer.json"))
    reordered = load_tokenizer(smoke_vocabulary_as_tokenizer_json(tmp_path / "other.json", reorder=True))
    smoke = load_tokenizer(SMOKE_TOKENIZER)
    assert as_json.kind == "hf-tokenizers" and as_json.fingerprint() == smoke.fingerprint()
    assert reordered.vocab_size == smoke.vocab_size and reordered.fingerprint() != smoke.fingerprint()


def test_import_records_the_folders_tokenizer(hf_model, tmp_path):
    smoke = load_tokenizer(SMOKE_TOKENIZER).fingerprint()
    json_file = smoke_vocabulary_as_tokenizer_json(tmp_path / "tokenizer.json")
    other = smoke_vocabulary_as_tokenizer_json(tmp_path / "other.json", reorder=True)
    cases = {
        "model": (with_files(hf_model, tmp_path / "hf_model", tokenizer_model=SMOKE_TOKENIZER), smoke),
        "json": (with_files(hf_model, tmp_path / "hf_json", tokenizer_json=json_file), smoke),
        # both present: tokenizer.json first, as data.tokenizer=<folder> reads it
        "both": (
            with_files(hf_model, tmp_path / "hf_both", tokenizer_json=other, tokenizer_model=SMOKE_TOKENIZER),
            load_tokenizer(other).fingerprint(),
        ),
    }
    for name, (hf, fingerprint) in cases.items():
        proc = import_cmd(hf, tmp_path / f"ckpt_{name}")
        meta = checkpoint.read_meta(tmp_path / f"ckpt_{name}")
        assert meta.tokenizer == checkpoint.TokenizerRef(path=str(hf.resolve()), fingerprint=fingerprint), name
        assert f"tokenizer {hf.resolve()} (fingerprint {fingerprint[:12]}) recorded" in proc.stdout, name


def test_an_import_without_a_tokenizer_records_unknown_and_says_so(hf_model, tmp_path):
    proc = import_cmd(hf_model, tmp_path / "ckpt")
    meta = checkpoint.read_meta(tmp_path / "ckpt")
    assert meta.tokenizer == checkpoint.TokenizerRef.unknown(hf_model) and not meta.tokenizer.known
    (note,) = [line for line in proc.stderr.splitlines() if line.startswith("convert: note:")]
    assert f"{hf_model} holds no tokenizer.json or tokenizer.model" in note and "--tokenizer" in note


def test_the_tokenizer_option_names_one_and_a_wrong_one_is_refused(hf_model, tmp_path):
    import_cmd(hf_model, tmp_path / "named", "--tokenizer", str(SMOKE_TOKENIZER))
    recorded = checkpoint.read_meta(tmp_path / "named").tokenizer
    assert recorded == checkpoint.TokenizerRef.of(SMOKE_TOKENIZER, load_tokenizer(SMOKE_TOKENIZER).fingerprint())

    missing = import_cmd(hf_model, tmp_path / "o1", "--tokenizer", str(tmp_path / "nowhere"), expect_ok=False)
    # a tokenizer with more tokens than the model has rows cannot be the model's
    big = tmp_path / "big"
    from taidtron.data.tokenizer_training import train_sentencepiece

    big_tokenizer = train_sentencepiece(["data/smoke/corpus.jsonl"], big, vocab_size=1100, max_sentences=1000)
    too_big = import_cmd(hf_model, tmp_path / "o2", "--tokenizer", str(big_tokenizer), expect_ok=False)
    for proc, needle in ((missing, "does not exist"), (too_big, "has 1100 tokens, more than the model's vocabulary")):
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("convert: error: --tokenizer" if proc is missing else "convert: error: the tokenizer")
        assert needle in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
