"""Run curves to PNG, headless (matplotlib's Agg backend): what `tools/plot_run.py` and `tools/paper_mini.py` draw.

    runs = [load_run("runs/a"), load_run("runs/b")]
    plot_runs(runs, "curves.png")                    # loss, t, lr, grad norm, validation; the runs overlaid
    plot_panels([Panel("title", "y", [Line("taid", xs, ys, err)])], "out.png")   # anything else

A run directory holds `metrics.jsonl` (one row per optimizer step) and, when it validated, `eval.jsonl` (see
README, Metrics). matplotlib is the `plots` extra (`pip install -e ".[plots]"`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from taidtron.io import atomic_output

# Per-step curves of metrics.jsonl a run plot shows, in order: (field, panel title).
STEP_PANELS = (
    ("loss", "training loss"),
    ("taid_t", "TAID t"),
    ("lr", "learning rate"),
    ("grad_norm", "gradient norm (before clipping)"),
)
# Validation curves of eval.jsonl: (field, panel title).
EVAL_PANELS = (
    ("valid_student_lm_loss", "validation: student next-token loss"),
    ("valid_kl_teacher_student", "validation: KL(teacher || student)"),
    ("valid_distill_loss", "validation: distillation loss"),
    ("valid_teacher_lm_loss", "validation: teacher next-token loss"),
)


@dataclass
class Run:
    """One run directory's logs."""

    name: str
    steps: list[dict]
    """metrics.jsonl rows."""
    evals: list[dict]
    """eval.jsonl rows (empty when the run did not validate)."""


@dataclass
class Line:
    """One curve: y over x, with an optional error band (± err)."""

    label: str
    x: list[float]
    y: list[float]
    err: list[float] | None = None
    err_bars: bool = False
    """Draw `err` as error bars (few points) instead of a band (curves)."""
    style: dict = field(default_factory=dict)
    """matplotlib keyword arguments (color, linestyle, marker, ...)."""


@dataclass
class Panel:
    title: str
    ylabel: str
    lines: list[Line]
    xlabel: str = "optimizer step"
    xscale: str = "linear"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file; a torn last line (a writer killed mid-row) is ignored."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def load_run(run_dir: str | os.PathLike, name: str | None = None) -> Run:
    """A run's metrics.jsonl and eval.jsonl. Raises ValueError when the directory holds no metrics.jsonl."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{run_dir} has no metrics.jsonl; pass the logging.run_dir of a run.")
    evals = run_dir / "eval.jsonl"
    return Run(name=name or run_dir.name, steps=read_jsonl(metrics), evals=read_jsonl(evals) if evals.is_file() else [])


def run_panels(runs: list[Run]) -> list[Panel]:
    """One panel per curve any of the runs logged (t only where a loss used it), each run a line."""
    panels = []
    for source, specs in (("steps", STEP_PANELS), ("evals", EVAL_PANELS)):
        for key, title in specs:
            lines = []
            for run in runs:
                rows = [r for r in getattr(run, source) if key in r]
                if rows:
                    lines.append(
                        Line(
                            run.name,
                            [r["step"] for r in rows],
                            [r[key] for r in rows],
                            style={"marker": "o", "markersize": 3} if source == "evals" else {},
                        )
                    )
            if lines:
                panels.append(Panel(title, key, lines))
    return panels


def plot_runs(runs: list[Run], out: str | os.PathLike, title: str | None = None) -> Path:
    """Every curve of `runs` (see `run_panels`) in one PNG, the runs overlaid with a legend."""
    return plot_panels(run_panels(runs), out, title=title)


def plot_panels(
    panels: list[Panel],
    out: str | os.PathLike,
    *,
    title: str | None = None,
    ncols: int = 2,
    panel_size: tuple[float, float] = (6.0, 3.6),
) -> Path:
    """Panels in a grid, one PNG written atomically; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("nothing to plot: the runs logged none of the plotted fields.")
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for line in panel.lines:
            if line.err is not None and line.err_bars:
                ax.errorbar(line.x, line.y, yerr=line.err, label=line.label, **line.style)
                continue
            drawn = ax.plot(line.x, line.y, label=line.label, **line.style)[0]
            if line.err is not None:
                low = [y - e for y, e in zip(line.y, line.err)]
                high = [y + e for y, e in zip(line.y, line.err)]
                ax.fill_between(line.x, low, high, color=drawn.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_xscale(panel.xscale)
        if panel.xscale == "log":  # few points: tick them, as plain numbers (not 2x10^0)
            from matplotlib.ticker import FormatStrFormatter, NullFormatter

            ax.set_xticks(sorted({x for line in panel.lines for x in line.x}))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return Path(out)
