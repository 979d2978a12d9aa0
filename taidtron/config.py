"""The whole experiment as one validated dataclass tree, loaded from YAML and overridden from the CLI.

    cfg = load_config("configs/smoke.yaml", ["optim.lr=3e-4", "parallel.tp=2"])

Every field carries a docstring with its unit. Validation that needs no process group happens in
`__post_init__` (per section) and in `TrainConfig.validate_layout(world_size)` (cross-section, once the world
size is known). User mistakes raise `ConfigError` (a `ValueError`) naming the bad value and the flag to change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import yaml

from taidtron.io import atomic_write_text
from taidtron.schema import Reader


class ConfigError(ValueError):
    """A configuration value the user must change."""


@dataclass(kw_only=True)
class ModelConfig:
    """A Llama / Qwen2 family decoder (RMSNorm, SwiGLU, RoPE, GQA)."""

    family: str = "llama"
    """`llama` or `qwen2` (qwen2 = llama with a bias on the QKV projection)."""
    num_layers: int = 2
    """Transformer layers."""
    hidden_size: int = 64
    """Model width (elements)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int | None = None
    """Key/value heads (GQA). None means as many as the query heads (plain MHA)."""
    ffn_hidden_size: int = 128
    """Width of the SwiGLU MLP (elements, per gate)."""
    vocab_size: int = 256
    """Rows of the embedding in the original checkpoint (may already include the model's own padding)."""
    rotary_base: float = 10000.0
    """RoPE theta."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon."""
    add_qkv_bias: bool | None = None
    """Bias on the QKV projection. None means the family default (True for qwen2, False for llama)."""
    tie_embeddings: bool = False
    """Share the input embedding and the output layer (Qwen2-1.5B does, Qwen2-7B/72B do not)."""
    attention: str = "auto"
    """Core attention: `auto` (Transformer Engine's fused attention when megatron-core can use TE on a GPU, else
    `sdpa`), `sdpa` (torch scaled_dot_product_attention in megatron's local layers: flash kernels, no [seq, seq]
    tensor kept) or `local` (megatron-core's unfused DotProductAttention, keeps the [seq, seq] probabilities)."""
    init: str | None = None
    """Checkpoint to start from: a taidtron checkpoint directory (see `tools/convert.py import`). None: random. The
    architecture keys the section leaves out come from the checkpoint; those it sets must match it."""
    role: InitVar[str] = "model"
    """Not a key: the section this model sits in (student / teacher), so that errors name the key the user wrote."""

    RECORDED_FIELDS: ClassVar[tuple[str, ...]] = (
        "family",
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "num_query_groups",
        "ffn_hidden_size",
        "vocab_size",
        "rotary_base",
        "norm_epsilon",
        "add_qkv_bias",
        "tie_embeddings",
    )
    """Fields every record of an architecture holds (checkpoint metadata); fields added to ModelConfig later take
    their defaults when an older record lacks them."""

    def __post_init__(self, role: str) -> None:
        if self.family not in ("llama", "qwen2"):
            raise ConfigError(f"{role}.family={self.family!r} is not supported; use 'llama' or 'qwen2'.")
        if self.attention not in ("auto", "sdpa", "local"):
            raise ConfigError(f"{role}.attention={self.attention!r} is not supported; use 'auto', 'sdpa' or 'local'.")
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.add_qkv_bias is None:
            self.add_qkv_bias = self.family == "qwen2"
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "num_query_groups",
            "ffn_hidden_size",
            "vocab_size",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{role}.{name}={getattr(self, name)} must be positive.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{role}.hidden_size ({self.hidden_size}) must be a multiple of "
                f"{role}.num_attention_heads ({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(
                f"{role}.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"{role}.num_query_groups ({self.num_query_groups})."
            )

    @property
    def kv_channels(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(kw_only=True)
class TeacherConfig(ModelConfig):
    """The frozen model distilled from: a Llama / Qwen2 decoder (same tokenizer as the student), or its stored
    log-probs (`cache`)."""

    cache: str | None = None
    """A teacher cache written by `python -m taidtron.cache_teacher` (docs/teacher_cache.md): the run distils from
    its stored log-probs and builds no teacher (the architecture keys above are not used; `init`, when set, must be
    the checkpoint the cache was written from). None: the teacher runs beside the student."""


@dataclass(kw_only=True)
class ParallelConfig:
    """Layout shared by teacher and student. Data parallelism is what is left: world / (tp * pp)."""

    tp: int = 1
    """Tensor-parallel degree. 1 means disabled."""
    pp: int = 1
    """Pipeline-parallel stages. 1 means disabled."""
    sequence_parallel: bool = False
    """Shard LayerNorm/dropout activations along the sequence across the TP group (needs tp > 1)."""
    micro_batch_size: int = 1
    """Sequences per micro-batch per data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks (= micro * dp * accumulation steps)."""
    distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (megatron-core distributed optimizer, ZeRO-1)."""

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "micro_batch_size", "global_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"parallel.{name}={getattr(self, name)} must be >= 1.")
        if self.sequence_parallel and self.tp == 1:
            raise ConfigError(
                "parallel.sequence_parallel=true needs parallel.tp > 1; set parallel.sequence_parallel=false."
            )

    def data_parallel_size(self, world_size: int) -> int:
        if world_size % (self.tp * self.pp):
            raise ConfigError(
                f"world size {world_size} is not divisible by parallel.tp * parallel.pp = "
                f"{self.tp} * {self.pp}; change the number of processes or the layout."
            )
        return world_size // (self.tp * self.pp)

    def accumulation_steps(self, world_size: int) -> int:
        dp = self.data_parallel_size(world_size)
        per_step = self.micro_batch_size * dp
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"parallel.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"parallel.micro_batch_size * data-parallel size = {self.micro_batch_size} * {dp}."
            )
        return self.global_batch_size // per_step


@dataclass(kw_only=True)
class TAIDConfig:
    """The training objective and TAID's adaptive interpolation schedule (docs/taid.md)."""

    loss: str = "taid"
    """Objective: taid; a baseline fkl, rkl, tvd, skew_fkl, skew_rkl, js, akl, ctkd, dkd; or lm (next-token training
    of the student alone: no teacher is built, the teacher section is ignored). docs/taid.md defines each."""
    t_start: float = 0.4
    """Interpolation t at step 0."""
    t_end: float = 1.0
    """Largest t (1.0 = pure teacher)."""
    alpha: float = 5e-4
    """Step size of the adaptive increment."""
    beta: float = 0.99
    """Momentum of the relative loss change."""
    adaptive: bool = True
    """Adaptive t. False gives the linear schedule t_start -> t_end."""
    skew: float = 0.1
    """Mixing weight of the skew KL baselines (skew_fkl, skew_rkl)."""
    js_beta: float = 0.1
    """Teacher weight of the generalized Jensen-Shannon baseline (js): beta KL(p_T || m) + (1 - beta) KL(q || m),
    m = beta p_T + (1 - beta) q. 0.1 as in the official TAID code."""
    akl_mu: float = 0.5
    """akl: the head is the teacher's likeliest tokens, holding mass 1 - akl_mu (the official mu, 0.5)."""
    dkd_alpha: float = 1.0
    """dkd: weight of the target-class term TCKD (official 1.0)."""
    dkd_beta: float = 0.5
    """dkd: weight of the non-target term NCKD (official 0.5)."""
    dkd_temperature: float = 1.0
    """dkd: softmax temperature tau; the loss is scaled by tau^2 (official 1.0)."""
    ctkd_min_temperature: float = 1.0
    """ctkd: the learned temperature is min + (max - min) * sigmoid(theta) (official 1 + 20 * sigmoid(theta))."""
    ctkd_max_temperature: float = 21.0
    """ctkd: upper bound of the learned temperature."""
    ctkd_lambda_max: float = 1.0
    """ctkd: the largest strength of the gradient reversal on the temperature (CTKD: 1)."""
    ctkd_ramp_fraction: float = 10 / 240
    """ctkd: share of optim.train_steps over which that strength rises from 0 (CTKD: 10 of 240 epochs)."""
    lm_loss_weight: float = 0.0
    """Weight of the next-token cross-entropy added to a distillation loss (0: pure distillation, as the paper). t is
    driven by the distillation term alone."""
    loss_impl: str = "auto"
    """Implementation of the fused losses (taid, fkl): auto (the Triton kernels on CUDA when Triton is installed, else
    chunked torch ops), triton, or torch."""
    chunk_tokens: int | None = None
    """Tokens per chunk inside the fused loss; bounds its fp32 temporaries to chunk_tokens * vocab / tp. None: the
    loss picks about 2**20 logits per chunk on CPU and 2**26 on GPU."""

    def __post_init__(self) -> None:
        valid = ("taid", "fkl", "rkl", "tvd", "skew_fkl", "skew_rkl", "js", "akl", "ctkd", "dkd", "lm")  # = OBJECTIVES
        if self.loss not in valid:
            raise ConfigError(f"taid.loss={self.loss!r} is unknown; choose one of {', '.join(valid)}.")
        if not 0.0 <= self.t_start <= self.t_end <= 1.0:
            raise ConfigError(f"need 0 <= taid.t_start ({self.t_start}) <= taid.t_end ({self.t_end}) <= 1.")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"taid.beta={self.beta} must be in [0, 1).")
        if self.alpha < 0:
            raise ConfigError(f"taid.alpha={self.alpha} must be >= 0.")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ConfigError(f"taid.chunk_tokens={self.chunk_tokens} must be >= 1.")
        if self.loss_impl not in ("auto", "triton", "torch"):
            raise ConfigError(f"taid.loss_impl={self.loss_impl!r}; use auto, triton or torch.")
        if self.lm_loss_weight < 0:
            raise ConfigError(f"taid.lm_loss_weight={self.lm_loss_weight} must be >= 0.")
        for ok, problem in (  # the baselines' own keys (docs/taid.md)
            (0.0 < self.akl_mu < 1.0, f"taid.akl_mu={self.akl_mu} must be in (0, 1)"),
            (
                self.dkd_alpha >= 0 and self.dkd_beta >= 0,
                f"taid.dkd_alpha ({self.dkd_alpha}) and taid.dkd_beta ({self.dkd_beta}) must be >= 0",
            ),
            (self.dkd_temperature > 0, f"taid.dkd_temperature={self.dkd_temperature} must be > 0"),
            (
                0.0 < self.ctkd_min_temperature < self.ctkd_max_temperature,
                f"need 0 < taid.ctkd_min_temperature ({self.ctkd_min_temperature}) < taid.ctkd_max_temperature "
                f"({self.ctkd_max_temperature})",
            ),
            (self.ctkd_lambda_max >= 0, f"taid.ctkd_lambda_max={self.ctkd_lambda_max} must be >= 0"),
            (
                0.0 <= self.ctkd_ramp_fraction <= 1.0,
                f"taid.ctkd_ramp_fraction={self.ctkd_ramp_fraction} must be in [0, 1]",
            ),
        ):
            if not ok:
                raise ConfigError(problem + ".")


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to min_lr."""

    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 10
    """Optimizer steps of linear warm-up from 0."""
    train_steps: int = 100
    """Optimizer steps in the run (also the horizon of the linear t floor)."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to norms and biases)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip. 0 disables clipping."""
    max_skipped_steps: int = 10
    """Stop (exit code 2) after this many consecutive steps were skipped because their loss or gradient norm was not
    finite (a skipped step changes no weight, optimizer state, learning rate or t)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(
                f"need optim.lr > 0 and 0 <= optim.min_lr <= optim.lr (got lr={self.lr}, min_lr={self.min_lr})."
            )
        if self.train_steps < 1:
            raise ConfigError(f"optim.train_steps={self.train_steps} must be >= 1.")
        if not 0 <= self.warmup_steps < self.train_steps:
            raise ConfigError(
                f"optim.warmup_steps ({self.warmup_steps}) must be in [0, optim.train_steps "
                f"({self.train_steps})): the cosine decay needs at least one step after warm-up."
            )
        if self.clip_grad < 0:
            raise ConfigError(f"optim.clip_grad={self.clip_grad} must be >= 0 (0 disables clipping).")
        if self.max_skipped_steps < 1:
            raise ConfigError(f"optim.max_skipped_steps={self.max_skipped_steps} must be >= 1.")


@dataclass(kw_only=True)
class DataConfig:
    """Tokenized megatron indexed datasets (see tools/preprocess_data.py) and the tokenizer both models share."""

    blend: list[Any] = field(default_factory=list)
    """Dataset prefixes (path without .bin/.idx), optionally weighted: [prefix] or [w1, prefix1, w2, prefix2]."""
    split: str = "98,2,0"
    """Train, valid, test proportions of each dataset."""
    seq_length: int = 128
    """Tokens per training sequence."""
    tokenizer: str = ""
    """Tokenizer file shared by both models: a sentencepiece .model or an HF tokenizer.json."""
    teacher_tokenizer: str | None = None
    """Tokenizer the teacher was trained with; must equal `tokenizer`. None: the same file."""
    seed: int = 1234
    """Seed of the dataset shuffle."""
    cache_dir: str | None = None
    """Where megatron-core caches its sample indices. None: next to the data."""

    def __post_init__(self) -> None:
        if self.seq_length < 2:
            raise ConfigError(f"data.seq_length={self.seq_length} must be >= 2.")
        if self.blend and len(self.blend) > 1:
            if len(self.blend) % 2:
                raise ConfigError("data.blend with weights must alternate weight and prefix: [w1, p1, w2, p2, ...].")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Saving and resuming (student, optimizer, scheduler, TAID state, data position, RNG)."""

    dir: str | None = None
    """Checkpoint directory. None: <logging.run_dir>/checkpoints."""
    save_interval: int = 0
    """Save every this many optimizer steps. 0: only at the end (and on SIGTERM/SIGUSR1)."""
    keep_last: int = 2
    """Keep the newest K checkpoints. 0 keeps all."""
    resume: bool = True
    """Resume from `latest` in `dir` when it exists. false refuses to start over a directory that holds
    checkpoints."""
    load_iteration: int | None = None
    """Resume from this iteration (its step) instead of `latest`, e.g. when `latest` is damaged or diverged. It
    must be a complete checkpoint in `dir`. None: `latest`."""
    override: list[str] = field(default_factory=list)
    """Config keys a resume may change although the checkpoint fixes them (optimizer and LR schedule, TAID, data
    blend/split/seed/seq_length, global batch size), e.g. [optim.lr, optim.min_lr] to lower the learning rate after
    a divergence. A resume whose config differs from the checkpoint's in a fixed key not listed here is refused; the
    models' architecture, precision and seed never change on resume (docs/checkpoints.md)."""

    def __post_init__(self) -> None:
        if self.save_interval < 0 or self.keep_last < 0:
            raise ConfigError("checkpoint.save_interval and checkpoint.keep_last must be >= 0.")
        if self.load_iteration is not None:
            if self.load_iteration < 0:
                raise ConfigError(f"checkpoint.load_iteration={self.load_iteration} must be >= 0 (a saved step).")
            if not self.resume:
                raise ConfigError("checkpoint.load_iteration needs checkpoint.resume=true.")
        if not all(isinstance(key, str) and key for key in self.override):
            raise ConfigError(
                f"checkpoint.override={self.override!r} must be a list of config keys, e.g. [optim.lr, optim.min_lr]."
            )


@dataclass(kw_only=True)
class LoggingConfig:
    """Console, metrics.jsonl, wandb and TensorBoard."""

    run_dir: str = "runs/default"
    """Directory of this run: metrics.jsonl, config.yaml, checkpoints, wandb and TensorBoard files."""
    log_interval: int = 1
    """Console line (or progress-bar update) every this many optimizer steps (metrics.jsonl gets every step)."""
    eval_interval: int = 0
    """Validation every this many optimizer steps. 0 disables periodic validation (one runs at the end)."""
    eval_iters: int = 2
    """Global batches per validation."""
    wandb_mode: str = "offline"
    """wandb mode: offline (default, sync later with `wandb sync`), online, or disabled. A resumed run continues the
    same wandb run (its id is kept in <run_dir>/wandb_run_id)."""
    wandb_project: str = "taidtron"
    """wandb project name."""
    tensorboard: bool = False
    """Also write TensorBoard event files under <run_dir>/tensorboard (needs the `tensorboard` package)."""

    def __post_init__(self) -> None:
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logging.wandb_mode={self.wandb_mode!r}; use offline, online or disabled.")
        if self.log_interval < 1:
            raise ConfigError(f"logging.log_interval={self.log_interval} must be >= 1.")
        if self.eval_interval < 0 or self.eval_iters < 0:
            raise ConfigError("logging.eval_interval and logging.eval_iters must be >= 0.")
        if not self.run_dir:
            raise ConfigError("logging.run_dir is empty; set it to the directory of this run.")


ROLES = ("student", "teacher")
"""The model sections of a run, by role."""


@dataclass(kw_only=True)
class TrainConfig:
    """Root of the tree: one experiment."""

    student: ModelConfig = field(default_factory=partial(ModelConfig, role="student"))
    """The model being trained."""
    teacher: TeacherConfig = field(default_factory=partial(TeacherConfig, role="teacher"))
    """The frozen model distilled from (same tokenizer as the student)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    taid: TAIDConfig = field(default_factory=TAIDConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    precision: str = "auto"
    """bf16, fp32, or auto (bf16 on GPU, fp32 on CPU)."""
    seed: int = 1234
    """Seed of model initialisation and dropout."""

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision={self.precision!r}; use auto, bf16 or fp32.")
        keys = set(flatten_config(self.to_dict()))
        unknown = [key for key in self.checkpoint.override if key not in keys]
        if unknown:
            raise ConfigError(
                f"checkpoint.override names {', '.join(unknown)}, which is not a config key; list "
                f"keys as section.key, e.g. [optim.lr, optim.min_lr]."
            )

    def padded_vocab_size(self, roles: Sequence[str] = ROLES) -> int:
        """One vocabulary size for the models of `roles`, divisible by 128 * tp, so their logit shards align."""
        return padded_vocab_size([getattr(self, role) for role in roles], self.parallel.tp)

    def validate_layout(self, world_size: int, roles: Sequence[str] = ROLES) -> None:
        """Checks that need the world size: divisibility of the models of `roles` (those the run builds: without a
        teacher the teacher section is not used) under tp/pp, and the batch arithmetic."""
        par = self.parallel
        par.accumulation_steps(world_size)
        for role in roles:
            model: ModelConfig = getattr(self, role)
            if model.num_attention_heads % par.tp:
                raise ConfigError(
                    f"{role}.num_attention_heads ({model.num_attention_heads}) is not divisible by "
                    f"parallel.tp ({par.tp}); choose tp dividing it."
                )
            if model.num_query_groups % par.tp:
                raise ConfigError(
                    f"{role} has {model.num_query_groups} key/value groups, so parallel.tp "
                    f"({par.tp}) must divide it (tp <= {model.num_query_groups})."
                )
            if model.ffn_hidden_size % par.tp:
                raise ConfigError(
                    f"{role}.ffn_hidden_size ({model.ffn_hidden_size}) is not divisible by parallel.tp ({par.tp})."
                )
            if model.num_layers % par.pp:
                raise ConfigError(
                    f"{role}.num_layers ({model.num_layers}) is not divisible by parallel.pp "
                    f"({par.pp}); both models are split into the same number of even stages."
                )
        if par.sequence_parallel and self.data.seq_length % par.tp:
            raise ConfigError(
                f"data.seq_length ({self.data.seq_length}) must be divisible by parallel.tp "
                f"({par.tp}) with sequence parallelism."
            )
        if self.logging.eval_interval and not self.data.blend:
            raise ConfigError("logging.eval_interval > 0 needs data.blend.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict (`TrainConfig.to_dict()`) as {dotted key: value} over its leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def padded_vocab_size(models: list[ModelConfig], tp: int) -> int:
    """The largest of the models' vocabularies rounded up to a multiple of 128 * tp (one size for all of them)."""
    multiple = 128 * tp
    return int(math.ceil(max(m.vocab_size for m in models) / multiple) * multiple)


# ----------------------------------------------------------------------------------------------------------
# YAML + CLI overrides


def _unknown_keys(where: str, unknown: list[str], valid: list[str]) -> ConfigError:
    return ConfigError(
        f"unknown config key(s) {', '.join(unknown)}; valid keys under {where or 'the root'}: {', '.join(valid)}."
    )


_READER = Reader(error=lambda where, problem: ConfigError(f"{where} {problem}."), strict=False, unknown=_unknown_keys)
"""YAML and command-line values, converted to each field's type (taidtron/schema.py)."""


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"override {dotted}={raw}: the key must look like section.key (e.g. optim.lr=3e-4).")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section.")
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {dotted}={raw} is not a valid YAML value ({_yaml_problem(exc)}); close its "
            f"brackets and quotes, or quote the whole value to pass it as a string."
        ) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The one-line gist of a YAML error: what and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark, context, context_mark = (getattr(exc, name, None) for name in ("problem_mark", "context", "context_mark"))
    text = f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        text += f", {context} at line {context_mark.line + 1}"
    return text


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(
            f"config file {path} is a directory; pass --config with a YAML file, e.g. configs/smoke.yaml."
        )
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config with a file from configs/.")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc}).") from None
    if not isinstance(tree, (dict, type(None))):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (student:, optim:, ...) at the top "
            f"level, not a {type(tree).__name__}."
        )
    return tree or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or start from defaults), apply `section.key=value` overrides, and take the architecture of
    a model section with an `init` checkpoint from it (`taidtron.architecture`)."""
    tree = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides or []:
        item = item[2:] if item.startswith("--") else item
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=3e-4).")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw.strip())
    from taidtron.architecture import resolve_architectures  # it reads checkpoints, which import this module

    resolve_architectures(tree, _READER)
    return _READER.build(TrainConfig, tree)


def save_config(cfg: TrainConfig, path: str | Path, header: str = "") -> None:
    """Write the resolved config (atomically); `header` lines become YAML comments above it."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comments + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def record_run_config(cfg: TrainConfig, run_dir: str | Path, note: str) -> Path:
    """Keep what every start of a run ran with: `<run_dir>/configs/start_<n>_<time>.yaml` (one per start, `note`
    as its header: fresh start or resume, changes applied) and `<run_dir>/config.yaml`, the current one. Returns the
    start's file."""
    import time

    history = Path(run_dir) / "configs"
    history.mkdir(parents=True, exist_ok=True)
    number = len(list(history.glob("start_*.yaml"))) + 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = history / f"start_{number:04d}_{stamp}.yaml"
    header = f"start {number} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {note}"
    save_config(cfg, record, header)
    save_config(cfg, Path(run_dir) / "config.yaml", header)
    return record
