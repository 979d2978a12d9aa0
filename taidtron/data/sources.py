"""Raw documents from the formats corpora are published in: what tokenizer training and dataset building both read.

    sources = open_sources(["shard-0.parquet", "extra.jsonl.zst", "saved_dataset/"])
    for batch in iter_batches(sources, text_key="text"):     # in the main process: bounded reads, nothing parsed
        texts = batch_texts(batch, "text")                   # in a worker: decode and parse

Formats (`fmt="auto"` decides per input):

- `parquet` (`.parquet`, or a file starting with parquet's magic): only the text column is read, a few hundred rows
  at a time through a small read buffer, so memory follows the batch, not the row group or the file.
- `arrow`: a directory written by Hugging Face `datasets`' `save_to_disk` (`state.json` lists its arrow files), or
  one `.arrow` file (IPC stream or file format); read one record batch at a time.
- `jsonl` (`.jsonl`, `.json`, `.ndjson`): one JSON object per line, the document under `text_key`.
- `text` (anything else): one document per non-empty line (`text_mode="line"`) or per file (`"file"`).

JSONL and text may be compressed: gzip or zstd, known by the suffix (`.gz`, `.zst`, `.zstd`) or by the file's
first bytes; a file cut short is an error, never a silently shorter corpus. A null text counts as an empty document
(skipped and counted by the caller). Anything that cannot be read raises `SourceError`, one line naming the file
and the format it was read as.

A leaf of `taidtron.data`: it imports nothing else of taidtron.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("auto", "jsonl", "text", "parquet", "arrow")
TEXT_MODES = ("line", "file")
FORMAT_NAMES = {"jsonl": "JSONL", "text": "plain text", "parquet": "parquet", "arrow": "arrow (datasets save_to_disk)"}

DOCS_PER_BATCH = 256  # documents handed to a tokenizer worker at once
_LINE_BATCH_BYTES = 4 << 20  # ...or fewer, for long lines: memory follows the batch, not the document count
_READ_BUFFER = 1 << 20
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_MAGIC = ((b"PAR1", "parquet"), (b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"))


class SourceError(ValueError):
    """An input that cannot be read: the message names the file, the format it was read as, and the fix."""


@dataclass(frozen=True)
class Source:
    """One input as given on the command line, with the format it is read as."""

    path: str
    fmt: str  # jsonl | text | parquet | arrow
    compression: str | None  # gzip | zstd (jsonl and text only)
    files: tuple[str, ...]  # what is read, in order: the file itself, or a datasets directory's arrow files
    nbytes: int  # size on disk of `files`

    @property
    def description(self) -> str:
        name = FORMAT_NAMES[self.fmt]
        return f"{self.compression}-compressed {name}" if self.compression else name


@dataclass(frozen=True)
class Batch:
    """Consecutive documents of one input, as read (it crosses the pipe to a tokenizer worker)."""

    path: str
    kind: str  # json: raw JSONL lines; lines: raw text lines; file: one whole raw file; texts: decoded documents
    start: int  # line number of items[0] (json, lines), or its row number (texts)
    items: list  # bytes (json, lines, file) or str | None (texts)
    nbytes: int  # input bytes read for this batch (compressed bytes for compressed inputs)


def open_sources(inputs: Sequence[str | os.PathLike], fmt: str = "auto") -> list[Source]:
    """The inputs with their formats, after checking that each exists and is of a readable kind (SourceError)."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if not inputs:
        raise SourceError("no input files; pass --input FILE [FILE ...].")
    return [_open_source(str(p), fmt) for p in inputs]


def _open_source(path: str, fmt: str) -> Source:
    p = Path(path)
    if p.is_dir():
        if fmt not in ("auto", "arrow"):
            raise SourceError(f"input {path} is a directory; --format {fmt} reads files (pass them, e.g. {path}/*).")
        files = _saved_dataset_files(p)
        return Source(path, "arrow", None, files, sum(os.path.getsize(f) for f in files))
    if not p.is_file():
        raise SourceError(
            f"input {path} does not exist; pass parquet, JSONL, text files or a datasets directory "
            "(globs are expanded by the shell)."
        )
    with open(p, "rb") as f:
        head = f.read(4)
    sniffed = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
    suffixes = [s.lower() for s in p.suffixes]
    compression = _COMPRESSION_SUFFIXES.get(suffixes[-1]) if suffixes else None
    inner_suffixes = suffixes[:-1] if compression else suffixes  # corpus.jsonl.zst reads as JSONL
    inner = inner_suffixes[-1] if inner_suffixes else ""
    if compression is None and sniffed in ("gzip", "zstd"):
        compression = sniffed
    if fmt == "auto":
        if inner == ".parquet" or (inner not in _JSONL_SUFFIXES and compression is None and sniffed == "parquet"):
            fmt = "parquet"
        elif inner == ".arrow":
            fmt = "arrow"
        else:
            fmt = "jsonl" if inner in _JSONL_SUFFIXES else "text"
    if fmt in ("parquet", "arrow"):
        compression = None  # both compress inside the file
    return Source(path, fmt, compression, (path,), p.stat().st_size)


def _saved_dataset_files(directory: Path) -> tuple[str, ...]:
    """The arrow files of a `datasets` save_to_disk directory, in order, from its state.json."""
    state = directory / "state.json"
    if not state.is_file():
        if (directory / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in directory.iterdir() if (p / "state.json").is_file())
            raise SourceError(
                f"{directory} holds a DatasetDict (splits: {', '.join(splits) or 'none'}); pass one split's "
                f"directory, e.g. {directory / (splits[0] if splits else 'train')}."
            )
        raise SourceError(
            f"{directory} is a directory but not one saved by datasets' save_to_disk (it has no state.json); "
            f"pass its files instead, e.g. {directory}/*.parquet."
        )
    try:
        listed = [entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SourceError(
            f"{state} cannot be read as a datasets state file ({type(exc).__name__}: {exc!s:.100}); save the "
            "dataset again with save_to_disk."
        ) from None
    files = tuple(str(directory / name) for name in listed)
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise SourceError(
            f"{directory} is an incomplete datasets directory: state.json lists "
            f"{', '.join(missing) if missing else 'no arrow files'}; copy or save it again."
        )
    return files


# ----------------------------------------------------------------------------------------------------------
# Reading (main process)


def iter_batches(sources: Sequence[Source], *, text_key: str = "text", text_mode: str = "line") -> Iterator[Batch]:
    """Every input's documents in order (inputs in the order given, documents in file order), in batches of at most
    DOCS_PER_BATCH documents. Raises SourceError naming the input and its format on anything unreadable."""
    if text_mode not in TEXT_MODES:
        raise SourceError(f"unknown text mode {text_mode!r}; use one of {', '.join(TEXT_MODES)}.")
    import pyarrow as pa

    for source in sources:
        for path in source.files:
            try:
                if source.fmt == "parquet":
                    yield from _parquet_batches(path, text_key)
                elif source.fmt == "arrow":
                    yield from _arrow_batches(path, text_key)
                else:
                    yield from _line_batches(path, source, text_mode)
            except SourceError:
                raise
            except (OSError, pa.ArrowException) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SourceError(
                    f"{path}: cannot read it as {source.description} ({reason[:160]}); it is damaged or cut short "
                    f"(fetch it again), or it is not {FORMAT_NAMES[source.fmt]} (pass --format with its real format)."
                ) from None


def _line_batches(path: str, source: Source, text_mode: str) -> Iterator[Batch]:
    import pyarrow as pa

    with pa.OSFile(path) as raw:
        stream = pa.CompressedInputStream(raw, source.compression) if source.compression else raw
        reader = io.BufferedReader(stream, _READ_BUFFER)
        if source.fmt == "text" and text_mode == "file":
            data = reader.read()
            yield Batch(path, "file", 0, [data], raw.tell())
            return
        kind = "json" if source.fmt == "jsonl" else "lines"
        items: list[bytes] = []
        start, lineno, size, position = 1, 0, 0, 0
        for lineno, line in enumerate(reader, 1):
            items.append(line)
            size += len(line)
            if len(items) >= DOCS_PER_BATCH or size >= _LINE_BATCH_BYTES:
                yield Batch(path, kind, start, items, raw.tell() - position)
                position = raw.tell()
                items, start, size = [], lineno + 1, 0
        yield Batch(path, kind, start, items, raw.tell() - position)


def _column_texts(path: str, column, text_key: str, start: int) -> list[str | None]:
    try:
        return column.to_pylist()
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path}: column {text_key!r} near row {start:,} is not valid UTF-8 ({exc.reason}); re-encode the data."
        ) from None


def _check_text_column(path: str, schema, text_key: str) -> None:
    import pyarrow as pa

    is_text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    text_columns = [f.name for f in schema if any(check(f.type) for check in is_text)]
    if text_key not in schema.names:
        raise SourceError(
            f"{path}: no column {text_key!r} (columns: {', '.join(schema.names)}); pass --text-key with the one "
            f"that holds the text{' (text columns: ' + ', '.join(text_columns) + ')' if text_columns else ''}."
        )
    if text_key not in text_columns:
        raise SourceError(
            f"{path}: column {text_key!r} holds {schema.field(text_key).type}, not text; pass --text-key with a "
            f"text column ({', '.join(text_columns) or 'it has none'})."
        )


def _parquet_batches(path: str, text_key: str) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    # pre_buffer=False and a read buffer: column chunks are read through the buffer page by page instead of whole,
    # so memory follows the batch even for row groups of hundreds of MB.
    with pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False) as pf:
        _check_text_column(path, pf.schema_arrow, text_key)
        rows, size = pf.metadata.num_rows, os.path.getsize(path)
        done = accounted = 0
        for record_batch in pf.iter_batches(batch_size=DOCS_PER_BATCH, columns=[text_key], use_threads=False):
            texts = _column_texts(path, record_batch.column(0), text_key, done)
            done += len(texts)
            # bytes in proportion to the rows read (the footer with the last batch): the bar moves evenly
            nbytes = (size * done // rows if done < rows else size) - accounted
            accounted += nbytes
            yield Batch(path, "texts", done - len(texts), texts, nbytes)
        if accounted < size:
            yield Batch(path, "texts", done, [], size - accounted)


def _arrow_batches(path: str, text_key: str) -> Iterator[Batch]:
    import pyarrow as pa

    with pa.OSFile(path) as raw:
        try:  # datasets writes the IPC stream format; the file format is read too
            reader = pa.ipc.open_stream(raw)
            record_batches = iter(reader)
        except pa.ArrowInvalid:
            raw.seek(0)
            reader = pa.ipc.open_file(raw)
            record_batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        _check_text_column(path, reader.schema, text_key)
        done = position = 0
        for record_batch in record_batches:
            column = record_batch.column(text_key)
            nbytes, position = raw.tell() - position, raw.tell()  # this record batch has been read
            for offset in range(0, max(1, len(column)), DOCS_PER_BATCH):
                texts = _column_texts(path, column.slice(offset, DOCS_PER_BATCH), text_key, done)
                last = offset + DOCS_PER_BATCH >= len(column)
                yield Batch(path, "texts", done, texts, nbytes if last else 0)
                done += len(texts)
        if raw.size() > position:
            yield Batch(path, "texts", done, [], raw.size() - position)


# ----------------------------------------------------------------------------------------------------------
# Parsing (tokenizer workers)


def batch_texts(batch: Batch, text_key: str) -> list[str]:
    """The document texts of a batch ("" for an empty or null one). Raises SourceError naming file:line on a line
    that is not UTF-8 or not a JSON object holding a string under `text_key`."""
    if batch.kind == "texts":
        return [text or "" for text in batch.items]
    if batch.kind == "file":
        return [_decode(batch.items[0], batch.path, 0)]
    texts = []
    for lineno, raw in enumerate(batch.items, batch.start):
        line = _decode(raw, batch.path, lineno)
        texts.append(_json_text(line, text_key, f"{batch.path}:{lineno}") if batch.kind == "json" else line)
    return texts if batch.kind == "json" else [t.rstrip("\r\n") for t in texts]


def _decode(data: bytes, path: str, lineno: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"{path}:{lineno}" if lineno else path
        raise SourceError(
            f"{where} is not valid UTF-8 ({exc.reason} at byte {exc.start}); re-encode the file as UTF-8, or pass "
            "--format if it is parquet or arrow."
        ) from None


def _json_text(line: str, text_key: str, where: str) -> str:
    if not line.strip():
        return ""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); fix or drop that line, or "
            "pass --format text for plain-text input."
        ) from None
    if not isinstance(obj, dict) or text_key not in obj:
        keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        raise SourceError(
            f"{where}: no key {text_key!r} (found: {keys}); pass --text-key with the field that holds the text."
        )
    text = obj[text_key]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise SourceError(f"{where}: {text_key!r} holds a {type(text).__name__}, not a string.")
    return text


def iter_texts(
    inputs: Sequence[str | os.PathLike], *, fmt: str = "auto", text_key: str = "text", text_mode: str = "line"
) -> Iterator[str]:
    """Every document text of `inputs`, in order, in this process (for readers that need no workers)."""
    for batch in iter_batches(open_sources(inputs, fmt), text_key=text_key, text_mode=text_mode):
        yield from batch_texts(batch, text_key)
