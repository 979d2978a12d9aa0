"""Text/JSONL -> .bin/.idx: content, worker parity, atomicity, refusal to overwrite."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from taidtron.data.indexed import build_indexed_dataset, read_meta
from taidtron.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def documents(prefix) -> list[list[int]]:
    ds = IndexedDataset(str(prefix))
    return [ds[i].tolist() for i in range(len(ds))]


def leftovers(directory: Path) -> list[str]:
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.suffix in (".bin", ".idx") or ".tmp-" in p.name or p.name.endswith(".meta.json")
    )


def test_jsonl_documents_equal_tokenize_plus_eod_and_empty_ones_are_skipped(
    tmp_path, small_jsonl, smoke_tok, smoke_tokenizer_path
):
    meta = build_indexed_dataset([small_jsonl], tmp_path / "out", smoke_tokenizer_path, progress=False)
    texts = [json.loads(line)["text"] for line in small_jsonl.read_text().splitlines()]
    expected = [smoke_tok.tokenize(t) + [smoke_tok.eod] for t in texts if t]
    assert documents(tmp_path / "out") == expected
    assert (meta["documents"], meta["skipped_empty"], meta["dtype"]) == (199, 1, "uint16")
    assert read_meta(tmp_path / "out")["tokenizer_fingerprint"] == smoke_tok.fingerprint()
    assert IndexedDataset(str(tmp_path / "out")).index.dtype == np.uint16


def test_text_line_mode_makes_one_document_per_nonempty_line(tmp_path, smoke_tok, smoke_tokenizer_path):
    lines = ["Mia lives in Brindle.", "", "Tom is a baker.", "3 plus 4 is 7."]
    src = tmp_path / "a.txt"
    src.write_text("\n".join(lines) + "\n")
    build_indexed_dataset([src], tmp_path / "lines", smoke_tokenizer_path, progress=False)
    assert documents(tmp_path / "lines") == [smoke_tok.tokenize(t) + [smoke_tok.eod] for t in lines if t]


def test_text_file_mode_makes_one_document_per_file(tmp_path, smoke_tok, smoke_tokenizer_path):
    texts = ["Mia lives in Brindle.\nShe is a baker.\n", "Count from 1 to 3: 1, 2, 3."]
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_text(text)
    build_indexed_dataset(paths, tmp_path / "files", smoke_tokenizer_path, text_mode="file", progress=False)
    assert documents(tmp_path / "files") == [smoke_tok.tokenize(t) + [smoke_tok.eod] for t in texts]


def test_hf_tokenizer_json_is_supported(tmp_path, small_jsonl, hf_tokenizer_json):
    tok = load_tokenizer(hf_tokenizer_json)
    build_indexed_dataset([small_jsonl], tmp_path / "hf", hf_tokenizer_json, text_key="text", progress=False)
    docs = documents(tmp_path / "hf")
    assert len(docs) == 199 and all(d[-1] == tok.eod and tok.eod not in d[:-1] for d in docs)


def test_two_workers_write_the_same_bytes_as_one_worker(tmp_path, small_jsonl, smoke_tokenizer_path):
    build_indexed_dataset([small_jsonl, small_jsonl], tmp_path / "w1", smoke_tokenizer_path, workers=1, progress=False)
    build_indexed_dataset([small_jsonl, small_jsonl], tmp_path / "w2", smoke_tokenizer_path, workers=2, progress=False)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"w1{suffix}").read_bytes() == (tmp_path / f"w2{suffix}").read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_json_line_fails_clearly_and_leaves_nothing_under_the_final_name(
    tmp_path, small_jsonl, smoke_tokenizer_path, workers
):
    lines = small_jsonl.read_text().splitlines()
    lines.insert(150, '{"text": "unterminated')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"bad\.jsonl:151: invalid JSON"):
        build_indexed_dataset([bad], out / "ds", smoke_tokenizer_path, workers=workers, progress=False)
    assert leftovers(out) == []


def test_missing_json_key_names_the_key_and_the_flag(tmp_path, smoke_tokenizer_path):
    src = tmp_path / "x.jsonl"
    src.write_text('{"content": "hello"}\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:1: no key 'text' \(found: content\).*--text-key"):
        build_indexed_dataset([src], tmp_path / "x", smoke_tokenizer_path, progress=False)


def test_existing_dataset_is_refused_without_force_and_replaced_with_it(tmp_path, small_jsonl, smoke_tokenizer_path):
    build_indexed_dataset([small_jsonl], tmp_path / "ds", smoke_tokenizer_path, progress=False)
    with pytest.raises(ValueError, match="already exists.*--force"):
        build_indexed_dataset([small_jsonl], tmp_path / "ds", smoke_tokenizer_path, progress=False)
    one = tmp_path / "one.txt"
    one.write_text("Mia lives in Brindle.\n")
    build_indexed_dataset([one], tmp_path / "ds", smoke_tokenizer_path, force=True, progress=False)
    assert len(documents(tmp_path / "ds")) == 1


def test_cli_reports_user_errors_without_a_traceback(tmp_path, small_jsonl, smoke_tokenizer_path, capsys):
    from tools.preprocess_data import main

    args = [
        "--input",
        str(small_jsonl),
        "--output-prefix",
        str(tmp_path / "cli"),
        "--tokenizer",
        str(smoke_tokenizer_path),
        "--no-progress",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_shipped_smoke_dataset_matches_its_corpus_and_tokenizer(smoke_prefix, smoke_texts, smoke_tok):
    assert documents(smoke_prefix) == [smoke_tok.tokenize(t) + [smoke_tok.eod] for t in smoke_texts]
    assert read_meta(smoke_prefix)["tokenizer_fingerprint"] == smoke_tok.fingerprint()


def test_killed_run_leaves_no_dataset_under_the_final_name(tmp_path, smoke_tokenizer_path):
    big = tmp_path / "big.txt"
    big.write_text(("Mia lives in Brindle. Tom is a baker who sells bread on the river Osk.\n" * 4000) * 25)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tools" / "preprocess_data.py"),
            "--input",
            str(big),
            "--output-prefix",
            str(out / "ds"),
            "--tokenizer",
            str(smoke_tokenizer_path),
            "--no-progress",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while not any(".tmp-" in p.name for p in out.iterdir()):  # wait until it is writing
            assert proc.poll() is None, "preprocess finished before it could be killed; enlarge the input"
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "ds.bin").exists() and not (out / "ds.idx").exists()


def test_make_smoke_corpus_regenerates_the_shipped_corpus_byte_for_byte(tmp_path, smoke_prefix):
    from tools.make_smoke_corpus import main

    main(["--out-dir", str(tmp_path), "--corpus-only"])
    shipped = Path(smoke_prefix).parent / "corpus.jsonl"
    assert (tmp_path / "corpus.jsonl").read_bytes() == shipped.read_bytes()


def test_a_batch_log_gets_plain_progress_lines(tmp_path, small_jsonl, smoke_tokenizer_path, monkeypatch):
    monkeypatch.setenv("TAIDTRON_NO_PROGRESS", "1")  # what a job without a terminal gets
    lines: list[str] = []
    meta = build_indexed_dataset(
        [small_jsonl, small_jsonl], tmp_path / "out", smoke_tokenizer_path, log=lines.append, log_interval=0
    )
    assert lines[0] == f"inputs: {small_jsonl} (JSONL), {small_jsonl} (JSONL); text under 'text'"
    assert lines[1].startswith("BOS: no, documents are tokenize(text) + [eod] (default: a sentencepiece model alone")
    progress = lines[2:]
    assert len(progress) == 3  # one per batch (a file each here) and the last one
    size = f"{2 * small_jsonl.stat().st_size / 1e3:.3g} kB"
    assert re.fullmatch(
        rf"tokenize -> out: 398 documents, {meta['tokens']:,} tokens, {size} of {size} read \(100\.0%\), "
        r"[\d,]+ tokens/s \([\d,]+ per worker\), 0:00:\d\d elapsed, ETA 0:00:00",
        progress[-1],
    ), progress[-1]
    assert "199 documents" in progress[0] and "(50.0%)" in progress[0]


def test_a_terminal_gets_a_bar_with_documents_tokens_per_second_and_bytes(capsys):
    from taidtron.data.progress import TokenizeProgress

    bar = TokenizeProgress("ds", 2_000_000, 2, enabled=True, log=None, interactive=True)
    bar.update(1234, 56_789, 1_000_000)
    bar.close()
    shown = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert re.search(r"tokenize -> ds: +50%.*1\.00M/2\.00M.*1,234 docs, [\d,]+ tok/s", shown), shown
