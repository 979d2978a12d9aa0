"""Tokenize a corpus as published into a megatron indexed dataset (<prefix>.bin + <prefix>.idx + <prefix>.meta.json).

    python tools/preprocess_data.py --input fineweb-edu-dedup/train-*.parquet --text-key text \\
        --output-prefix data/fineweb_text_document --tokenizer hf/Qwen2-1.5B-Instruct/tokenizer.json --workers 8

Inputs, mixed freely and read in the order given (--format auto decides each by its name and first bytes):
  parquet        .parquet: only the --text-key column is read, a few hundred rows at a time
  datasets       a directory written by Hugging Face datasets' save_to_disk (state.json + arrow files), or one .arrow
  JSONL          .jsonl/.json/.ndjson, plain or compressed (.gz, .zst): the text under --text-key
  text           anything else, plain or compressed: --text-mode line (default) makes every non-empty line a
                 document, --text-mode file each whole file
Each document becomes [BOS] + tokenize(text) + [EOD]; empty and null documents are skipped and counted. BOS
follows the tokenizer's own config (tokenizer_config.json add_bos_token, else what a tokenizer.json's
post-processor adds; a bare sentencepiece .model: no BOS) unless --bos / --no-bos says otherwise; the choice is
printed at start, recorded in <prefix>.meta.json and checked against data.tokenizer when training starts.

Memory stays flat whatever the corpus size. The output appears atomically (temporary files renamed at the end),
and an existing dataset under --output-prefix is refused unless --force is given. Progress: a bar on a terminal,
a plain line every --log-interval seconds otherwise. Use the printed prefix in data.blend. Exit code 2 and one
line on bad input (a file that cannot be read names the format it was read as).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from taidtron.data.sources import FORMATS, TEXT_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="parquet, JSONL, text files or datasets directories"
    )
    ap.add_argument("--output-prefix", required=True, help="dataset prefix to write (path without .bin/.idx)")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece .model, tokenizer.json, or their directory")
    ap.add_argument("--format", default="auto", choices=FORMATS, help="input format (default auto: per input)")
    ap.add_argument(
        "--text-key",
        "--column",
        "--json-key",
        dest="text_key",
        default="text",
        help="column (parquet, datasets) or JSON field holding the document text (default text)",
    )
    ap.add_argument(
        "--text-mode",
        default="line",
        choices=TEXT_MODES,
        help="plain text: one document per non-empty line, or per file (default line)",
    )
    ap.add_argument(
        "--bos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start every document with the tokenizer's BOS token, or not (default: what the tokenizer's config says)",
    )
    ap.add_argument(
        "--eod-token",
        default=None,
        help="end-of-document piece (default: the sentencepiece EOS, or <|endoftext|>, </s>, ... for tokenizer.json)",
    )
    ap.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing dataset under --output-prefix")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    ap.add_argument(
        "--log-interval", type=float, default=30.0, help="seconds between progress lines without a terminal (30)"
    )
    return ap.parse_args(argv)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the tokenizer workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from taidtron.data.indexed import build_indexed_dataset

    started, cpu_started = time.monotonic(), cpu_seconds()
    try:
        meta = build_indexed_dataset(
            args.input,
            args.output_prefix,
            args.tokenizer,
            fmt=args.format,
            text_key=args.text_key,
            text_mode=args.text_mode,
            workers=args.workers,
            eod_token=args.eod_token,
            bos=args.bos,
            force=args.force,
            progress=not args.no_progress,
            log=lambda line: print(line, flush=True),
            log_interval=args.log_interval,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu_started
    rate = meta["tokens"] / seconds
    # Per CPU-second: what a worker with a core of its own does, however busy the machine was.
    print(
        f"wrote {args.output_prefix}.bin/.idx: {meta['documents']:,} documents, {meta['tokens']:,} tokens "
        f"({meta['dtype']}), {meta['skipped_empty']:,} empty documents skipped; {seconds:.1f} s, {rate:,.0f} "
        f"tokens/s ({rate / args.workers:,.0f} per worker), {meta['tokens'] / max(cpu, 1e-9):,.0f} tokens per "
        "CPU-second"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
