"""`attention=sdpa` (torch scaled_dot_product_attention as megatron's core attention) computes what megatron-core's
local spec computes: the core module and whole models at TP=1 and TP=2 (torchrun workers), and a training run
through the real entry point. Plus the selection rule (`auto`: Transformer Engine only when megatron-core can use
it on a GPU) and the messages for bad settings and broken Transformer Engine installs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from taidtron.config import ConfigError, ModelConfig, ParallelConfig, load_config
from tests.support import REPO_ROOT, gpu_env, require_gpu, run_torchrun
from tests.train.test_training_run import TINY, run_train

WORKER = Path(__file__).with_name("attention_worker.py")


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp", [1, 2])
def test_sdpa_equals_local_attention_and_whole_models_in_fp32(tp):
    results = run_torchrun(WORKER, tp)
    # core: 4 head layouts x 2 masks per rank; model: without and (tp > 1) with sequence parallelism per rank
    assert [len(r["core"]) for r in results] == [8] * tp, results
    assert [len(r["model"]) for r in results] == [2 if tp > 1 else 1] * tp, results
    if tp == 2:
        assert any(c.startswith("heads=6 groups=2 tp=2 rank=1") for c in results[1]["core"])  # 3 heads, 1 group


@pytest.mark.multiprocess
def test_training_run_with_sdpa_matches_local_step_by_step(tmp_path):
    """Same seed, data and layout; only the core attention differs. The runs must agree to fp32 rounding in every
    logged quantity derived from the numerics: loss, gradient norm, t, and the final validation."""
    rows, evals = {}, {}
    for attention in ("local", "sdpa"):
        run_dir = tmp_path / attention
        proc = run_train(
            *TINY,
            f"student.attention={attention}",
            f"teacher.attention={attention}",
            # as in tests/train/step_worker.py: a larger Adam eps keeps rounding noise in near-zero
            # gradients from becoming full-size updates, so the runs compare gradients, not noise
            "optim.train_steps=6",
            "optim.warmup_steps=1",
            "optim.lr=2e-2",
            "optim.adam_eps=1e-3",
            "logging.eval_interval=0",
            "logging.eval_iters=1",
            f"logging.run_dir={run_dir}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[attention] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evals[attention] = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows["sdpa"]] == [r["step"] for r in rows["local"]] == list(range(1, 7))
    norms = [r["grad_norm"] for r in rows["local"]]
    assert norms[-1] > 2 * norms[0]  # the weights move: the agreement below is not that of an idle run
    for key in ("loss", "grad_norm", "taid_t"):
        got = torch.tensor([r[key] for r in rows["sdpa"]], dtype=torch.float64)
        want = torch.tensor([r[key] for r in rows["local"]], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    for key in ("valid_distill_loss", "valid_student_lm_loss", "valid_teacher_lm_loss"):
        assert evals["sdpa"][-1][key] == pytest.approx(evals["local"][-1][key], rel=1e-5), key


def test_auto_takes_transformer_engine_only_when_megatron_core_has_it_and_a_gpu_is_there(monkeypatch):
    import megatron.core.extensions.transformer_engine as mcore_te

    from taidtron.models import resolve_attention

    for have_te, cuda, expected in [
        (False, False, "sdpa"),
        (True, False, "sdpa"),
        (False, True, "sdpa"),
        (True, True, "te"),
    ]:
        monkeypatch.setattr(mcore_te, "HAVE_TE", have_te)
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert resolve_attention("auto") == expected, (have_te, cuda)
        assert resolve_attention("sdpa") == "sdpa" and resolve_attention("local") == "local"


def test_broken_transformer_engine_stops_with_the_fix_before_megatron_core_crashes(tmp_path):
    """`import transformer_engine` works, `transformer_engine.pytorch` does not (the core wheel without its torch
    extension). megatron-core 0.16.1 itself fails to import then, so taidtron must say what to do first."""
    package = tmp_path / "transformer_engine"
    (package / "pytorch").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pytorch" / "__init__.py").write_text("import transformer_engine_torch\n")
    (tmp_path / "transformer_engine-2.10.0.dist-info").mkdir()
    (tmp_path / "transformer_engine-2.10.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: transformer-engine\nVersion: 2.10.0\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", "import transformer_engine; import taidtron.models"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: Transformer Engine is installed but does not import"), proc.stderr[-2000:]
    assert "transformer_engine_torch" in last and "pip install --no-build-isolation" in last
    assert "pip uninstall transformer-engine" in last


def test_attention_setting_is_validated_and_listed_in_help():
    assert load_config(None, ["student.attention=local"]).student.attention == "local"
    assert load_config(None, []).teacher.attention == "auto"
    with pytest.raises(ConfigError, match=r"attention='flash' is not supported; use 'auto', 'sdpa' or 'local'"):
        load_config(None, ["teacher.attention=flash"])
    proc = run_train(*TINY, "student.attention=flash")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "student.attention='flash' is not supported" in proc.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "taidtron.train", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    ).stdout
    assert "student.attention='auto'" in help_text and "teacher.attention='auto'" in help_text
    assert "scaled_dot_product_attention" in help_text


def test_sdpa_module_refuses_what_it_does_not_compute():
    from megatron.core.transformer.enums import AttnMaskType

    from taidtron.models import SDPAttention, transformer_config

    model = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=32)
    config = transformer_config(model, ParallelConfig(), params_dtype=torch.float32, use_cpu_initialization=True)
    with pytest.raises(ValueError, match="attention dropout"):
        SDPAttention(
            config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self", attention_dropout=0.1
        )
    module = SDPAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    q, kv = torch.randn(5, 1, 4, 8), torch.randn(5, 1, 2, 8)
    with pytest.raises(ValueError, match="attention bias"):
        module(q, kv, kv, None, attention_bias=torch.zeros(1))


@pytest.mark.gpu
def test_gpu_sdpa_runs_a_fused_kernel_and_matches_local_attention_in_bf16():
    """At the real models' head layouts and 4096 tokens: SDPA runs with the math fallback forbidden (a flash,
    cuDNN or memory-efficient kernel takes GQA in bf16), agrees with megatron's local attention to bf16 rounding,
    and needs less memory than it (no [heads, seq, seq] probabilities)."""
    require_gpu()
    (result,) = run_torchrun(Path(__file__).with_name("attention_gpu_worker.py"), 1, env=gpu_env())
    for layout in result["layouts"]:
        print(json.dumps(layout))
        assert any(v is True for v in layout["fused_kernels"].values()), layout
        assert all(err < 2e-2 for err in layout["max_error_relative_to_max"].values()), layout
        assert layout["peak_mib"]["sdpa"] < layout["peak_mib"]["local"], layout


@pytest.mark.gpu
def test_gpu_transformer_engine_spec_matches_the_local_spec_on_one_checkpoint():
    """TE's layer spec loads a checkpoint written by the local spec (its `_extra_state` absent) and computes the same
    bf16 logits to bf16 rounding. Skipped, with the reason, where Transformer Engine is not installed."""
    require_gpu()
    (result,) = run_torchrun(Path(__file__).with_name("te_worker.py"), 1, env=gpu_env())
    if not result["te_usable"]:
        pytest.skip("Transformer Engine is not installed here (megatron-core's HAVE_TE is False)")
    print(json.dumps(result))
    assert result["te_core_attention"] == ["TEDotProductAttention"], result
    assert result["max_error_relative_to_max"] < 2e-2, result
