"""The shared tokenizer: formats, round trips, fingerprints, and the student/teacher check."""

from __future__ import annotations

import shutil

import pytest
from megatron.core.tokenizers import MegatronTokenizerBase

from taidtron.config import DataConfig
from taidtron.data.tokenizer import NO_PAD, check_same_tokenizer, load_shared_tokenizer, load_tokenizer
from taidtron.data.tokenizer_training import train_sentencepiece

TEXT = "Q: Where does Mia live?\nA: Mia lives in Brindle.  Two spaces, 7 plus 5 is 12."


def test_sentencepiece_round_trip_and_special_ids(smoke_tok):
    ids = smoke_tok.tokenize(TEXT)
    assert all(isinstance(i, int) for i in ids) and smoke_tok.eod not in ids
    assert smoke_tok.detokenize(ids) == TEXT
    assert (smoke_tok.vocab_size, smoke_tok.eod, smoke_tok.pad, smoke_tok.bos) == (1024, 3, 0, 2)
    assert smoke_tok.kind == "sentencepiece"
    assert isinstance(smoke_tok, MegatronTokenizerBase)  # what GPTDatasetConfig.tokenizer is typed with


def test_hf_tokenizer_json_round_trip_and_eod_detection(hf_tokenizer_json):
    tok = load_tokenizer(hf_tokenizer_json)
    assert tok.kind == "hf-tokenizers"
    assert tok.detokenize(tok.tokenize(TEXT)) == TEXT
    assert tok.inv_vocab[tok.eod] == "<|endoftext|>" and tok.inv_vocab[tok.pad] == "<|pad|>"
    assert tok.vocab_size == len(tok.vocab)
    # a directory holding tokenizer.json loads the same tokenizer
    assert load_tokenizer(hf_tokenizer_json.parent).fingerprint() == tok.fingerprint()


def test_hf_tokenizer_without_known_eod_needs_eod_token(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2, "<end>": 3}, unk_token="[UNK]")).save(str(path))
    with pytest.raises(ValueError, match="eod_token"):
        load_tokenizer(path)
    tok = load_tokenizer(path, eod_token="<end>")
    assert tok.eod == 3 and tok.pad == NO_PAD


def test_fingerprint_is_equal_for_the_same_vocabulary_at_another_path(smoke_tok, smoke_tokenizer_path, tmp_path):
    copy = tmp_path / "renamed.model"
    shutil.copy(smoke_tokenizer_path, copy)
    other = load_tokenizer(copy)
    assert other.fingerprint() == smoke_tok.fingerprint()
    check_same_tokenizer(smoke_tok, other)  # no error


def test_fingerprint_differs_and_check_same_tokenizer_raises_for_another_vocabulary(smoke_tok, hf_tokenizer_json):
    other = load_tokenizer(hf_tokenizer_json)
    assert other.fingerprint() != smoke_tok.fingerprint()
    with pytest.raises(ValueError, match="student and teacher tokenizers differ.*data.teacher_tokenizer"):
        check_same_tokenizer(smoke_tok, other)


def test_fingerprint_differs_when_only_the_eod_differs(smoke_tokenizer_path, smoke_tok):
    other = load_tokenizer(smoke_tokenizer_path, eod_token="<s>")
    with pytest.raises(ValueError, match="special ids differ"):
        check_same_tokenizer(smoke_tok, other)


def test_load_shared_tokenizer_refuses_a_different_teacher_tokenizer(smoke_tokenizer_path, hf_tokenizer_json):
    same = DataConfig(tokenizer=str(smoke_tokenizer_path), teacher_tokenizer=str(smoke_tokenizer_path))
    assert load_shared_tokenizer(same).vocab_size == 1024
    different = DataConfig(tokenizer=str(smoke_tokenizer_path), teacher_tokenizer=str(hf_tokenizer_json))
    with pytest.raises(ValueError, match="differ"):
        load_shared_tokenizer(different)


def test_missing_file_and_unknown_format_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(ValueError, match="no tokenizer given"):
        load_tokenizer("")
    odd = tmp_path / "vocab.txt"
    odd.write_text("hello world\n")
    with pytest.raises(ValueError, match="unknown tokenizer format"):
        load_tokenizer(odd)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        load_tokenizer(corrupt)
    with pytest.raises(ValueError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path)


def test_train_tokenizer_recreates_the_shipped_smoke_vocabulary(tmp_path, smoke_tok):
    from tools.train_tokenizer import main

    corpus = smoke_tok.path.replace("tokenizer.model", "corpus.jsonl")
    assert main(["--input", corpus, "--vocab-size", "1024", "--out", str(tmp_path / "tok")]) == 0
    assert load_tokenizer(tmp_path / "tok.model").fingerprint() == smoke_tok.fingerprint()


def test_train_sentencepiece_unigram_on_text_gives_requested_vocab(tmp_path, smoke_texts):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(smoke_texts[:400]) + "\n")
    model = train_sentencepiece([text], tmp_path / "uni", vocab_size=300, model_type="unigram")
    tok = load_tokenizer(model)
    assert tok.vocab_size == 300 and tok.eod == 3
    assert tok.detokenize(tok.tokenize(smoke_texts[0])) == smoke_texts[0]
