"""The trainer: build the pair on megatron-core and run optimizer steps (the run around them, `fit`, is
taidtron/loop.py).

One optimizer step (`Trainer.train_step`), top to bottom:
  micro-batches -> per stage: teacher forward under no_grad, student forward (the pair) -> last stage: the objective
  on vocab shards (token sums) -> backward through the student only (megatron 1F1B schedule, real p2p) ->
  grads all-reduced over DP and divided by the global token count -> global loss and gradient norm -> clip ->
  AdamW step -> LR step -> t update from the global-batch token-mean distillation loss (identical on every rank).
A step whose loss or gradient norm is not finite is skipped: no weight, optimizer, LR or t change (its batch is
consumed, as in Megatron-LM); `optim.max_skipped_steps` consecutive skips stop the run.
With an objective that needs no teacher (`taid.loss=lm`) the same loop trains the student alone; with a teacher
cache (`teacher.cache`) no teacher is built and the last stage rebuilds each micro-batch's teacher-logit shard from
the cache's records, read ahead with the batch (`taidtron.cache`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from taidtron import checkpoint, overrides
from taidtron.config import (
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    TAIDConfig,
    TrainConfig,
    padded_vocab_size,
)
from taidtron.distributed import ParallelContext
from taidtron.flops import count_parameters, distillation_flops_per_token
from taidtron.losses import (
    LossTerms,
    ObjectiveParameters,
    TAIDSchedule,
    get_loss,
    run_models,
    teacher_logits_from_records,
    vocab_parallel_fkl_loss,
    vocab_parallel_lm_loss,
)
from taidtron.losses.diagnostics import vocab_parallel_entropy, vocab_parallel_top1_agreement
from taidtron.models import DistillationPair, build_gpt
from taidtron.overrides.pipeline import pipeline_config, student_grad_schedule

Batch = dict[str, torch.Tensor]


class TrainingDiverged(ValueError):
    """optim.max_skipped_steps consecutive steps had a non-finite loss or gradient norm: the user must act."""


@dataclass
class StepResult:
    loss: float
    """Global-batch token-mean loss that drives t: the distillation loss, or the LM loss of `taid.loss=lm`."""
    lm_loss: float | None
    """Global-batch token-mean next-token loss of the student, when the objective computes it."""
    grad_norm: float
    """Global gradient norm before clipping (NaN or inf when the step was skipped for it)."""
    lr: float
    taid_t: float | None
    """t after this step's update (the value the next step uses); None when the objective does not use t."""
    tokens: int
    """Loss tokens in the global batch."""
    seconds: float
    skipped: bool = False
    """The loss or the gradient norm was not finite: nothing was updated."""


def params_dtype_for(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


class Trainer:
    """The pair on megatron-core (DDP, distributed optimizer, LR schedule, TAID schedule): `train_step` runs one
    optimizer step, `evaluate` a validation pass. Takes the config sections it uses; `teacher` is None when the
    objective needs no teacher or when `teacher_cache` (a `taidtron.cache.TeacherCache`) stands in for it."""

    def __init__(
        self,
        *,
        student: ModelConfig,
        teacher: ModelConfig | None,
        parallel: ParallelConfig,
        taid: TAIDConfig,
        optim: OptimConfig,
        seq_length: int,
        precision: str,
        ctx: ParallelContext,
        vocab_size: int,
        teacher_cache=None,
    ):
        self.objective = get_loss(taid)
        if teacher is not None and teacher_cache is not None:
            raise ValueError("a teacher model and a teacher cache were both given; distil from one of them.")
        if self.objective.needs_teacher != (teacher is not None or teacher_cache is not None):
            raise ValueError(
                f"taid.loss={taid.loss} {'needs' if self.objective.needs_teacher else 'takes no'} teacher."
            )
        self.ctx, self.parallel, self.optim_cfg, self.seq_length = ctx, parallel, optim, seq_length
        self.teacher_cache = teacher_cache
        models = [m for m in (student, teacher) if m is not None]
        self.vocab_size = vocab_size
        # Padded over the cached teacher's vocabulary too: the same logit shards (and student) as the online run.
        cached = [teacher_cache.manifest.teacher_model] if teacher_cache is not None else []
        self.padded_vocab_size = padded_vocab_size(models + cached, parallel.tp)
        if vocab_size > min(m.vocab_size for m in models):
            sizes = " and ".join(
                f"{role}.vocab_size={m.vocab_size}"
                for role, m in (("student", student), ("teacher", teacher))
                if m is not None
            )
            raise ValueError(
                f"the tokenizer has {vocab_size} tokens but {sizes}; the models' embeddings must cover "
                f"the tokenizer (use the tokenizer the models were trained with)."
            )
        self.params_dtype = params_dtype_for(precision, ctx.device)
        self.accumulation_steps = parallel.accumulation_steps(ctx.world_size)

        build = partial(
            build_gpt,
            parallel=parallel,
            padded_vocab_size=self.padded_vocab_size,
            max_seq_length=seq_length,
            pp_rank=ctx.pp_rank,
            params_dtype=self.params_dtype,
            device=ctx.device,
        )
        student_model = build(student)
        teacher_model = build(teacher) if teacher is not None else None
        for role, model_cfg, model in (("student", student, student_model), ("teacher", teacher, teacher_model)):
            if model_cfg is not None and model_cfg.init:
                what = f"{role}.init {model_cfg.init}"
                meta = checkpoint.read_meta(model_cfg.init)
                checkpoint.check_vocabulary(meta, model_cfg.vocab_size, what, f"{role}.vocab_size")
                checkpoint.load_model_weights(model, model_cfg.init, group=ctx.dp_group)
        self.teacher_source = checkpoint.describe_source(teacher.init) if teacher is not None and teacher.init else None
        if teacher_cache is not None:
            self.teacher_source = teacher_cache.source  # a resume with another cache is refused
        count = partial(
            count_parameters,
            tp_group=ctx.tp_group,
            model_parallel_group=ctx.model_parallel_group,
            device=ctx.device,
        )
        self.student_params, self.teacher_params = count(student_model), count(teacher_model)
        # Model FLOPs per token for MFU, from the architectures (taidtron/flops.py: what tools/plan.py assumes).
        self.flops_per_token = distillation_flops_per_token(student, teacher, self.padded_vocab_size, seq_length)

        pair = DistillationPair(
            student_model, teacher_model, pipeline_config(student_model.config, getattr(teacher_model, "config", None))
        )
        overlap = ctx.dp > 1
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            # Data-parallel communication behind compute: each gradient bucket is reduced as soon as the last
            # micro-batch's backward has filled it, and (distributed optimizer) the updated weights are gathered
            # bucket by bucket as the next forward reaches them (`sync_weights` before reading them elsewhere).
            overlap_grad_reduce=overlap,
            overlap_param_gather=overlap and parallel.distributed_optimizer,
            use_distributed_optimizer=parallel.distributed_optimizer,
        )
        self.model = DistributedDataParallel(config=pair.config, ddp_config=ddp_config, module=pair)
        try:
            self._build_optimizer(optim, parallel, taid, ctx)
        except BaseException:
            self.close()  # else DDP's hooks keep this half-built trainer and its process groups alive
            raise
        self.step = 0
        self.consumed_samples = 0
        self.skipped_steps = 0
        self.consecutive_skips = 0

    def _build_optimizer(self, optim: OptimConfig, parallel: ParallelConfig, taid: TAIDConfig, ctx) -> None:
        """Megatron's optimizer and LR schedule around the DDP model, the TAID schedule, and the schedule hooks."""
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=optim.lr,
                min_lr=optim.min_lr,
                weight_decay=optim.weight_decay,
                adam_beta1=optim.adam_beta1,
                adam_beta2=optim.adam_beta2,
                adam_eps=optim.adam_eps,
                clip_grad=optim.clip_grad,
                bf16=self.params_dtype == torch.bfloat16,
                params_dtype=self.params_dtype,
                use_distributed_optimizer=parallel.distributed_optimizer,
            ),
            [self.model],
            use_gloo_process_groups=ctx.gloo_groups,
        )
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0,
            max_lr=optim.lr,
            min_lr=optim.min_lr,
            lr_warmup_steps=optim.warmup_steps,
            lr_decay_steps=optim.train_steps,
            lr_decay_style="cosine",
            start_wd=optim.weight_decay,
            end_wd=optim.weight_decay,
            wd_incr_steps=optim.train_steps,
            wd_incr_style="constant",
            # The config is the source of truth: a resume is refused when it differs from the checkpoint's in a
            # schedule value unless checkpoint.override accepts it, so on load the scheduler keeps the values it was
            # built with (megatron's --override-opt_param-scheduler), with the checkpoint's step count.
            use_checkpoint_opt_param_scheduler=False,
            override_opt_param_scheduler=True,
        )
        self.schedule_steps = optim.train_steps
        """Horizon of the LR decay and of t's linear floor; a resume that extends the run keeps the checkpoint's."""
        self.schedule = TAIDSchedule(
            t_start=taid.t_start, t_end=taid.t_end, alpha=taid.alpha, beta=taid.beta, adaptive=taid.adaptive
        )
        # The objective's own parameters (ctkd's temperature), trained beside the student by an AdamW of their own.
        trainable = self.objective.trainable
        self.objective_parameters = None if trainable is None else ObjectiveParameters(trainable, optim, ctx.device)

        # megatron's schedules read their hooks from the model config.
        model_config = self.model.module.config
        model_config.no_sync_func = self.model.no_sync
        model_config.finalize_model_grads_func = finalize_model_grads
        model_config.grad_scale_func = self.optimizer.scale_loss
        # 1F1B whose backward p2p carries only the student's half of the activation gradient (the teacher's is 0)
        self.forward_backward = student_grad_schedule(model_config, self.student.config.hidden_size)

    @property
    def student(self):
        return self.model.module.student

    def sync_weights(self) -> None:
        """Make every rank's student weights current. With `overlap_param_gather` the optimizer step updates only
        this rank's shard and the rest arrives during the next forward; call this before reading the weights outside
        a forward (saving a checkpoint)."""
        if self.model.use_forward_hook:
            self.model.disable_forward_pre_hook(param_sync=True)  # a synchronous all-gather of every bucket
            self.model.enable_forward_pre_hook()

    def close(self) -> None:
        """Let the models, optimizer and their process groups be freed once the caller drops this trainer (megatron's
        DDP otherwise keeps them for the life of the process); the trainer must not train after."""
        overrides.release_grad_hooks(self.model)

    # ------------------------------------------------------------------------------------------------------
    # one micro-batch

    def _forward_step(self, data_iterator: Iterator[Batch], model, *, evaluate: bool = False):
        batch = next(data_iterator)
        tokens = batch["tokens"].to(self.ctx.device, non_blocking=True)
        position_ids = batch["position_ids"].to(self.ctx.device, non_blocking=True)
        output = model(tokens, position_ids)
        if not self.ctx.is_last_stage:
            return output, None
        student_logits, teacher_logits = output  # [b, s, V_padded / tp] each (teacher: None without one)
        if self.teacher_cache is not None:  # the teacher's shard from the records the batch carries
            teacher_logits = teacher_logits_from_records(
                batch,
                vocab_size=self.vocab_size,
                local_vocab=student_logits.shape[-1],
                rank=self.ctx.tp_rank,
                like=student_logits,
            )
        # non_blocking: a blocking host-to-device copy waits for the stream, a host sync per micro-batch
        labels = batch["labels"].to(self.ctx.device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(self.ctx.device, non_blocking=True).float()
        terms = self.objective(
            student_logits,
            teacher_logits,
            labels,
            t=self.schedule.t,
            vocab_size=self.vocab_size,
            group=self.ctx.tp_group,
        )  # [b, s] fp32 each
        extra = self._validation_terms(student_logits, teacher_logits, labels, terms) if evaluate else {}
        return terms.total, partial(_masked_token_sums, loss_mask, terms, extra)

    def _validation_terms(self, student_logits, teacher_logits, labels, terms: LossTerms) -> dict[str, torch.Tensor]:
        """Per-token validation metrics beyond the objective: the student's (and teacher's) next-token loss and
        entropy, KL(teacher || student) and top-1 agreement, over the true vocabulary."""
        shards = {"vocab_size": self.vocab_size, "group": self.ctx.tp_group}
        lm = partial(vocab_parallel_lm_loss, labels=labels, **shards)
        out = {"student_lm": terms.lm if terms.lm is not None else lm(student_logits)}
        out["student_entropy"] = vocab_parallel_entropy(student_logits, **shards)
        if teacher_logits is not None:
            out["teacher_lm"] = lm(teacher_logits)
            out["teacher_entropy"] = vocab_parallel_entropy(teacher_logits, **shards)
            out["top1_agreement"] = vocab_parallel_top1_agreement(student_logits, teacher_logits, **shards)
            out["kl_teacher_student"] = vocab_parallel_fkl_loss(
                student_logits,
                teacher_logits,
                impl=self.objective.impl,
                vocab_size=self.vocab_size,
                group=self.ctx.tp_group,
            )
        return out

    # ------------------------------------------------------------------------------------------------------
    # one optimizer step

    def train_step(self, micro_batches: Iterator[Batch]) -> StepResult:
        start = time.perf_counter()
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        if self.objective_parameters is not None:
            self.objective_parameters.start_step(min(self.step, self.schedule_steps), self.schedule_steps)
        per_micro_batch = self.forward_backward(
            forward_step_func=self._forward_step,
            data_iterator=micro_batches,
            model=[self.model],
            num_microbatches=self.accumulation_steps,
            seq_length=self.seq_length,
            micro_batch_size=self.parallel.micro_batch_size,
            forward_only=False,
        )
        sums = self._global_sums(per_micro_batch)
        tokens = max(sums["tokens"], 1.0)
        loss = (sums["distill"] if self.objective.needs_teacher else sums["lm"]) / tokens
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses, before the scheduler moves it
        finite = True
        if self.objective_parameters is not None:  # like the loss, their gradient lives on the last stage
            finite = self.objective_parameters.reduce_gradients(
                holds_gradient=self.ctx.is_last_stage and self.ctx.tp_rank == 0,
                tokens=tokens,
                group=dist.group.WORLD if self.ctx.world_size > 1 else None,
            )
        # Decided from the global loss and the global gradient norm, so every rank applies or skips alike (a
        # non-finite gradient of the objective's own parameters counts as a non-finite loss).
        applied, grad_norm = overrides.step_if_finite(
            self.optimizer, loss=loss if finite else math.nan, clip_grad=self.optim_cfg.clip_grad
        )
        taid_t = self.schedule.t if self.objective.uses_t else None
        if applied:
            if self.objective_parameters is not None:
                self.objective_parameters.step(lr)
            self.scheduler.step(increment=1)
            if self.objective.uses_t:
                # t moves once per optimizer step from the global mean, so every rank and layout sees the same t;
                # its linear floor counts the optimizer steps done before this one (the official code's
                # global_step), up to the schedule's horizon.
                taid_t = self.schedule.update(loss, min(self.step, self.schedule_steps), self.schedule_steps)
            self.consecutive_skips = 0
        else:
            self.skipped_steps += 1
            self.consecutive_skips += 1
        self.step += 1
        self.consumed_samples += self.parallel.global_batch_size
        lm_loss = sums["lm"] / tokens if "lm" in sums else None
        return StepResult(
            loss=loss,
            lm_loss=lm_loss,
            grad_norm=grad_norm,
            lr=lr,
            taid_t=taid_t,
            tokens=int(sums["tokens"]),
            seconds=time.perf_counter() - start,
            skipped=not applied,
        )

    @torch.no_grad()
    def evaluate(self, batches: Iterator[Batch], num_steps: int) -> dict[str, float]:
        """Validation at the current t (t is not updated): the objective's terms, the student's next-token loss and
        entropy and, with a teacher, the teacher's next-token loss and entropy, KL(teacher || student) and top-1
        agreement (the fraction of tokens whose most likely next token is the same for both)."""
        self.model.eval()
        totals: dict[str, float] = {}
        for _ in range(num_steps):
            per_micro_batch = self.forward_backward(
                forward_step_func=partial(self._forward_step, evaluate=True),
                data_iterator=batches,
                model=[self.model],
                num_microbatches=self.accumulation_steps,
                seq_length=self.seq_length,
                micro_batch_size=self.parallel.micro_batch_size,
                forward_only=True,
            )
            for key, value in self._global_sums(per_micro_batch, evaluate=True).items():
                totals[key] = totals.get(key, 0.0) + value
        self.model.train()
        tokens = max(totals.pop("tokens"), 1.0)
        names = {
            "distill": "valid_distill_loss",
            "student_lm": "valid_student_lm_loss",
            "teacher_lm": "valid_teacher_lm_loss",
            "kl_teacher_student": "valid_kl_teacher_student",
            "top1_agreement": "valid_top1_agreement",
            "student_entropy": "valid_student_entropy",
            "teacher_entropy": "valid_teacher_entropy",
        }
        return {names[key]: totals[key] / tokens for key in names if key in totals}

    def _statistics(self, evaluate: bool) -> list[str]:
        """Names of the token sums a micro-batch reports (see `_masked_token_sums`); every rank must know them, also
        the ranks off the last stage, which hold none."""
        names = ["distill"] if self.objective.needs_teacher else []
        if self.objective.distill_fn is None or self.objective.lm_loss_weight > 0:
            names.append("lm")
        if evaluate:
            names += ["student_lm", "student_entropy"]
            if self.objective.needs_teacher:
                names += ["teacher_lm", "kl_teacher_student", "top1_agreement", "teacher_entropy"]
        return names

    def _global_sums(self, per_micro_batch: list[dict], *, evaluate: bool = False) -> dict[str, float]:
        """Token sums of every micro-batch, summed over data-parallel ranks, plus the global token count (`tokens`).
        Only the last stage's TP rank 0 holds them; one all-reduce over the world gives every rank the same values
        (layout-independent), read back with one device-to-host copy."""
        keys = [f"{name}_sum" for name in self._statistics(evaluate)] + ["tokens"]
        local = torch.zeros(len(keys), dtype=torch.float64, device=self.ctx.device)
        if self.ctx.is_last_stage and self.ctx.tp_rank == 0 and per_micro_batch:
            local += torch.stack([torch.stack([stats[k].double() for k in keys]) for stats in per_micro_batch]).sum(0)
        if self.ctx.world_size > 1:
            dist.all_reduce(local)
        return {key.removesuffix("_sum"): value for key, value in zip(keys, local.tolist())}

    # ------------------------------------------------------------------------------------------------------
    # state for checkpoints

    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "taid": self.schedule.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
        }
        if self.objective_parameters is not None:
            state["objective"] = self.objective_parameters.state_dict()
        return state

    def load_state_dict(self, state: dict, *, stretch_schedule: bool = False) -> None:
        """Restore the trainer's part of a checkpoint (after `checkpoint.load_checkpoint` restored the weights and
        the optimizer). The LR schedule and the optimizer's hyper-parameters take this run's config (equal to the
        checkpoint's unless checkpoint.override accepted a change); the schedules' horizon stays the checkpoint's
        unless `stretch_schedule` (optim.train_steps in checkpoint.override)."""
        self.step = int(state["step"])
        self.consumed_samples = int(state["consumed_samples"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
        self.schedule.load_state_dict(state["taid"])
        if self.objective_parameters is not None:
            if "objective" not in state:
                raise ValueError(
                    f"taid.loss={self.objective.name} trains parameters of its own, but the checkpoint holds none; "
                    "resume it with the objective it was trained with, or start a new run."
                )
            self.objective_parameters.load_state_dict(state["objective"])
        self.scheduler.load_state_dict(state["scheduler"])
        horizon = (
            self.optim_cfg.train_steps if stretch_schedule else overrides.saved_schedule_horizon(state["scheduler"])
        )
        self.schedule_steps = horizon
        overrides.set_schedule_horizon(self.scheduler, horizon)
        optim = self.optim_cfg
        overrides.set_optimizer_hyperparameters(
            self.optimizer,
            lr=optim.lr,
            min_lr=optim.min_lr,
            betas=(optim.adam_beta1, optim.adam_beta2),
            eps=optim.adam_eps,
        )
        self.scheduler.step(increment=0)  # every param group's lr and weight decay from the values above


def _masked_token_sums(loss_mask: torch.Tensor, terms: LossTerms, extra: dict[str, torch.Tensor], total: torch.Tensor):
    """megatron loss_func contract with calculate_per_token_loss: (sum to back-propagate, token count, statistics
    to report). Statistics are token sums; the trainer divides them by the global token count."""
    num_tokens = loss_mask.sum()
    stats = {"tokens": num_tokens.detach()}
    for name, per_token in (("distill", terms.distill), ("lm", terms.lm), *extra.items()):
        if per_token is not None:
            stats[f"{name}_sum"] = (per_token.detach() * loss_mask).sum()
    return (total * loss_mask).sum(), num_tokens.to(torch.int), stats


def build_trainer(cfg: TrainConfig, ctx: ParallelContext, vocab_size: int, teacher_cache=None) -> Trainer:
    """The Trainer of an experiment: hands it the config sections it uses (and the opened `teacher.cache`)."""
    teacher = cfg.teacher if "teacher" in run_models(cfg) else None
    return Trainer(
        student=cfg.student,
        teacher=teacher,
        parallel=cfg.parallel,
        taid=cfg.taid,
        optim=cfg.optim,
        seq_length=cfg.data.seq_length,
        precision=cfg.precision,
        ctx=ctx,
        vocab_size=vocab_size,
        teacher_cache=teacher_cache,
    )
