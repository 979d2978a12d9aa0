"""The training objective as the trainer sees it: `get_loss(taid_cfg)` binds the `taid` config section into one
callable, so nothing outside `taidtron.losses` branches on loss names.

    objective = get_loss(cfg.taid)
    terms = objective(student_logits, teacher_logits, labels, t=t, vocab_size=V, group=tp_group)
    terms.total   # [b, s] fp32, what is back-propagated
    terms.distill # [b, s] the distillation loss (the value t is driven by), None for `lm`
    terms.lm      # [b, s] next-token cross-entropy, when the objective includes it, else None

Objectives: `taid` and the baselines of `LOSSES` (distillation; `taid.lm_loss_weight` > 0 adds that weight times the
next-token cross-entropy to the total), and `lm`, plain next-token training of the student without a teacher (teacher
pretraining, the no-teacher floor of comparisons).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from taidtron.config import ModelConfig, TAIDConfig, TrainConfig
from taidtron.losses.lm import vocab_parallel_lm_loss
from taidtron.losses.vocab_parallel import LOSSES

OBJECTIVES = (*LOSSES, "lm")
"""Every value `taid.loss` accepts."""
FUSED = ("taid", "fkl")
"""The losses with a Triton kernel (`taid.loss_impl`)."""
FROM_LOG_PROBS = ("taid", "fkl", "rkl", "tvd", "skew_fkl", "skew_rkl", "js")
"""The objectives that see the teacher only through softmax(teacher logits), which a per-token constant does not
change: they give the same loss from log p_T, so they can distil from a teacher cache (`teacher.cache`)."""


@dataclass(frozen=True)
class LossTerms:
    """Per-token terms of one micro-batch, [b, s] fp32 each (see the module docstring)."""

    total: torch.Tensor
    distill: torch.Tensor | None
    lm: torch.Tensor | None


@dataclass(frozen=True)
class Objective:
    """A loss with its options bound. `needs_teacher`: the teacher's logits are an input (False only for `lm`).
    `uses_t`: the TAID interpolation t enters the loss (only `taid`), so t is worth scheduling and logging."""

    name: str
    needs_teacher: bool
    uses_t: bool
    lm_loss_weight: float
    chunk_tokens: int | None
    impl: str
    """Implementation of the fused losses (taid, fkl; `taid.loss_impl`), also for validation's KL."""
    distill_fn: Callable[..., torch.Tensor] | None
    options: dict[str, float] = field(default_factory=dict)
    """The `taid` keys that parametrise this loss and their values (e.g. {"skew": 0.1}), for the start-up banner."""

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        labels: torch.Tensor,
        *,
        t: float,
        vocab_size: int,
        group,
    ) -> LossTerms:
        distill = lm = None
        if self.distill_fn is not None:
            distill = self.distill_fn(student_logits, teacher_logits, t=t, vocab_size=vocab_size, group=group)
        if self.distill_fn is None or self.lm_loss_weight > 0:
            lm = vocab_parallel_lm_loss(
                student_logits, labels, vocab_size=vocab_size, group=group, chunk_tokens=self.chunk_tokens
            )
        if distill is None:
            total = lm
        elif lm is None:
            total = distill
        else:
            total = distill + self.lm_loss_weight * lm
        return LossTerms(total=total, distill=distill, lm=lm)


def objective_needs_teacher(name: str) -> bool:
    """Whether `taid.loss=name` distils from a teacher (every objective but `lm`)."""
    _check_name(name)
    return name != "lm"


def model_roles(taid: TAIDConfig) -> tuple[str, ...]:
    """The model sections a run with this objective uses: the student, and the teacher when the objective needs one
    (every `taid.loss` but `lm`)."""
    return ("student", "teacher") if objective_needs_teacher(taid.loss) else ("student",)


def run_models(cfg: TrainConfig) -> dict[str, ModelConfig]:
    """The model sections a run builds, by role: `model_roles`, less the teacher when it comes from a cache
    (`teacher.cache`: its stored log-probs stand in for it)."""
    roles = [role for role in model_roles(cfg.taid) if not (role == "teacher" and cfg.teacher.cache)]
    return {role: getattr(cfg, role) for role in roles}


def get_loss(taid: TAIDConfig) -> Objective:
    """The objective `taid.loss` names, with the section's options (skew, js_beta, chunk_tokens, lm_loss_weight)."""
    _check_name(taid.loss)
    if taid.loss_impl != "auto" and taid.loss not in FUSED:
        raise ValueError(
            f"taid.loss_impl={taid.loss_impl} applies to the fused losses ({', '.join(FUSED)}) only; "
            f"leave it at auto for taid.loss={taid.loss}."
        )
    if taid.loss == "lm":
        return Objective(
            name="lm",
            needs_teacher=False,
            uses_t=False,
            lm_loss_weight=1.0,
            chunk_tokens=taid.chunk_tokens,
            impl=taid.loss_impl,
            distill_fn=None,
        )
    options: dict = {"chunk_tokens": taid.chunk_tokens}
    if taid.loss in FUSED:
        options["impl"] = taid.loss_impl
    shown: dict[str, float] = {}
    if taid.loss in ("skew_fkl", "skew_rkl"):
        options["skew"] = shown["skew"] = taid.skew
    elif taid.loss == "js":
        options["beta"] = shown["js_beta"] = taid.js_beta
    return Objective(
        name=taid.loss,
        needs_teacher=True,
        uses_t=taid.loss == "taid",
        lm_loss_weight=taid.lm_loss_weight,
        chunk_tokens=taid.chunk_tokens,
        impl=taid.loss_impl,
        distill_fn=partial(LOSSES[taid.loss], **options),
        options=shown,
    )


def _check_name(name: str) -> None:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(OBJECTIVES)}.")
