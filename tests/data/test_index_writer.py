"""taidtron's streaming IndexWriter writes the very bytes of megatron-core's IndexedDatasetBuilder, and megatron-core
reads them back."""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from taidtron.data import index_writer
from taidtron.data.index_writer import IndexWriter


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_bytes_equal_megatron_builders_across_index_blocks(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(index_writer, "_BLOCK", 7)  # 100 documents: the index is written in 15 blocks
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 60_000, rng.integers(1, 50)).astype(dtype) for _ in range(100)]

    builder = IndexedDatasetBuilder(str(tmp_path / "megatron.bin"), dtype=dtype)
    for doc in documents:
        builder.add_document(doc, [doc.size])
    builder.finalize(str(tmp_path / "megatron.idx"))

    with open(tmp_path / "ours.bin", "wb") as bin_file, open(tmp_path / "ours.idx", "wb") as idx_file:
        writer = IndexWriter(bin_file, dtype)
        for start in range(0, 100, 30):  # batches of documents, as the tokenizer workers return them
            batch = documents[start : start + 30]
            writer.add_documents(np.concatenate(batch), np.array([d.size for d in batch]))
        writer.write_index(idx_file)
        writer.close()
    assert (writer.documents, writer.tokens) == (100, sum(d.size for d in documents))

    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"megatron{suffix}").read_bytes()
    read = IndexedDataset(str(tmp_path / "ours"))
    assert all(np.array_equal(read[i], doc) for i, doc in enumerate(documents))


def test_lengths_that_do_not_split_the_tokens_are_refused(tmp_path):
    with open(tmp_path / "x.bin", "wb") as f:
        writer = IndexWriter(f, np.uint16)
        with pytest.raises(ValueError, match="do not split 5 tokens"):
            writer.add_documents(np.arange(5), np.array([2, 2]))
        with pytest.raises(ValueError, match="do not split 5 tokens"):
            writer.add_documents(np.arange(5), np.array([5, 0]))
        writer.close()
