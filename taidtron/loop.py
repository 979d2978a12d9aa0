"""The run loop: `fit` builds the trainer (after every start-up check), resumes, trains with periodic validation and
checkpoints, answers stop signals with a save, and releases everything however the run ends. One optimizer step
is `taidtron.trainer.Trainer.train_step`; what a row of metrics.jsonl holds is `_step_row` (docs/metrics.md)."""

from __future__ import annotations

import contextlib

import torch

from taidtron import console
from taidtron.checkpoint import Checkpointer, TokenizerRef, describe_latest
from taidtron.config import OptimConfig, TrainConfig, record_run_config
from taidtron.data import build_data_iterators, check_blend, load_shared_tokenizer
from taidtron.distributed import ParallelContext
from taidtron.flops import peak_flops
from taidtron.metrics import MetricsLogger
from taidtron.preemption import PREEMPTED_EXIT_CODE, StopSignal
from taidtron.trainer import StepResult, Trainer, TrainingDiverged, build_trainer


def fit(cfg: TrainConfig, ctx: ParallelContext, stop: StopSignal | None = None) -> int:
    """The whole run: build, resume, train with periodic eval/checkpoints, final eval and save. Returns the
    process exit code: 0 when done, PREEMPTED_EXIT_CODE after a signal-triggered save. `stop` should be created at
    process start, so a signal that arrives while the run is being built still ends in a save."""

    tokenizer = load_shared_tokenizer(cfg.data)
    datasets = check_blend(cfg.data, tokenizer)  # files, index, sizes and tokenizer, before any model is built
    checkpointer = Checkpointer(cfg, ctx)
    tokenizer_ref = TokenizerRef.of(cfg.data.tokenizer, tokenizer.fingerprint())
    resume = checkpointer.plan(tokenizer_ref)  # before building
    teacher_cache = None
    if cfg.teacher.cache:  # checked against the run, with every shard it still reads: its refusals come here
        from taidtron.cache import open_run_cache

        consumed = int(resume.meta.trainer["consumed_samples"]) if resume is not None else 0
        teacher_cache = open_run_cache(cfg, ctx, tokenizer_ref, consumed_samples=consumed)
    # From here on the trainer holds the models, the optimizer and (through megatron's DDP) every process group:
    # it is released however the run ends, or a failed run keeps them and their gloo threads for the process's life.
    with contextlib.ExitStack() as release:
        trainer = build_trainer(cfg, ctx, tokenizer.vocab_size, teacher_cache)
        release.callback(trainer.close)
        checkpointer.restore(trainer, resume)
        started = resume.describe() if resume is not None else None
        if ctx.is_main:
            record_run_config(cfg, cfg.logging.run_dir, started or "fresh start")

        train_iter, make_valid_iter = build_data_iterators(
            cfg.data,
            tokenizer,
            micro_batch_size=cfg.parallel.micro_batch_size,
            global_batch_size=cfg.parallel.global_batch_size,
            dp_rank=ctx.dp_rank,
            dp_size=ctx.dp,
            train_steps=cfg.optim.train_steps,
            eval_iters=cfg.logging.eval_iters,
            consumed_samples=trainer.consumed_samples,
            dataset_samples=teacher_cache.dataset_samples if teacher_cache is not None else None,
        )
        if teacher_cache is not None and ctx.is_last_stage:  # only the loss reads the records
            vocab = dict(padded_vocab_size=trainer.padded_vocab_size, vocab_size=trainer.vocab_size)
            train_iter, make_valid_iter = teacher_cache.attach_run(train_iter, make_valid_iter, ctx=ctx, **vocab)
        if hasattr(train_iter, "close"):  # the cache's read-ahead thread
            release.callback(train_iter.close)
        logger = MetricsLogger(
            cfg.logging,
            enabled=ctx.is_main,
            total_steps=cfg.optim.train_steps,
            start_step=trainer.step,
            config_dict=checkpointer.config,
        )
        release.callback(logger.close)  # closed first
        if ctx.is_main:
            logger.write_console(
                console.banner(
                    cfg,
                    ctx,
                    trainer,
                    datasets=datasets,
                    resumed=started,
                    wandb_run=logger.wandb_description,
                    notes=checkpointer.notes,
                )
            )
        peak = peak_flops(torch.cuda.get_device_name() if ctx.device.type == "cuda" else None)
        stop = stop or StopSignal()
        while trainer.step < cfg.optim.train_steps:
            result = trainer.train_step(train_iter)
            logger.log(_step_row(trainer, result, cfg, peak, ctx.world_size))
            if result.skipped:
                _on_skipped_step(result, trainer, cfg.optim, checkpointer.dir, logger)
            last = trainer.step == cfg.optim.train_steps
            periodic_eval = cfg.logging.eval_interval and trainer.step % cfg.logging.eval_interval == 0
            if make_valid_iter and (periodic_eval or last):  # the last step is validated once, marked final
                final = {"final": True} if last else {}
                logger.log_eval(
                    {"step": trainer.step, **final, **trainer.evaluate(make_valid_iter(), cfg.logging.eval_iters)}
                )
            preempted = stop.agreed(ctx)
            if checkpointer.due(trainer.step, skipped=result.skipped, now=preempted or last):
                logger.write_console(f"saved {checkpointer.save(trainer)}")
            if preempted and not last:
                stop.finish(PREEMPTED_EXIT_CODE)  # saved: a further signal (the launcher stopping the job) ends it
                logger.write_console(
                    f"signal {stop.received}: saved at step {trainer.step}; exiting with "
                    f"{PREEMPTED_EXIT_CODE} so the job is requeued"
                )
                return PREEMPTED_EXIT_CODE
        return 0


def _step_row(trainer: Trainer, result: StepResult, cfg: TrainConfig, peak, world_size: int) -> dict:
    """One row of metrics.jsonl (see docs/metrics.md)."""
    row = {
        "step": trainer.step,
        "consumed_samples": trainer.consumed_samples,
        "consumed_tokens": trainer.consumed_samples * cfg.data.seq_length,
        "loss": result.loss,
    }
    if result.lm_loss is not None and trainer.objective.needs_teacher:
        row["lm_loss"] = result.lm_loss
    if result.taid_t is not None:
        row["taid_t"] = result.taid_t
    row.update(
        lr=result.lr,
        grad_norm=result.grad_norm,
        tokens_per_s=result.tokens / result.seconds,
        step_time_s=result.seconds,
        skipped=result.skipped,
        skipped_steps=trainer.skipped_steps,
    )
    if peak:  # every token of the batch goes through the models, masked or not
        processed_per_s = cfg.parallel.global_batch_size * cfg.data.seq_length / result.seconds
        row["mfu"] = trainer.flops_per_token * processed_per_s / (peak.flops * world_size)
    return row


def _on_skipped_step(result: StepResult, trainer: Trainer, optim: OptimConfig, ckpt_dir, logger) -> None:
    """Say that a step was skipped; stop the run (TrainingDiverged, exit code 2) after optim.max_skipped_steps in a
    row."""

    streak = trainer.consecutive_skips
    logger.write_console(
        f"step {trainer.step} skipped: loss {result.loss:.6g}, gradient norm "
        f"{result.grad_norm:.6g}; weights, optimizer, learning rate and t unchanged ({streak} in a "
        f"row; the run stops at optim.max_skipped_steps={optim.max_skipped_steps})"
    )
    if streak >= optim.max_skipped_steps:
        raise TrainingDiverged(
            f"training diverged: {streak} steps in a row ({trainer.step - streak + 1}-{trainer.step}) had a "
            f"non-finite loss or gradient norm and were skipped (optim.max_skipped_steps={optim.max_skipped_steps}); "
            f"{describe_latest(ckpt_dir)}. Lower optim.lr and resume with "
            f"checkpoint.override=[optim.lr] (optim.min_lr too if it is above the new lr), or resume from an "
            f"earlier checkpoint with checkpoint.load_iteration=<step>."
        )
