"""The teacher cache's on-disk format: token ids of any vocabulary round-trip (Qwen2's 152,064 included, which a
17-bit id field cannot hold), a shard written by the writer reads back through the reader, the manifest's
fingerprint ignores paths and changes with what was cached, and the refusal of a cache that does not fit a run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from taidtron.cache.format import (
    CacheError,
    CacheManifest,
    DataRef,
    id_bytes_for,
    pack_ids,
    read_manifest,
    sample_digests,
    unpack_ids,
    write_manifest,
)
from taidtron.cache.reader import open_shard_rows
from taidtron.cache.writer import write_shard
from taidtron.checkpoint.meta import TeacherSource, TokenizerRef
from taidtron.config import ModelConfig

QWEN2_VOCAB = 152_064


@pytest.mark.parametrize(
    ("vocab", "expected"),
    [(1024, 2), (65_536, 2), (65_537, 3), (131_072, 3), (QWEN2_VOCAB, 3), (2**24, 3), (2**24 + 1, 4)],
)
def test_id_width_holds_every_id_of_the_vocabulary(vocab, expected):
    assert id_bytes_for(vocab) == expected
    ids = np.array([0, 1, 255, 256, 2**16 - 1, vocab - 1]) % vocab
    assert np.array_equal(unpack_ids(pack_ids(ids, id_bytes_for(vocab))), ids)


def manifest(tmp_path: Path, *, vocab: int = QWEN2_VOCAB, top_k: int = 32, dtype: str = "float16") -> CacheManifest:
    full = top_k == vocab
    return CacheManifest(
        top_k=top_k,
        vocab_size=vocab,
        id_bytes=0 if full else id_bytes_for(vocab),
        log_prob_dtype=dtype,
        shard_samples=4,
        samples={"train": 10, "valid": 0},
        data=DataRef(
            prefixes=[str(tmp_path / "corpus")],
            contents=["abc"],
            weights=None,
            split=[0.9, 0.1, 0.0],
            seed=3,
            seq_length=5,
        ),
        tokenizer=TokenizerRef(path=str(tmp_path / "tok.model"), fingerprint="f" * 64),
        teacher=TeacherSource(path=str(tmp_path / "teacher"), hash="1" * 64),
        teacher_model=ModelConfig(vocab_size=vocab),
        written_with={"layout": {"tp": 2, "pp": 1}},
    )


def records(m: CacheManifest, samples: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Synthetic records of `samples` samples: ids spread over the whole vocabulary, its last id included."""
    rng = np.random.default_rng(seed)
    seq, k = m.data.seq_length, m.top_k
    windows = rng.integers(0, m.vocab_size, (samples, seq + 1))
    log_probs = -np.sort(rng.exponential(3.0, (samples, seq, k)), axis=-1).astype(np.float16)
    out = {"log_probs": log_probs, "sample_digest": sample_digests(windows)}
    if not m.full_vocabulary:
        ids = rng.integers(0, m.vocab_size, (samples, seq, k))
        ids[0, 0, 0] = m.vocab_size - 1
        out["ids"] = pack_ids(ids, m.id_bytes)
        out["tail"] = rng.normal(-5.0, 1.0, (samples, seq)).astype(np.float32)
    return out, windows


def test_a_152064_token_vocabulary_round_trips_through_a_shard(tmp_path):
    m = manifest(tmp_path)
    write_manifest(tmp_path, m)
    rows, windows = records(m, 4)
    write_shard(tmp_path, m, "train", 0, [rows], written_by="test")
    assert read_manifest(tmp_path) == m
    read = open_shard_rows(tmp_path, m, "train", columns=slice(0, m.vocab_size))
    for picked in (np.arange(0, 4), np.array([0]), np.array([2, 3])):
        out = read(
            {
                "sample_index": torch.from_numpy(picked),
                "tokens": torch.from_numpy(windows[picked, :-1]),
                "labels": torch.from_numpy(windows[picked, 1:]),
            }
        )
        assert torch.equal(out["teacher_ids"].long(), torch.from_numpy(unpack_ids(rows["ids"][picked])))
        assert torch.equal(out["teacher_log_probs"], torch.from_numpy(rows["log_probs"][picked]))
        assert torch.equal(out["teacher_tail"], torch.from_numpy(rows["tail"][picked]))
    assert (
        read(
            {
                "sample_index": torch.tensor([0]),
                "tokens": torch.from_numpy(windows[:1, :-1]),
                "labels": torch.from_numpy(windows[:1, 1:]),
            }
        )["teacher_ids"][0, 0, 0]
        == QWEN2_VOCAB - 1
    )


def test_a_sample_whose_tokens_differ_from_the_stored_digest_is_refused(tmp_path):
    m = manifest(tmp_path)
    rows, windows = records(m, 4)
    write_shard(tmp_path, m, "train", 0, [rows], written_by="test")
    read = open_shard_rows(tmp_path, m, "train", columns=slice(0, m.vocab_size))
    windows[1, 3] += 1
    batch = {
        "sample_index": torch.arange(0, 2),
        "tokens": torch.from_numpy(windows[:2, :-1]),
        "labels": torch.from_numpy(windows[:2, 1:]),
    }
    with pytest.raises(CacheError, match="train sample 1 is not the sample"):
        read(batch)


def test_bytes_per_token_counts_what_a_shard_stores(tmp_path):
    for top_k, expected in ((8, 8 * 5 + 4), (32, 32 * 5 + 4), (128, 128 * 5 + 4), (QWEN2_VOCAB, 2 * QWEN2_VOCAB)):
        assert manifest(tmp_path, top_k=top_k).bytes_per_token() == expected


def test_fingerprint_ignores_paths_and_how_it_was_written_but_not_what_was_cached(tmp_path):
    m = manifest(tmp_path)
    moved = dataclasses.replace(
        m,
        data=dataclasses.replace(m.data, prefixes=["/elsewhere/corpus"]),
        tokenizer=TokenizerRef(path="/elsewhere/tok.model", fingerprint=m.tokenizer.fingerprint),
        teacher=TeacherSource(path="/elsewhere/teacher", hash=m.teacher.hash),
        written_with={"layout": {"tp": 8, "pp": 2}},
    )
    assert moved.fingerprint() == m.fingerprint()
    for other in (
        dataclasses.replace(m, top_k=8),
        dataclasses.replace(m, log_prob_dtype="float32"),
        dataclasses.replace(m, data=dataclasses.replace(m.data, seed=4)),
        dataclasses.replace(m, teacher=None),
    ):
        assert other.fingerprint() != m.fingerprint()


def test_a_damaged_manifest_is_refused_with_one_line(tmp_path):
    write_manifest(tmp_path, manifest(tmp_path))
    text = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(text.replace('"top_k": 32', '"top_k": "32"'))
    with pytest.raises(CacheError, match="top_k.*must be an integer") as info:
        read_manifest(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(CacheError, match="write one with"):
        read_manifest(tmp_path / "absent")
