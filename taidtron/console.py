"""What a person reading a job's log sees: known library noise filtered in one place, the start-up banner, and the
plain per-step line written instead of a progress bar when the output is not a terminal.

`quiet_library_warnings` runs when `taidtron` is imported, so the entry point and every tool get it.
"""

from __future__ import annotations

import datetime
import logging
import warnings
from typing import Any

# Warnings that every rank of every run prints and nobody can act on. Each entry: category, message (regex, matched
# at the start), and why it is safe to drop. Anything not listed here is shown as usual.
_LIBRARY_NOISE = (
    (
        UserWarning,
        r"Transformer Engine and Apex are not installed",
        "megatron-core falls back to torch kernels (4 modules, 4 lines); the banner says whether TE is used",
    ),
    (UserWarning, r"Apex is not installed. Falling back to Torch Norm", "the same fallback, for the norm layers"),
    (
        UserWarning,
        r"full scope is deprecated",
        "megatron-core 0.16.1's own TransformerConfig default (cuda_graph_scope), not a setting of ours",
    ),
    (
        UserWarning,
        r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
        "megatron-core's distributed optimizer probes .grad on its shard views in zero_grad (hasattr), by design",
    ),
    (
        FutureWarning,
        r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
        "megatron-core's gradient and parameter collectives",
    ),
    (
        FutureWarning,
        r"`load_state_dict` is deprecated and will be removed",
        "megatron-core's dist_checkpointing calls torch.distributed.checkpoint.load_state_dict",
    ),
    (
        FutureWarning,
        r"Please use DTensor instead and we are deprecating ShardedTensor",
        "megatron-core's dist_checkpointing builds ShardedTensors",
    ),
    (
        UserWarning,
        r"MimoModelConfig is experimental",
        "megatron-core 0.19 warns at import, from a class body of a model family taidtron does not use",
    ),
)


# Log records (not warnings) of the same kind: logger, message (start), why.
_LIBRARY_LOG_NOISE = (
    (
        "torch.utils.cpp_extension",
        "No CUDA runtime is found",
        "a CUDA build of torch without a GPU (Python 3.12, where PyPI has no CPU wheel): megatron-core 0.19 imports "
        "torch.utils.cpp_extension, which logs it at import on every rank; taidtron builds no extension",
    ),
    (
        "megatron.core.models.gpt.gpt_model",
        "GPTModel IS DEPRECATED",
        "megatron-core 0.19 asks for a migration to HybridModel, which 0.16.1 (the other supported release) lacks; "
        "GPTModel is what both run",
    ),
    (
        "megatron.core.distributed.distributed_data_parallel",
        "DistributedDataParallel: full_param_layout not provided",
        "megatron-core 0.19 computes the layout itself, as 0.16.1 always did; passing one is a 0.19-only API",
    ),
    (
        "megatron.core.dist_checkpointing.strategies.torch",
        "MCore's async save is deprecated",
        "megatron-core 0.19 logs it from its default save strategy; taidtron saves synchronously",
    ),
)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_library_warnings() -> None:
    """Drop the warnings of `_LIBRARY_NOISE` and the log records of `_LIBRARY_LOG_NOISE` in this process
    (idempotent: filterwarnings dedupes equal filters, and a logger keeps one filter of ours)."""
    for category, message, _why in _LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in {name for name, _message, _why in _LIBRARY_LOG_NOISE}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(tuple(m for n, m, _why in _LIBRARY_LOG_NOISE if n == name)))


# ----------------------------------------------------------------------------------------------------------
# per-step line (batch jobs)


def _number(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def step_line(row: dict, total_steps: int, eta_seconds: float | None) -> str:
    """One plain line for a metrics row, e.g.
    `step 20/150 | loss 2.3456 | t 0.5120 | lr 2.95e-03 | grad norm 0.812 | 5,633 tok/s | ETA 0:12:34`."""
    parts = [f"step {row['step']}/{total_steps}", f"loss {_number(row.get('loss'), '.4f')}"]
    if "lm_loss" in row:
        parts.append(f"lm loss {_number(row['lm_loss'], '.4f')}")
    if "taid_t" in row:
        parts.append(f"t {_number(row['taid_t'], '.4f')}")
    parts += [
        f"lr {_number(row.get('lr'), '.3e')}",
        f"grad norm {_number(row.get('grad_norm'), '.3f')}",
        f"{_number(row.get('tokens_per_s'), ',.0f')} tok/s",
    ]
    if row.get("mfu") is not None:
        parts.append(f"MFU {row['mfu']:.1%}")
    if eta_seconds is not None:
        parts.append(f"ETA {datetime.timedelta(seconds=round(eta_seconds))}")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# start-up banner


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def banner(
    cfg,
    ctx,
    trainer,
    *,
    datasets: list,
    resumed: str | None = None,
    wandb_run: str | None = None,
    notes: list[str] = (),
) -> str:
    """The start-up summary a batch log opens with (rank 0): layout, models, data and epochs, the plan, the
    objective, where the outputs go, and `notes` (what start-up could not check). `datasets` are
    `taidtron.data.validate.DatasetSummary`s; `trainer` is the built (and resumed) `taidtron.trainer.Trainer`."""
    from taidtron.data.validate import parse_blend, parse_split
    from taidtron.losses import run_models
    from taidtron.models.gpt import resolve_attention

    par, optim, data, taid = cfg.parallel, cfg.optim, cfg.data, cfg.taid
    device = ctx.device.type
    if device == "cuda":
        import torch

        device = f"cuda ({torch.cuda.get_device_name()})"
    tokens_per_step = par.global_batch_size * data.seq_length
    accumulation = par.global_batch_size // (par.micro_batch_size * ctx.dp)
    lines = [
        "=" * 100,
        f"layout      world {ctx.world_size} = tp {par.tp} x pp {par.pp} x dp {ctx.dp}, sequence parallel "
        f"{'on' if par.sequence_parallel else 'off'}, distributed optimizer "
        f"{'on' if par.distributed_optimizer else 'off'}; {device}, {str(trainer.params_dtype).removeprefix('torch.')} "
        f"parameters (precision={cfg.precision})",
    ]
    models = run_models(cfg)
    for role, model in models.items():
        params = trainer.student_params if role == "student" else trainer.teacher_params
        source = f"init {model.init}" if model.init else "random init"
        lines.append(
            f"{role:<11} {model.family}, {model.num_layers} layers, hidden {model.hidden_size}, "
            f"{model.num_attention_heads} heads / {model.num_query_groups} kv groups, ffn {model.ffn_hidden_size}, "
            f"vocab {model.vocab_size}, {_count(params)} parameters ({params:,}); "
            f"attention {_ATTENTION[resolve_attention(model.attention)]}; {source}"
        )
    if trainer.teacher_cache is not None:
        lines.append(f"teacher     {trainer.teacher_cache.describe()}")
    elif "teacher" not in models:
        lines.append(f"teacher     none (taid.loss={taid.loss} trains the student alone)")
    _, weights = parse_blend(data.blend)
    weights = weights or [1.0]
    train_share = parse_split(data.split)[0]
    planned_tokens = optim.train_steps * tokens_per_step
    for summary, weight in zip(datasets, weights, strict=True):
        share = weight / sum(weights)
        epochs = share * planned_tokens / max(1.0, train_share * summary.tokens)
        lines.append(
            f"data        {summary.prefix}: {summary.documents:,} documents, {summary.tokens:,} tokens "
            f"({summary.dtype}); weight {share:.3f}, {epochs:.2f} epochs of its train split "
            f"({train_share:.0%})"
        )
    uses_t = trainer.objective.uses_t
    if resumed:  # ResumePlan.describe(): where from, at which step, what the start changed
        resume = resumed + (f" (t={trainer.schedule.t:.4f})" if uses_t else "")
        resume += f", {optim.train_steps - trainer.step:,} steps to go"
    else:
        resume = "new run"
    lines += [
        f"batch       {par.global_batch_size} sequences x {data.seq_length} tokens = {tokens_per_step:,} tokens per "
        f"step (micro-batch {par.micro_batch_size} x dp {ctx.dp} x {accumulation} accumulation steps)",
        f"plan        {optim.train_steps:,} steps = {_count(planned_tokens)} tokens ({planned_tokens:,}); {resume}",
        f"optimizer   AdamW lr {optim.lr:g} -> {optim.min_lr:g} (warm-up {optim.warmup_steps} steps, cosine), "
        f"weight decay {optim.weight_decay:g}, clip {optim.clip_grad:g}",
        f"objective   {_objective(taid, trainer.objective)}",
        f"outputs     {cfg.logging.run_dir}: metrics.jsonl; validation {_every(cfg.logging.eval_interval)}, "
        f"checkpoints {_every(cfg.checkpoint.save_interval)}"
        f"{'; wandb ' + wandb_run if wandb_run else ''}"
        f"{'; TensorBoard ' + cfg.logging.run_dir + '/tensorboard' if cfg.logging.tensorboard else ''}",
        *(f"not checked {note}" for note in notes),
        "=" * 100,
    ]
    return "\n".join(lines)


_ATTENTION = {
    "te": "Transformer Engine",
    "sdpa": "torch SDPA (local layers)",
    "local": "megatron local (unfused)",
}


def _every(interval: int) -> str:
    return f"every {interval} steps and at the end" if interval else "at the end"


def _objective(taid, objective) -> str:
    """`objective` is the trainer's `taidtron.losses.Objective`: what the loss uses is its to say."""
    text = f"taid.loss={taid.loss}"
    if objective.uses_t:
        schedule = f"adaptive (alpha {taid.alpha:g}, beta {taid.beta:g})" if taid.adaptive else "linear"
        text += f", t {taid.t_start:g} -> {taid.t_end:g} {schedule}"
    for key, value in objective.options.items():
        text += f", {key} {value:g}"
    if objective.needs_teacher and taid.lm_loss_weight:
        text += f", + {taid.lm_loss_weight:g} x next-token loss"
    return text
