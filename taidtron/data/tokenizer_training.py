"""Training a sentencepiece tokenizer on a corpus (`tools/train_tokenizer.py` is its command line); it reads every
format `taidtron.data.sources` reads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from taidtron.data.sources import iter_texts, open_sources

_SP_MAX_SENTENCE_BYTES = 16384


def train_sentencepiece(
    inputs: Sequence[str | os.PathLike],
    out_prefix: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    json_key: str = "text",
    fmt: str = "auto",
    character_coverage: float = 1.0,
    byte_fallback: bool = False,
    normalization: str = "identity",
    max_sentences: int = 0,
    num_threads: int = 1,
) -> Path:
    """Train a sentencepiece model on text/JSONL files; writes `<out_prefix>.model` (+ `.vocab`) and returns it.

    Ids 0..3 are <pad>, <unk>, <s>, </s>; </s> is the end-of-document token; the newline is a piece of its own.
    `normalization="identity"` keeps decode(encode(x)) == x for text whose characters are all covered (add
    `byte_fallback` for arbitrary text); "nmt_nfkc" normalises messy web text (lossy). `max_sentences` > 0
    trains on a random sample of that many documents.
    """
    import sentencepiece

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type={model_type!r}; use bpe or unigram.")
    if vocab_size < 8:
        raise ValueError(f"vocab_size={vocab_size} is too small; use at least a few hundred.")
    open_sources(inputs, fmt)  # fail on a missing or unreadable input before sentencepiece starts
    out_prefix = str(out_prefix).removesuffix(".model")  # sentencepiece appends .model itself
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)

    def sentences():
        # Whole documents, newlines included, so pieces are learned in the context encode() later sees them;
        # documents longer than sentencepiece's sentence limit are cut at line breaks.
        for text in iter_texts(inputs, fmt=fmt, text_key=json_key):
            chunk = ""
            for line in text.splitlines(keepends=True):
                if chunk and len((chunk + line).encode()) > _SP_MAX_SENTENCE_BYTES:
                    yield chunk
                    chunk = ""
                chunk += line
            if chunk.strip():
                yield chunk

    try:
        sentencepiece.SentencePieceTrainer.Train(
            sentence_iterator=sentences(),
            model_prefix=out_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            normalization_rule_name=normalization,
            # lossless with identity: keep runs of spaces, and give the newline a piece of its own
            remove_extra_whitespaces=normalization != "identity",
            user_defined_symbols=["\n"],
            max_sentence_length=_SP_MAX_SENTENCE_BYTES,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=max_sentences > 0,
            num_threads=num_threads,  # 1 keeps training deterministic: the same corpus gives the same file
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ValueError(
            f"sentencepiece training failed: {exc}. A smaller --vocab-size often helps on small corpora."
        ) from None
    return Path(out_prefix + ".model")
