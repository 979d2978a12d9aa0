"""Distillation losses: the TAID schedule, the fused vocab-parallel TAID loss and the baselines (DESIGN.md §1-2)."""

from taidtron.losses.schedule import TAIDSchedule
from taidtron.losses.vocab_parallel import (
    LOSSES,
    default_chunk_tokens,
    get_loss,
    vocab_parallel_fkl_loss,
    vocab_parallel_js_loss,
    vocab_parallel_rkl_loss,
    vocab_parallel_skew_fkl_loss,
    vocab_parallel_skew_rkl_loss,
    vocab_parallel_taid_loss,
    vocab_parallel_tvd_loss,
)

__all__ = [
    "LOSSES",
    "TAIDSchedule",
    "default_chunk_tokens",
    "get_loss",
    "vocab_parallel_fkl_loss",
    "vocab_parallel_js_loss",
    "vocab_parallel_rkl_loss",
    "vocab_parallel_skew_fkl_loss",
    "vocab_parallel_skew_rkl_loss",
    "vocab_parallel_taid_loss",
    "vocab_parallel_tvd_loss",
]
