"""Llama / Qwen2 decoders as megatron-core GPTModels. Teacher and student differ only by their ModelConfig.

The layer spec is chosen once, here (`layer_spec`), from the model's `attention` setting:
  te     Transformer Engine's spec (fused norms, linears and attention); what `auto` picks when megatron-core can
         use TE and a GPU is present
  sdpa   megatron-core's local spec with torch RMSNorm and `SDPAttention` (torch flash kernels) as core attention;
         what `auto` picks otherwise (CPU, GPUs without TE)
  local  megatron-core's local spec with its unfused `DotProductAttention` (keeps [b, heads, s, s] probabilities)
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from taidtron.config import ModelConfig, ParallelConfig
from taidtron.overrides.norms import RMSNorm


def transformer_engine_usable() -> bool:
    """Whether megatron-core can build Transformer Engine layers here: its own `HAVE_TE` (set only when
    `transformer_engine.pytorch` imports, not merely the top-level package, which imports even when the torch
    extension is broken or built for another torch) and a CUDA device to run them on."""
    from megatron.core.extensions.transformer_engine import HAVE_TE

    return HAVE_TE and torch.cuda.is_available()


def resolve_attention(attention: str) -> str:
    """The implementation a model's `attention` setting selects on this machine: `te`, `sdpa` or `local`."""
    if attention == "auto":
        return "te" if transformer_engine_usable() else "sdpa"
    if attention not in ("sdpa", "local"):
        raise ValueError(f"unknown attention {attention!r}")
    return attention


def layer_spec(num_local_layers: int, attention: str):
    """The block spec for one pipeline stage: `num_local_layers` decoder layers and the final norm, with the core
    attention `attention` selects (see `resolve_attention`)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules

    from taidtron.models.attention import SDPAttention

    implementation = resolve_attention(attention)
    if implementation == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        layer, final_norm = get_gpt_layer_with_transformer_engine_spec(), TENorm
    else:
        local = get_gpt_layer_local_spec(normalization="RMSNorm")
        self_attention = local.submodules.self_attention
        if implementation == "sdpa":
            self_attention = dataclasses.replace(
                self_attention, submodules=dataclasses.replace(self_attention.submodules, core_attention=SDPAttention)
            )
        submodules = dataclasses.replace(
            local.submodules, input_layernorm=RMSNorm, pre_mlp_layernorm=RMSNorm, self_attention=self_attention
        )
        layer, final_norm = dataclasses.replace(local, submodules=submodules), RMSNorm
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(layer_specs=[layer] * num_local_layers, layer_norm=final_norm),
    )


def fusions(device_type: str) -> dict[str, bool]:
    """The TransformerConfig fusion switches for a model on `device_type`. Off on CPU: the unfused paths are exact and
    need nothing beyond torch. On CUDA, each fusion where its kernel exists:
      bias_activation_fusion, bias_dropout_fusion  megatron-core's own fused SwiGLU and bias-dropout-add (torch
                          compiled); no extra package
      apply_rope_fusion   Transformer Engine's fused RoPE (when megatron-core can use TE)
      gradient_accumulation_fusion  the weight-gradient GEMM accumulating straight into the fp32 main gradient; needs
                          apex's `fused_weight_gradient_mlp_cuda`, which megatron-core's own linear layers (the output
                          layer, whatever the spec) require for it
    masked_softmax_fusion and persist_layer_norm stay off: they serve megatron's unfused attention and apex's
    LayerNorm, which taidtron's GPU path (TE or SDPA attention, RMSNorm) does not use."""
    if device_type != "cuda":
        return dict(
            bias_activation_fusion=False,
            bias_dropout_fusion=False,
            apply_rope_fusion=False,
            gradient_accumulation_fusion=False,
        )
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401 - apex's CUDA extension

        accumulation_fusion = True
    except ImportError:
        accumulation_fusion = False
    return dict(
        bias_activation_fusion=True,
        bias_dropout_fusion=True,
        apply_rope_fusion=transformer_engine_usable(),
        gradient_accumulation_fusion=accumulation_fusion,
    )


def transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    params_dtype: torch.dtype,
    use_cpu_initialization: bool,
    initialize: bool = True,
    device_type: str | None = None,
):
    """megatron-core TransformerConfig of a Llama/Qwen2 decoder under the shared layout. `device_type`: where the
    model runs, which decides the fusions (`fusions`); None: cuda when a GPU is visible."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,  # SwiGLU
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=model.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=use_cpu_initialization,
        perform_initialization=initialize,
        **fusions(device_type),
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        # megatron-core's default synchronizes the device after every batched p2p exchange, a guard from before
        # batch_isend_irecv's requests waited on the right streams (fixed in torch 1.13, pytorch/pytorch#82450);
        # with torch >= 2.6 it is a host sync per pipeline message for nothing.
        batch_p2p_sync=False,
        # The loss is a token sum; megatron divides gradients by the global token count (STYLE §4.7).
        calculate_per_token_loss=True,
    )


def build_gpt(
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    padded_vocab_size: int,
    max_seq_length: int,
    pp_rank: int,
    params_dtype: torch.dtype,
    device: torch.device,
    initialize: bool = True,
):
    """This rank's pipeline stage of a GPTModel; its output layer holds the vocab shard [V_padded / tp].

    `initialize=False` skips the random initialisation (weights are loaded next, e.g. by `tools/convert.py`). Only at
    tp=1: megatron-core 0.16.1 sets the tensor-parallel attributes of linear weights inside its initialisers, so
    without them a sharded weight looks replicated to gradient clipping (wrong global norm). `device` meta (with
    `initialize=False`): the model's structure and shapes without its weights, e.g. the sharded state dict a
    streamed import writes."""
    assert initialize or parallel.tp == 1, "initialize=False is only valid at tp=1 (see docstring)"
    from megatron.core.models.gpt import GPTModel

    on_meta = device.type == "meta"
    config = transformer_config(
        model,
        parallel,
        params_dtype=params_dtype,
        # megatron-core's CPU path allocates weights without naming a device: the meta context below places them
        use_cpu_initialization=device.type in ("cpu", "meta"),
        initialize=initialize,
        device_type=device.type,
    )
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        gpt = GPTModel(
            config=config,
            transformer_layer_spec=layer_spec(model.num_layers // parallel.pp, model.attention),
            vocab_size=padded_vocab_size,
            max_sequence_length=max_seq_length,
            pre_process=pp_rank == 0,
            post_process=pp_rank == parallel.pp - 1,
            share_embeddings_and_output_weights=model.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=int(model.rotary_base),
            parallel_output=True,  # keep logits vocab-sharded: the TAID loss reduces across TP itself
        )
    return gpt if on_meta else gpt.to(device)
