"""The page's reading: every sentence is computed from an interval (stats.py) or a count in the raw results, and a
difference is called resolved only when its 95% interval excludes 0."""

from __future__ import annotations

from taidtron.experiments.paper_mini import analysis
from taidtron.experiments.paper_mini.stats import Interval

GAP_WANTED = 0.3
"""Nats by which the large teacher's held-out loss should undercut the small one's (the design's aim)."""


def verdict(iv: Interval, better: str, worse: str, lower_is_better: bool = True) -> str:
    """`resolved: <better>` / `resolved: <worse>` / `not resolved` for a difference first - second."""
    if not iv.resolved:
        return "not resolved (the interval includes 0)"
    favours_first = (iv.high < 0) if lower_is_better else (iv.low > 0)
    return f"resolved: {better if favours_first else worse}"


def _labels(raw: dict, contrast: analysis.Contrast) -> tuple[str, str]:
    return raw["arms"][contrast.first]["label"], raw["arms"][contrast.second]["label"]


def contrast_sentence(raw: dict, contrast: analysis.Contrast) -> str:
    first, second = _labels(raw, contrast)
    loss = contrast.by_metric.get("student_lm_loss")
    where = f"teacher {contrast.teacher}" if contrast.teacher else contrast.description
    if contrast.teacher is None:
        text = (
            f"{where}: the held-out loss difference {first} - {second} changes by {loss.signed()} nats "
            f"(< 0: {first}'s advantage grows with the teacher), "
            + verdict(loss, f"{first}'s advantage grows", f"{first}'s advantage shrinks")
        )
    else:
        text = f"{where}: {first} - {second} in held-out loss {loss.signed()} nats, " + verdict(
            loss, f"{first} is better", f"{second} is better"
        )
    agreement = contrast.by_metric.get("top1_agreement")
    if agreement is not None:
        if contrast.teacher:
            outcome = verdict(agreement, f"{first} agrees more", f"{second} agrees more", lower_is_better=False)
        else:
            outcome = verdict(agreement, f"{first}'s lead grows", f"{first}'s lead shrinks", lower_is_better=False)
        text += f"; in top-1 agreement with the teacher {agreement.signed(4)}, {outcome}"
    return text + "."


def setup_sentences(raw: dict) -> list[str]:
    """Whether the design's premises hold: a teacher gap of GAP_WANTED nats, a student clearly below the smallest."""
    names = [t["name"] for t in raw["design"]["teachers"]]
    out = []
    if len(names) >= 2:
        gap = analysis.teacher_gap(raw, names[0], names[-1])
        if gap is not None:
            met = "met" if gap.mean >= GAP_WANTED else "not met"
            lower = "" if gap.low >= GAP_WANTED else f" (its lower end is below {GAP_WANTED})"
            out.append(
                f"Teacher gap: the {names[-1]} teacher's held-out loss is below the {names[0]} one's by "
                f"{gap.text()} nats; the design's aim of at least {GAP_WANTED} nats is {met}{lower}."
            )
    below = analysis.student_below_teacher(raw, "general", names[0])
    if below is not None:
        if below.resolved:
            premise = "resolved" if below.low > 0 else "resolved the other way: the premise fails"
        else:
            premise = "not resolved: the premise is not shown"
        out.append(
            f"The pretrained student's held-out loss minus the {names[0]} teacher's: {below.text()} nats ({premise})."
        )
    return out


def _arms_resolved_against(raw: dict, variant: str, teacher: str, reference: str) -> tuple[list[str], list[str]]:
    """Arms whose held-out loss is resolved below / above `reference`'s (paired by replicate)."""
    better, worse = [], []
    arms = raw["design"]["arms"] if variant == "general" else raw["design"]["transfer"]["arms"]
    for arm in arms:
        if arm == reference:
            continue
        found = analysis.contrast(raw, variant, teacher, arm, reference, "")
        loss = found.by_metric.get("student_lm_loss") if found else None
        if loss is not None and loss.resolved:
            (better if loss.high < 0 else worse).append(f"{raw['arms'][arm]['label']} ({loss.signed()})")
    return better, worse


def variant_sentences(raw: dict, variant: str, arms: list[str], teachers: list[str]) -> list[str]:
    out = [contrast_sentence(raw, c) for c in analysis.key_contrasts(raw, variant, arms, teachers)]
    for teacher in teachers:
        if "lm" in arms:
            better, worse = _arms_resolved_against(raw, variant, teacher, "lm")
            out.append(
                f"Teacher {teacher}, against continued training without a teacher: resolved better "
                f"{', '.join(better) or 'none'}; resolved worse {', '.join(worse) or 'none'} (held-out loss "
                "difference, nats)."
            )
        entropies = []
        for arm in arms:
            gap = analysis.entropy_gap(raw, variant, arm, teacher)
            if gap is not None:
                side = (
                    "broader than the teacher"
                    if gap.low > 0
                    else "sharper than the teacher"
                    if gap.high < 0
                    else "not resolved"
                )
                entropies.append(f"{raw['arms'][arm]['label']} {gap.signed(3)} ({side})")
        if entropies:
            out.append(
                f"Teacher {teacher}, the student's mean entropy minus the teacher's (nats; > 0 spreads mass the "
                f"teacher does not, the mode-averaging the paper attributes to forward KL; < 0 concentrates it, mode "
                f"collapse): " + "; ".join(entropies) + "."
            )
    for arm in ("taid", "taid_linear"):
        summary = analysis.schedule_summary(raw, variant, arm)
        if summary is None:
            continue
        label = raw["arms"][arm]["label"]
        if summary.max_lead > 1e-9:
            out.append(
                f"{label}: t was above its linear floor in {summary.lead_fraction:.0%} of the steps of its "
                f"{summary.runs} runs, by up to {summary.max_lead:.3f} (step {summary.max_lead_step}); final t "
                f"{summary.final_t:.3f}."
            )
        else:
            out.append(
                f"{label}: t equals its linear floor at every step of its {summary.runs} runs (final t "
                f"{summary.final_t:.3f})."
            )
    return out
