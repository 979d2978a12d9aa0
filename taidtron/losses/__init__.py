"""Training objectives: the TAID schedule, the fused vocab-parallel TAID loss, the baselines (`vocab_parallel.py`;
`akl.py`, `ctkd.py`, `dkd.py`) and their registry `LOSSES`, the vocab-parallel next-token loss, `get_loss`, which binds
the `taid` config section into the objective the trainer calls, `model_roles` / `run_models`: the model sections a
run with that objective builds, and the teacher as stored log-probs (`cached_teacher`: top-K across TP shards for the
writer, the logit shard a run reads back). Nothing outside this package computes cross-rank softmax statistics. Math
and API: docs/losses.md."""

from taidtron.losses.akl import vocab_parallel_akl_loss
from taidtron.losses.cached_teacher import (
    teacher_logits_from_records,
    vocab_parallel_log_probs,
    vocab_parallel_top_k,
)
from taidtron.losses.ctkd import CurriculumTemperature, vocab_parallel_ctkd_loss
from taidtron.losses.dkd import vocab_parallel_dkd_loss
from taidtron.losses.lm import vocab_parallel_lm_loss
from taidtron.losses.objective import (
    FROM_LOG_PROBS,
    OBJECTIVES,
    LossTerms,
    Objective,
    ObjectiveParameters,
    get_loss,
    model_roles,
    objective_needs_teacher,
    run_models,
)
from taidtron.losses.registry import LOSSES
from taidtron.losses.schedule import TAIDSchedule
from taidtron.losses.vocab_parallel import (
    default_chunk_tokens,
    vocab_parallel_fkl_loss,
    vocab_parallel_js_loss,
    vocab_parallel_rkl_loss,
    vocab_parallel_skew_fkl_loss,
    vocab_parallel_skew_rkl_loss,
    vocab_parallel_taid_loss,
    vocab_parallel_tvd_loss,
)

__all__ = [
    "FROM_LOG_PROBS",
    "LOSSES",
    "OBJECTIVES",
    "CurriculumTemperature",
    "LossTerms",
    "Objective",
    "ObjectiveParameters",
    "TAIDSchedule",
    "default_chunk_tokens",
    "get_loss",
    "model_roles",
    "objective_needs_teacher",
    "run_models",
    "vocab_parallel_akl_loss",
    "vocab_parallel_ctkd_loss",
    "vocab_parallel_dkd_loss",
    "teacher_logits_from_records",
    "vocab_parallel_fkl_loss",
    "vocab_parallel_js_loss",
    "vocab_parallel_lm_loss",
    "vocab_parallel_log_probs",
    "vocab_parallel_rkl_loss",
    "vocab_parallel_skew_fkl_loss",
    "vocab_parallel_skew_rkl_loss",
    "vocab_parallel_taid_loss",
    "vocab_parallel_top_k",
    "vocab_parallel_tvd_loss",
]
