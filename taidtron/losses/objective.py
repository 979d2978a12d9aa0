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

An objective may have parameters of its own (`ctkd`: its learned temperature, `Objective.trainable`), trained beside
the student: the trainer wraps them in `ObjectiveParameters` (their AdamW, gradient reduction and checkpoint state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed

from taidtron.config import ModelConfig, OptimConfig, TAIDConfig, TrainConfig
from taidtron.losses.ctkd import CurriculumTemperature
from taidtron.losses.lm import vocab_parallel_lm_loss
from taidtron.losses.registry import LOSSES

OBJECTIVES = (*LOSSES, "lm")
"""Every value `taid.loss` accepts."""
FUSED = ("taid", "fkl")
"""The losses with a Triton kernel (`taid.loss_impl`)."""
FROM_LOG_PROBS = ("taid", "fkl", "rkl", "tvd", "skew_fkl", "skew_rkl", "js", "akl", "ctkd", "dkd")
"""The objectives that see the teacher only through softmax(teacher logits / a temperature) and, for akl, the order
of the teacher's logits, none of which a per-token constant changes: they give the same loss from log p_T, so they
can distil from a teacher cache (`teacher.cache`)."""


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
    trainable: CurriculumTemperature | None = None
    """The loss's own parameters (ctkd's temperature), trained beside the student; None for every other loss."""

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
            extra = {} if self.trainable is None else {"temperature": self.trainable()}
            distill = self.distill_fn(
                student_logits, teacher_logits, t=t, vocab_size=vocab_size, group=group, labels=labels, **extra
            )
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
    """The objective `taid.loss` names, with the section's options (skew, js_beta, akl_mu, dkd_*, ctkd_*,
    chunk_tokens, loss_impl, lm_loss_weight); for ctkd with a fresh temperature (`Objective.trainable`)."""
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
    trainable = None
    if taid.loss in ("skew_fkl", "skew_rkl"):
        options["skew"] = shown["skew"] = taid.skew
    elif taid.loss == "js":
        options["beta"] = shown["js_beta"] = taid.js_beta
    elif taid.loss == "akl":
        options["mu"] = shown["akl_mu"] = taid.akl_mu
    elif taid.loss == "dkd":
        options["alpha"] = shown["dkd_alpha"] = taid.dkd_alpha
        options["beta"] = shown["dkd_beta"] = taid.dkd_beta
        options["temperature"] = shown["dkd_temperature"] = taid.dkd_temperature
    elif taid.loss == "ctkd":
        ctkd = {key: getattr(taid, f"ctkd_{key}") for key in CTKD_KEYS}
        trainable = CurriculumTemperature(**ctkd)
        shown.update({f"ctkd_{key}": value for key, value in ctkd.items()})
    return Objective(
        name=taid.loss,
        needs_teacher=True,
        uses_t=taid.loss == "taid",
        lm_loss_weight=taid.lm_loss_weight,
        chunk_tokens=taid.chunk_tokens,
        impl=taid.loss_impl,
        distill_fn=partial(LOSSES[taid.loss], **options),
        options=shown,
        trainable=trainable,
    )


CTKD_KEYS = ("min_temperature", "max_temperature", "lambda_max", "ramp_fraction")
"""The `taid.ctkd_*` keys, `CurriculumTemperature`'s arguments."""


class ObjectiveParameters:
    """The objective's own parameters (`Objective.trainable`: ctkd's temperature) as the trainer drives them, beside
    megatron's optimizer of the student: their own AdamW (the run's betas and eps and the student's learning rate
    of each step; no weight decay), their gradient summed over data-parallel ranks per global token like the
    student's, and their state in the trainer's checkpoint state (JSON numbers, restored exactly).

    Per optimizer step: `start_step` (before the micro-batches), `reduce_gradients` (after them, on every rank),
    then `step` when the trainer applies the step.
    """

    def __init__(self, module: CurriculumTemperature, optim: OptimConfig, device: torch.device):
        self.module = module.to(device)
        self.parameters = list(module.parameters())
        self.optimizer = torch.optim.AdamW(
            self.parameters,
            lr=optim.lr,
            betas=(optim.adam_beta1, optim.adam_beta2),
            eps=optim.adam_eps,
            weight_decay=0.0,
        )

    def start_step(self, step: int, total_steps: int) -> None:
        """Zero the gradients and set the curriculum for the step after `step` optimizer steps of `total_steps`."""
        self.optimizer.zero_grad(set_to_none=True)
        self.module.set_progress(step, total_steps)

    def reduce_gradients(self, *, holds_gradient: bool, tokens: float, group) -> bool:
        """Make every rank's gradient the global one: the sum over the ranks with `holds_gradient` (the last
        pipeline stage's tensor-parallel rank 0 of each data-parallel replica: the other TP ranks hold copies)
        divided by the global token count, as megatron does for the student. One SUM all-reduce over `group` (the
        whole world; None: a single process). Returns whether the gradient is finite (else the step must be
        skipped)."""
        flat = torch.cat(
            [
                p.grad.reshape(-1).float() if holds_gradient and p.grad is not None else p.new_zeros(p.numel())
                for p in self.parameters
            ]
        )
        if group is not None:
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=group)
        flat /= tokens
        offset = 0
        for p in self.parameters:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return bool(torch.isfinite(flat).all())

    def step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()

    def state_dict(self) -> dict:
        """The parameters and AdamW's state as JSON numbers (fp32 values are exact as Python floats)."""
        state = self.optimizer.state_dict()["state"]
        return {
            "parameters": [p.detach().reshape(-1).tolist() for p in self.parameters],
            "adam": [
                {key: torch.as_tensor(value).reshape(-1).tolist() for key, value in state[i].items()}
                if i in state
                else {}
                for i in range(len(self.parameters))
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for p, values in zip(self.parameters, state["parameters"], strict=True):
                p.copy_(torch.tensor(values, dtype=p.dtype).view_as(p))
        full = self.optimizer.state_dict()
        full["state"] = {
            i: {
                key: torch.tensor(values, dtype=torch.float32).reshape(() if key == "step" else p.shape)
                for key, values in saved.items()
            }
            for i, (p, saved) in enumerate(zip(self.parameters, state["adam"], strict=True))
            if saved
        }
        self.optimizer.load_state_dict(full)


def _check_name(name: str) -> None:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(OBJECTIVES)}.")
