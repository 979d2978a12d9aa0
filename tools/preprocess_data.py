"""Tokenize JSONL or text files into a megatron indexed dataset (<prefix>.bin + <prefix>.idx + <prefix>.meta.json).

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/my_text_document \\
        --tokenizer data/smoke/tokenizer.model --workers 8

Each document becomes tokenize(text) + [EOD]. JSONL: one object per line, the text under --json-key (default
"text"). Plain text (any other suffix, or --format text): --text-mode line makes every non-empty line a document
(the default); --text-mode file makes each whole file one document. The output appears atomically (temporary
files renamed at the end), and an existing dataset under --output-prefix is refused unless --force is given.
Use the printed prefix in data.blend.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, metavar="FILE", help="JSONL and/or text files, in order")
    ap.add_argument("--output-prefix", required=True, help="dataset prefix to write (path without .bin/.idx)")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece .model or Hugging Face tokenizer.json")
    ap.add_argument(
        "--format",
        default="auto",
        choices=["auto", "jsonl", "text"],
        help="input format; auto: .jsonl/.json/.ndjson are JSONL, anything else text (default auto)",
    )
    ap.add_argument("--json-key", default="text", help="JSONL field holding the document text (default text)")
    ap.add_argument(
        "--text-mode",
        default="line",
        choices=["line", "file"],
        help="plain text: one document per non-empty line, or per file (default line)",
    )
    ap.add_argument(
        "--eod-token",
        default=None,
        help="end-of-document piece (default: the sentencepiece EOS, or <|endoftext|>, </s>, ... for tokenizer.json)",
    )
    ap.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing dataset under --output-prefix")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from taidtron.data.indexed import build_indexed_dataset

    try:
        meta = build_indexed_dataset(
            args.input,
            args.output_prefix,
            args.tokenizer,
            fmt=args.format,
            json_key=args.json_key,
            text_mode=args.text_mode,
            workers=args.workers,
            eod_token=args.eod_token,
            force=args.force,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.output_prefix}.bin/.idx: {meta['documents']} documents, {meta['tokens']} tokens "
        f"({meta['dtype']}), {meta['skipped_empty']} empty documents skipped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
