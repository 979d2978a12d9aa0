"""tools/paper_mini.py: runs in a reused worker equal fresh processes; the page's reading follows the numbers; the
quick pipeline (marker paper_mini) writes the table, the plots and the raw JSON."""

from __future__ import annotations

import copy
import json
import sys

import pytest

from taidtron.plots import read_jsonl
from tests.support import REPO_ROOT, run_cli

sys.path.insert(0, str(REPO_ROOT / "tools"))
import paper_mini  # noqa: E402

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
            str(paper_mini.CONFIG),
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


def raw_results(gaps: dict[str, list[float]], noise: float = 0.0) -> dict:
    """A minimal raw-results dict: per teacher size, skew FKL's loss exceeds TAID's by the given per-seed gaps."""
    runs = []
    for size, per_seed in gaps.items():
        for seed, gap in enumerate(per_seed, 1):
            base = 5.0 + seed * noise
            for method, value in (("taid", base), ("skew_fkl", base + gap), ("lm", 5.5)):
                runs.append(
                    {
                        "method": method,
                        "teacher": size,
                        "seed": seed,
                        "ok": True,
                        "taid_t": [],
                        "test": {"student_lm_loss": value, "kl_teacher_student": value / 10},
                    }
                )
    sizes = list(gaps)
    return {
        "sweep": {"teachers": sizes, "methods": ["taid", "skew_fkl"], "seeds": [1, 2], "student_steps": 10},
        "labels": paper_mini.LABELS,
        "runs": runs,
        "config": {"taid": {}},
        "teachers": {s: {"params": 1e6 * (i + 1)} for i, s in enumerate(sizes)},
    }


def test_reading_says_the_advantage_grows_only_when_it_does_beyond_the_seed_noise():
    grows = paper_mini.reading(raw_results({"S": [0.01, 0.012], "M": [0.05, 0.052], "L": [0.1, 0.098]}))
    assert any("advantage over skew FKL grows with the teacher" in s for s in grows), grows
    flat = paper_mini.reading(raw_results({"S": [0.01, 0.05], "M": [-0.02, 0.06], "L": [0.0, 0.08]}))
    assert any("do not show TAID's advantage over skew FKL growing" in s for s in flat), flat
    shrinks = paper_mini.reading(raw_results({"S": [0.1, 0.1002], "M": [0.05, 0.0502], "L": [0.01, 0.0102]}))
    assert any("advantage over skew FKL shrinks" in s for s in shrinks), shrinks
    # every method is worse than the floor here (5.5 > 5.0 + gap is false): the floor sentence counts correctly
    assert any(s.startswith("Teacher S: 2 of 2 methods end below the no-teacher floor") for s in grows), grows


def test_table_marks_the_best_distillation_method_and_reports_mean_and_sample_std():
    raw = raw_results({"S": [0.02, 0.04]})
    table = paper_mini.results_table(raw, "student_lm_loss")
    assert table[2] == "| TAID | **5.0000 ± 0.0000** |"
    assert table[3] == "| skew FKL | 5.0300 ± 0.0141 |"  # mean 5.03, sample std of (5.02, 5.04)
    assert table[4] == "| no teacher (lm) | 5.5000 ± 0.0000 |"
    broken = copy.deepcopy(raw)
    for run in broken["runs"]:
        run["ok"] = run["method"] != "skew_fkl"
    assert paper_mini.results_table(broken, "student_lm_loss")[3] == "| skew FKL | — |"


def test_bad_input_exits_2_with_one_line(tmp_path):
    for args, message in (
        (["--jobs", "0"], "--jobs 0"),
        (["--deb", str(tmp_path / "none.deb")], "does not exist"),
        (["--report-only", "--out", str(tmp_path)], "run the experiment first"),
    ):
        proc = run_cli("tools/paper_mini.py", *args, expect_ok=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            proc.stderr
        )


@pytest.mark.paper_mini
def test_quick_pipeline_writes_the_table_the_plots_and_the_raw_results(tmp_path):
    """`python tools/paper_mini.py --quick` end to end (fetches python3.11-doc with apt-get unless cached)."""
    out = tmp_path / "results"
    proc = run_cli(
        "tools/paper_mini.py", "--quick", "--work-dir", str(tmp_path / "work"), "--out", str(out), timeout=1200
    )
    assert "13 to run" in proc.stdout
    page = (out / "paper_mini.md").read_text()
    raw = json.loads((out / "paper_mini.json").read_text())
    assert raw["failures"] == {} and len(raw["runs"]) == 3 * 2  # (taid, skew_fkl, floor) x 2 seeds, teacher S
    for run in raw["runs"]:
        assert run["ok"] and set(run["test"]) >= {"student_lm_loss", "kl_teacher_student", "teacher_lm_loss"}
        assert 0 < run["test"]["kl_teacher_student"] < run["test"]["student_lm_loss"] < 10
    teacher_losses = {round(r["test"]["teacher_lm_loss"], 6) for r in raw["runs"]}
    assert len(teacher_losses) == 1  # every run is measured on the same test tokens
    for method in ("TAID", "skew FKL", "no teacher (lm)"):
        assert sum(line.startswith(f"| {method} |") for line in page.splitlines()) == 2, method  # loss and KL
    for name in ("paper_mini_curves.png", "paper_mini_t.png", "paper_mini_vs_teacher.png", "paper_mini_teachers.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in page
    assert "Quick mode" in page and "python tools/paper_mini.py --quick" in page
    # rerun: every run is reused; --report-only rewrites the same page from the raw JSON
    again = run_cli(
        "tools/paper_mini.py", "--quick", "--work-dir", str(tmp_path / "work"), "--out", str(out), timeout=600
    )
    assert "13 of 13 runs already done" in again.stdout
    (out / "paper_mini.md").unlink()
    run_cli("tools/paper_mini.py", "--report-only", "--out", str(out))
    assert (out / "paper_mini.md").read_text().split("## Run")[0] == page.split("## Run")[0]
