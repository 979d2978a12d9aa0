"""Entry point: `python -m taidtron.cache_teacher --config CONFIG [section.key=value ...] --out DIR --top-k K`.

Runs the frozen teacher of CONFIG (teacher section, `teacher.init`) over exactly the samples a training run of CONFIG
reads, and stores each token's top-K log-probs (or all of them: `--top-k full`) in DIR; a run then distils from it
with `teacher.cache=DIR` (docs/teacher_cache.md). Any TP/PP/DP layout, through every launcher, like training.
Parse, write, close; the writing lives in `taidtron.cache`.
"""

from __future__ import annotations

import argparse
import sys


def _top_k(text: str) -> int | None:
    if text in ("full", "all"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive integer nor `full`") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _samples(text: str) -> tuple[int, int]:
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must look like START:END (sample numbers)") from None
    return start, end


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m taidtron.cache_teacher",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[1],
        epilog="overrides: any config key as section.key=value, as for python -m taidtron.train\n"
        "resume: run the same command again; complete shards are kept, the rest is written\n"
        "exit codes: 0 done\n"
        "            2 bad input: configuration, checkpoint, tokenizer, data, or a DIR holding another cache\n"
        "              (the message says what to change)\n"
        "            75 stopped by SIGUSR1/SIGTERM/SIGINT after the shards in progress (run it again to continue)",
    )
    parser.add_argument("--config", help="YAML experiment file: the one the distillation run will use")
    parser.add_argument("--out", required=True, help="the cache directory (created; a partial one is completed)")
    parser.add_argument(
        "--top-k", required=True, type=_top_k, help="log-probs stored per token: a number K, or `full` (every one)"
    )
    parser.add_argument(
        "--log-prob-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="how log-probs are stored (default float16; float32 doubles their bytes)",
    )
    parser.add_argument(
        "--split", choices=("all", "train", "valid"), default="all", help="which splits this job writes (default all)"
    )
    parser.add_argument(
        "--samples",
        type=_samples,
        help="train samples START:END this job writes (shard-aligned), so that separate jobs share the work",
    )
    parser.add_argument(
        "--shard-samples", type=int, help="samples per shard (default: ~256 MiB per shard, or the existing cache's)"
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, applied after --config")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    from taidtron.train import session, start_process, user_error

    stop = start_process()  # as for training; here a stop signal ends the job between shards (exit 75)
    from taidtron.config import ConfigError, load_config
    from taidtron.preemption import PREEMPTED_EXIT_CODE

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        return user_error("configuration error", exc)
    from taidtron.cache import CacheOptions, write_cache

    options = CacheOptions(
        out=args.out,
        top_k=args.top_k,
        log_prob_dtype=args.log_prob_dtype,
        splits=("train", "valid") if args.split == "all" else (args.split,),
        samples=args.samples,
        shard_samples=args.shard_samples,
    )
    try:
        with session(cfg, roles=("teacher",)) as ctx:
            result = write_cache(cfg, ctx, options, stop)
    except ValueError as exc:  # config, checkpoint, tokenizer, data or cache problems the user must fix
        return user_error("error", exc)
    return PREEMPTED_EXIT_CODE if result["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
