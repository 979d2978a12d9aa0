"""Distilling from a full-vocabulary cache equals distilling from the teacher online at every layout: tp 2, pp 2 and
tp 2 x pp 2, the first two with 2 data-parallel ranks (4 ranks, gloo, real pipeline p2p and vocab-parallel losses).
Each layout writes its own cache (the writer at that layout) and trains the tiny run twice from the same seed;
loss, gradient norm and t of every step, the validation and the trained student must agree to fp32 rounding. The
records the writer stores do not depend on the layout it ran at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cache.conftest import full_weights, run_args
from tests.checkpoint.helpers import read_metrics
from tests.support import run_torchrun

WORKER = Path(__file__).with_name("parallel_worker.py")
LAYOUTS = {
    "tp2_dp2": ["parallel.tp=2"],
    "pp2_dp2": ["parallel.pp=2"],
    "tp2_pp2": ["parallel.tp=2", "parallel.pp=2"],
}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, teacher_ckpt) -> Path:
    root = tmp_path_factory.mktemp("cache_layouts")
    args = run_args(root / "unused", teacher_ckpt)
    results = run_torchrun(WORKER, 4, str(root), json.dumps(args), json.dumps(LAYOUTS), timeout=1800)
    assert all(r[name] == "done" for r in results for name in LAYOUTS)
    return root


@pytest.mark.multiprocess
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_training_from_the_cache_equals_the_online_teacher_at_every_layout(layouts, layout, tmp_path):
    online, cached = runs = layouts / layout / "online", layouts / layout / "cached"
    want, got = read_metrics(online), read_metrics(cached)
    assert len(got) == len(want) == 6
    for key in ("loss", "grad_norm", "taid_t"):
        torch.testing.assert_close(
            torch.tensor([r[key] for r in got]), torch.tensor([r[key] for r in want]), rtol=1e-5, atol=1e-6
        )
    (want_eval,), (got_eval,) = ([json.loads(x) for x in (d / "eval.jsonl").read_text().splitlines()] for d in runs)
    for key in ("valid_distill_loss", "valid_teacher_lm_loss", "valid_kl_teacher_student"):
        assert got_eval[key] == pytest.approx(want_eval[key], rel=1e-5, abs=1e-6), key
    expected = full_weights(online / "checkpoints", tmp_path)
    actual = full_weights(cached / "checkpoints", tmp_path)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.multiprocess
def test_the_records_do_not_depend_on_the_layout_the_writer_ran_at(layouts):
    from safetensors.numpy import load_file

    reference = sorted((layouts / "pp2_dp2" / "cache").glob("*.safetensors"))
    assert len(reference) == 4  # 3 train shards, 1 valid
    for layout in ("tp2_dp2", "tp2_pp2"):
        for shard in reference:
            got, want = load_file(layouts / layout / "cache" / shard.name), load_file(shard)
            assert np.array_equal(got["sample_digest"], want["sample_digest"])
            np.testing.assert_allclose(got["log_probs"], want["log_probs"], rtol=1e-5, atol=1e-5)
