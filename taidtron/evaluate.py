"""Held-out evaluation: `python -m taidtron.evaluate --config X.yaml student.init=CKPT teacher.init=CKPT [...]`.

Builds the experiment's Trainer (`taidtron.trainer.build_trainer`, which loads `student.init` and, for a
distillation objective, `teacher.init`) and runs `Trainer.evaluate` over the test split (the third share of
data.split, which training never reads) or the valid split. Prints one JSON object and, with --out, writes it
atomically: `<split>_student_lm_loss` (next-token loss of the student) and `<split>_student_entropy` (the mean entropy
of its next-token distribution), and with a teacher `<split>_teacher_lm_loss`, `<split>_teacher_entropy`,
`<split>_kl_teacher_student` (KL(p_teacher || q_student) per token), `<split>_top1_agreement` (the fraction of tokens
whose most likely next token is the teacher's) and `<split>_distill_loss` (the objective of `taid.loss` at its
initial state: t = t_start for taid), plus the batches and tokens read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from taidtron.io import atomic_write_text


def evaluate(cfg, ctx, *, split: str = "test", max_batches: int | None = None) -> dict:
    """The metrics above for the checkpoints cfg names, on this rank's share of `split` (collective)."""
    from taidtron.data import build_data_iterators, build_test_iterator, load_shared_tokenizer
    from taidtron.losses import run_models
    from taidtron.trainer import build_trainer

    if cfg.teacher.cache:  # the cache holds the training samples only: the teacher runs itself here
        cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, cache=None))
    missing = [f"{role}.init" for role, model in run_models(cfg).items() if not model.init]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} not set: evaluation measures trained checkpoints; pass "
            f"{missing[0]}=<checkpoint directory>."
        )
    tokenizer = load_shared_tokenizer(cfg.data)
    trainer = build_trainer(cfg, ctx, tokenizer.vocab_size)
    try:  # released however this ends: a failed evaluation must not keep the models and their process groups
        batch = dict(
            micro_batch_size=cfg.parallel.micro_batch_size,
            global_batch_size=cfg.parallel.global_batch_size,
            dp_rank=ctx.dp_rank,
            dp_size=ctx.dp,
        )
        if split == "test":
            batches, num_batches = build_test_iterator(cfg.data, tokenizer, max_batches=max_batches, **batch)
        else:
            num_batches = max_batches or cfg.logging.eval_iters
            _, make_valid = build_data_iterators(cfg.data, tokenizer, train_steps=1, eval_iters=num_batches, **batch)
            if make_valid is None:
                raise ValueError(f"data.split={cfg.data.split!r} has no valid share to evaluate on.")
            batches = make_valid()
        metrics = trainer.evaluate(batches, num_batches)
    finally:
        trainer.close()
    return {
        "split": split,
        "batches": num_batches,
        "tokens": num_batches * cfg.parallel.global_batch_size * cfg.data.seq_length,
        **{name.replace("valid_", f"{split}_", 1): value for name, value in metrics.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m taidtron.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 done, 2 bad input (the message says what to change)",
    )
    parser.add_argument("--config", help="YAML experiment file (see configs/)")
    parser.add_argument("--split", choices=["test", "valid"], default="test", help="split to read (default test)")
    parser.add_argument(
        "--max-batches",
        type=int,
        help="global batches to read (default: the whole test split; logging.eval_iters for valid)",
    )
    parser.add_argument("--out", help="also write the JSON here (atomically)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, applied after --config")
    args = parser.parse_intermixed_args(argv)  # options and section.key=value overrides in any order
    from taidtron.config import ConfigError, load_config
    from taidtron.train import session, user_error

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        return user_error("configuration error", exc)
    try:
        with session(cfg) as ctx:
            result = evaluate(cfg, ctx, split=args.split, max_batches=args.max_batches)
    except ValueError as exc:  # config, checkpoint, tokenizer or data the user must change
        return user_error("error", exc)
    if ctx.is_main:
        text = json.dumps(result)
        print(text)
        if args.out:
            atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
