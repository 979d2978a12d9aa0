"""Start-up checks of the data blend, before any model is built: every mistake found here would otherwise surface
minutes or hours later, deep inside megatron-core, or never.

    summaries = check_blend(data_cfg, tokenizer)     # DataError (a ValueError) naming the file and the fix

For each blend prefix:

- files: `<prefix>.bin` and `<prefix>.idx` exist;
- index: the `.idx` parses (megatron's header, version 1, a known dtype) and is exactly as long as its header says;
- bytes: the `.bin` holds exactly the bytes the `.idx` describes (the end of its last sequence), and sampled
  sequences start where the previous one ends;
- tokenizer: the fingerprint in `<prefix>.meta.json` (written by tools/preprocess_data.py) equals the tokenizer's,
  and so does the BOS choice recorded there: where the tokenizer's config states one (`Tokenizer.bos_default`), data
  tokenized the other way is refused, since the trained model would then see a document start its tokenizer never
  produces at inference (a bare sentencepiece model states none, and either choice is accepted).
  Without that file (data built by other tools; its BOS choice is then not checked) the data is compared with the
  tokenizer by sampling: the dtype must fit the vocabulary (megatron stores ids of vocabularies below 65,500 as
  uint16), sampled token ids must lie inside it, and sampled documents (less a leading BOS) must come back unchanged
  through decode then encode (a different vocabulary breaks most of them: on the smoke data, 5 of 32 with another
  1024-piece BPE tokenizer, 32 of 32 with the right one);
- split: every part that `data.split` gives a share keeps at least one document.

Cost is independent of the data size: a few reads of the `.idx` header and tail, ~256 sampled pointers, and ~32
documents plus 64 windows of 4,096 tokens of the `.bin`. Not checked: every token (that would read the whole
dataset), nor two tokenizers that differ only in ids the samples do not use.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taidtron.data.index_writer import INDEX_HEADER, INDEX_HEADER_BYTES
from taidtron.data.indexed import dataset_files, read_meta
from taidtron.data.tokenizer import Tokenizer

_DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}  # megatron.core.datasets.indexed_dataset.DType
_UINT16_VOCAB_LIMIT = 65500  # DType.optimal_dtype: uint16 below this many ids, int32 from it
_POINTER_SAMPLES = 256
_ROUND_TRIP_DOCUMENTS = 32
_ROUND_TRIP_TOKENS = 512
_ROUND_TRIP_MARGIN = 8  # tokens ignored at the cut of a truncated document (its last word may re-encode differently)
_ROUND_TRIP_MIN_SHARE = 0.5
_ID_WINDOWS, _ID_WINDOW_TOKENS = 64, 4096


class DataError(ValueError):
    """A dataset or tokenizer problem the user must fix."""


@dataclass(frozen=True)
class DatasetSummary:
    """What the start-up banner reports for one blend prefix."""

    prefix: str
    documents: int
    tokens: int
    dtype: str


@dataclass(frozen=True)
class _Index:
    dtype: np.dtype
    sequences: int
    lengths: np.ndarray  # [sequences] int32, memory-mapped
    pointers: np.ndarray  # [sequences] int64 byte offsets into the .bin, memory-mapped


def parse_blend(blend: list[Any]) -> tuple[list[str], list[float] | None]:
    """`[prefix, ...]` or `[w1, prefix1, w2, prefix2, ...]` -> (prefixes, weights or None)."""
    if not blend:
        raise ValueError(
            "data.blend is empty; set it to a dataset prefix built by tools/preprocess_data.py, "
            "e.g. data.blend=[data/smoke/smoke_text_document]."
        )
    if len(blend) == 1:
        return [str(blend[0])], None
    if len(blend) % 2:
        raise ValueError(f"data.blend={blend} must alternate weight and prefix: [w1, p1, w2, p2, ...].")
    weights, prefixes = [], []
    for w, p in zip(blend[0::2], blend[1::2]):
        try:
            weight = float(w)
        except (TypeError, ValueError):
            raise ValueError(
                f"data.blend weight {w!r} (before {p!r}) is not a number; the blend must alternate "
                "weight and prefix: [w1, p1, w2, p2, ...]."
            ) from None
        if weight <= 0:
            raise ValueError(f"data.blend weight {w!r} for {p!r} must be > 0.")
        weights.append(weight)
        prefixes.append(str(p))
    return prefixes, weights


def parse_split(split: str) -> list[float]:
    """ "98,2,0" -> normalized [train, valid, test] shares, as megatron-core reads it."""
    parts = [s for s in re.split(r"[,/ ]+", str(split).strip()) if s]
    try:
        values = [float(s) for s in parts]
    except ValueError:
        raise ValueError(f"data.split={split!r} must be up to three numbers, e.g. '98,2,0'.") from None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0 or values[0] <= 0:
        raise ValueError(
            f"data.split={split!r} must be up to three non-negative numbers with a positive train share, e.g. '98,2,0'."
        )
    values += [0.0] * (3 - len(values))
    return [v / sum(values) for v in values]


def check_blend(data_cfg: Any, tokenizer: Tokenizer) -> list[DatasetSummary]:
    """Check every prefix of `data_cfg.blend` against the files and `tokenizer`; one summary per prefix."""
    prefixes, _ = parse_blend(data_cfg.blend)
    shares = parse_split(data_cfg.split)
    return [check_dataset(prefix, tokenizer, shares) for prefix in prefixes]


def check_dataset(prefix: str, tokenizer: Tokenizer, shares: list[float]) -> DatasetSummary:
    bin_path, idx_path, _ = dataset_files(prefix)
    missing = [str(p) for p in (bin_path, idx_path) if not p.is_file()]
    if missing:
        raise DataError(
            f"dataset {prefix} is incomplete: {' and '.join(missing)} not found; build it with "
            f"tools/preprocess_data.py or fix data.blend (prefixes are paths without .bin/.idx)."
        )
    index = read_index(idx_path)
    _check_bin_size(bin_path, idx_path, index)
    _check_tokenizer(prefix, bin_path, index, tokenizer)
    _check_split(prefix, index.sequences, shares)
    itemsize = index.dtype.itemsize
    return DatasetSummary(
        prefix=prefix, documents=index.sequences, tokens=bin_path.stat().st_size // itemsize, dtype=index.dtype.name
    )


def read_index(idx_path: Path) -> _Index:
    """Parse a megatron `.idx` (header, sequence lengths and pointers), checking that it is complete."""
    size = idx_path.stat().st_size
    with open(idx_path, "rb") as f:
        head = f.read(INDEX_HEADER_BYTES)
    rebuild = "rebuild the dataset with tools/preprocess_data.py or copy it again"
    if len(head) < INDEX_HEADER_BYTES or head[:9] != INDEX_HEADER:
        raise DataError(
            f"{idx_path} is not a megatron index file ({size} bytes, it must start with {INDEX_HEADER!r}); {rebuild}."
        )
    version, code, sequences, boundaries = struct.unpack_from("<QBQQ", head, 9)
    if version != 1 or code not in _DTYPES:
        raise DataError(
            f"{idx_path} has index version {version} and dtype code {code}; megatron-core reads version 1 "
            f"with codes {sorted(_DTYPES)}; {rebuild}."
        )
    expected = INDEX_HEADER_BYTES + sequences * (4 + 8) + boundaries * 8
    if size not in (expected, expected + sequences):  # + one mode byte per sequence in multimodal datasets
        state = "truncated" if size < expected else "longer than its header says"
        raise DataError(
            f"{idx_path} is {state}: {size:,} bytes, its header describes {expected:,} ({sequences:,} "
            f"sequences); {rebuild}."
        )
    if sequences == 0:
        raise DataError(f"{idx_path} describes no documents; rebuild the dataset from non-empty input.")
    lengths = np.memmap(idx_path, dtype=np.int32, mode="r", offset=INDEX_HEADER_BYTES, shape=(sequences,))
    pointers = np.memmap(
        idx_path, dtype=np.int64, mode="r", offset=INDEX_HEADER_BYTES + 4 * sequences, shape=(sequences,)
    )
    return _Index(dtype=np.dtype(_DTYPES[code]), sequences=sequences, lengths=lengths, pointers=pointers)


def _check_bin_size(bin_path: Path, idx_path: Path, index: _Index) -> None:
    itemsize = index.dtype.itemsize
    end = int(index.pointers[-1]) + int(index.lengths[-1]) * itemsize
    size = bin_path.stat().st_size
    if size != end:
        state = "truncated" if size < end else "longer than its index describes"
        raise DataError(
            f"{bin_path} is {state}: {size:,} bytes, but {idx_path.name} describes {end:,} "
            f"({end // itemsize:,} tokens); the .bin and .idx must come from the same build: copy both "
            f"again or rebuild with tools/preprocess_data.py."
        )
    rng = np.random.default_rng(0)
    sampled = np.unique(np.concatenate([[0], rng.integers(0, index.sequences - 1, _POINTER_SAMPLES)]))
    sampled = sampled[sampled < index.sequences - 1]
    starts = index.pointers[sampled]
    ends = starts + index.lengths[sampled].astype(np.int64) * itemsize
    if int(index.pointers[0]) != 0 or np.any(index.lengths[sampled] < 0) or np.any(ends != index.pointers[sampled + 1]):
        raise DataError(
            f"{idx_path} is corrupted: its sequences do not follow one another in {bin_path.name}; "
            f"rebuild the dataset with tools/preprocess_data.py."
        )


def _check_tokenizer(prefix: str, bin_path: Path, index: _Index, tokenizer: Tokenizer) -> None:
    meta = read_meta(prefix)
    fingerprint = (meta or {}).get("tokenizer_fingerprint")
    fix = f"tokenize the data with data.tokenizer ({tokenizer.path}), or set data.tokenizer to the one it was made with"
    if fingerprint is not None:
        if fingerprint != tokenizer.fingerprint():
            raise DataError(
                f"dataset {prefix} was tokenized with {meta.get('tokenizer')} (fingerprint "
                f"{fingerprint[:12]}), not with data.tokenizer {tokenizer.path} "
                f"({tokenizer.fingerprint()[:12]}); {fix}."
            )
        _check_bos(prefix, meta, tokenizer)
        return  # the fingerprint settles the vocabulary
    vocab = tokenizer.vocab_size
    if index.dtype == np.uint16 and vocab >= _UINT16_VOCAB_LIMIT:
        raise DataError(
            f"dataset {prefix} stores 16-bit token ids, so it was tokenized with a vocabulary of fewer "
            f"than {_UINT16_VOCAB_LIMIT:,} tokens, but data.tokenizer {tokenizer.path} has {vocab:,}; "
            f"{fix}."
        )
    if bin_path.stat().st_size == 0:
        raise DataError(f"{bin_path} holds no tokens; rebuild the dataset from non-empty input.")
    tokens = np.memmap(bin_path, dtype=index.dtype, mode="r")
    rng = np.random.default_rng(0)
    starts = rng.integers(0, max(1, len(tokens) - _ID_WINDOW_TOKENS), _ID_WINDOWS)
    windows = np.concatenate([tokens[s : s + _ID_WINDOW_TOKENS] for s in starts])
    low, high = int(windows.min()), int(windows.max())
    if low < 0 or high >= vocab:
        raise DataError(
            f"dataset {prefix} holds token id {high if high >= vocab else low}, outside the "
            f"{vocab:,} ids of data.tokenizer {tokenizer.path}; {fix}."
        )
    documents = rng.choice(index.sequences, min(_ROUND_TRIP_DOCUMENTS, index.sequences), replace=False)
    survived = 0
    for doc in documents:
        start = int(index.pointers[doc]) // index.dtype.itemsize
        length = int(index.lengths[doc])
        ids = tokens[start : start + min(length, _ROUND_TRIP_TOKENS)].tolist()
        if length <= _ROUND_TRIP_TOKENS and ids and ids[-1] == tokenizer.eod:
            ids = ids[:-1]
        if ids and ids[0] == tokenizer.bos:  # documents built with BOS: decode drops it, encode never adds it
            ids = ids[1:]
        keep = len(ids) if length <= _ROUND_TRIP_TOKENS else len(ids) - _ROUND_TRIP_MARGIN
        survived += tokenizer.tokenize(tokenizer.detokenize(ids))[:keep] == ids[:keep]
    if survived < _ROUND_TRIP_MIN_SHARE * len(documents):
        raise DataError(
            f"dataset {prefix} does not look tokenized with data.tokenizer {tokenizer.path}: only "
            f"{survived} of {len(documents)} sampled documents come back unchanged through its decode "
            f"and encode (it has no {Path(prefix).name}.meta.json to compare fingerprints); {fix}."
        )


def _check_bos(prefix: str, meta: dict, tokenizer: Tokenizer) -> None:
    """The BOS choice recorded in the dataset's .meta.json agrees with what data.tokenizer's config states."""
    added = bool(meta.get("bos", False))  # datasets built before --bos existed have no BOS
    how = meta.get("bos_source", "built before --bos existed")
    default = tokenizer.bos_default
    if added and meta.get("bos_id") != tokenizer.bos:
        raise DataError(
            f"dataset {prefix} starts its documents with token id {meta.get('bos_id')} as BOS ({how}), but "
            f"data.tokenizer {tokenizer.path} has BOS id {tokenizer.bos}; rebuild it with tools/preprocess_data.py."
        )
    if default.stated and added != default.add:
        data = "starts every document with BOS" if added else "has no BOS before its documents"
        wants = "adds one" if default.add else "adds none"
        raise DataError(
            f"dataset {prefix} {data} ({how}), but data.tokenizer {tokenizer.path} {wants} ({default.source}); "
            f"rebuild it with tools/preprocess_data.py {'--bos' if default.add else '--no-bos'}, or make the "
            "tokenizer's config say what you want (it governs inference too)."
        )


def _check_split(prefix: str, documents: int, shares: list[float]) -> None:
    bounds = [0.0]
    for share in shares:
        bounds.append(bounds[-1] + share)
    for name, beg, end in zip(("train", "valid", "test"), bounds[:-1], bounds[1:]):
        # megatron-core rounds the split bookends to documents the same way
        if end > beg and int(round(end * documents)) <= int(round(beg * documents)):
            raise DataError(
                f"dataset {prefix} has {documents} documents, so data.split leaves its {name} part "
                f"empty; use more data or change data.split."
            )
