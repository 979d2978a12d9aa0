"""A torch RMSNorm that megatron-core's local layer spec accepts under sequence parallelism (checked: 0.16.1, 0.19.2).

megatron-core's own `WrappedTorchNorm` refuses sequence parallelism, although the norm itself is the same under it:
only its weight gradient is partial on each TP rank. megatron's `finalize_model_grads` all-reduces over the TP group
the gradient of every parameter that carries the attribute `sequence_parallel = True` (a convention of its
internals, also how TE's norms are handled), so the norm tags its weight with it.
"""

from __future__ import annotations

import torch

# 0.16.1 and 0.19.2: finalize_model_grads sums over TP the grads of params tagged `sequence_parallel`.
CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")


class RMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm with megatron's norm constructor signature.

    megatron-core's `WrappedTorchNorm` refuses sequence parallelism; the norm itself is the same under it, only
    its weight gradient is partial on each TP rank. Tagging the weight `sequence_parallel` makes
    `finalize_model_grads` all-reduce that gradient over the TP group, as TE's norms do.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **_unused):
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel
