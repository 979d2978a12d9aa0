"""Corpora as published: parquet (extra columns, several row groups), a datasets save_to_disk directory, arrow files,
JSONL plain / gzip / zstd give the very .bin/.idx the same corpus as plain JSONL gives; whatever cannot be read fails
in one line naming the format it was read as."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taidtron.data.indexed import build_indexed_dataset
from taidtron.data.sources import SourceError, iter_texts, open_sources
from tests.support import REPO_ROOT, subprocess_env


@pytest.fixture(scope="module")
def corpus(smoke_texts) -> list[str | None]:
    """400 smoke documents with an empty one, a null one, and non-ASCII text."""
    docs: list[str | None] = list(smoke_texts[:400])
    docs[7], docs[123] = "", None
    docs[50] = "Zoë paid 3 € for a crème brûlée — 東京 🍮\nSecond line."
    return docs


def table(docs, text_column="text") -> pa.Table:
    """The corpus with the extra columns a published shard has (an id, a number, a nested struct, another string)."""
    return pa.table(
        {
            "id": pa.array([f"doc-{i}" for i in range(len(docs))]),
            text_column: pa.array(docs, type=pa.string()),
            "token_count": pa.array(range(len(docs)), type=pa.int64()),
            "metadata": pa.array([{"url": f"https://example.org/{i}", "score": i / 7} for i in range(len(docs))]),
        }
    )


def write_jsonl(path: Path, docs) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)))
    return path


def dataset_bytes(prefix: Path) -> tuple[bytes, bytes]:
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, smoke_tokenizer_path):
    """The corpus as plain JSONL, built the way tools/preprocess_data.py always could."""
    out = tmp_path_factory.mktemp("reference")
    meta = build_indexed_dataset(
        [write_jsonl(out / "corpus.jsonl", corpus)], out / "ds", smoke_tokenizer_path, progress=False
    )
    assert (meta["documents"], meta["skipped_empty"]) == (398, 2)
    return dataset_bytes(out / "ds")


def _parquet(tmp_path, docs):
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table(docs), path, row_group_size=37)  # 11 row groups, batches cut across them
    assert pq.ParquetFile(path).metadata.num_row_groups == 11
    return [path]


def _parquet_shards(tmp_path, docs):
    paths = []
    for i, part in enumerate((docs[:150], docs[150:151], docs[151:])):
        paths.append(tmp_path / f"train-{i:05d}-of-00003.parquet")
        pq.write_table(table(part), paths[-1], row_group_size=64, compression="zstd")
    return paths


def _parquet_named_bin(tmp_path, docs):
    path = tmp_path / "shard.data"  # no parquet suffix: known by its magic bytes
    pq.write_table(table(docs), path)
    return [path]


def _jsonl_gzip(tmp_path, docs):
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(gzip.compress(write_jsonl(tmp_path / "plain.jsonl", docs).read_bytes()))
    return [path]


def _jsonl_zstd_two_files(tmp_path, docs):
    paths = []
    for i, part in enumerate((docs[:200], docs[200:])):
        data = write_jsonl(tmp_path / f"plain{i}.jsonl", part).read_bytes()
        paths.append(tmp_path / f"part{i}.jsonl.zst")
        with pa.CompressedOutputStream(str(paths[-1]), "zstd") as f:
            f.write(data)
    return paths


def _saved_dataset(tmp_path, docs):
    import datasets

    directory = tmp_path / "saved"
    datasets.Dataset(table(docs)).save_to_disk(str(directory), num_shards=3)
    assert len(list(directory.glob("*.arrow"))) == 3 and (directory / "dataset_info.json").is_file()
    return [directory]


def _arrow_file_format(tmp_path, docs):
    path = tmp_path / "corpus.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table(docs).schema) as writer:
        writer.write_table(table(docs), max_chunksize=300)
    return [path]


LAYOUTS = {
    "parquet": _parquet,
    "parquet-shards": _parquet_shards,
    "parquet-by-magic": _parquet_named_bin,
    "jsonl-gzip": _jsonl_gzip,
    "jsonl-zstd": _jsonl_zstd_two_files,
    "datasets-save-to-disk": _saved_dataset,
    "arrow-file": _arrow_file_format,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_format_gives_the_bytes_of_the_jsonl_corpus(layout, tmp_path, corpus, reference, smoke_tokenizer_path):
    inputs = LAYOUTS[layout](tmp_path, corpus)
    workers = 2 if layout in ("parquet", "datasets-save-to-disk") else 1
    meta = build_indexed_dataset(inputs, tmp_path / "ds", smoke_tokenizer_path, workers=workers, progress=False)
    assert dataset_bytes(tmp_path / "ds") == reference
    assert (meta["documents"], meta["skipped_empty"]) == (398, 2)


def test_another_text_column_is_chosen_by_text_key(tmp_path, corpus, reference, smoke_tokenizer_path):
    path = tmp_path / "content.parquet"
    pq.write_table(table(corpus, text_column="content"), path)
    with pytest.raises(SourceError, match=r"no column 'text' \(columns: id, content, token_count, metadata\).*"):
        build_indexed_dataset([path], tmp_path / "ds", smoke_tokenizer_path, progress=False)
    build_indexed_dataset([path], tmp_path / "ds", smoke_tokenizer_path, text_key="content", progress=False)
    assert dataset_bytes(tmp_path / "ds") == reference


def test_a_column_that_is_not_text_is_refused(tmp_path, corpus, smoke_tokenizer_path):
    path = tmp_path / "x.parquet"
    pq.write_table(table(corpus), path)
    with pytest.raises(SourceError, match=r"column 'token_count' holds int64, not text.*\(id, text\)"):
        build_indexed_dataset([path], tmp_path / "ds", smoke_tokenizer_path, text_key="token_count", progress=False)


def test_compressed_plain_text_lines(tmp_path, smoke_tok, smoke_tokenizer_path):
    lines = ["Mia lives in Brindle.", "", "Tom is a baker.\r", "3 plus 4 is 7."]
    path = tmp_path / "notes.txt.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    assert list(iter_texts([path])) == ["Mia lives in Brindle.", "", "Tom is a baker.", "3 plus 4 is 7."]


def _damaged(kind: str, tmp_path: Path, corpus) -> Path:
    if kind in ("truncated parquet", "garbage parquet"):
        path = tmp_path / "shard.parquet"
        pq.write_table(table(corpus), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated parquet" else b"not parquet at all\n" * 50)
    elif kind == "parquet with a damaged page":
        path = tmp_path / "shard.parquet"
        pq.write_table(table(corpus), path, compression="zstd")
        data = bytearray(path.read_bytes())
        data[4:2000] = bytes(1996)  # the footer is intact, the first pages are not
        path.write_bytes(bytes(data))
    elif kind == "truncated jsonl.gz":
        path = tmp_path / "corpus.jsonl.gz"
        data = gzip.compress(write_jsonl(tmp_path / "plain.jsonl", corpus).read_bytes())
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated jsonl.zst":
        path = tmp_path / "corpus.jsonl.zst"
        with pa.CompressedOutputStream(str(path), "zstd") as f:
            f.write(write_jsonl(tmp_path / "plain.jsonl", corpus).read_bytes())
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "garbage arrow":
        path = tmp_path / "saved"
        _saved_dataset(tmp_path, corpus)
        (path / "data-00001-of-00003.arrow").write_bytes(b"\xff" * 3000)
    return path


DAMAGE = {
    "truncated parquet": r"shard\.parquet: cannot read it as parquet \(.*\); it is damaged or cut short \(fetch it",
    "garbage parquet": r"shard\.parquet: cannot read it as parquet \(",
    "parquet with a damaged page": r"shard\.parquet: cannot read it as parquet \(",
    "truncated jsonl.gz": r"corpus\.jsonl\.gz: cannot read it as gzip-compressed JSONL \(",
    "truncated jsonl.zst": r"corpus\.jsonl\.zst: cannot read it as zstd-compressed JSONL \(",
    "garbage arrow": r"data-00001-of-00003\.arrow: cannot read it as arrow \(datasets save_to_disk\) \(",
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_an_unreadable_input_fails_naming_its_format_and_leaves_nothing(kind, tmp_path, corpus, smoke_tokenizer_path):
    path = _damaged(kind, tmp_path, corpus)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceError, match=DAMAGE[kind]) as caught:
        build_indexed_dataset([path], out / "ds", smoke_tokenizer_path, workers=2, progress=False)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in out.iterdir()) == []


def test_directories_that_are_not_one_saved_dataset_are_refused(tmp_path, corpus):
    import datasets

    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(table(corpus), shards / "a.parquet")
    with pytest.raises(SourceError, match=r"shards is a directory but not one saved by datasets.*shards/\*\.parquet"):
        open_sources([shards])
    ds = datasets.Dataset(table(corpus))
    datasets.DatasetDict(train=ds, test=ds).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(SourceError, match=r"holds a DatasetDict \(splits: test, train\); pass one split's directory"):
        open_sources([tmp_path / "dict"])
    assert [s.fmt for s in open_sources([tmp_path / "dict" / "train"])] == ["arrow"]


def test_the_tool_says_parquet_in_one_line_with_exit_code_2(tmp_path, corpus, smoke_tokenizer_path):
    path = _damaged("truncated parquet", tmp_path, corpus)
    proc = subprocess.run(
        [sys.executable, "tools/preprocess_data.py", "--input", str(path), "--output-prefix", str(tmp_path / "ds")]
        + ["--tokenizer", str(smoke_tokenizer_path)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {path}: cannot read it as parquet (") and proc.stderr.count("\n") == 1
