"""Core attention on `torch.nn.functional.scaled_dot_product_attention`, for GPUs without Transformer Engine.

megatron-core's local `DotProductAttention` computes softmax(q k^T) as a [b, heads, s, s] tensor and keeps it for
the backward pass; SDPA dispatches to a fused kernel (flash / memory-efficient / cuDNN on CUDA, a flash kernel on
CPU) that keeps only q, k, v, the output and one log-sum-exp per row. Same constructor and forward signature as
megatron-core 0.16.1's `DotProductAttention`, so it drops into the local layer spec as `core_attention`
(see `taidtron.models.gpt.layer_spec`). No parameters, no state: checkpoints are the same as with the local spec.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import is_layer_window_attention


class SDPAttention(MegatronModule):
    """Causal (or explicitly masked) attention with grouped query heads, no dropout, no context parallelism.

    Inputs are megatron's per-rank shards: query [sq, b, heads / tp, d], key and value [sk, b, groups / tp, d];
    the output is [sq, b, heads / tp * d]. Everything the local module supports beyond that (attention dropout,
    sliding windows, softmax offsets, QK clipping, packed sequences, attention bias) is refused at construction or
    call, so a config that needs it fails loudly instead of computing something else.
    """

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        unsupported = {
            "attention dropout": dropout != 0.0,
            "context parallelism": config.context_parallel_size != 1,
            "sliding-window attention": is_layer_window_attention(
                config.window_size, config.window_attn_skip_freq, layer_number
            ),
            f"softmax_type={config.softmax_type!r}": config.softmax_type != "vanilla",
            "QK clipping / max-logit logging": config.qk_clip or config.log_max_attention_logit,
        }
        refused = [name for name, present in unsupported.items() if present]
        if refused:
            raise ValueError(
                f"SDPA core attention does not support {', '.join(refused)}; use attention=local or Transformer Engine."
            )
        if pg_collection is not None:
            self.tp_group = pg_collection.tp
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        # megatron's apply_query_key_layer_scaling divides the scale by the layer number and multiplies the scores
        # back by it inside the fp32 softmax: the net scale is this one.
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError(
                "SDPA core attention supports neither packed sequences nor an attention bias; use Transformer Engine."
            )
        sq, b, heads, d = query.shape
        sk, groups = key.size(0), key.size(2)
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        causal, mask = False, None
        if attention_mask is not None:
            # megatron masks are True where attention is *forbidden*; SDPA's boolean masks are True where allowed.
            mask = ~attention_mask
        elif mask_type == AttnMaskType.causal and sq > 1:
            if sq != sk:
                raise ValueError(f"causal attention without a mask needs as many queries as keys ({sq} != {sk})")
            causal = True
        # [s, b, n, d] -> [b, n, s, d] (views; SDPA accepts any layout whose last dimension is contiguous)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=0.0,
            is_causal=causal,
            scale=self.softmax_scale,
            enable_gqa=groups != heads,
        )
        # [b, n, sq, d] -> [sq, b, n * d]
        return context.permute(2, 0, 1, 3).reshape(sq, b, heads * d)
