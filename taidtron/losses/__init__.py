"""Training objectives: the TAID schedule, the fused vocab-parallel TAID loss, the baselines (`vocab_parallel.py`;
`akl.py`, `ctkd.py`, `dkd.py`) and their registry `LOSSES`, the vocab-parallel next-token loss, `get_loss`, which binds
the `taid` config section into the objective the trainer calls, and `model_roles` / `run_models`: the model sections a
run with that objective builds. Nothing outside this package computes cross-rank softmax statistics. Math and API:
docs/losses.md."""

from taidtron.losses.akl import vocab_parallel_akl_loss
from taidtron.losses.ctkd import CurriculumTemperature, vocab_parallel_ctkd_loss
from taidtron.losses.dkd import vocab_parallel_dkd_loss
from taidtron.losses.lm import vocab_parallel_lm_loss
from taidtron.losses.objective import (
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
    "vocab_parallel_fkl_loss",
    "vocab_parallel_js_loss",
    "vocab_parallel_lm_loss",
    "vocab_parallel_rkl_loss",
    "vocab_parallel_skew_fkl_loss",
    "vocab_parallel_skew_rkl_loss",
    "vocab_parallel_taid_loss",
    "vocab_parallel_tvd_loss",
]
