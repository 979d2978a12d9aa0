"""The paper-mini experiment (taidtron/experiments/paper_mini/, tools/paper_mini.py): runs in a reused worker equal
fresh processes; the intervals are t-intervals and the reading calls a difference resolved only when its interval
excludes 0; the committed page is what configs/paper_mini.yaml and the design ran, and what its raw JSON gives; the
quick pipeline (marker paper_mini) writes the tables, the plots and the raw JSON, the same numbers bit for bit
whatever the number of workers."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from taidtron.config import flatten_config, load_config
from taidtron.experiments.paper_mini import analysis, reading
from taidtron.experiments.paper_mini.design import ARMS, FULL, START
from taidtron.experiments.paper_mini.page import metric_table, write_page
from taidtron.experiments.paper_mini.paths import CONFIG
from taidtron.experiments.paper_mini.stats import interval
from taidtron.plots import read_jsonl
from tests.support import REPO_ROOT, run_cli

SMOKE = [
    "data.blend=[data/smoke/smoke_text_document]",
    "data.tokenizer=data/smoke/tokenizer.model",
    "student.vocab_size=1024",
    "teacher.vocab_size=1024",
    "data.seq_length=64",
    "parallel.micro_batch_size=4",
    "parallel.global_batch_size=8",
    "optim.train_steps=6",
    "optim.warmup_steps=1",
    "logging.eval_interval=3",
    "logging.eval_iters=2",
    "logging.wandb_mode=disabled",
    "checkpoint.save_interval=0",
    "data.split=90,5,5",
]
TEACHER = [
    "teacher.num_layers=2",
    "teacher.hidden_size=64",
    "teacher.num_attention_heads=4",
    "teacher.num_query_groups=2",
    "teacher.ffn_hidden_size=128",
    "teacher.init=null",
]
RESULTS = REPO_ROOT / "docs" / "results"


def test_runs_in_one_reused_process_equal_fresh_processes(tmp_path):
    """Megatron's global state is reset between in-process runs: a TAID run after an LM run and an LM run after a
    TAID run give, bit for bit, the curves of `python -m taidtron.train` in a fresh process, and each run's models,
    optimizer and process-group threads are gone when it ends."""
    lm = [*SMOKE, "taid.loss=lm", "seed=3"]
    taid = [*SMOKE, *TEACHER, "taid.loss=taid", "seed=5", "data.seed=7"]
    order = [("lm_first", lm), ("taid", taid), ("lm_again", lm)]
    jobs = [
        {
            "name": name,
            "kind": "train",
            "overrides": [*o, f"logging.run_dir={tmp_path / name}"],
            "marker": str(tmp_path / name / "job.json"),
            "log": str(tmp_path / f"{name}.log"),
        }
        for name, o in order
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = run_cli(
        str(REPO_ROOT / "tests" / "results" / "inprocess_worker.py"), str(tmp_path / "jobs.json"), timeout=900
    )
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(r["ok"] for r in results), proc.stdout[-3000:]
    # A finished run leaves nothing behind (megatron's DDP hooks and caches held every model and its gloo
    # threads for the life of the process: taidtron/overrides/teardown.py).
    assert [r["live_models_after"] for r in results] == [0, 0, 0]
    assert results[-1]["threads_after"] <= results[0]["threads_after"], [r["threads_after"] for r in results]
    for name, overrides in (("fresh_lm", lm), ("fresh_taid", taid)):
        run_cli(
            "-m",
            "taidtron.train",
            "--config",
            str(CONFIG),
            *overrides,
            f"logging.run_dir={tmp_path / name}",
            timeout=900,
        )

    def curves(name):
        steps = [
            {k: r[k] for k in ("step", "loss", "grad_norm", "lr", "taid_t") if k in r}
            for r in read_jsonl(tmp_path / name / "metrics.jsonl")
        ]
        return steps, read_jsonl(tmp_path / name / "eval.jsonl")

    assert curves("lm_first") == curves("fresh_lm") == curves("lm_again")
    assert curves("taid") == curves("fresh_taid")
    assert len(curves("taid")[0]) == 6 and "taid_t" in curves("taid")[0][0]


def test_interval_is_the_t_interval_of_the_replicates():
    # closed forms of the t quantile at u = 0.975: 1 degree of freedom tan(pi (u - 1/2)), 2: (2u - 1) / sqrt(2u(1 - u))
    u = 0.975
    three = interval([1.0, 2.0, 3.0])
    t2 = (2 * u - 1) / math.sqrt(2 * u * (1 - u))
    assert three.mean == 2.0 and three.half_width == pytest.approx(t2 * 1.0 / math.sqrt(3), rel=1e-12)
    two = interval([1.0, 2.0])
    assert two.half_width == pytest.approx(math.tan(math.pi * (u - 0.5)) * math.sqrt(0.5) / math.sqrt(2), rel=1e-12)
    assert not interval([-1.0, 1.0, 3.0]).resolved and interval([1.0, 1.1, 1.2]).resolved
    assert not interval([5.0]).resolved and interval([5.0]).text() == "5.0000"


def raw_results(taid_minus_fkl: dict[str, list[float]]) -> dict:
    """Raw results of 3 replicates: per teacher, FKL's loss is TAID's plus the given per-replicate differences
    (negated: TAID - FKL); the pretrained start and the teachers around them."""
    cells = []
    for teacher, diffs in taid_minus_fkl.items():
        for seed, diff in enumerate(diffs, 1):
            base = 4.0 + 0.1 * seed
            for arm, loss in ((START, 4.6), ("taid", base + diff), ("fkl", base)):
                test = {
                    "student_lm_loss": loss,
                    "teacher_lm_loss": 3.5 if teacher == "small" else 3.1,
                    "kl_teacher_student": loss - 3.4,
                    "top1_agreement": 0.5 - diff,
                    "student_entropy": 3.0 + seed * 0.01,
                    "teacher_entropy": 2.9,
                }
                cells.append(
                    {"variant": "general", "arm": arm, "teacher": teacher, "seed": seed, "ok": True, "test": test}
                )
    return {
        "design": {"teachers": [{"name": t} for t in taid_minus_fkl], "arms": ["taid", "fkl"], "seeds": [1, 2, 3]},
        "arms": {key: {"label": arm.label, "color": arm.color} for key, arm in ARMS.items()},
        "cells": cells,
        "runs": [],
        "config": {"taid": {"t_start": 0.4, "t_end": 1.0}},
        "teachers": {"small": {"params": 1e6}, "large": {"params": 4e6}},
        "student": {"params": 5e5},
    }


def test_reading_calls_a_difference_resolved_only_when_its_interval_excludes_zero():
    raw = raw_results({"small": [-0.05, 0.04, 0.04], "large": [-0.10, -0.12, -0.11]})
    sentences = reading.variant_sentences(raw, "general", ["taid", "fkl"], ["small", "large"])
    small = next(s for s in sentences if s.startswith("teacher small: TAID (adaptive t) - FKL"))
    large = next(s for s in sentences if s.startswith("teacher large: TAID (adaptive t) - FKL"))
    # small: mean 0.01, s = 0.0520, half-width 4.3027 * s / sqrt(3) = 0.1291; large: mean -0.11, half-width 0.0248
    assert "held-out loss +0.0100 [-0.1191, +0.1391] nats, not resolved" in small, small
    assert "held-out loss -0.1100 [-0.1348, -0.0852] nats, resolved: TAID (adaptive t) is better" in large, large
    change = next(s for s in sentences if s.startswith("TAID - FKL: change from teacher small to large"))
    # per replicate large - small: -0.05, -0.16, -0.15; mean -0.12, half-width 0.1511
    assert "changes by -0.1200 [-0.2711, +0.0311] nats" in change and "not resolved" in change.split(";")[0], change
    setup = reading.setup_sentences(raw)
    assert setup[0].startswith("Teacher gap: the large teacher's held-out loss is below the small one's by 0.4000")
    assert "aim of at least 0.3 nats is met" in setup[0]
    assert "minus the small teacher's: 1.1000 [1.1000, 1.1000] nats (resolved)" in setup[1], setup


def test_metric_table_shows_each_cell_mean_and_interval_and_a_dash_for_missing_runs():
    raw = raw_results({"small": [-0.05, 0.04, 0.04]})
    table = metric_table(raw, "general", "student_lm_loss")
    # TAID's losses 4.05, 4.24, 4.34: mean 4.21, s = 0.1473, half-width 4.3027 * s / sqrt(3) = 0.3659
    assert table[3] == "| TAID (adaptive t) | 4.2100 [3.8441, 4.5759] |", table
    assert table[2] == "| pretrained student (start) | 4.6000 [4.6000, 4.6000] |", table
    for cell in raw["cells"]:
        cell["ok"] = cell["arm"] != "fkl"
    assert metric_table(raw, "general", "student_lm_loss")[4] == "| FKL | — |"
    entropy = metric_table(raw, "general", "student_entropy")
    assert entropy[-1] == "| *the teacher itself* | 2.900 [2.900, 2.900] |", entropy


def test_bad_input_exits_2_with_one_line(tmp_path):
    for args, message in (
        (["--jobs", "0"], "--jobs 0"),
        (["--deb", str(tmp_path / "none.deb")], "does not exist"),
        (["--report-only", "--out", str(tmp_path)], "run the experiment first"),
        (["--arms", "taid,kd"], "unknown arm(s) kd; choose from taid,"),
    ):
        proc = run_cli("tools/paper_mini.py", *args, expect_ok=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            proc.stderr
        )


# Keys each distillation run sets itself; every other key of a run's resolved config is configs/paper_mini.yaml's.
PER_RUN = {
    "data.blend",
    "data.tokenizer",
    "data.cache_dir",
    "seed",
    "data.seed",
    "taid.loss",
    "taid.adaptive",
    "student.init",
    "teacher.init",
    "teacher.num_layers",
    "teacher.hidden_size",
    "teacher.num_attention_heads",
    "teacher.num_query_groups",
    "teacher.ffn_hidden_size",
    "logging.run_dir",
}


def test_the_committed_page_is_what_the_config_and_the_design_ran():
    """docs/results/paper_mini.json records the resolved config of its runs: it must be configs/paper_mini.yaml (up
    to the keys each run sets) and design.FULL, and the committed page must be what that JSON gives."""
    raw = json.loads((RESULTS / "paper_mini.json").read_text())
    assert not raw["timing"]["quick"]
    assert raw["design"] == json.loads(json.dumps(dataclasses.asdict(FULL))), "the page ran another design than FULL"
    ran = flatten_config(raw["config"])
    committed = flatten_config(load_config(CONFIG).to_dict())
    assert set(ran) == set(committed)
    differs = {key: (ran[key], committed[key]) for key in ran if key not in PER_RUN and ran[key] != committed[key]}
    assert not differs, f"configs/paper_mini.yaml is not what ran: {differs}"
    assert raw["config"]["taid"]["loss"] == "taid" and raw["config"]["taid"]["adaptive"] is True
    assert raw["failures"] == {}


def test_the_committed_page_is_written_from_its_raw_results(tmp_path):
    raw = json.loads((RESULTS / "paper_mini.json").read_text())
    page = write_page(raw, tmp_path)
    assert page.read_text() == (RESULTS / "paper_mini.md").read_text()


@pytest.mark.paper_mini
def test_quick_pipeline_writes_the_tables_the_plots_and_the_raw_results_the_same_whatever_the_workers(tmp_path):
    """`python tools/paper_mini.py --quick` end to end (fetches python3.11-doc with apt-get unless cached), then again
    in a fresh work directory with one worker instead of two: every number equal, bit for bit."""
    out = tmp_path / "results"
    proc = run_cli(
        "tools/paper_mini.py", "--quick", "--work-dir", str(tmp_path / "work"), "--out", str(out), timeout=1800
    )
    assert "52 to run" in proc.stdout
    page = (out / "paper_mini.md").read_text()
    raw = json.loads((out / "paper_mini.json").read_text())
    assert raw["failures"] == {} and len(raw["cells"]) == 2 * 13
    for cell in raw["cells"]:
        assert cell["ok"] and 0 < cell["test"]["student_lm_loss"] < 10, cell
        assert 0 < cell["test"]["kl_teacher_student"] < cell["test"]["student_lm_loss"], cell
        assert 0 <= cell["test"]["top1_agreement"] <= 1 and cell["test"]["student_entropy"] > 0, cell
    for variant in ("general", "target"):  # each variant's runs are measured on the same test tokens
        assert len({c["test_tokens"] for c in raw["cells"] if c["variant"] == variant}) == 1
    linear = [r for r in raw["runs"] if r["arm"] == "taid_linear"]
    taid = raw["config"]["taid"]
    assert linear and all(
        t == analysis.t_floor(step, taid, r["train_steps"]) for r in linear for step, t in r["taid_t"]
    )
    adaptive = [r for r in raw["runs"] if r["arm"] == "taid"]
    assert any(t > analysis.t_floor(step, taid, r["train_steps"]) for r in adaptive for step, t in r["taid_t"])
    for label in ("TAID (adaptive t)", "TAID (linear t)", "FKL", "no teacher (LM)", "pretrained student (start)"):
        assert sum(line.startswith(f"| {label} |") for line in page.splitlines()) >= 4, label
    for name in ("paper_mini_curves.png", "paper_mini_t.png", "paper_mini_contrasts.png", "paper_mini_pretraining.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in page
    assert "Quick mode" in page and "python tools/paper_mini.py --quick" in page and "## Domain transfer" in page
    # a rerun reuses every run; --report-only rewrites the same page from the raw JSON
    again = run_cli("tools/paper_mini.py", "--quick", "--work-dir", str(tmp_path / "work"), "--out", str(out))
    assert "52 of 52 runs already done" in again.stdout
    (out / "paper_mini.md").unlink()
    run_cli("tools/paper_mini.py", "--report-only", "--out", str(out))
    assert (out / "paper_mini.md").read_text().split("## Run")[0] == page.split("## Run")[0]
    # from scratch with one worker: another order of the runs, in other processes, the same numbers
    single = tmp_path / "single"
    run_cli(
        "tools/paper_mini.py",
        "--quick",
        "--jobs",
        "1",
        "--work-dir",
        str(single),
        "--out",
        str(single / "results"),
        timeout=1800,
    )
    rerun = json.loads((single / "results" / "paper_mini.json").read_text())
    assert [c["test"] for c in rerun["cells"]] == [c["test"] for c in raw["cells"]]
    assert [(r["loss"], r["taid_t"], r["valid"]) for r in rerun["runs"]] == [
        (r["loss"], r["taid_t"], r["valid"]) for r in raw["runs"]
    ]
