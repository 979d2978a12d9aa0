"""The teacher cache on disk: layout, manifest, shard records, id packing and sample digests.

    DIR/
      manifest.json                 `CacheManifest`: what was cached (K, vocabulary, dtype, samples per split, shard
                                    size) and the fingerprints a run is checked against (dataset contents, tokenizer,
                                    teacher checkpoint, seq length, split, seed, blend)
      train-000000.safetensors      samples [0, S) of the train split, S = shard_samples
      train-000000.json             `ShardRecord`: its samples, size and sha256, written after the shard
      ...
      valid-000000.safetensors      samples [0, S) of the valid split (what validation reads)

The index from a global sample number n of a split to its record is arithmetic: shard n // S, row n % S; a shard
counts only once its record is there and agrees with the file (both written atomically, the record last).

A shard is a safetensors file of these tensors (n samples of seq_length tokens):
    log_probs      [n, seq, K]            float16 (or float32): log p_T of the K entries, largest first; for a
                                          full-vocabulary cache (K = vocab_size) every token's, in id order
    ids            [n, seq, K, id_bytes]  uint8: the entries' token ids, little-endian unsigned integers of id_bytes
                                          bytes (absent from a full-vocabulary cache, whose ids are the positions)
    tail           [n, seq]               float32: log of the probability outside the K entries (absent when K = V)
    sample_digest  [n, 16]                uint8: blake2b (16-byte digest) of the sample's seq_length + 1 token ids
                                          (the model input, then its last label) as little-endian int64
Token ids are the tokenizer's (< vocab_size); log-probs are over the true vocabulary (padding columns excluded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taidtron.checkpoint.meta import TeacherSource, TokenizerRef
from taidtron.config import ModelConfig
from taidtron.io import atomic_write_text
from taidtron.schema import Reader

FORMAT = "taidtron-teacher-cache"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "valid")
LOG_PROB_DTYPES = {"float16": np.float16, "float32": np.float32}
DIGEST_BYTES = 16


class CacheError(ValueError):
    """A teacher cache that is missing, incomplete, damaged, or was written for another run."""


@dataclass(frozen=True)
class DataRef:
    """The samples a cache holds: which data, how it is split and shuffled."""

    prefixes: list[str]
    """Blend prefixes as the writer was given them (for people; moved data still matches by content)."""
    contents: list[str]
    """Per prefix: a digest of its .idx bytes and .bin size (`taidtron.data.dataset_content_key`)."""
    weights: list[float] | None
    """Blend weights; None for one unweighted prefix."""
    split: list[float]
    """data.split as normalised train, valid, test shares."""
    seed: int
    """data.seed: the shuffle."""
    seq_length: int
    """Tokens per sample (the model input; each sample's window holds one more)."""


@dataclass(frozen=True)
class CacheManifest:
    """manifest.json: what a cache holds and what it was written from. Written once, before any shard."""

    top_k: int
    """Entries stored per token; equal to vocab_size for a full-vocabulary cache."""
    vocab_size: int
    """The tokenizer's vocabulary: log-probs are normalised over it; ids are below it."""
    id_bytes: int
    """Bytes per stored token id (0 in a full-vocabulary cache, which stores none)."""
    log_prob_dtype: str
    """`float16` or `float32`."""
    shard_samples: int
    """Samples per shard (the last shard of a split may hold fewer)."""
    samples: dict[str, int]
    """Samples per split ({"train": N, "valid": M}): the dataset sizes the writer built megatron's datasets with,
    which fix their shuffle; a run reading the cache builds its datasets with the same."""
    data: DataRef
    tokenizer: TokenizerRef
    teacher: TeacherSource | None
    """The teacher checkpoint (`teacher.init`); None for a randomly initialised teacher."""
    teacher_model: ModelConfig
    """The teacher's architecture (for the banner and the vocabulary padding)."""
    written_with: dict[str, Any] = field(default_factory=dict)
    """How the writer ran (layout, precision, device, command); for people, not part of the fingerprint."""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def full_vocabulary(self) -> bool:
        return self.top_k == self.vocab_size

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"

    def identity(self) -> dict:
        """What makes two caches interchangeable: everything but paths and how the writer ran."""
        record = dataclasses.asdict(self)
        del record["written_with"]
        record["data"].pop("prefixes")
        record["tokenizer"].pop("path")
        if record["teacher"] is not None:
            record["teacher"].pop("path")
        return record

    def fingerprint(self) -> str:
        """sha256 of `identity()`: the cache's content id, recorded in the checkpoints of runs that read it."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()

    def shards(self, split: str) -> int:
        return math.ceil(self.samples.get(split, 0) / self.shard_samples)

    def shard_range(self, split: str, index: int) -> range:
        """The sample numbers shard `index` of `split` holds."""
        first = index * self.shard_samples
        return range(first, min(first + self.shard_samples, self.samples[split]))

    def bytes_per_token(self) -> int:
        """Bytes a token's record takes in a shard (the per-sample digest and the file header aside)."""
        value = np.dtype(LOG_PROB_DTYPES[self.log_prob_dtype]).itemsize
        if self.full_vocabulary:
            return self.top_k * value
        return self.top_k * (value + self.id_bytes) + 4


@dataclass(frozen=True)
class ShardRecord:
    """<split>-<index>.json: one complete shard. Written (atomically) after its .safetensors file."""

    split: str
    index: int
    first_sample: int
    samples: int
    file: str
    """The shard's file name, relative to the cache directory."""
    bytes: int
    sha256: str
    written_at: str
    """Local time, ISO 8601."""
    written_by: str
    """host, process and parallel layout of the writer (for people)."""


def id_bytes_for(vocab_size: int) -> int:
    """Bytes per stored token id: the fewest (at least 2) whose unsigned range holds every id below vocab_size."""
    return max(2, math.ceil((vocab_size - 1).bit_length() / 8))


def pack_ids(ids: np.ndarray, id_bytes: int) -> np.ndarray:
    """ids [...] (non-negative integers) -> [..., id_bytes] uint8, little-endian."""
    wide = np.ascontiguousarray(ids, dtype="<u8")
    return wide.view(np.uint8).reshape(*ids.shape, 8)[..., :id_bytes]


def unpack_ids(packed: np.ndarray) -> np.ndarray:
    """[..., id_bytes] uint8 (little-endian) -> [...] int64."""
    id_bytes = packed.shape[-1]
    wide = np.zeros((*packed.shape[:-1], 8), dtype=np.uint8)
    wide[..., :id_bytes] = packed
    return wide.view("<u8").reshape(packed.shape[:-1]).astype(np.int64)


def sample_digests(windows: np.ndarray) -> np.ndarray:
    """[n, seq + 1] token ids -> [n, 16] uint8: blake2b of each window as little-endian int64."""
    windows = np.ascontiguousarray(windows, dtype="<i8")
    out = np.empty((windows.shape[0], DIGEST_BYTES), dtype=np.uint8)
    for i, row in enumerate(windows):
        out[i] = np.frombuffer(hashlib.blake2b(row.tobytes(), digest_size=DIGEST_BYTES).digest(), dtype=np.uint8)
    return out


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def shard_tensor_shapes(manifest: CacheManifest, samples: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, safetensors dtype) of the tensors a shard of `samples` samples holds."""
    seq, k = manifest.data.seq_length, manifest.top_k
    shapes = {
        "log_probs": ((samples, seq, k), "F16" if manifest.log_prob_dtype == "float16" else "F32"),
        "sample_digest": ((samples, DIGEST_BYTES), "U8"),
    }
    if not manifest.full_vocabulary:
        shapes["ids"] = ((samples, seq, k, manifest.id_bytes), "U8")
        shapes["tail"] = ((samples, seq), "F32")
    return shapes


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---- reading and writing the JSON files ---------------------------------------------------------------------------


def _reader(file: Path) -> Reader:
    def error(where: str, problem: str) -> CacheError:
        return CacheError(
            f"{file}: `{where}` {problem}; the file is damaged or was not written by taidtron.cache_teacher. "
            f"Write the cache again."
        )

    return Reader(error=error, strict=True)


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{file} is unreadable or corrupted ({exc}); write the cache again.") from None


def read_manifest(directory: str | Path) -> CacheManifest:
    """The validated manifest of a cache directory."""
    directory = Path(directory)
    file = directory / MANIFEST_FILE
    if not file.is_file():
        what = "does not exist" if not directory.exists() else f"holds no {MANIFEST_FILE}"
        raise CacheError(
            f"teacher cache {directory} {what}; write one with `python -m taidtron.cache_teacher --config "
            f"<config> --out {directory} --top-k K`, or fix teacher.cache."
        )
    raw = _read_json(file)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CacheError(f"{file} is not a taidtron teacher cache manifest; fix teacher.cache.")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"{file} has format_version {raw.get('format_version')!r}; this taidtron reads version "
            f"{FORMAT_VERSION}. Write the cache again with this taidtron (or use the one that wrote it)."
        )
    manifest = _reader(file).build(CacheManifest, raw)
    problems = []
    if not 1 <= manifest.top_k <= manifest.vocab_size:
        problems.append(f"top_k={manifest.top_k} is outside [1, vocab_size={manifest.vocab_size}]")
    if manifest.log_prob_dtype not in LOG_PROB_DTYPES:
        problems.append(f"log_prob_dtype={manifest.log_prob_dtype!r} is not one of {', '.join(LOG_PROB_DTYPES)}")
    ids_fit = manifest.vocab_size - 1 < 256**manifest.id_bytes
    if manifest.full_vocabulary != (manifest.id_bytes == 0) or (manifest.id_bytes and not ids_fit):
        problems.append(f"id_bytes={manifest.id_bytes} does not fit K={manifest.top_k} of {manifest.vocab_size}")
    counts_valid = set(manifest.samples) <= set(SPLITS) and min(manifest.samples.values(), default=0) >= 0
    if manifest.shard_samples < 1 or not counts_valid:
        problems.append(f"shard_samples={manifest.shard_samples} or samples={manifest.samples} is invalid")
    if problems:
        raise CacheError(f"{file} is inconsistent: {'; '.join(problems)}. Write the cache again.")
    return manifest


def write_manifest(directory: Path, manifest: CacheManifest) -> None:
    atomic_write_text(directory / MANIFEST_FILE, manifest.to_json())


def read_shard_record(directory: Path, split: str, index: int) -> ShardRecord | None:
    """The record of a complete shard, or None when there is none (never written, or the writer died before it)."""
    file = directory / f"{shard_name(split, index)}.json"
    if not file.is_file():
        return None
    return _reader(file).build(ShardRecord, _read_json(file))


def write_shard_record(directory: Path, record: ShardRecord) -> None:
    text = json.dumps(dataclasses.asdict(record), indent=1) + "\n"
    atomic_write_text(directory / f"{shard_name(record.split, record.index)}.json", text)
