"""How fast, and in how much memory, tools/preprocess_data.py turns a corpus as published into a dataset.

    python tools/bench_preprocess.py                                           # the smoke corpus
    python tools/pydoc_corpus.py --out runs/pydoc                              # English prose (the Python manual)
    python tools/bench_preprocess.py --corpus runs/pydoc/pydoc.jsonl --json runs/bench_preprocess.json

The corpus (JSONL, `text`) is repeated up to --mb MB and written the way SmolLM-Corpus is published: parquet with
the text among other columns (an id, a number, a nested metadata struct), and as JSONL for comparison. The
tokenizer is a stand-in for Qwen2's (no hub here): a byte-level BPE of --vocab-size tokens trained on the corpus
with Qwen2's pre-tokenizer pattern and NFC normalisation, so per-token work is of the same kind.

Throughput: each run is the tool itself in a fresh process (`--workers 1`, `--workers 2`), timed by the tool from
reading the first input to the committed output, in wall-clock time and in CPU time (its own and its workers').
Both are compared with the bare tokenizer: the same texts through `Tokenizer.tokenize` in a loop in a fresh
process, no I/O (1.00: reading, batching, pipes and writing cost nothing). The runs are interleaved --repeats times
and medians reported, so load from other processes hits them alike; on a shared machine tokens per CPU-second is
the figure that holds (what a worker with a core of its own does). Memory: peak RSS (the kernel's high-water mark,
from a small launcher process, so this script's own size does not leak into it) of the tool on many short
documents (the corpus' lines), --small-share of --mb and all of it, in one parquet row group each: the two should
match. And megatron-core's IndexedDatasetBuilder against taidtron's IndexWriter on --index-documents one-token
documents (the index alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Qwen2's pre-tokenizer split (its tokenizer.json): contractions, letters, single digits, punctuation, newlines.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(REPO / "data/smoke/corpus.jsonl"), help="JSONL with a text field")
    ap.add_argument("--mb", type=float, default=48.0, help="size of the large input in MB of text (default 48)")
    ap.add_argument("--small-share", type=float, default=0.125, help="the small input's share of --mb (0.125)")
    ap.add_argument("--vocab-size", type=int, default=32000, help="stand-in BPE vocabulary (default 32000)")
    ap.add_argument("--index-documents", type=int, default=2_000_000, help="documents of the index-only comparison")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the throughput runs (default 3)")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--_index_child", nargs=2, metavar=("WRITER", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--_bare_child", nargs=2, metavar=("TOKENIZER", "CORPUS"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def stand_in_tokenizer(texts: list[str], vocab_size: int, out: Path) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"


def write_inputs(texts: list[str], mb: float, out: Path, name: str) -> tuple[Path, Path]:
    """(parquet, jsonl): the texts repeated to `mb` MB, as one parquet row group and as JSONL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs, size = [], 0
    while size < mb * 1e6:
        for text in texts:
            docs.append(text)
            size += len(text.encode())
            if size >= mb * 1e6:
                break
    n = len(docs)
    table = pa.table(
        {
            "text": docs,
            "id": [f"<urn:uuid:{i:032x}>" for i in range(n)],
            "token_count": np.arange(n, dtype=np.int64),
            "metadata": [{"url": f"https://example.org/{i}", "score": (i % 50) / 10} for i in range(n)],
        }
    )
    parquet = out / f"{name}.parquet"
    pq.write_table(table, parquet, row_group_size=n, compression="zstd")  # one row group: the worst case
    jsonl = out / f"{name}.jsonl"
    with open(jsonl, "w") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"text": text, "id": i}) + "\n")
    return parquet, jsonl


def bare_child(tokenizer: str, corpus: str, seconds: float = 15.0) -> None:
    """Print the tokens/s of `Tokenizer.tokenize` over the corpus texts in a loop (the baseline; a child process)."""
    from taidtron.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    texts = read_texts(corpus)
    tokens, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for text in texts:
            tokens += len(tok.tokenize(text))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu}))


# Runs a command and prints its output and the peak RSS of it and its children as JSON. Started fresh, so the
# high-water mark a child inherits at fork (the kernel keeps it through exec) is a bare interpreter's, not this
# script's.
_LAUNCHER = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr[-3000:], "peak_rss": peak}))
"""


def run_measured(cmd: list[str]) -> tuple[str, int]:
    """(stdout, peak RSS in bytes of the command or any child it waited for)."""
    env = dict(os.environ, TAIDTRON_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *cmd], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(launched.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {result['rc']}:\n{result['err']}")
    return result["out"], result["peak_rss"]


def preprocess(inputs: Path, tokenizer: Path, prefix: Path, workers: int) -> dict:
    out, peak = run_measured(
        [sys.executable, "tools/preprocess_data.py", "--input", str(inputs), "--tokenizer", str(tokenizer)]
        + ["--output-prefix", str(prefix), "--workers", str(workers), "--force", "--no-progress"]
    )
    found = re.search(r"([\d,]+) documents, ([\d,]+) tokens \(.*; ([\d.]+) s, .*, ([\d,]+) tokens per CPU-second", out)
    documents, tokens, seconds, per_cpu = (float(g.replace(",", "")) for g in found.groups())
    return {
        "input": inputs.name,
        "bytes": inputs.stat().st_size,
        "documents": int(documents),
        "workers": workers,
        "tokens": int(tokens),
        "seconds": seconds,
        "tokens_per_s_per_worker": tokens / seconds / workers,
        "tokens_per_cpu_s": per_cpu,
        "peak_rss_mb": peak / 2**20,
    }


def index_child(writer_name: str, n: int) -> None:
    """Write an index of `n` one-token documents with megatron's builder or taidtron's writer (a child process)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from taidtron.data.index_writer import IndexWriter

    with tempfile.TemporaryDirectory() as work:
        docs = np.arange(n, dtype=np.uint16) % 1000
        if writer_name == "megatron":
            builder = IndexedDatasetBuilder(f"{work}/x.bin", dtype=np.uint16)
            for i in range(n):
                builder.add_document(docs[i : i + 1], [1])
            builder.finalize(f"{work}/x.idx")
        else:
            with open(f"{work}/x.bin", "wb") as bin_file, open(f"{work}/x.idx", "wb") as idx_file:
                writer = IndexWriter(bin_file, np.uint16)
                for start in range(0, n, 256):  # the batches workers return
                    chunk = docs[start : start + 256]
                    writer.add_documents(chunk, np.ones(chunk.size, dtype=np.int64))
                writer.write_index(idx_file)
                writer.close()


def read_texts(corpus: str) -> list[str]:
    with open(corpus) as f:
        return [t for t in (json.loads(line).get("text") for line in f) if t and t.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._index_child:
        index_child(args._index_child[0], int(args._index_child[1]))
        return 0
    if args._bare_child:
        bare_child(*args._bare_child)
        return 0
    texts = read_texts(args.corpus)
    work_dir = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(args.work or work_dir.name)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    tokenizer = stand_in_tokenizer(texts, args.vocab_size, work / "tokenizer")
    large_parquet, large_jsonl = write_inputs(texts, args.mb, work, "large")
    # Memory: many short documents (the corpus' lines), where per-document costs would show.
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    lines_parquet, _ = write_inputs(lines, args.mb, work, "lines")
    lines_small, _ = write_inputs(lines, args.mb * args.small_share, work, "lines_small")
    cases = [(large_jsonl, 1), (large_parquet, 1), (large_parquet, 2)]
    bare: list[dict] = []
    rounds: list[list[dict]] = [[] for _ in cases]
    for _ in range(args.repeats):  # interleaved: load from other processes hits every case alike
        out, _ = run_measured([sys.executable, __file__, "--_bare_child", str(tokenizer), args.corpus])
        bare.append(json.loads(out))
        for runs, (inputs, workers) in zip(rounds, cases):
            runs.append(preprocess(inputs, tokenizer, work / "ds", workers))
    baseline = statistics.median(b["tokens_per_s"] for b in bare)
    baseline_cpu = statistics.median(b["tokens_per_cpu_s"] for b in bare)
    runs = [min(r, key=lambda run: abs(run["seconds"] - statistics.median(x["seconds"] for x in r))) for r in rounds]
    runs += [preprocess(lines_small, tokenizer, work / "ds", 1), preprocess(lines_parquet, tokenizer, work / "ds", 1)]
    index = {}
    for name in ("megatron", "taidtron"):
        _, peak = run_measured([sys.executable, __file__, "--_index_child", name, str(args.index_documents)])
        index[name] = peak / 2**20
    results = {
        "corpus": args.corpus,
        "bare_tokenizer": bare,
        "runs": runs,
        "all_rounds": rounds,
        "index_only_peak_rss_mb": index,
        "index_documents": args.index_documents,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    print(f"corpus {args.corpus}: stand-in byte-level BPE of {args.vocab_size:,} tokens; medians of {args.repeats}")
    print(f"bare tokenizer (one process, no I/O): {baseline:,.0f} tokens/s, {baseline_cpu:,.0f} per CPU-second")
    print(
        f"{'input':<19}{'file MB':>8}{'documents':>10}{'workers':>8}{'tokens':>11}{'s':>7}{'tok/s/worker':>13}"
        f"{'vs bare':>8}{'tok/CPU-s':>10}{'vs bare':>8}{'peak RSS':>10}"
    )
    for r in runs:
        print(
            f"{r['input']:<19}{r['bytes'] / 1e6:>8.1f}{r['documents']:>10,}{r['workers']:>8}{r['tokens']:>11,}"
            f"{r['seconds']:>7.1f}{r['tokens_per_s_per_worker']:>13,.0f}{r['tokens_per_s_per_worker'] / baseline:>8.2f}"
            f"{r['tokens_per_cpu_s']:>10,.0f}{r['tokens_per_cpu_s'] / baseline_cpu:>8.2f}{r['peak_rss_mb']:>8.0f}MB"
        )
    print(
        f"index only, {args.index_documents:,} documents: peak RSS megatron IndexedDatasetBuilder "
        f"{index['megatron']:,.0f} MB, taidtron IndexWriter {index['taidtron']:,.0f} MB"
    )
    load_after = results["load_average_after"]
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs)")
    if args.json:
        from taidtron.io import atomic_write_json

        atomic_write_json(args.json, results)
    if work_dir is not None:
        work_dir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
