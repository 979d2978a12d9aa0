"""Train a sentencepiece tokenizer on text/JSONL files (no model hub needed).

    python tools/train_tokenizer.py --input corpus.jsonl --vocab-size 1024 --out data/smoke/tokenizer

writes <out>.model (pass it as data.tokenizer and to tools/preprocess_data.py) and <out>.vocab (readable list).
Ids 0..3 are <pad>, <unk>, <s>, </s>; </s> is the end-of-document token the data pipeline appends. Training with
the default single thread is deterministic: the same input and options give the same vocabulary.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="training text: JSONL (.jsonl/.json) and/or plain text files",
    )
    ap.add_argument("--out", required=True, help="output prefix; writes <out>.model and <out>.vocab")
    ap.add_argument("--vocab-size", type=int, required=True, help="number of pieces, specials included")
    ap.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"], help="algorithm (default bpe)")
    ap.add_argument("--json-key", default="text", help="JSONL field holding the text (default text)")
    ap.add_argument(
        "--format",
        default="auto",
        choices=["auto", "jsonl", "text"],
        help="input format; auto decides by suffix (default auto)",
    )
    ap.add_argument(
        "--character-coverage",
        type=float,
        default=1.0,
        help="share of characters covered by the vocabulary (default 1.0; 0.9995 for CJK-heavy text)",
    )
    ap.add_argument(
        "--byte-fallback", action="store_true", help="add 256 byte pieces so any text round-trips without <unk>"
    )
    ap.add_argument(
        "--normalization",
        default="identity",
        help="sentencepiece normalization rule: identity (default, lossless) or nmt_nfkc, nfkc, ...",
    )
    ap.add_argument(
        "--max-sentences", type=int, default=0, help="train on a random sample of this many lines (default 0: all)"
    )
    ap.add_argument("--threads", type=int, default=1, help="trainer threads (default 1, deterministic)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from taidtron.data.tokenizer import load_tokenizer
    from taidtron.data.tokenizer_training import train_sentencepiece

    try:
        model = train_sentencepiece(
            args.input,
            args.out,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            json_key=args.json_key,
            fmt=args.format,
            character_coverage=args.character_coverage,
            byte_fallback=args.byte_fallback,
            normalization=args.normalization,
            max_sentences=args.max_sentences,
            num_threads=args.threads,
        )
        tok = load_tokenizer(model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {model} ({model.stat().st_size / 1024:.0f} KiB): vocab_size={tok.vocab_size} eod={tok.eod} "
        f"fingerprint={tok.fingerprint()[:12]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
