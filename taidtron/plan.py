"""Will a taidtron config fit a cluster, and how fast will it run? A back-of-the-envelope planner (`tools/plan.py` is
its command line).

Per-GPU memory, for every pipeline stage (the tp ranks of a stage are alike):
  student   bf16 weights (2 B/param) + fp32 gradient buffer (4 B) + fp32 main weights and Adam m, v (12 B, divided
            by the data-parallel size with the distributed optimizer: megatron's "6 + 12/dp")
  teacher   bf16 weights only (frozen: no gradient, no optimizer state)
  activations   the student's saved activations per micro-batch and layer, times the micro-batches 1F1B keeps in
            flight on this stage (pp - stage), plus the concatenated hidden states the pipeline keeps per micro-batch
            and the largest transient of one teacher layer's no-grad forward
  logits    last stage: both models' vocab-sharded logits [mbs*seq, V/tp] (bf16, saved by the loss), the student's
            logit gradient, one transient copy (megatron's transpose().contiguous()), two fp32 loss-chunk temporaries
  overhead  CUDA context, NCCL buffers, allocator fragmentation (--overhead-gib)
Parameter counts follow megatron-core's GPTModel shapes exactly (tests/launch/test_plan.py checks them against
built models). Activations follow each model's `attention` setting: `auto` (Transformer Engine, or SDPA where TE is
missing) and `sdpa` are flash attention, which keeps q, k, v, the output and one fp32 log-sum-exp per head and
row; `local` is megatron's unfused DotProductAttention, which also keeps the fp32 softmax output and the bf16
probabilities, [heads, seq, seq] per sequence (plan it with `student.attention=local teacher.attention=local`).

Step time from FLOPs (`taidtron.flops`, the definition the trainer's MFU uses; PaLM convention, attention not halved
for causality): student 6*N + 12*L*h*seq per token, teacher 2*N + 4*L*h*seq per token (forward only), N the matmul
weights, divided by world * --gpu-tflops * --mfu, times the 1F1B bubble
(1 + (pp - 1) / micro-batches). The fused loss (memory-bound, ~2 reads of the logits) and communication are inside
the assumed MFU.
"""

from __future__ import annotations

from dataclasses import dataclass

from taidtron.config import ModelConfig, TrainConfig
from taidtron.flops import forward_flops_per_token, training_flops_per_token
from taidtron.losses import default_chunk_tokens

GIB = 1024**3


@dataclass
class StageMemory:
    """Bytes on one GPU of a pipeline stage."""

    stage: int
    student_params: int
    """Student parameters on this GPU (its tp shard of this stage)."""
    teacher_params: int
    student_weights: float
    student_grads: float
    optimizer: float
    teacher_weights: float
    activations: float
    pipeline_buffers: float
    teacher_transient: float
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return (
            self.student_weights
            + self.student_grads
            + self.optimizer
            + self.teacher_weights
            + self.activations
            + self.pipeline_buffers
            + self.teacher_transient
            + self.logits
            + self.overhead
        )


def stage_parameters(model: ModelConfig, *, tp: int, pp: int, stage: int, padded_vocab: int) -> int:
    """Parameters held by one tensor-parallel rank of pipeline stage `stage`, as megatron-core's GPTModel builds
    them (QKV/fc1 column-parallel, proj/fc2 row-parallel, norms replicated, vocab-parallel embedding/output)."""
    h, f = model.hidden_size, model.ffn_hidden_size
    kv = model.num_query_groups * model.kv_channels  # key (and value) width
    qkv_out = h + 2 * kv
    per_layer = (
        h  # input RMSNorm
        + qkv_out * h // tp
        + (qkv_out // tp if model.add_qkv_bias else 0)  # linear_qkv (+ bias)
        + h * h // tp  # linear_proj
        + h  # pre-MLP RMSNorm
        + 2 * f * h // tp  # linear_fc1 (gate and up)
        + f * h // tp  # linear_fc2
    )
    count = per_layer * (model.num_layers // pp)
    first, last = stage == 0, stage == pp - 1
    vocab_shard = padded_vocab // tp * h
    if first:
        count += vocab_shard  # word embeddings
    if last:
        count += h  # final RMSNorm
        # The output layer has its own weight unless it is tied to an embedding on the same stage.
        if not (model.tie_embeddings and first):
            count += vocab_shard
    return count


def keeps_attention_probabilities(model: ModelConfig) -> bool:
    """Whether the model's core attention materialises [heads, seq, seq] probabilities: only megatron's local
    (unfused) module. `auto` is Transformer Engine's fused attention on a cluster with TE, else SDPA (flash)."""
    return model.attention == "local"


def layer_activation_bytes(model: ModelConfig, *, tp: int, sp: bool, seq: int) -> float:
    """Bytes the backward pass keeps per token for one decoder layer (bf16): norm inputs, linear inputs, q/k/v and
    the attention output, the SwiGLU input and output. With sequence parallelism the tp-replicated tensors are
    sharded (megatron saves the local shard and all-gathers again in the backward). No dropout (Qwen2 has none)."""
    h, f, a = model.hidden_size, model.ffn_hidden_size, model.num_attention_heads
    kv = model.num_query_groups * model.kv_channels
    replicated = h / tp if sp else h
    elements = 4 * replicated + (2 * h + 2 * kv) / tp + 3 * f / tp
    if keeps_attention_probabilities(model):
        # megatron's DotProductAttention: k, v expanded to all heads, fp32 softmax output and bf16 probabilities.
        extra = (4 * (h - kv) + 6 * a * seq) / tp
    else:
        extra = 4 * a / tp  # flash: one fp32 log-sum-exp per head and query row
    return 2 * elements + extra


def layer_transient_bytes(model: ModelConfig, *, tp: int, sp: bool, seq: int) -> float:
    """Peak bytes per token of one layer's no-grad forward (input, qkv, attention output, fc1 and SwiGLU out)."""
    h, f, a = model.hidden_size, model.ffn_hidden_size, model.num_attention_heads
    kv = model.num_query_groups * model.kv_channels
    full = h  # the all-gathered input exists transiently even with sequence parallelism
    elements = 2 * full + (2 * h + 2 * kv) / tp + 3 * f / tp
    # unfused: fp32 scores + softmax, bf16 probs; flash: no [seq, seq] tensor at all
    extra = 10 * a * seq / tp if keeps_attention_probabilities(model) else 0.0
    return 2 * elements + extra


def plan_memory(cfg: TrainConfig, world_size: int, *, overhead_gib: float) -> list[StageMemory]:
    par = cfg.parallel
    tp, pp, sp = par.tp, par.pp, par.sequence_parallel
    dp = par.data_parallel_size(world_size)
    micro_batches = par.accumulation_steps(world_size)
    seq = cfg.data.seq_length
    tokens = par.micro_batch_size * seq  # per micro-batch
    vocab = cfg.padded_vocab_size()
    s, t = cfg.student, cfg.teacher
    h_sum_full = (s.hidden_size + t.hidden_size) / (tp if sp else 1)
    stages = []
    for stage in range(pp):
        n_s = stage_parameters(s, tp=tp, pp=pp, stage=stage, padded_vocab=vocab)
        n_t = stage_parameters(t, tp=tp, pp=pp, stage=stage, padded_vocab=vocab)
        in_flight = min(pp - stage, micro_batches)  # 1F1B: stage i holds pp - i forward passes before backward
        act = layer_activation_bytes(s, tp=tp, sp=sp, seq=seq) * (s.num_layers // pp)
        last = stage == pp - 1
        if last:  # final norm input and output-layer input
            act += 2 * 2 * s.hidden_size / (tp if sp else 1)
        # Pipeline: the received [seq, mbs, h_s + h_t] input (not on stage 0) and the sent output (not on the last
        # stage) stay referenced until the micro-batch's backward.
        buffers = in_flight * tokens * 2 * h_sum_full * ((stage > 0) + (not last))
        transient = tokens * max(layer_transient_bytes(m, tp=tp, sp=sp, seq=seq) for m in (s, t))
        logits = 0.0
        if last:
            shard = tokens * vocab / tp
            chunk_tokens = cfg.taid.chunk_tokens or default_chunk_tokens(int(vocab // tp), "cuda")
            chunk = min(chunk_tokens, tokens) * vocab / tp
            logits = 2 * shard * 4 + 4 * chunk * 2  # 2 saved + grad + transient copy (bf16), 2 fp32 chunk temps
        stages.append(
            StageMemory(
                stage=stage,
                student_params=n_s,
                teacher_params=n_t,
                student_weights=2 * n_s,
                student_grads=4 * n_s,
                optimizer=12 * n_s / (dp if par.distributed_optimizer else 1),
                teacher_weights=2 * n_t,
                activations=act * tokens * in_flight,
                pipeline_buffers=buffers,
                teacher_transient=transient,
                logits=logits,
                overhead=overhead_gib * GIB,
            )
        )
    return stages


def plan_throughput(cfg: TrainConfig, world_size: int, *, gpu_tflops: float, mfu: float) -> dict:
    par = cfg.parallel
    seq = cfg.data.seq_length
    vocab = cfg.padded_vocab_size()
    s, t = cfg.student, cfg.teacher
    student = training_flops_per_token(s, vocab, seq)
    teacher = forward_flops_per_token(t, vocab, seq)
    micro_batches = par.accumulation_steps(world_size)
    bubble = (par.pp - 1) / micro_batches
    tokens_per_step = par.global_batch_size * seq
    compute_s = tokens_per_step * (student + teacher) / (world_size * gpu_tflops * 1e12 * mfu)
    step_s = compute_s * (1 + bubble)
    total_tokens = tokens_per_step * cfg.optim.train_steps
    return {
        "student_flops_per_token": student,
        "teacher_flops_per_token": teacher,
        "teacher_share": teacher / (student + teacher),
        "tokens_per_step": tokens_per_step,
        "micro_batches": micro_batches,
        "pipeline_bubble": bubble,
        "step_seconds": step_s,
        "tokens_per_second": tokens_per_step / step_s,
        "tokens_per_second_per_gpu": tokens_per_step / step_s / world_size,
        "train_steps": cfg.optim.train_steps,
        "total_tokens": total_tokens,
        "total_hours": step_s * cfg.optim.train_steps / 3600,
        "gpu_hours": step_s * cfg.optim.train_steps / 3600 * world_size,
    }


def advice(cfg: TrainConfig, worst: StageMemory, budget: float) -> str:
    par = cfg.parallel
    parts = []
    if worst.teacher_weights + worst.student_weights + worst.student_grads > 0.6 * budget:
        parts.append(
            "more model parallelism: raise parallel.pp (must divide both models' layer counts) or "
            "parallel.tp (must divide both models' KV groups), and add GPUs"
        )
    if worst.activations + worst.pipeline_buffers > 0.25 * budget:
        parts.append(
            "fewer activations: lower parallel.micro_batch_size or data.seq_length"
            + ("" if par.sequence_parallel or par.tp == 1 else ", or set parallel.sequence_parallel=true")
        )
    if worst.logits > 0.15 * budget:
        parts.append("smaller logits: lower parallel.micro_batch_size or taid.chunk_tokens, or raise parallel.tp")
    if worst.optimizer > 0.15 * budget and not par.distributed_optimizer:
        parts.append("set parallel.distributed_optimizer=true")
    return "; ".join(parts) or "use GPUs with more memory or a smaller layout"


def _attention_label(model: ModelConfig) -> str:
    return f"{model.attention} ({'unfused' if keeps_attention_probabilities(model) else 'flash'})"


def _gib(x: float) -> str:
    return f"{x / GIB:8.2f}"


def render(cfg: TrainConfig, args, world: int, stages: list[StageMemory], thr: dict) -> str:
    par = cfg.parallel
    dp = par.data_parallel_size(world)
    lines = [
        f"config {args.config}  on {args.nodes} node(s) x {args.gpus_per_node} GPU(s) = {world} GPUs "
        f"({args.gpu_mem_gib:g} GiB, {args.gpu_tflops:g} TFLOP/s bf16 dense, MFU {args.mfu:g})",
        f"layout tp={par.tp} pp={par.pp} dp={dp} sp={str(par.sequence_parallel).lower()} "
        f"distributed_optimizer={str(par.distributed_optimizer).lower()}; micro_batch={par.micro_batch_size} "
        f"x {thr['micro_batches']} micro-batches x dp {dp} = {par.global_batch_size} sequences x "
        f"{cfg.data.seq_length} tokens = {thr['tokens_per_step']:,} tokens/step",
        f"attention student {_attention_label(cfg.student)}, teacher {_attention_label(cfg.teacher)}; "
        f"padded vocab {cfg.padded_vocab_size():,}",
        "",
        "per-GPU memory (GiB)      " + "".join(f"  stage {m.stage:<3}" for m in stages),
    ]
    rows = [
        ("student params (M)", lambda m: f"{m.student_params / 1e6:8.1f}"),
        ("teacher params (M)", lambda m: f"{m.teacher_params / 1e6:8.1f}"),
        ("student weights bf16", lambda m: _gib(m.student_weights)),
        ("student grads fp32", lambda m: _gib(m.student_grads)),
        ("optimizer fp32 (/dp)", lambda m: _gib(m.optimizer)),
        ("teacher weights bf16", lambda m: _gib(m.teacher_weights)),
        ("activations (1F1B)", lambda m: _gib(m.activations)),
        ("pipeline buffers", lambda m: _gib(m.pipeline_buffers)),
        ("teacher fwd transient", lambda m: _gib(m.teacher_transient)),
        ("logits + loss", lambda m: _gib(m.logits)),
        ("overhead", lambda m: _gib(m.overhead)),
        ("total", lambda m: _gib(m.total)),
    ]
    for name, fmt in rows:
        lines.append(f"  {name:<24}" + "".join(f"  {fmt(m):>9}" for m in stages))
    lines += [
        "",
        f"throughput: student {thr['student_flops_per_token'] / 1e9:.1f} + teacher "
        f"{thr['teacher_flops_per_token'] / 1e9:.1f} GFLOP/token (teacher {thr['teacher_share']:.0%}), "
        f"pipeline bubble {thr['pipeline_bubble']:.1%}",
        f"  step {thr['step_seconds']:.2f} s, {thr['tokens_per_second']:,.0f} tokens/s "
        f"({thr['tokens_per_second_per_gpu']:,.0f} per GPU)",
        f"  {thr['train_steps']:,} steps = {thr['total_tokens'] / 1e9:.1f}B tokens in {thr['total_hours']:.1f} h "
        f"({thr['gpu_hours']:,.0f} GPU-hours)",
    ]
    return "\n".join(lines)
