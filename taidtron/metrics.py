"""Per-run metrics: `metrics.jsonl` (one row per optimizer step), a console progress bar, wandb (offline default).

Only the main rank writes; every row is flushed as it is written so a killed job keeps what it logged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from taidtron.config import LoggingConfig


class MetricsLogger:
    def __init__(self, cfg: LoggingConfig, *, enabled: bool, total_steps: int, start_step: int, config_dict: dict):
        self.enabled = enabled
        self.log_interval = cfg.log_interval
        self.path = Path(cfg.run_dir) / "metrics.jsonl"
        self.bar = None
        self.wandb_run = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="distil", unit="step", dynamic_ncols=True,
                        disable=os.environ.get("TAIDTRON_NO_PROGRESS") == "1")
        if cfg.wandb_mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode, dir=str(self.path.parent),
                                        config=config_dict, name=Path(cfg.run_dir).name, resume="allow")

    def _truncate_after(self, step: int) -> None:
        """On resume, rows past the checkpoint's step were never committed to a checkpoint: drop them so the
        file reads as one uninterrupted run."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                break  # a torn last line from a killed writer
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if self.bar is not None:
            self.bar.update(1)
            if row["step"] % self.log_interval == 0:
                shown = {"loss": f"{row['loss']:.4f}"}
                if "taid_t" in row:
                    shown["t"] = f"{row['taid_t']:.3f}"
                self.bar.set_postfix(**shown, tok_s=f"{row['tokens_per_s']:.0f}")

    def log_eval(self, row: dict) -> None:
        if not self.enabled:
            return
        self.write_console(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if self.wandb_run is not None:
            self.wandb_run.log({f"valid/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
        with open(self.path.parent / "eval.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def write_console(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
