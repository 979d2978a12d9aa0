"""Numbers the page derives from the raw results: cell intervals, the key contrasts (paired by replicate), the
teachers' gap, the students' entropy against the teacher's, and how far TAID's t ran ahead of its linear floor."""

from __future__ import annotations

from dataclasses import dataclass

from taidtron.experiments.paper_mini.design import START
from taidtron.experiments.paper_mini.stats import Interval, differences, interval, paired

METRICS = {
    "student_lm_loss": "held-out next-token loss",
    "kl_teacher_student": "KL(teacher ‖ student)",
    "top1_agreement": "top-1 agreement with the teacher",
    "student_entropy": "student entropy",
}
"""Per-cell test metrics the page tabulates (nats per token; agreement a fraction of tokens)."""
CONTRAST_METRICS = ("student_lm_loss", "kl_teacher_student", "top1_agreement")
COMPARATORS = ("fkl", "skew_fkl", "skew_rkl", "akl")
"""TAID is contrasted with each of these that the design runs."""


def values(raw: dict, variant: str, arm: str, teacher: str, metric: str) -> dict[int, float]:
    """seed -> the metric of that cell, finished cells only."""
    return {
        c["seed"]: c["test"][metric]
        for c in raw["cells"]
        if c["ok"] and c["variant"] == variant and c["arm"] == arm and c["teacher"] == teacher and metric in c["test"]
    }


def cell(raw: dict, variant: str, arm: str, teacher: str, metric: str) -> Interval | None:
    found = values(raw, variant, arm, teacher, metric)
    return interval(list(found.values())) if found else None


def teacher_values(raw: dict, variant: str, teacher: str, metric: str = "teacher_lm_loss") -> dict[int, float]:
    """seed -> the teacher's own test metric (the same in every cell measured against that teacher)."""
    out: dict[int, float] = {}
    for c in raw["cells"]:
        if c["ok"] and c["variant"] == variant and c["teacher"] == teacher and metric in c["test"]:
            out.setdefault(c["seed"], c["test"][metric])
    return out


@dataclass(frozen=True)
class Contrast:
    """One paired difference on the page: `first` - `second` per replicate, for each contrast metric."""

    variant: str
    teacher: str | None
    """The teacher both arms were distilled from and measured against; None for a change between teachers."""
    first: str
    second: str
    description: str
    by_metric: dict[str, Interval]


def contrast(raw: dict, variant: str, teacher: str, first: str, second: str, description: str) -> Contrast | None:
    by_metric = {}
    for metric in CONTRAST_METRICS:
        diffs = paired(values(raw, variant, first, teacher, metric), values(raw, variant, second, teacher, metric))
        if diffs:
            by_metric[metric] = interval(diffs)
    return Contrast(variant, teacher, first, second, description, by_metric) if by_metric else None


def change_across_teachers(
    raw: dict, variant: str, first: str, second: str, small: str, large: str, description: str
) -> Contrast | None:
    """Per replicate, (first - second) with the large teacher minus (first - second) with the small one: < 0 in loss
    means `first`'s advantage grows with the teacher."""
    by_metric = {}
    for metric in CONTRAST_METRICS:
        at = {
            size: differences(values(raw, variant, first, size, metric), values(raw, variant, second, size, metric))
            for size in (small, large)
        }
        diffs = paired(at[large], at[small])
        if diffs:
            by_metric[metric] = interval(diffs)
    if not by_metric:
        return None
    return Contrast(variant, None, first, second, description, by_metric)


def key_contrasts(raw: dict, variant: str, arms: list[str], teachers: list[str]) -> list[Contrast]:
    """TAID against each comparator per teacher, TAID adaptive against linear, TAID against no teacher, and the
    change of TAID's advantage over each comparator from the smallest to the largest teacher."""
    found: list[Contrast | None] = []
    comparators = [c for c in COMPARATORS if c in arms]
    if "taid" not in arms:
        return []
    for teacher in teachers:
        for other in comparators:
            found.append(contrast(raw, variant, teacher, "taid", other, f"TAID - {raw['arms'][other]['label']}"))
        if "taid_linear" in arms:
            found.append(contrast(raw, variant, teacher, "taid", "taid_linear", "TAID adaptive - linear t"))
        if "lm" in arms:
            found.append(contrast(raw, variant, teacher, "taid", "lm", "TAID - no teacher"))
    if len(teachers) >= 2:
        for other in comparators:
            small, large = teachers[0], teachers[-1]
            description = f"TAID - {raw['arms'][other]['label']}: change from teacher {small} to {large}"
            found.append(change_across_teachers(raw, variant, "taid", other, small, large, description))
    return [c for c in found if c is not None]


def teacher_gap(raw: dict, small: str, large: str) -> Interval | None:
    """Held-out loss of the small teacher minus the large one's, paired by replicate (> 0: the large one is better)."""
    diffs = paired(teacher_values(raw, "general", small), teacher_values(raw, "general", large))
    return interval(diffs) if diffs else None


def student_below_teacher(raw: dict, variant: str, teacher: str) -> Interval | None:
    """The pretrained student's held-out loss minus the teacher's, paired by replicate (> 0: the student is worse)."""
    diffs = paired(values(raw, variant, START, teacher, "student_lm_loss"), teacher_values(raw, variant, teacher))
    return interval(diffs) if diffs else None


def entropy_gap(raw: dict, variant: str, arm: str, teacher: str) -> Interval | None:
    """The student's mean entropy minus the teacher's, paired by replicate (> 0: broader than the teacher)."""
    diffs = paired(
        values(raw, variant, arm, teacher, "student_entropy"),
        teacher_values(raw, variant, teacher, "teacher_entropy"),
    )
    return interval(diffs) if diffs else None


def t_floor(step: int, taid: dict, train_steps: int) -> float:
    """The linear floor t_lin after the update of optimizer step `step` (1-based, as metrics.jsonl counts): the rule
    moves t with the steps done before it (docs/taid.md)."""
    return taid["t_start"] + (taid["t_end"] - taid["t_start"]) * (step - 1) / train_steps


@dataclass(frozen=True)
class ScheduleSummary:
    runs: int
    lead_fraction: float
    """Mean over runs of the fraction of steps where t is above its floor."""
    max_lead: float
    """Largest t - floor over all runs and steps."""
    max_lead_step: int
    final_t: float


def schedule_summary(raw: dict, variant: str, arm: str) -> ScheduleSummary | None:
    """How TAID's t of `arm`'s runs compares with its linear floor."""
    taid = raw["config"]["taid"]
    runs = [r for r in raw["runs"] if r["ok"] and r["variant"] == variant and r["arm"] == arm and r["taid_t"]]
    if not runs:
        return None
    fractions, best = [], (float("-inf"), 0)
    for run in runs:
        leads = [(t - t_floor(step, taid, run["train_steps"]), step) for step, t in run["taid_t"]]
        fractions.append(sum(lead > 1e-9 for lead, _ in leads) / len(leads))
        best = max(best, max(leads))
    return ScheduleSummary(
        runs=len(runs),
        lead_fraction=sum(fractions) / len(fractions),
        max_lead=best[0],
        max_lead_step=int(best[1]),
        final_t=sum(r["taid_t"][-1][1] for r in runs) / len(runs),
    )
