"""The page's plots (PNG, `taidtron.plots`), each drawn from the raw results alone; one colour per arm in every plot.
Bands and error bars are the 95% t-intervals over replicates (stats.py)."""

from __future__ import annotations

from pathlib import Path

from taidtron.experiments.paper_mini import analysis
from taidtron.experiments.paper_mini.stats import interval

CAPTIONS = {
    "paper_mini_curves.png": "Validation curves of every arm during distillation, per variant and teacher (mean and "
    "95% interval over replicates).",
    "paper_mini_t.png": "TAID's t per step, every run with adaptive t and with linear t, against the linear floor "
    "t_start + (t_end - t_start) · step / steps (dotted).",
    "paper_mini_contrasts.png": "TAID minus each comparator, paired by replicate, against the teacher's size "
    "(95% intervals; below 0 in loss and KL, above 0 in agreement, favours TAID).",
    "paper_mini_pretraining.png": "Validation loss of the teachers' and the student's pretraining (and the transfer "
    "teacher's fine-tuning on the target), every replicate.",
}


def _style(raw: dict, arm: str) -> dict:
    style = {"color": raw["arms"][arm]["color"]}
    if arm == "lm":
        style["linestyle"] = "--"
    if arm == "taid":
        style["linewidth"] = 2.2
    return style


def _mean_curve(raw: dict, variant: str, arm: str, teacher: str | None, key: str):
    from taidtron.plots import Line

    curves = [
        dict(map(tuple, r["valid"][key]))
        for r in raw["runs"]
        if r["ok"] and r["variant"] == variant and r["arm"] == arm and r["teacher"] == teacher and key in r["valid"]
    ]
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    stats = [interval([c[s] for c in curves]) for s in steps]
    err = [0.0 if s.n < 2 else s.half_width for s in stats]
    return Line(
        raw["arms"][arm]["label"],
        steps,
        [s.mean for s in stats],
        err,
        style={"marker": "o", "markersize": 3, **_style(raw, arm)},
    )


def _variants(raw: dict) -> list[tuple[str, list[str], list[str]]]:
    design = raw["design"]
    out = [("general", [t["name"] for t in design["teachers"]], list(design["arms"]))]
    if design.get("transfer"):
        out.append(("target", [design["transfer"]["teacher"]], list(design["transfer"]["arms"])))
    return out


def curves_plot(raw: dict, out: Path) -> Path | None:
    from taidtron.plots import Panel, plot_panels

    panels = []
    for key, title in (
        ("valid_student_lm_loss", "validation next-token loss"),
        ("valid_kl_teacher_student", "validation KL(teacher || student)"),
    ):
        for variant, teachers, arms in _variants(raw):
            for teacher in teachers:
                lines = []
                for arm in arms:
                    if key == "valid_kl_teacher_student" and arm == "lm":
                        continue  # trained without a teacher: no KL is logged
                    owner = None if arm == "lm" else teacher
                    if (line := _mean_curve(raw, variant, arm, owner, key)) is not None:
                        lines.append(line)
                if lines:
                    panels.append(Panel(f"{variant}, teacher {teacher}: {title}", key.removeprefix("valid_"), lines))
    if not panels:
        return None
    return plot_panels(panels, out / "paper_mini_curves.png", ncols=len(panels) // 2 or 1)


def t_plot(raw: dict, out: Path) -> Path | None:
    from taidtron.plots import Line, Panel, plot_panels

    taid = raw["config"].get("taid") or {}
    panels = []
    for variant, teachers, _ in _variants(raw):
        for teacher in teachers:
            runs = [
                r
                for r in raw["runs"]
                if r["variant"] == variant
                and r["teacher"] == teacher
                and r["taid_t"]
                and r["arm"] in ("taid", "taid_linear")
            ]
            if not runs:
                continue
            lines = [
                Line(
                    f"{raw['arms'][r['arm']]['label']}, replicate {r['seed']}",
                    [p[0] for p in r["taid_t"]],
                    [p[1] for p in r["taid_t"]],
                    style=_style(raw, r["arm"]),
                )
                for r in runs
            ]
            steps = runs[0]["train_steps"]
            lines.append(
                Line(
                    "linear floor",
                    [1, steps],
                    [analysis.t_floor(1, taid, steps), analysis.t_floor(steps, taid, steps)],
                    style={"color": "black", "linestyle": ":"},
                )
            )
            panels.append(Panel(f"{variant}, teacher {teacher}: TAID's t", "t", lines))
    if not panels:
        return None
    return plot_panels(panels, out / "paper_mini_t.png", ncols=min(3, len(panels)))


def contrasts_plot(raw: dict, out: Path) -> Path | None:
    from taidtron.plots import Line, Panel, plot_panels

    design = raw["design"]
    teachers = [t["name"] for t in design["teachers"]]
    params = {name: raw["teachers"][name]["params"] / 1e6 for name in teachers if raw["teachers"][name]["params"]}
    others = [a for a in (*analysis.COMPARATORS, "taid_linear", "lm") if a in design["arms"]]
    if "taid" not in design["arms"] or len(params) < len(teachers):
        return None
    panels = []
    for metric in analysis.CONTRAST_METRICS:
        lines = []
        for other in others:
            points = [
                (params[t], c.by_metric[metric])
                for t in teachers
                if (c := analysis.contrast(raw, "general", t, "taid", other, "")) and metric in c.by_metric
            ]
            if points:
                lines.append(
                    Line(
                        f"TAID - {raw['arms'][other]['label']}",
                        [x for x, _ in points],
                        [iv.mean for _, iv in points],
                        [0.0 if iv.n < 2 else iv.half_width for _, iv in points],
                        err_bars=True,
                        style={"marker": "o", "capsize": 3, **_style(raw, other)},
                    )
                )
        if lines:
            xs = sorted(params.values())
            lines.append(Line("0", xs, [0.0] * len(xs), style={"color": "gray", "linestyle": ":"}))
            panels.append(
                Panel(
                    f"general: TAID minus comparator, {analysis.METRICS[metric]}",
                    metric,
                    lines,
                    xlabel="teacher parameters (M)",
                    xscale="log",
                )
            )
    if not panels:
        return None
    return plot_panels(panels, out / "paper_mini_contrasts.png", ncols=len(panels))


def pretraining_plot(raw: dict, out: Path) -> Path | None:
    from taidtron.plots import Line, Panel, plot_panels

    lines = []
    models = [("student", raw["student"]["pretraining"])]
    for name, teacher in raw["teachers"].items():
        models.append((f"teacher {name}", teacher["pretraining"]))
        if teacher.get("finetuning"):
            models.append((f"teacher {name} on the target", teacher["finetuning"]))
    for label, by_seed in models:
        for seed, record in by_seed.items():
            if record["valid"]:
                lines.append(
                    Line(
                        f"{label}, replicate {seed}",
                        [p[0] for p in record["valid"]],
                        [p[1] for p in record["valid"]],
                        style={"marker": "o", "markersize": 2},
                    )
                )
    if not lines:
        return None
    panel = Panel("pretraining: validation next-token loss (each model's own valid pages)", "valid_lm_loss", lines)
    return plot_panels([panel], out / "paper_mini_pretraining.png", ncols=1, panel_size=(9.0, 5.0))


def write_plots(raw: dict, out: Path) -> list[str]:
    """Every plot the raw results allow; returns the file names written."""
    written = [plot(raw, out) for plot in (curves_plot, t_plot, contrasts_plot, pretraining_plot)]
    return [p.name for p in written if p is not None]
