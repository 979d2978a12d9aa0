"""tools/convert.py: HF -> taidtron -> HF, logit parity with transformers at several layouts, and its errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from taidtron import checkpoint
from tests.support import run_cli, run_torchrun

from .helpers import CONVERT, make_qwen2

WORKER = Path(__file__).with_name("parity_worker.py")
TOLERANCE = 1e-4  # fp32, max abs logit difference


def parity(results: list[dict]) -> dict[str, float]:
    """The max abs logit difference per model, the same on every rank."""
    assert all(r["parity"] == results[0]["parity"] for r in results), results
    return results[0]["parity"]


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict[str, Path]:
    """Both imports exported back to HF (several shards, to exercise the index)."""
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name, ckpt in (("llama", models.llama_ckpt), ("qwen2", models.qwen2_ckpt)):
        out[name] = root / f"{name}_roundtrip"
        run_cli(
            str(CONVERT),
            "export",
            "--ckpt",
            str(ckpt),
            "--out",
            str(out[name]),
            "--max-shard-size",
            "150KB",
            "--no-progress",
        )
    return out


def _hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_import_records_architecture_and_source(models):
    meta = checkpoint.read_meta(models.qwen2_ckpt)
    assert meta.has_optimizer is False and meta.trainer is None and meta.step == 0
    assert dataclasses.asdict(meta.model) == {
        "family": "qwen2",
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_query_groups": 2,
        "ffn_hidden_size": 160,
        "vocab_size": 1024,
        "rotary_base": 1e6,
        "norm_epsilon": 1e-6,
        "add_qkv_bias": True,
        "tie_embeddings": True,
        "attention": "auto",
        "init": None,
    }
    assert meta.source.kind == "hf_import" and meta.source.path == str(models.qwen2_hf.resolve())
    assert meta.source.hf_config == json.loads((models.qwen2_hf / "config.json").read_text())
    assert meta.params_dtype == "float32" and meta.padded_vocab_size == 1024
    llama = checkpoint.read_meta(models.llama_ckpt).model
    assert (llama.num_query_groups, llama.tie_embeddings, llama.rotary_base, llama.add_qkv_bias) == (
        2,
        False,
        500000.0,
        False,
    )


def test_import_logits_match_transformers_tp1(models, exported):
    out = run_torchrun(
        WORKER,
        1,
        "1",
        "1",
        f"{models.llama_hf}:{models.llama_ckpt}",
        f"{models.qwen2_hf}:{models.qwen2_ckpt}",
        f"{exported['llama']}:{models.llama_ckpt}",
        f"{exported['qwen2']}:{models.qwen2_ckpt}",
    )
    diffs = parity(out)
    print(diffs)
    assert set(diffs) == {"llama", "qwen2", "llama_roundtrip", "qwen2_roundtrip"}
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_import_logits_match_transformers_resharded(models, tp, pp):
    out = run_torchrun(
        WORKER,
        tp * pp,
        str(tp),
        str(pp),
        f"{models.llama_hf}:{models.llama_ckpt}",
        f"{models.qwen2_hf}:{models.qwen2_ckpt}",
    )
    diffs = parity(out)
    print(diffs)
    assert set(diffs) == {"llama", "qwen2"}
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_hf_taidtron_hf_roundtrip_is_bit_identical(models, exported):
    for name, original in (("llama", models.llama_hf), ("qwen2", models.qwen2_hf)):
        before, after = _hf_tensors(original), _hf_tensors(exported[name])
        assert set(before) == set(after), (name, set(before) ^ set(after))
        unequal = [k for k in before if before[k].dtype != after[k].dtype or not torch.equal(before[k], after[k])]
        assert not unequal, (name, unequal)
    index = json.loads((exported["llama"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    qwen = json.loads((exported["qwen2"] / "config.json").read_text())
    assert qwen["model_type"] == "qwen2" and qwen["tie_word_embeddings"] is True and qwen["vocab_size"] == 1024
    assert (exported["qwen2"] / "generation_config.json").is_file()


def test_export_removes_vocab_padding(models, exported):
    # llama: vocab 1000 is stored padded to 1024 rows inside taidtron.
    tensors = _hf_tensors(exported["llama"])
    assert tensors["model.embed_tokens.weight"].shape[0] == 1000 and tensors["lm_head.weight"].shape[0] == 1000


def test_import_refuses_unsupported_architectures(tmp_path):
    base = json.loads((make_qwen2(tmp_path / "q") / "config.json").read_text())
    cases = {
        "mistral": ({**base, "model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "mistral"),
        "window": ({**base, "use_sliding_window": True, "sliding_window": 4096}, "sliding_window"),
        "rope_scaling": ({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "yarn"),
    }
    for name, (config, needle) in cases.items():
        (tmp_path / "q" / "config.json").write_text(json.dumps(config))
        proc = run_cli(
            str(CONVERT), "import", "--hf", str(tmp_path / "q"), "--out", str(tmp_path / name), expect_ok=False
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert needle in proc.stderr and "supported" in proc.stderr.lower(), proc.stderr[-2000:]
        assert not (tmp_path / name).exists()


def test_import_errors_for_missing_files_and_nonempty_output(models, tmp_path):
    proc = run_cli(
        str(CONVERT), "import", "--hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), expect_ok=False
    )
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text((models.qwen2_hf / "config.json").read_text())
    proc = run_cli(str(CONVERT), "import", "--hf", str(empty), "--out", str(tmp_path / "o"), expect_ok=False)
    assert proc.returncode == 2 and "safetensors" in proc.stderr
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    proc = run_cli(str(CONVERT), "import", "--hf", str(models.qwen2_hf), "--out", str(occupied), expect_ok=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (occupied / "keep.txt").read_text() == "x"


def test_import_of_sharded_export_gives_the_same_content_id(models, exported, tmp_path):
    """Sharded input (model.safetensors.index.json) imports too, and the same weights give the same content id
    (so a re-imported teacher is recognised as unchanged on resume)."""
    again = tmp_path / "again"
    run_cli(str(CONVERT), "import", "--hf", str(exported["llama"]), "--out", str(again), "--no-progress")
    first, second = checkpoint.read_meta(models.llama_ckpt), checkpoint.read_meta(again)
    assert first.content_id == second.content_id
    assert first.model == second.model
