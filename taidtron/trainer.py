"""The distillation loop: build the pair on megatron-core, run optimizer steps, update t, log, checkpoint.

One optimizer step (`Trainer.train_step`), top to bottom:
  micro-batches -> per stage: teacher forward under no_grad, student forward (the pair) -> last stage: TAID loss
  on vocab shards (token sum) -> backward through the student only (megatron 1F1B schedule, real p2p) ->
  grads all-reduced over DP and divided by the global token count -> clip -> AdamW step -> LR step ->
  t update from the global-batch token-mean distillation loss (identical on every rank).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from taidtron.config import TrainConfig
from taidtron.distributed import ParallelContext
from taidtron.losses import TAIDSchedule, get_loss
from taidtron.models import DistillationPair, build_gpt, pipeline_config
from taidtron.preemption import PREEMPTED_EXIT_CODE, StopSignal

Batch = dict[str, torch.Tensor]


@dataclass
class StepResult:
    loss: float
    """Global-batch token-mean distillation loss (the value fed to the t update)."""
    grad_norm: float
    lr: float
    taid_t: float
    """t after this step's update (the value the next step uses)."""
    tokens: int
    """Loss tokens in the global batch."""
    seconds: float


def params_dtype_for(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def count_parameters(model: torch.nn.Module, group: dist.ProcessGroup | None, device: torch.device) -> int:
    """Parameters of the whole model (summed over the model-parallel group that holds its shards). `device` is where
    the group's backend can reduce (NCCL: the GPU)."""
    local = torch.tensor([sum(p.numel() for p in model.parameters())], dtype=torch.float64, device=device)
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(local, group=group)
    return int(local.item())


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: ParallelContext, *, vocab_size: int):
        from megatron.core import parallel_state
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from taidtron import checkpoint

        self.cfg, self.ctx = cfg, ctx
        self.vocab_size = vocab_size
        self.padded_vocab_size = cfg.padded_vocab_size()
        if vocab_size > min(cfg.student.vocab_size, cfg.teacher.vocab_size):
            raise ValueError(f"the tokenizer has {vocab_size} tokens but student.vocab_size={cfg.student.vocab_size}"
                             f" and teacher.vocab_size={cfg.teacher.vocab_size}; the models' embeddings must cover "
                             f"the tokenizer (use the tokenizer the models were trained with).")
        self.params_dtype = params_dtype_for(cfg.precision, ctx.device)
        self.accumulation_steps = cfg.parallel.accumulation_steps(ctx.world_size)

        build = partial(build_gpt, parallel=cfg.parallel, padded_vocab_size=self.padded_vocab_size,
                        max_seq_length=cfg.data.seq_length, pp_rank=ctx.pp_rank, params_dtype=self.params_dtype,
                        device=ctx.device)
        student, teacher = build(cfg.student), build(cfg.teacher)
        self.teacher_source = None
        for role, model in (("student", student), ("teacher", teacher)):
            source = getattr(cfg, role).init
            if source:
                checkpoint.load_model_weights(model, source, group=ctx.dp_group)
        if cfg.teacher.init:
            self.teacher_source = checkpoint.describe_source(cfg.teacher.init)
        model_parallel_group = parallel_state.get_model_parallel_group()
        self.student_params = count_parameters(student, model_parallel_group, ctx.device)
        self.teacher_params = count_parameters(teacher, model_parallel_group, ctx.device)

        pair = DistillationPair(student, teacher, pipeline_config(student.config, teacher.config))
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        )
        self.model = DistributedDataParallel(config=pair.config, ddp_config=ddp_config, module=pair)
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=cfg.optim.lr,
                min_lr=cfg.optim.min_lr,
                weight_decay=cfg.optim.weight_decay,
                adam_beta1=cfg.optim.adam_beta1,
                adam_beta2=cfg.optim.adam_beta2,
                adam_eps=cfg.optim.adam_eps,
                clip_grad=cfg.optim.clip_grad,
                bf16=self.params_dtype == torch.bfloat16,
                params_dtype=self.params_dtype,
                use_distributed_optimizer=cfg.parallel.distributed_optimizer,
            ),
            [self.model],
        )
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0,
            max_lr=cfg.optim.lr,
            min_lr=cfg.optim.min_lr,
            lr_warmup_steps=cfg.optim.warmup_steps,
            lr_decay_steps=cfg.optim.train_steps,
            lr_decay_style="cosine",
            start_wd=cfg.optim.weight_decay,
            end_wd=cfg.optim.weight_decay,
            wd_incr_steps=cfg.optim.train_steps,
            wd_incr_style="constant",
        )
        self.schedule = TAIDSchedule(t_start=cfg.taid.t_start, t_end=cfg.taid.t_end, alpha=cfg.taid.alpha,
                                     beta=cfg.taid.beta, adaptive=cfg.taid.adaptive)
        self.loss_fn: Callable = get_loss(cfg.taid.loss)
        self.loss_options: dict = {"chunk_tokens": cfg.taid.chunk_tokens}
        if cfg.taid.loss in ("skew_fkl", "skew_rkl"):
            self.loss_options["skew"] = cfg.taid.skew
        elif cfg.taid.loss == "js":
            self.loss_options["beta"] = cfg.taid.js_beta

        # megatron's schedules read their hooks from the model config.
        model_config = pair.config
        model_config.no_sync_func = self.model.no_sync
        model_config.finalize_model_grads_func = finalize_model_grads
        model_config.grad_scale_func = self.optimizer.scale_loss
        self.forward_backward = get_forward_backward_func()
        self.step = 0
        self.consumed_samples = 0

    # ------------------------------------------------------------------------------------------------------
    # one micro-batch

    def _forward_step(self, data_iterator: Iterator[Batch], model, *, evaluate: bool = False):
        batch = next(data_iterator)
        tokens = batch["tokens"].to(self.ctx.device, non_blocking=True)
        position_ids = batch["position_ids"].to(self.ctx.device, non_blocking=True)
        output = model(tokens, position_ids)
        if not self.ctx.is_last_stage:
            return output, None
        student_logits, teacher_logits = output  # [b, s, V_padded / tp] each
        token_loss = self.loss_fn(student_logits, teacher_logits, t=self.schedule.t, vocab_size=self.vocab_size,
                                  group=self.ctx.tp_group, **self.loss_options)  # [b, s] fp32
        loss_mask = batch["loss_mask"].to(self.ctx.device).float()
        if not evaluate:
            return token_loss, partial(_masked_token_sum, loss_mask)
        labels = batch["labels"].to(self.ctx.device)
        lm_losses = [self._lm_loss(logits, labels) for logits in (student_logits, teacher_logits)]
        return token_loss, partial(_masked_eval_sums, loss_mask, lm_losses)

    def _lm_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy over the true vocabulary: padded columns are excluded (set to -inf). The
        logits are copied because megatron's vocab_parallel_cross_entropy works in place."""
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        local_vocab = logits.shape[-1]
        first_column = self.ctx.tp_rank * local_vocab
        masked = logits.float().clone()
        padding_start = max(0, min(local_vocab, self.vocab_size - first_column))
        masked[..., padding_start:] = float("-inf")
        return vocab_parallel_cross_entropy(masked, labels)  # [b, s]

    # ------------------------------------------------------------------------------------------------------
    # one optimizer step

    def train_step(self, micro_batches: Iterator[Batch]) -> StepResult:
        start = time.perf_counter()
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        per_micro_batch = self.forward_backward(
            forward_step_func=self._forward_step,
            data_iterator=micro_batches,
            model=[self.model],
            num_microbatches=self.accumulation_steps,
            seq_length=self.cfg.data.seq_length,
            micro_batch_size=self.cfg.parallel.micro_batch_size,
            forward_only=False,
        )
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used, before the scheduler moves it
        update_ok, grad_norm, _ = self.optimizer.step()
        if not update_ok:
            raise FloatingPointError(f"optimizer step {self.step + 1} was skipped (non-finite gradients); lower "
                                     f"optim.lr or check the data.")
        self.scheduler.step(increment=1)
        loss_sum, tokens = self._global_sums(per_micro_batch, ["distill_sum", "tokens"])
        loss = loss_sum / max(tokens, 1.0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"distillation loss is {loss} at step {self.step + 1}; lower optim.lr or "
                                     f"check the data and the teacher checkpoint.")
        self.step += 1
        self.consumed_samples += self.cfg.parallel.global_batch_size
        # t moves once per optimizer step from the global mean, so every rank and layout sees the same t.
        taid_t = self.schedule.update(loss, self.step, self.cfg.optim.train_steps)
        return StepResult(loss=loss, grad_norm=float(grad_norm or 0.0), lr=lr,
                          taid_t=taid_t, tokens=int(tokens), seconds=time.perf_counter() - start)

    @torch.no_grad()
    def evaluate(self, batches: Iterator[Batch], num_steps: int) -> dict[str, float]:
        """Validation at the current t (t is not updated): distillation loss and both models' LM loss."""
        self.model.eval()
        keys = ["distill_sum", "student_lm_sum", "teacher_lm_sum", "tokens"]
        totals = dict.fromkeys(keys, 0.0)
        for _ in range(num_steps):
            per_micro_batch = self.forward_backward(
                forward_step_func=partial(self._forward_step, evaluate=True),
                data_iterator=batches,
                model=[self.model],
                num_microbatches=self.accumulation_steps,
                seq_length=self.cfg.data.seq_length,
                micro_batch_size=self.cfg.parallel.micro_batch_size,
                forward_only=True,
            )
            for key, value in zip(keys, self._global_sums(per_micro_batch, keys)):
                totals[key] += value
        self.model.train()
        tokens = max(totals["tokens"], 1.0)
        return {"valid_distill_loss": totals["distill_sum"] / tokens,
                "valid_student_lm_loss": totals["student_lm_sum"] / tokens,
                "valid_teacher_lm_loss": totals["teacher_lm_sum"] / tokens}

    def _global_sums(self, per_micro_batch: list[dict], keys: list[str]) -> list[float]:
        """Sum statistics over micro-batches and data-parallel ranks. Only the last stage's TP rank 0 holds
        them; one all-reduce over the world gives every rank the same values (layout-independent)."""
        local = torch.zeros(len(keys), dtype=torch.float64)
        if self.ctx.is_last_stage and self.ctx.tp_rank == 0:
            for stats in per_micro_batch:
                local += torch.stack([stats[k].detach().double().cpu() for k in keys])
        if self.ctx.world_size > 1:
            device_local = local.to(self.ctx.device)
            dist.all_reduce(device_local)
            local = device_local.cpu()
        return local.tolist()

    # ------------------------------------------------------------------------------------------------------
    # state for checkpoints

    def state_dict(self) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed_samples, "taid": self.schedule.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.consumed_samples = int(state["consumed_samples"])
        self.schedule.load_state_dict(state["taid"])
        self.scheduler.load_state_dict(state["scheduler"])


def _masked_token_sum(loss_mask: torch.Tensor, token_loss: torch.Tensor):
    """megatron loss_func contract with calculate_per_token_loss: (sum, token count, stats to report)."""
    loss_sum = (token_loss * loss_mask).sum()
    num_tokens = loss_mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"distill_sum": loss_sum.detach(), "tokens": num_tokens.detach().float()}


def _masked_eval_sums(loss_mask: torch.Tensor, lm_losses: list[torch.Tensor], token_loss: torch.Tensor):
    loss_sum, num_tokens, stats = _masked_token_sum(loss_mask, token_loss)
    stats["student_lm_sum"] = (lm_losses[0] * loss_mask).sum()
    stats["teacher_lm_sum"] = (lm_losses[1] * loss_mask).sum()
    return loss_sum, num_tokens, stats




def fit(cfg: TrainConfig, ctx: ParallelContext, stop: StopSignal | None = None) -> int:
    """The whole run: build, resume, train with periodic eval/checkpoints, final eval and save. Returns the
    process exit code: 0 when done, PREEMPTED_EXIT_CODE after a signal-triggered save. `stop` should be created at
    process start, so a signal that arrives while the run is being built still ends in a save."""
    from pathlib import Path

    from taidtron import checkpoint, overrides
    from taidtron.config import save_config
    from taidtron.data import build_data_iterators, load_shared_tokenizer
    from taidtron.metrics import MetricsLogger, peak_flops_per_gpu

    tokenizer = load_shared_tokenizer(cfg.data)
    trainer = Trainer(cfg, ctx, vocab_size=tokenizer.vocab_size)
    student = trainer.model.module.student
    run_dir = Path(cfg.logging.run_dir)
    ckpt_dir = Path(cfg.checkpoint.dir or run_dir / "checkpoints")
    latest = checkpoint.find_latest(ckpt_dir) if cfg.checkpoint.resume else None
    if latest is not None:
        meta = checkpoint.load_checkpoint(latest, model=student, optimizer=trainer.optimizer, group=ctx.dp_group)
        checkpoint.check_teacher_unchanged(meta.teacher, trainer.teacher_source)
        trainer.load_state_dict(meta.trainer)
    if ctx.is_main:
        save_config(cfg, run_dir / "config.yaml")

    train_iter, make_valid_iter = build_data_iterators(
        cfg.data, tokenizer, micro_batch_size=cfg.parallel.micro_batch_size,
        global_batch_size=cfg.parallel.global_batch_size, dp_rank=ctx.dp_rank, dp_size=ctx.dp,
        train_steps=cfg.optim.train_steps, eval_iters=cfg.logging.eval_iters,
        consumed_samples=trainer.consumed_samples)
    config_dict = cfg.to_dict()
    logger = MetricsLogger(cfg.logging, enabled=ctx.is_main, total_steps=cfg.optim.train_steps,
                           start_step=trainer.step, config_dict=config_dict)
    if latest is not None:
        logger.write_console(f"resumed from {latest} at step {trainer.step} (t={trainer.schedule.t:.4f})")
    peak_flops = peak_flops_per_gpu(torch.cuda.get_device_name() if ctx.device.type == "cuda" else None)
    # Model FLOPs per token: 6N for the student (forward + backward), 2N for the teacher (forward only).
    flops_per_token = 6 * trainer.student_params + 2 * trainer.teacher_params

    static_meta = checkpoint.CheckpointMeta(
        model=cfg.student, padded_vocab_size=trainer.padded_vocab_size,
        source=checkpoint.WeightsSource(kind="training", description=f"taidtron training run {run_dir.resolve()}"),
        tokenizer=checkpoint.TokenizerRef.of(cfg.data.tokenizer, tokenizer.fingerprint()),
        seq_length=cfg.data.seq_length, teacher=trainer.teacher_source, config=config_dict)

    def save() -> None:
        meta = dataclasses.replace(static_meta, trainer=trainer.state_dict())
        path = checkpoint.save_checkpoint(ckpt_dir, trainer.step, model=student, optimizer=trainer.optimizer,
                                          meta=meta, keep_last=cfg.checkpoint.keep_last)
        logger.write_console(f"saved {path}")

    overrides.prepare_writer()  # its helper process ignores the stop signals, whatever handlers are installed
    stop = stop or StopSignal()
    try:
        while trainer.step < cfg.optim.train_steps:
            result = trainer.train_step(train_iter)
            tokens_per_s = result.tokens / result.seconds
            row = {"step": trainer.step, "consumed_samples": trainer.consumed_samples,
                   "consumed_tokens": trainer.consumed_samples * cfg.data.seq_length, "loss": result.loss,
                   "taid_t": result.taid_t, "lr": result.lr, "grad_norm": result.grad_norm,
                   "tokens_per_s": tokens_per_s, "step_time_s": result.seconds}
            if peak_flops:
                row["mfu"] = flops_per_token * tokens_per_s / (peak_flops * ctx.world_size)
            logger.log(row)
            if make_valid_iter and cfg.logging.eval_interval and trainer.step % cfg.logging.eval_interval == 0:
                logger.log_eval({"step": trainer.step, **trainer.evaluate(make_valid_iter(), cfg.logging.eval_iters)})
            preempted = stop.agreed(ctx)
            periodic = cfg.checkpoint.save_interval and trainer.step % cfg.checkpoint.save_interval == 0
            if preempted or periodic or trainer.step == cfg.optim.train_steps:
                save()
            if preempted:
                logger.write_console(f"signal {stop.received}: saved at step {trainer.step}; exiting with "
                                     f"{PREEMPTED_EXIT_CODE} so the job is requeued")
                return PREEMPTED_EXIT_CODE
        if make_valid_iter:
            final = trainer.evaluate(make_valid_iter(), cfg.logging.eval_iters)
            logger.log_eval({"step": trainer.step, "final": True, **final})
        return 0
    finally:
        logger.close()
