"""How a job's exit code and its printed lines come from its ranks' own word (`taidtron.outcome`): the rank side
records and stays quiet when its launcher prints, and the launcher side picks the code and prints each line once."""

from __future__ import annotations

import pytest

from taidtron import outcome
from taidtron.outcome import Outcome

LINE = "taidtron: error: optim.lrr is not a config key"


def test_bad_input_on_every_rank_is_exit_2_and_its_line_once():
    ranks = [Outcome(rank=r, code=2, time=10.0 + r, line=LINE) for r in range(4)]
    assert outcome.conclude(ranks) == (2, [LINE])


def test_a_preempted_job_is_75_even_when_a_straggler_is_killed_after():
    ranks = [Outcome(0, 75, 10.0), Outcome(1, 75, 10.2), Outcome(2, 143, 70.0)]
    assert outcome.conclude(ranks)[0] == 75


def test_the_rank_that_failed_first_gives_the_code_whether_it_recorded_or_its_launcher_saw_it():
    recorded = [Outcome(0, 143, 12.0)]  # stopped by the launcher after rank 1 crashed
    crashed = [Outcome(1, 1, 11.0)]  # a traceback: no record, torchrun saw exit code 1
    assert outcome.conclude(recorded, crashed) == (1, [])
    assert outcome.conclude([Outcome(0, 0, 1.0), Outcome(1, 0, 1.1)]) == (0, [])


def test_missing_ranks_leave_the_launchers_own_code():
    assert outcome.conclude([Outcome(0, 0, 1.0)], fallback=137, expected=2) == (137, [])
    assert outcome.conclude([], fallback=130) == (130, [])


@pytest.mark.parametrize("launcher_prints", [True, False])
def test_a_rank_records_its_end_and_prints_unless_its_launcher_does(launcher_prints, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(outcome.OUTCOME_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv(outcome.LAUNCHER_PRINTS_ENV, "1" if launcher_prints else "0")
    assert outcome.finish(2, LINE) == 2
    (recorded,) = outcome.read_outcomes(tmp_path)
    assert (recorded.rank, recorded.code, recorded.line) == (3, 2, LINE)
    assert capsys.readouterr().err == ("" if launcher_prints else LINE + "\n")


def test_the_command_after_srun_prints_the_lines_once_and_exits_with_the_jobs_code(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(outcome.OUTCOME_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(outcome.LAUNCHER_PRINTS_ENV, "1")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        outcome.finish(2, LINE)
    capsys.readouterr()
    assert outcome.main([str(tmp_path), "1", "2"]) == 2
    assert capsys.readouterr().err == LINE + "\n"
    assert outcome.main([str(tmp_path / "nothing"), "137", "2"]) == 137  # no rank recorded: srun's own code
