"""torchrun worker: SDPA core attention against megatron-core's local DotProductAttention, and whole GPT models
built with `attention=sdpa` against `attention=local`, in fp32 at tp = world size (gloo, CPU).

    python -m torch.distributed.run --nproc-per-node N tests/models/attention_worker.py

Every rank checks its own shard and reports the passed checks through `tests.support.report` (`core`, `model`: lists
of what was checked; a failed check raises, so the rank exits non-zero):
  core   forward and the gradients of q, k, v (this rank's heads), causal and with an explicit padding mask, each
         against the local module and against a float64 reference written from the math
  model  a GPTModel (qwen2: qkv bias; RoPE; GQA) built with each implementation from the same weights: logits and
         every parameter's gradient, with and without sequence parallelism when tp > 1
"""

from __future__ import annotations

import os
import sys

import torch

from taidtron.config import ModelConfig, ParallelConfig
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.models import SDPAttention, build_gpt, transformer_config
from tests.support import report, tiny_model_config

SEQ, BATCH, HEAD_DIM = 24, 2, 16
# fp32 sums in a different order (flash tiles vs one matmul): agreement to a few ulps of the largest terms.
FP32 = {"rtol": 2e-5, "atol": 2e-5}
# (query heads, key/value groups): GQA 3:1 with an odd number of heads per rank, GQA 2:1, MHA; MQA where tp = 1.
HEADS = {1: [(6, 2), (4, 2), (4, 4), (6, 1)], 2: [(6, 2), (4, 2), (4, 4), (8, 2)]}


PASSED: dict[str, list[str]] = {"core": [], "model": []}


def say(kind: str, what: str) -> None:
    PASSED[kind].append(what)
    report(**PASSED)


def reference_attention(q, k, v, forbidden):
    """float64 softmax(q k^T / sqrt(d)) v with each query head reading key/value group head // (heads / groups).
    q [s, b, n, d], k/v [s, b, g, d], forbidden [b, 1, s, s] (True = masked) -> [s, b, n * d]."""
    q, k, v = (t.double().permute(1, 2, 0, 3) for t in (q, k, v))  # [b, heads, s, d]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    probs = scores.masked_fill(forbidden, float("-inf")).softmax(-1)
    out = probs @ v  # [b, heads, s, d]
    return out.permute(2, 0, 1, 3).reshape(q.shape[2], q.shape[0], -1)


def check_core(ctx, heads: int, groups: int, mask_kind: str) -> None:
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    tp, r = ctx.tp, ctx.tp_rank
    model = ModelConfig(
        num_layers=1,
        hidden_size=heads * HEAD_DIM,
        num_attention_heads=heads,
        num_query_groups=groups,
        ffn_hidden_size=32,
    )
    config = transformer_config(model, ParallelConfig(tp=tp), params_dtype=torch.float32, use_cpu_initialization=True)
    local = DotProductAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    sdpa = SDPAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")

    # The global tensors, identical on every rank; this rank keeps its heads and groups, as megatron's QKV does.
    g = torch.Generator().manual_seed(1000 * heads + groups)
    q_full = torch.randn(SEQ, BATCH, heads, HEAD_DIM, generator=g) * 2
    k_full = torch.randn(SEQ, BATCH, groups, HEAD_DIM, generator=g) * 2
    v_full = torch.randn(SEQ, BATCH, groups, HEAD_DIM, generator=g)
    upstream = torch.randn(SEQ, BATCH, heads * HEAD_DIM, generator=g)
    hp, gp = heads // tp, groups // tp
    q0, k0, v0 = (
        q_full[:, :, r * hp : (r + 1) * hp],
        k_full[:, :, r * gp : (r + 1) * gp],
        v_full[:, :, r * gp : (r + 1) * gp],
    )
    upstream = upstream[..., r * hp * HEAD_DIM : (r + 1) * hp * HEAD_DIM]

    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)  # True above the diagonal: the future is forbidden
    if mask_kind == "causal":  # no mask tensor: both build the causal mask themselves
        mask, forbidden = None, causal.expand(BATCH, 1, SEQ, SEQ)
    else:  # explicit megatron mask: causal plus left padding of 5 keys in the second sequence
        forbidden = causal.expand(BATCH, 1, SEQ, SEQ).clone()
        forbidden[1, :, :, :5] = True
        forbidden[1, :, :5, 0] = False  # every query keeps one key (fully masked rows differ by definition)
        mask = forbidden

    def run(module, dtype):
        q, k, v = (t.to(dtype).clone().requires_grad_(True) for t in (q0, k0, v0))
        out = module(q, k, v, mask, attn_mask_type=AttnMaskType.causal)
        out.backward(upstream.to(dtype))
        return out.detach(), q.grad, k.grad, v.grad

    got, want = run(sdpa, torch.float32), run(local, torch.float32)
    q, k, v = (t.double().requires_grad_(True) for t in (q0, k0, v0))
    ref_out = reference_attention(q, k, v, forbidden)
    ref_out.backward(upstream.double())
    ref = (ref_out.detach(), q.grad, k.grad, v.grad)
    what = f"heads={heads} groups={groups} tp={tp} rank={r} mask={mask_kind}"
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, want, ref):
        assert a.shape == b.shape == c.shape, (what, name, a.shape, b.shape, c.shape)
        torch.testing.assert_close(a, b, **FP32, msg=lambda m, name=name: f"sdpa vs local {name} {what}: {m}")
        torch.testing.assert_close(
            a.double(), c, **FP32, msg=lambda m, name=name: f"sdpa vs float64 {name} {what}: {m}"
        )
        torch.testing.assert_close(
            b.double(), c, **FP32, msg=lambda m, name=name: f"local vs float64 {name} {what}: {m}"
        )
    # float64 through SDPA itself: the module's math (scale, GQA mapping, mask convention) exactly
    q, k, v = (t.double() for t in (q0, k0, v0))
    exact = sdpa(q, k, v, mask, attn_mask_type=AttnMaskType.causal)
    torch.testing.assert_close(exact, ref[0], rtol=1e-12, atol=1e-12, msg=lambda m: f"float64 {what}: {m}")
    say("core", what)


def check_model(ctx, heads: int, groups: int, sequence_parallel: bool) -> None:
    from megatron.core import parallel_state  # noqa: F401  (groups already initialised by init_distributed)

    parallel = ParallelConfig(tp=ctx.tp, sequence_parallel=sequence_parallel)
    base = dict(
        hidden_size=heads * HEAD_DIM,
        num_attention_heads=heads,
        num_query_groups=groups,
        ffn_hidden_size=64,
        vocab_size=500,
    )
    padded = 512  # divisible by 128 * tp
    models = {}
    for attention in ("local", "sdpa"):
        seed_everything(7, ctx)
        models[attention] = build_gpt(
            tiny_model_config(**base, attention=attention),
            parallel,
            padded_vocab_size=padded,
            max_seq_length=SEQ,
            pp_rank=0,
            params_dtype=torch.float32,
            device=ctx.device,
        )
    local, sdpa = models["local"], models["sdpa"]
    core = {type(layer.self_attention.core_attention).__name__ for layer in sdpa.decoder.layers}
    assert core == {"SDPAttention"}, core
    assert {type(layer.self_attention.core_attention).__name__ for layer in local.decoder.layers} == {
        "DotProductAttention"
    }
    sdpa.load_state_dict(local.state_dict(), strict=True)  # same keys: the SDPA module adds no state

    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 500, (BATCH, SEQ), generator=g)  # ids on both vocab shards
    position_ids = torch.arange(SEQ).expand(BATCH, -1)
    upstream = torch.randn(BATCH, SEQ, padded // ctx.tp, generator=g)
    grads, logits = {}, {}
    for name, model in models.items():
        out = model(tokens, position_ids, None)  # [b, s, V / tp], causal
        out.backward(upstream)
        logits[name] = out.detach()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    what = f"heads={heads} groups={groups} tp={ctx.tp} sp={sequence_parallel} rank={ctx.tp_rank}"
    torch.testing.assert_close(logits["sdpa"], logits["local"], **FP32, msg=lambda m: f"logits {what}: {m}")
    assert grads["sdpa"].keys() == grads["local"].keys()
    for n, grad in grads["local"].items():
        assert grad is not None and grad.abs().sum() > 0, f"{n} has no gradient ({what})"
        torch.testing.assert_close(grads["sdpa"][n], grad, **FP32, msg=lambda m, n=n: f"grad {n} {what}: {m}")
    say("model", f"{what} params={len(grads['local'])}")


def main() -> None:
    world = int(os.environ["WORLD_SIZE"])
    ctx = init_distributed(ParallelConfig(tp=world))
    seed_everything(7, ctx)  # the local module forks megatron's model-parallel RNG stream (for its dropout)
    try:
        for heads, groups in HEADS[world]:
            for mask_kind in ("causal", "padding"):
                check_core(ctx, heads, groups, mask_kind)
        check_model(ctx, 6, 2, sequence_parallel=False)
        if world > 1:
            check_model(ctx, 8, 2, sequence_parallel=True)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
