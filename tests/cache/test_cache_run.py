"""Distilling from a teacher cache through the real commands (`python -m taidtron.cache_teacher`, then
`python -m taidtron.train teacher.cache=DIR`), against the same run with the teacher online: at K = the full
vocabulary stored in float32 every step's loss, gradient norm and t, the validation and the trained student are the
online run's (fp32 tolerance); float16 storage stays within the bound docs/teacher_cache.md gives; a resumed run
continues at the right sample; checkpoints record the cache, and a resume with another cache is refused."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from taidtron.cache import read_manifest
from taidtron.checkpoint import read_meta
from tests.cache.conftest import STEPS, full_weights, one_line_exit_2, run_args, write_cache
from tests.checkpoint.helpers import read_metrics, restart_from, run_train

CACHES = {"full32": ("full", "float32"), "full16": ("full", "float16"), "k8": ("8", "float16")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_ckpt):
    """The online run, the three caches, and one run from each cache (each run: 6 steps, saves at 3 and 6)."""
    root = tmp_path_factory.mktemp("cache_runs")
    out = {"root": root, "online": root / "online"}
    out["online_proc"] = run_train(run_args(out["online"], teacher_ckpt))
    for name, (top_k, dtype) in CACHES.items():
        cache = root / f"cache_{name}"
        write_cache(run_args(root / "unused", teacher_ckpt), cache, top_k, "--log-prob-dtype", dtype)
        run_dir = root / f"from_{name}"
        # teacher.init stays set: the cache must have been written from it (checked)
        out[f"{name}_proc"] = run_train(run_args(run_dir, teacher_ckpt, f"teacher.cache={cache}"))
        out[name], out[f"cache_{name}"] = run_dir, cache
    return out


def _eval(run_dir: Path) -> dict:
    (row,) = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    return row


@pytest.mark.multiprocess
def test_full_vocabulary_float32_cache_trains_exactly_like_the_online_teacher(runs, tmp_path):
    online, cached = read_metrics(runs["online"]), read_metrics(runs["full32"])
    assert [r["step"] for r in cached] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "taid_t"):
        got, want = torch.tensor([r[key] for r in cached]), torch.tensor([r[key] for r in online])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert online[-1]["taid_t"] > online[0]["taid_t"]  # t moved: the comparison covers its update
    want_eval, got_eval = _eval(runs["online"]), _eval(runs["full32"])
    for key in ("valid_distill_loss", "valid_student_lm_loss", "valid_teacher_lm_loss", "valid_kl_teacher_student"):
        assert got_eval[key] == pytest.approx(want_eval[key], rel=1e-5, abs=1e-6), key
    halfway = full_weights(runs["online"] / "checkpoints" / "iter_0000003", tmp_path)
    expected = full_weights(runs["online"] / "checkpoints", tmp_path)
    actual = full_weights(runs["full32"] / "checkpoints", tmp_path)
    assert expected.keys() == actual.keys()
    assert max((expected[k] - halfway[k]).abs().max().item() for k in expected) > 1e-3  # the weights moved
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.multiprocess
def test_float16_full_vocabulary_cache_stays_within_the_documented_rounding_bound(runs):
    """float16 rounds each log p_T by at most 2^-11 of its magnitude (p_T by 0.05% per unit of |log p_T|): the loss
    and t move by less than 1e-4, the gradient norm (of small gradients, after steps whose updates differ by as much)
    by less than 1e-2 (docs/teacher_cache.md)."""
    online, cached = read_metrics(runs["online"]), read_metrics(runs["full16"])
    for key, rel in (("loss", 1e-4), ("taid_t", 1e-4), ("grad_norm", 1e-2)):
        for got, want in zip((r[key] for r in cached), (r[key] for r in online)):
            assert got == pytest.approx(want, rel=rel), (key, got, want)
    assert any(r["loss"] != w["loss"] for r, w in zip(cached, online))  # the rounding is there: not the same run


@pytest.mark.multiprocess
def test_a_top_k_cache_trains_and_its_banner_says_no_teacher_is_built(runs):
    rows = read_metrics(runs["k8"])
    assert len(rows) == STEPS and all(math.isfinite(r["loss"]) for r in rows)
    banner = runs["k8_proc"].stdout
    assert "teacher     from cache" in banner and "top-8 log-probs of 1,024" in banner
    assert "no teacher model built or loaded" in banner
    assert "no teacher model built" not in runs["online_proc"].stdout


@pytest.mark.multiprocess
def test_checkpoints_record_the_cache_fingerprint(runs):
    meta = read_meta(runs["full32"] / "checkpoints")
    manifest = read_manifest(runs["cache_full32"])
    assert meta.teacher.hash == manifest.fingerprint()
    assert meta.teacher.path == str(runs["cache_full32"].resolve())
    assert read_meta(runs["online"] / "checkpoints").teacher.hash != manifest.fingerprint()


@pytest.mark.multiprocess
def test_a_resumed_run_continues_at_the_right_sample(runs, teacher_ckpt):
    resumed = runs["root"] / "resumed_k8"
    restart_from(runs["k8"], 3, resumed)
    run_train(run_args(resumed, teacher_ckpt, f"teacher.cache={runs['cache_k8']}"))
    want, got = read_metrics(runs["k8"]), read_metrics(resumed)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "taid_t", "consumed_samples"):
        assert [r[key] for r in got[3:]] == pytest.approx([r[key] for r in want[3:]], rel=1e-6), key


@pytest.mark.multiprocess
def test_a_resume_with_another_cache_or_the_online_teacher_is_refused(runs, teacher_ckpt):
    for name, teacher in (("other_cache", f"teacher.cache={runs['cache_full16']}"), ("online", "teacher.cache=null")):
        resumed = runs["root"] / f"resumed_{name}"
        restart_from(runs["k8"], 3, resumed)
        proc = run_train(run_args(resumed, teacher_ckpt, teacher), expect_ok=False)
        one_line_exit_2(proc, "the teacher changed since the checkpoint was written")


@pytest.mark.multiprocess
def test_a_moved_cache_still_resumes(runs, teacher_ckpt):
    moved = runs["root"] / "moved_k8"
    shutil.copytree(runs["cache_k8"], moved)
    resumed = runs["root"] / "resumed_moved"
    restart_from(runs["k8"], 3, resumed)
    run_train(run_args(resumed, teacher_ckpt, f"teacher.cache={moved}"))
    assert [r["loss"] for r in read_metrics(resumed)[3:]] == pytest.approx(
        [r["loss"] for r in read_metrics(runs["k8"])[3:]], rel=1e-6
    )
