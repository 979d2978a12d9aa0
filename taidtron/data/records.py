"""Raw documents from JSONL or plain-text files: what tokenizer training and dataset building both read.

    for record in iter_records(["corpus.jsonl"]):
        text = record_text(record, json_key="text")

A leaf of `taidtron.data`: it imports nothing else of taidtron.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("auto", "jsonl", "text")
TEXT_MODES = ("line", "file")


@dataclass(frozen=True)
class Record:
    """One raw document as read from disk; parsing and tokenization happen in the workers."""

    path: str
    lineno: int  # 0 for whole-file documents
    raw: str
    is_json: bool
    nbytes: int


def resolve_format(path: str | Path, fmt: str) -> str:
    """`jsonl` or `text` for `path`: as given, or from the suffix when fmt is `auto` (.jsonl/.json -> jsonl)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if fmt != "auto":
        return fmt
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".json", ".ndjson") else "text"


def iter_records(paths: Sequence[str | Path], *, fmt: str = "auto", text_mode: str = "line") -> Iterator[Record]:
    """Raw documents of every input file, in order (files in the order given, lines in file order)."""
    if text_mode not in TEXT_MODES:
        raise ValueError(f"unknown text mode {text_mode!r}; use one of {', '.join(TEXT_MODES)}.")
    for path in paths:
        path = str(path)
        is_json = resolve_format(path, fmt) == "jsonl"
        with open(path, "rb") as f:
            if not is_json and text_mode == "file":
                data = f.read()
                yield Record(path, 0, _decode(data, path, 0), False, len(data))
                continue
            for lineno, line in enumerate(f, 1):
                yield Record(path, lineno, _decode(line, path, lineno), is_json, len(line))


def _decode(data: bytes, path: str, lineno: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"{path}:{lineno}" if lineno else path
        raise ValueError(
            f"{where} is not valid UTF-8 ({exc.reason} at byte {exc.start}); re-encode the file as UTF-8."
        ) from None


def record_text(record: Record, json_key: str) -> str:
    """The document text of a record (parses JSON). Raises ValueError naming file:line on malformed input."""
    if not record.is_json:
        return record.raw.rstrip("\r\n") if record.lineno else record.raw
    if not record.raw.strip():
        return ""
    where = f"{record.path}:{record.lineno}"
    try:
        obj = json.loads(record.raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); fix or drop that line, or "
            "pass --format text for plain-text input."
        ) from None
    if not isinstance(obj, dict) or json_key not in obj:
        keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{where}: no key {json_key!r} (found: {keys}); pass --json-key with the field that holds the text."
        )
    text = obj[json_key]
    if not isinstance(text, str):
        raise ValueError(f"{where}: {json_key!r} holds a {type(text).__name__}, not a string.")
    return text


def expand_inputs(inputs: Sequence[str | Path]) -> list[str]:
    """The input files as strings, after checking that each exists (ValueError naming the first that does not)."""
    paths = [str(p) for p in inputs]
    if not paths:
        raise ValueError("no input files; pass --input FILE [FILE ...].")
    for p in paths:
        if not Path(p).is_file():
            raise ValueError(f"input {p} is not a file; pass JSONL or text files (globs are expanded by the shell).")
    return paths
