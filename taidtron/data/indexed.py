"""Corpus -> megatron indexed dataset (`<prefix>.bin` + `<prefix>.idx`), the format megatron-core's GPTDataset reads.

    build_indexed_dataset(["train-00000-of-00234.parquet"], "data/my_text_document", "tokenizer.json", workers=8)

Inputs are parquet, JSONL (plain, .gz, .zst), a `datasets` save_to_disk directory or plain text, mixed freely
(`taidtron.data.sources`); `text_key` names the column or JSON field that holds the text. Every document becomes one
sequence: [bos] + tokenize(text) + [eod], BOS as the tokenizer's config says unless `bos` says otherwise
(`Tokenizer.bos_default`). Empty and null documents are skipped and counted.

Memory does not grow with the corpus: the main process reads a batch of documents at a time, keeps at most
`_BATCHES_IN_FLIGHT_PER_WORKER` batches per tokenizer process in flight, and writes the index from a scratch file
(`IndexWriter`). Documents keep input order, so any number of workers writes the same bytes as one.

The output is atomic (`taidtron.io.atomic_output`): the `.bin` and `.idx` are written under temporary names and
renamed at the end, the `.bin` first, so a run that fails or is killed never leaves a dataset under the final prefix
(megatron requires both files). A sidecar `<prefix>.meta.json` records the tokenizer fingerprint and the BOS choice,
so the start-up data check can refuse data tokenized another way.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from taidtron.data.index_writer import IndexWriter
from taidtron.data.progress import TokenizeProgress
from taidtron.data.sources import Batch, batch_texts, iter_batches, open_sources
from taidtron.data.tokenizer import Tokenizer, load_tokenizer
from taidtron.io import atomic_output, atomic_write_json
from taidtron.lifetime import die_with_parent

META_SUFFIX = ".meta.json"
_BATCHES_IN_FLIGHT_PER_WORKER = 4  # enough to keep every worker busy; bounds what waits in the pipes


# ----------------------------------------------------------------------------------------------------------
# Tokenization workers. A module-level tokenizer per process: batches of raw documents cross the pipe, tokenizers
# do not.

_WORKER: dict = {}


def _init_worker(tokenizer_path: str, eod_token: str | None, text_key: str, dtype_name: str, bos: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    tok = load_tokenizer(tokenizer_path, eod_token=eod_token)
    _WORKER.update(tok=tok, text_key=text_key, dtype=np.dtype(dtype_name), prefix=[tok.bos] if bos else [])


def _start_worker(parent_pid: int, *init_args) -> None:
    """Pool initializer: the worker dies with the tokenizing process (a killed parent leaves no idle pool behind)."""
    die_with_parent(parent_pid)
    _init_worker(*init_args)


def _encode(batch: Batch) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(the batch's non-empty documents, each [bos] + tokenize(text) + [eod], back to back in the on-disk dtype;
    their lengths; the number of empty documents skipped; input bytes read for the batch)."""
    tok, prefix = _WORKER["tok"], _WORKER["prefix"]
    ids: list[int] = []
    lengths: list[int] = []
    skipped = 0
    for text in batch_texts(batch, _WORKER["text_key"]):
        if not text.strip():
            skipped += 1
            continue
        document = prefix + tok.tokenize(text)
        document.append(tok.eod)
        ids += document
        lengths.append(len(document))
    return np.asarray(ids, dtype=_WORKER["dtype"]), np.asarray(lengths, dtype=np.int64), skipped, batch.nbytes


def _in_order(pool, batches: Iterator[Batch], in_flight: int) -> Iterator[tuple]:
    """`_encode` of every batch on the pool, in input order, with at most `in_flight` batches submitted and not yet
    taken (Pool.imap would queue results without bound when the writer falls behind)."""
    pending: collections.deque = collections.deque()
    for batch in batches:
        pending.append(pool.apply_async(_encode, (batch,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def resolve_bos(tok: Tokenizer, bos: bool | None) -> tuple[bool, str]:
    """(whether documents start with BOS, why): `bos` when given (--bos / --no-bos), else the tokenizer's default.
    Raises ValueError when BOS is wanted but the tokenizer has none."""
    if bos is None:
        add, source = tok.bos_default.add, "default: " + tok.bos_default.source
    else:
        add, source = bos, "--bos" if bos else "--no-bos"
    if add and tok.bos is None:
        raise ValueError(
            f"documents should start with a BOS token ({source}), but tokenizer {tok.path} has none; pass --no-bos."
        )
    return add, source


def describe_bos(tok: Tokenizer, add: bool, source: str) -> str:
    """The start line, e.g. `BOS: yes, <s> (id 1) before each document (default: tokenizer_config.json
    add_bos_token=true)`."""
    if not add:
        return f"BOS: no, documents are tokenize(text) + [eod] ({source})"
    return f"BOS: yes, {tok.inv_vocab[tok.bos]} (id {tok.bos}) before each document ({source})"


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
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    *,
    fmt: str = "auto",
    text_key: str = "text",
    text_mode: str = "line",
    workers: int = 1,
    eod_token: str | None = None,
    bos: bool | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    log_interval: float = 30.0,
) -> dict:
    """Tokenize `inputs` into `<output_prefix>.bin/.idx` (+ `.meta.json`); returns the statistics written there.

    Refuses an existing dataset under `output_prefix` unless `force`. `workers` > 1 tokenizes in that many
    processes; the output is identical to workers=1. `bos`: None takes the tokenizer's default. `log` receives the
    start line (format, BOS) and, with `progress` and no terminal, a progress line every `log_interval` seconds.
    """
    from megatron.core.datasets.indexed_dataset import DType

    sources = open_sources(inputs, fmt)
    prefix = str(output_prefix)
    for suffix in (".bin", ".idx"):
        prefix = prefix.removesuffix(suffix)
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
    add_bos, bos_source = resolve_bos(tok, bos)
    dtype = DType.optimal_dtype(tok.vocab_size)
    if log is not None:
        log(f"inputs: {', '.join(f'{s.path} ({s.description})' for s in sources)}; text under {text_key!r}")
        log(describe_bos(tok, add_bos, bos_source))
    init_args = (str(tokenizer_path), eod_token, text_key, np.dtype(dtype).name, add_bos)
    batches = iter_batches(sources, text_key=text_key, text_mode=text_mode)
    skipped_empty = 0
    with contextlib.ExitStack() as stack:
        # Exits run in reverse: the pool stops first, then the .bin is renamed into place, then the .idx (the commit
        # point: megatron needs both files to open a dataset). An exception removes both temporary files.
        idx_file = stack.enter_context(atomic_output(idx_path, "wb"))
        bin_file = stack.enter_context(atomic_output(bin_path, "wb"))
        writer = IndexWriter(bin_file, dtype)
        stack.callback(writer.close)
        if workers == 1:
            _init_worker(*init_args)
            encoded = map(_encode, batches)
        else:
            # fork keeps worker start-up cheap (megatron-core is already imported); the tokenizer is re-loaded
            # in each worker by the initializer.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers, initializer=_start_worker, initargs=(os.getpid(), *init_args))
            stack.callback(pool.join)
            stack.callback(pool.terminate)
            encoded = _in_order(pool, batches, workers * _BATCHES_IN_FLIGHT_PER_WORKER)
        bar = TokenizeProgress(
            Path(prefix).name, sum(s.nbytes for s in sources), workers, enabled=progress, log=log, interval=log_interval
        )
        stack.callback(bar.close)
        for ids, lengths, skipped, nbytes in encoded:
            writer.add_documents(ids, lengths)
            skipped_empty += skipped
            bar.update(lengths.size, ids.size, nbytes)
        bar.finish()
        if writer.documents == 0:
            raise ValueError(
                f"no non-empty documents in {', '.join(s.path for s in sources)}; check --text-key / --format."
            )
        writer.write_index(idx_file)
        meta = {
            "created_by": "taidtron.data.indexed.build_indexed_dataset",
            "inputs": [s.path for s in sources],
            "format": {s.path: s.description for s in sources},
            "text_key": text_key,
            "text_mode": text_mode,
            "tokenizer": str(tokenizer_path),
            "tokenizer_fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
            "eod": tok.eod,
            "bos": add_bos,
            "bos_id": tok.bos if add_bos else None,
            "bos_source": bos_source,
            "dtype": np.dtype(dtype).name,
            "documents": writer.documents,
            "tokens": writer.tokens,
            "skipped_empty": skipped_empty,
        }
        # Drop the old .idx before the new .bin replaces the old one: an interruption must never pair them.
        idx_path.unlink(missing_ok=True)
        atomic_write_json(meta_path, meta)
    return meta
