"""Per-run metrics on the main rank: `metrics.jsonl` (one row per optimizer step), the console, wandb (offline by
default) and, optionally, TensorBoard.

Console: on a terminal a tqdm progress bar; otherwise (a batch job's log file) one plain line every
`logging.log_interval` steps, with step, loss, t, lr, gradient norm, tokens/s and ETA (see `console.step_line`).
Resumes: rows past the checkpoint's step are dropped from `metrics.jsonl`, TensorBoard discards its events past it,
and wandb continues the same run, whose id is kept in `<run_dir>/wandb_run_id`.
Every row is flushed as it is written, so a killed job keeps what it logged.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from pathlib import Path

from tqdm import tqdm

from taidtron.config import LoggingConfig
from taidtron.console import step_line
from taidtron.io import atomic_write_text

WANDB_ID_FILE = "wandb_run_id"


def interactive_console() -> bool:
    """A progress bar only for a person at a terminal (TAIDTRON_NO_PROGRESS=1 forces plain lines)."""
    return sys.stdout.isatty() and os.environ.get("TAIDTRON_NO_PROGRESS") != "1"


def json_line(row: dict) -> str:
    """One strict JSON line: a NaN or infinite value (a skipped step's loss or gradient norm) is written as null,
    never as the bare NaN / Infinity that strict parsers reject."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(finite, allow_nan=False) + "\n"


class MetricsLogger:
    def __init__(
        self,
        cfg: LoggingConfig,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        config_dict: dict,
        interactive: bool | None = None,
    ):
        self.enabled = enabled
        self.log_interval = cfg.log_interval
        self.total_steps = total_steps
        self.run_dir = Path(cfg.run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.bar = None
        self.wandb_run = None
        self.tensorboard = None
        self._clock = time.monotonic()
        self._steps_timed = 0
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        if interactive_console() if interactive is None else interactive:
            self.bar = tqdm(
                total=total_steps, initial=start_step, desc="distil", unit="step", dynamic_ncols=True, file=sys.stdout
            )
        if cfg.wandb_mode != "disabled":
            self.wandb_run = _start_wandb(cfg, self.run_dir, config_dict)
        if cfg.tensorboard:
            self.tensorboard = _start_tensorboard(self.run_dir / "tensorboard", purge_step=start_step + 1)

    @property
    def wandb_description(self) -> str | None:
        if self.wandb_run is None:
            return None
        return f"{self.wandb_run.id} ({self.wandb_run.settings.mode}, {self.wandb_run.dir})"

    def _truncate_after(self, step: int) -> None:
        """On resume, rows past the checkpoint's step (metrics.jsonl, eval.jsonl) were never committed to a
        checkpoint: drop them so each file reads as one uninterrupted run."""
        for path in (self.path, self.path.parent / "eval.jsonl"):
            if not path.exists():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a killed writer
                if row.get("step", 0) <= step:
                    kept.append(json_line(row))  # rows of older versions' bare NaN become null
            atomic_write_text(path, "".join(kept))

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json_line(row))
        self.file.flush()
        numbers = _numbers(row)
        if self.wandb_run is not None:
            self.wandb_run.log(numbers, step=row["step"])
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(f"train/{key}", value, row["step"])
        self._steps_timed += 1
        if self.bar is not None:
            self.bar.update(1)
            if row["step"] % self.log_interval == 0:
                shown = {"loss": f"{row['loss']:.4f}" if row.get("loss") is not None else "n/a"}
                if row.get("taid_t") is not None:
                    shown["t"] = f"{row['taid_t']:.3f}"
                self.bar.set_postfix(**shown, tok_s=f"{row.get('tokens_per_s') or 0:.0f}")
        elif row["step"] % self.log_interval == 0 or row["step"] == self.total_steps:
            per_step = (time.monotonic() - self._clock) / self._steps_timed
            print(step_line(row, self.total_steps, per_step * (self.total_steps - row["step"])), flush=True)

    def log_eval(self, row: dict) -> None:
        if not self.enabled:
            return
        self.write_console(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        numbers = _numbers(row)
        if self.wandb_run is not None:
            self.wandb_run.log({f"valid/{k}": v for k, v in numbers.items()}, step=row["step"])
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(f"valid/{key}", value, row["step"])
        with open(self.path.parent / "eval.jsonl", "a", encoding="utf-8") as f:
            f.write(json_line(row))

    def write_console(self, text: str) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.write(text)
            else:
                print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _numbers(row: dict) -> dict:
    """The values of a row that wandb and TensorBoard plot: numbers, not `step`, flags or missing (None) values."""
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _start_wandb(cfg: LoggingConfig, run_dir: Path, config_dict: dict):
    """wandb.init continuing the run of this run directory (a requeued job is one wandb run, not one per start)."""
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else ""
    if not run_id:
        run_id = secrets.token_hex(6)  # wandb ids: letters and digits
        atomic_write_text(id_file, run_id + "\n")
    try:
        return wandb.init(
            project=cfg.wandb_project,
            mode=cfg.wandb_mode,
            dir=str(run_dir),
            config=config_dict,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            settings=wandb.Settings(quiet=True),
        )
    except wandb.errors.Error as exc:
        reason = " ".join(str(exc).split())
        raise ValueError(
            f"wandb could not start in logging.wandb_mode={cfg.wandb_mode} ({reason}); run `wandb "
            f"login` or set WANDB_API_KEY, or use logging.wandb_mode=offline (sync later with "
            f"`wandb sync`)."
        ) from None


def _start_tensorboard(log_dir: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "logging.tensorboard=true needs the tensorboard package: pip install 'taidtron[tensorboard]' "
            "(or pip install tensorboard), or set logging.tensorboard=false."
        ) from None
    # purge_step: TensorBoard drops events at or after it that an interrupted earlier start wrote past the checkpoint.
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
