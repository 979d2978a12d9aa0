"""Text -> megatron indexed dataset (`<prefix>.bin` + `<prefix>.idx`), the format megatron-core's GPTDataset reads.

    build_indexed_dataset(["corpus.jsonl"], "data/my_text_document", "tokenizer.model", workers=8)

Inputs are JSONL (one JSON object per line, the document under `json_key`) or plain text, where `text_mode`
decides what a document is: `line` (each non-empty line; the default, like JSONL) or `file` (the whole file).
Every document becomes one sequence: tokenize(text) + [eod]. Empty documents are skipped and counted.

The output is atomic: everything is written under temporary names and renamed at the end, `.idx` last, so a run
that fails or is killed never leaves a dataset under the final prefix (megatron requires both files). A sidecar
`<prefix>.meta.json` records the tokenizer fingerprint so the loader can refuse data tokenized with another one.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from taidtron.data.records import Record, expand_inputs, iter_records, record_text
from taidtron.data.tokenizer import load_tokenizer
from taidtron.lifetime import die_with_parent

META_SUFFIX = ".meta.json"


# ----------------------------------------------------------------------------------------------------------
# Tokenization workers. A module-level tokenizer per process: records cross the pipe, tokenizers do not.

_WORKER: dict = {}


def _init_worker(tokenizer_path: str, eod_token: str | None, json_key: str, dtype_name: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    _WORKER.update(
        tok=load_tokenizer(tokenizer_path, eod_token=eod_token), json_key=json_key, dtype=np.dtype(dtype_name)
    )


def _start_worker(parent_pid: int, *init_args) -> None:
    """Pool initializer: the worker dies with the tokenizing process (a killed parent leaves no idle pool behind)."""
    die_with_parent(parent_pid)
    _init_worker(*init_args)


def _encode(record: Record) -> tuple[np.ndarray | None, int]:
    """(tokenize(text) + [eod] as the on-disk dtype, or None for an empty document; bytes consumed)."""
    text = record_text(record, _WORKER["json_key"])
    if not text.strip():
        return None, record.nbytes
    tok = _WORKER["tok"]
    ids = tok.tokenize(text)
    ids.append(tok.eod)
    return np.asarray(ids, dtype=_WORKER["dtype"]), record.nbytes


def dataset_files(prefix: str | Path) -> tuple[Path, Path, Path]:
    """(.bin, .idx, .meta.json) of a dataset prefix."""
    prefix = str(prefix)
    return Path(prefix + ".bin"), Path(prefix + ".idx"), Path(prefix + META_SUFFIX)


def read_meta(prefix: str | Path) -> dict | None:
    """The sidecar written by `build_indexed_dataset`, or None for datasets built by other tools. Raises ValueError
    naming the file when it exists but is not a JSON object."""
    path = dataset_files(prefix)[2]
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        meta = exc
    if not isinstance(meta, dict):
        raise ValueError(
            f"{path} is unreadable ({meta!s:.80}); delete it (the data is then checked by sampling) or "
            f"rebuild the dataset with tools/preprocess_data.py."
        )
    return meta


def build_indexed_dataset(
    inputs: Sequence[str | Path],
    output_prefix: str | Path,
    tokenizer_path: str | Path,
    *,
    fmt: str = "auto",
    json_key: str = "text",
    text_mode: str = "line",
    workers: int = 1,
    eod_token: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize `inputs` into `<output_prefix>.bin/.idx` (+ `.meta.json`); returns the statistics written there.

    Refuses an existing dataset under `output_prefix` unless `force`. `workers` > 1 tokenizes in that many
    processes; the output is identical to workers=1 (documents keep input order).
    """
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from tqdm import tqdm

    paths = expand_inputs(inputs)
    prefix = str(output_prefix)
    for suffix in (".bin", ".idx"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    bin_path, idx_path, meta_path = dataset_files(prefix)
    existing = [str(p) for p in (bin_path, idx_path, meta_path) if p.exists()]
    if existing and not force:
        raise ValueError(
            f"output {prefix} already exists ({', '.join(existing)}); choose another --output-prefix "
            "or pass --force to overwrite it."
        )
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1.")

    tok = load_tokenizer(tokenizer_path, eod_token=eod_token)  # fail fast, before any worker starts
    dtype = DType.optimal_dtype(tok.vocab_size)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{prefix}.tmp-{os.getpid()}"
    tmp_bin, tmp_idx, tmp_meta = dataset_files(tmp)

    init_args = (str(tokenizer_path), eod_token, json_key, np.dtype(dtype).name)
    records = iter_records(paths, fmt=fmt, text_mode=text_mode)
    total_bytes = sum(os.path.getsize(p) for p in paths)
    stats = {"documents": 0, "tokens": 0, "skipped_empty": 0}
    pool = None
    builder = None
    try:
        builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
        if workers == 1:
            _init_worker(*init_args)
            encoded = map(_encode, records)
        else:
            # fork keeps worker start-up cheap (megatron-core is already imported); the tokenizer is re-loaded
            # in each worker by the initializer.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers, initializer=_start_worker, initargs=(os.getpid(), *init_args))
            encoded = pool.imap(_encode, records, chunksize=64)
        with tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize -> {Path(prefix).name}", disable=not progress
        ) as bar:
            for ids, nbytes in encoded:
                bar.update(nbytes)
                if ids is None:
                    stats["skipped_empty"] += 1
                    continue
                builder.add_document(ids, [ids.size])
                stats["documents"] += 1
                stats["tokens"] += int(ids.size)
        if stats["documents"] == 0:
            raise ValueError(f"no non-empty documents in {', '.join(paths)}; check --json-key / --format.")
        builder.finalize(str(tmp_idx))
        builder = None
        meta = {
            "created_by": "taidtron.data.indexed.build_indexed_dataset",
            "inputs": paths,
            "format": fmt,
            "json_key": json_key,
            "text_mode": text_mode,
            "tokenizer": str(tokenizer_path),
            "tokenizer_fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
            "eod": tok.eod,
            "dtype": np.dtype(dtype).name,
            **stats,
        }
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        # Commit: drop the old .idx first so an interruption can never pair a new .bin with an old .idx;
        # the .idx rename is the commit point (megatron needs both files to open a dataset).
        idx_path.unlink(missing_ok=True)
        os.replace(tmp_meta, meta_path)
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_idx, idx_path)
        return meta
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if builder is not None:
            builder.data_file.close()
        for p in (tmp_bin, tmp_idx, tmp_meta):
            p.unlink(missing_ok=True)
