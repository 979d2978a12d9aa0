"""Fixtures of the data tests: the shipped smoke tokenizer/dataset, small corpora, a tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "data" / "smoke"


@pytest.fixture(scope="session")
def smoke_tokenizer_path() -> Path:
    return SMOKE / "tokenizer.model"


@pytest.fixture(scope="session")
def smoke_prefix() -> str:
    return str(SMOKE / "smoke_text_document")


@pytest.fixture(scope="session")
def smoke_tok(smoke_tokenizer_path):
    from taidtron.data.tokenizer import load_tokenizer

    return load_tokenizer(smoke_tokenizer_path)


@pytest.fixture(scope="session")
def smoke_texts() -> list[str]:
    with open(SMOKE / "corpus.jsonl") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture
def small_jsonl(tmp_path, smoke_texts) -> Path:
    """200 smoke documents, one of them empty (must be skipped)."""
    path = tmp_path / "small.jsonl"
    docs = smoke_texts[:100] + [""] + smoke_texts[100:199]
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(docs)))
    return path


@pytest.fixture(scope="session")
def hf_tokenizer_json(tmp_path_factory, smoke_texts) -> Path:
    """A byte-level BPE tokenizer.json trained on the smoke corpus with the `tokenizers` package (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(smoke_texts[:1000], trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tk.save(str(path))
    return path
