"""Start-up data checks (taidtron/data/validate.py): damaged or mismatched .bin/.idx pairs and data tokenized with
another tokenizer are refused with one message naming the file and the fix, before any model is built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from taidtron.data.indexed import build_indexed_dataset
from taidtron.data.tokenizer import load_tokenizer
from taidtron.data.validate import DataError, check_dataset
from tests.support import run_cli
from tests.train.test_training_run import TINY

SHARES = [0.95, 0.05, 0.0]


@pytest.fixture
def copy_without_meta(tmp_path, smoke_prefix) -> str:
    """The smoke dataset without its .meta.json: what data built by other tools looks like."""
    prefix = tmp_path / "data" / "smoke_text_document"
    prefix.parent.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(smoke_prefix + suffix, str(prefix) + suffix)
    return str(prefix)


def truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def test_the_shipped_dataset_passes_and_is_summarised(smoke_prefix, smoke_tok, copy_without_meta):
    summary = check_dataset(smoke_prefix, smoke_tok, SHARES)
    meta = json.loads(Path(smoke_prefix + ".meta.json").read_text())
    assert (summary.documents, summary.tokens, summary.dtype) == (meta["documents"], meta["tokens"], "uint16")
    assert check_dataset(copy_without_meta, smoke_tok, SHARES) == type(summary)(
        copy_without_meta, summary.documents, summary.tokens, "uint16"
    )  # sampled checks pass too


def test_a_bin_one_percent_short_is_refused_naming_it(copy_without_meta, smoke_tok):
    bin_path = Path(copy_without_meta + ".bin")
    size = bin_path.stat().st_size
    truncate(bin_path, size - size // 100)
    with pytest.raises(
        DataError,
        match=rf"{bin_path} is truncated: .* but smoke_text_document.idx describes "
        rf"{size:,} .*copy both again or rebuild",
    ):
        check_dataset(copy_without_meta, smoke_tok, SHARES)


def test_a_bin_with_extra_bytes_or_from_another_build_is_refused(
    copy_without_meta, tmp_path, smoke_tok, small_jsonl, smoke_tokenizer_path
):
    with open(copy_without_meta + ".bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataError, match="is longer than its index describes"):
        check_dataset(copy_without_meta, smoke_tok, SHARES)
    other = build_indexed_dataset([small_jsonl], tmp_path / "other", smoke_tokenizer_path, progress=False)
    assert other["documents"] > 0
    shutil.copy(tmp_path / "other.idx", copy_without_meta + ".idx")  # an .idx from another build
    with pytest.raises(DataError, match=r"\.bin is longer than its index describes"):
        check_dataset(copy_without_meta, smoke_tok, SHARES)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: truncate(p, p.stat().st_size - 100), r"\.idx is truncated: .* its header describes"),
        (lambda p: truncate(p, 20), r"\.idx is not a megatron index file"),
        (lambda p: p.write_bytes(b"MMIDIDX\0\0" + (2).to_bytes(8, "little") + bytes(17)), r"index version 2"),
        (lambda p: p.unlink(), r"incomplete: .*\.idx not found; build it with tools/preprocess_data.py"),
    ],
)
def test_a_damaged_or_missing_idx_is_refused_naming_it(copy_without_meta, smoke_tok, damage, message):
    damage(Path(copy_without_meta + ".idx"))
    with pytest.raises(DataError, match=message):
        check_dataset(copy_without_meta, smoke_tok, SHARES)


def test_a_corrupt_meta_json_is_refused(copy_without_meta, smoke_tok):
    Path(copy_without_meta + ".meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"meta\.json is unreadable .* delete it"):
        check_dataset(copy_without_meta, smoke_tok, SHARES)


def test_without_meta_a_smaller_vocabulary_is_caught_by_the_token_ids(copy_without_meta, hf_tokenizer_json):
    tok = load_tokenizer(hf_tokenizer_json)  # 600 ids; the data uses ids up to 1023
    with pytest.raises(DataError, match=rf"holds token id \d+, outside the {tok.vocab_size:,} ids of data.tokenizer"):
        check_dataset(copy_without_meta, tok, SHARES)


def test_without_meta_another_tokenizer_of_the_same_size_is_caught_by_the_round_trip(
    copy_without_meta, tmp_path, smoke_texts, smoke_tok
):
    from taidtron.data.tokenizer_training import train_sentencepiece

    # Same corpus, a third of the documents upper-cased: another 1024-piece BPE vocabulary.
    corpus = tmp_path / "other.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": t.upper() if i % 3 == 0 else t}) + "\n" for i, t in enumerate(smoke_texts))
    )
    other = load_tokenizer(train_sentencepiece([corpus], tmp_path / "other", vocab_size=1024))
    assert other.vocab_size == smoke_tok.vocab_size and other.fingerprint() != smoke_tok.fingerprint()
    with pytest.raises(DataError, match=r"does not look tokenized with data.tokenizer .*: only \d+ of 32 sampled"):
        check_dataset(copy_without_meta, other, SHARES)


def test_16_bit_data_is_refused_for_a_vocabulary_that_needs_32_bits(copy_without_meta, tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {f"w{i}": i for i in range(70_000)} | {"</s>": 70_000, "[UNK]": 70_001}
    path = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(path))
    with pytest.raises(DataError, match="stores 16-bit token ids.* has 70,002;"):
        check_dataset(copy_without_meta, load_tokenizer(path), SHARES)


def test_the_trainer_stops_on_a_short_bin_before_building_anything(copy_without_meta, tmp_path):
    bin_path = Path(copy_without_meta + ".bin")
    truncate(bin_path, bin_path.stat().st_size * 99 // 100)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "-m",
        "taidtron.train",
        "--config",
        "configs/smoke.yaml",
        *TINY,
        f"data.blend=[{copy_without_meta}]",
        f"logging.run_dir={run_dir}",
        expect_ok=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{bin_path} is truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "taidtron" in line]) == 1, proc.stderr
    assert not (run_dir / "config.yaml").exists()  # written only once the models are built
