"""Writing megatron-core's indexed dataset (`.bin` + `.idx`, index version 1) in memory that does not grow with the
corpus.

    writer = IndexWriter(bin_file, np.uint16)
    writer.add_documents(tokens, lengths)        # documents back to back, and each one's length
    writer.write_index(idx_file)

The bytes are exactly those of megatron-core's `IndexedDatasetBuilder` (one sequence per document; a test compares
them), but that builder keeps two Python lists entry per document (~72 bytes each) and builds a third at `finalize`:
about 20 GB for the ~190M documents of fineweb-edu-dedup. Here the lengths go to an anonymous scratch file as int32
and the index is written from it in blocks, so memory stays a few MB whatever the number of documents.

`.idx` layout (read back by `taidtron.data.validate.read_index` and megatron-core's `_IndexReader`): the header
`MMIDIDX\\0\\0`, version 1 (<Q), the dtype code (<B), the sequence count and the document count (<Q each); then the
int32 length of every sequence, the int64 byte offset of every sequence in the `.bin`, and the int64 document
boundaries (sequence indices, 0 to N: one sequence per document).
"""

from __future__ import annotations

import struct
import tempfile
from typing import IO

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_HEADER_BYTES = 34  # magic (9), version (8), dtype code (1), sequence count (8), document count (8)
_BLOCK = 1 << 20  # documents per block when writing the index


class IndexWriter:
    """Streams documents into an open `.bin` file object; `write_index` then writes the matching `.idx`."""

    def __init__(self, bin_file: IO[bytes], dtype: type[np.number]) -> None:
        self._bin = bin_file
        self.dtype = np.dtype(dtype)
        self._lengths = tempfile.TemporaryFile(prefix="taidtron-lengths-")  # unlinked already: gone with us
        self.documents = 0
        self.tokens = 0

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents: `tokens` holds them back to back, `lengths` the number of tokens of each."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != tokens.size or (lengths.size and int(lengths.min()) < 1):
            raise ValueError(f"lengths (sum {int(lengths.sum())}) do not split {tokens.size} tokens into documents.")
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.write(lengths.astype(np.int32).tobytes())
        self.documents += lengths.size
        self.tokens += tokens.size

    def write_index(self, idx_file: IO[bytes]) -> None:
        """Write the `.idx` of everything added so far (call once, after the last document)."""
        from megatron.core.datasets.indexed_dataset import DType

        n = self.documents
        idx_file.write(INDEX_HEADER + struct.pack("<QBQQ", 1, DType.code_from_dtype(self.dtype.type), n, n + 1))
        self._lengths.seek(0)
        for _ in range(0, n, _BLOCK):  # sequence lengths, int32
            idx_file.write(self._lengths.read(_BLOCK * 4))
        self._lengths.seek(0)
        offset = 0
        for _ in range(0, n, _BLOCK):  # byte offset of each sequence, int64
            lengths = np.frombuffer(self._lengths.read(_BLOCK * 4), dtype=np.int32).astype(np.int64)
            ends = np.cumsum(lengths) * self.dtype.itemsize + offset
            idx_file.write(np.concatenate([[offset], ends[:-1]]).astype(np.int64).tobytes())
            offset = int(ends[-1])
        for start in range(0, n + 1, _BLOCK):  # document boundaries: document i is sequence i
            idx_file.write(np.arange(start, min(start + _BLOCK, n + 1), dtype=np.int64).tobytes())

    def close(self) -> None:
        self._lengths.close()
