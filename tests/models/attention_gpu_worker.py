"""GPU worker (one process): SDPA core attention at the real models' head layouts, bf16, sequence 4096.

For each layout: which fused SDPA kernels accept it (flash, cuDNN, memory-efficient; each tried alone), whether
`SDPAttention` runs with the math fallback forbidden, its output and q/k/v gradients against megatron's local
`DotProductAttention` in bf16, and the peak memory of each (forward + backward). Reported through
`tests.support.report` as `layouts`: one dict per layout.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from taidtron.config import ModelConfig, ParallelConfig
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.models import SDPAttention, transformer_config
from tests.support import report

SEQ, BATCH = 4096, 1
# (name, query heads, key/value groups, head dim) per GPU: Qwen2-1.5B; Qwen2-72B at tp=2 (its cluster layout).
LAYOUTS = [("qwen2-1.5b", 12, 2, 128), ("qwen2-72b tp=2", 32, 4, 128)]
FUSED = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def main() -> None:
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    ctx = init_distributed(ParallelConfig())
    seed_everything(7, ctx)
    results = []
    for name, heads, groups, dim in LAYOUTS:
        model = ModelConfig(
            num_layers=1,
            hidden_size=heads * dim,
            num_attention_heads=heads,
            num_query_groups=groups,
            ffn_hidden_size=128,
        )
        config = transformer_config(model, ParallelConfig(), params_dtype=torch.bfloat16, use_cpu_initialization=False)
        kwargs = dict(layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
        modules = {"sdpa": SDPAttention(config, **kwargs), "local": DotProductAttention(config, **kwargs)}
        g = torch.Generator(device="cuda").manual_seed(0)
        q0 = torch.randn(SEQ, BATCH, heads, dim, device="cuda", generator=g, dtype=torch.bfloat16)
        k0, v0 = (
            torch.randn(SEQ, BATCH, groups, dim, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2)
        )
        upstream = torch.randn(SEQ, BATCH, heads * dim, device="cuda", generator=g, dtype=torch.bfloat16)

        def run(module, backends=None, q0=q0, k0=k0, v0=v0, upstream=upstream):
            q, k, v = (t.clone().requires_grad_(True) for t in (q0, k0, v0))
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            if backends is None:
                out = module(q, k, v, None, attn_mask_type=AttnMaskType.causal)
            else:
                with sdpa_kernel(backends):
                    out = module(q, k, v, None, attn_mask_type=AttnMaskType.causal)
            out.backward(upstream)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            return (out.detach(), q.grad, k.grad, v.grad), peak

        accepted = {}
        for kernel, backend in FUSED.items():
            try:
                run(modules["sdpa"], [backend])
                accepted[kernel] = True
            except RuntimeError as exc:
                accepted[kernel] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        got, sdpa_mib = run(modules["sdpa"], list(FUSED.values()))  # raises if only the math fallback would do
        want, local_mib = run(modules["local"])
        errors = {}
        for part, a, b in zip(("out", "dq", "dk", "dv"), got, want):
            errors[part] = ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
        results.append(
            {
                "layout": name,
                "heads": heads,
                "groups": groups,
                "head_dim": dim,
                "seq": SEQ,
                "fused_kernels": accepted,
                "max_error_relative_to_max": errors,
                "peak_mib": {"sdpa": sdpa_mib, "local": local_mib},
            }
        )
        report(layouts=results)
    destroy_distributed()


if __name__ == "__main__":
    main()
