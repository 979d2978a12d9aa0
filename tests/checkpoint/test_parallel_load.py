"""Loading at scale and across layer specs, on 2 ranks (dp=2): the data-parallel replicas split the reading of a
checkpoint between them under a generous collective timeout, and Transformer Engine's `_extra_state` entries are
the only keys a checkpoint may lack (see parallel_load_worker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_torchrun

WORKER = Path(__file__).with_name("parallel_load_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("parallel_load")
    ranks = run_torchrun(WORKER, 2, str(work))
    return {
        case: {"ok": all(r[case]["ok"] for r in ranks), "message": " | ".join(r[case]["message"] for r in ranks)}
        for case in ranks[0]
    }


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", ["parallel_read", "timeout", "extra_state", "other_missing_key"])
def test_parallel_load(results, case):
    assert case in results, sorted(results)
    print(f"{case}: {results[case]['message']}")
    assert results[case]["ok"], results[case]["message"]
