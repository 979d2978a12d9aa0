"""The metrics writer (taidtron/metrics.py): metrics.jsonl rows and their cut-back on resume, plain console lines
for batch logs, one wandb run per run directory across restarts, TensorBoard events."""

from __future__ import annotations

import json
import math

from taidtron.config import LoggingConfig
from taidtron.metrics import WANDB_ID_FILE, MetricsLogger


def row(step: int, **extra) -> dict:
    return {
        "step": step,
        "consumed_samples": 8 * step,
        "loss": 5.0 - 0.1 * step,
        "taid_t": 0.4 + 0.01 * step,
        "lr": 1e-3,
        "grad_norm": 0.5,
        "tokens_per_s": 1234.5,
        "step_time_s": 0.2,
        **extra,
    }


def logger(tmp_path, *, start_step=0, total_steps=6, interactive=False, **logging) -> MetricsLogger:
    cfg = LoggingConfig(run_dir=str(tmp_path), **{"wandb_mode": "disabled", **logging})
    return MetricsLogger(
        cfg, enabled=True, total_steps=total_steps, start_step=start_step, config_dict={"x": 1}, interactive=interactive
    )


def read_rows(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_one_row_per_step_and_a_resume_drops_the_rows_past_its_checkpoint(tmp_path):
    first = logger(tmp_path)
    for step in range(1, 6):
        first.log(row(step))
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # torn by a kill
    resumed = logger(tmp_path, start_step=3)  # the checkpoint was at step 3
    resumed.log(row(4, loss=9.0))
    resumed.close()
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == 9.0
    assert rows[0] == row(1)


def test_without_a_terminal_a_plain_line_every_log_interval_steps(tmp_path, capsys):
    metrics = logger(tmp_path, log_interval=2, total_steps=5)
    for step in range(1, 6):
        metrics.log(row(step, lm_loss=None if step == 4 else 3.0))
    metrics.write_console("saved somewhere")
    metrics.close()
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert [line.split(" | ")[0] for line in lines[:3]] == ["step 2/5", "step 4/5", "step 5/5"]  # + the last step
    assert lines[0].startswith(
        "step 2/5 | loss 4.8000 | lm loss 3.0000 | t 0.4200 | lr 1.000e-03 | grad norm 0.500 | 1,234 tok/s | ETA 0:00:"
    )
    assert "lm loss n/a" in lines[1]  # a missing value is shown as such, not as a crash
    assert lines[2].endswith("ETA 0:00:00") and lines[3] == "saved somewhere"


def test_on_a_terminal_the_progress_bar_is_used(tmp_path, capsys):
    metrics = logger(tmp_path, interactive=True, total_steps=3)
    for step in range(1, 4):
        metrics.log(row(step))
    metrics.close()
    out = capsys.readouterr().out
    assert "\r" in out and "step 1/3" not in out and "3/3" in out


def test_a_restarted_run_continues_the_same_wandb_run_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for start in (0, 2):  # a first start, then a requeued one resuming at step 2
        metrics = logger(tmp_path, start_step=start, wandb_mode="offline")
        ids.append(metrics.wandb_run.id)
        metrics.log(row(start + 1))
        metrics.close()
    assert ids[0] == ids[1] == (tmp_path / WANDB_ID_FILE).read_text().strip()
    offline_runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    # wandb names them offline-run-<time>-<id>, with a -1 suffix when both starts fall in the same second
    assert len(offline_runs) == 2 and all(f"-{ids[0]}" in name for name in offline_runs)


def test_tensorboard_events_are_written_and_a_resume_replaces_the_steps_past_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = logger(tmp_path, tensorboard=True)
    for step in range(1, 5):
        first.log(row(step))
    first.log_eval({"step": 4, "valid_distill_loss": 2.5})
    first.close()
    resumed = logger(tmp_path, start_step=2, tensorboard=True)  # steps 3 and 4 are redone
    for step in (3, 4):
        resumed.log(row(step, loss=7.0))
    resumed.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [step for step, _ in loss] == [1, 2, 3, 4]
    assert [value for _, value in loss][2:] == [7.0, 7.0] and math.isclose(loss[0][1], 4.9, rel_tol=1e-6)
    assert "valid/valid_distill_loss" in events.Tags()["scalars"]
