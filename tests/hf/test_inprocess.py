"""`taidtron.hf` called in this process (no command line): a round trip, the refusal of a process that sees CUDA,
and the export's temporary directory removed on any error.

The conversion makes a gloo world of one in the calling process and installs taidtron's CPU overrides there (the
path `tools/convert.py` takes too), so these tests run it in the pytest process itself."""

from __future__ import annotations

import json
import os
import runpy
import shutil

import pytest
import torch
from safetensors.torch import load_file

from taidtron import checkpoint
from taidtron.hf import ConvertError, export_hf, import_hf
from taidtron.hf import convert as hf_convert

from .helpers import CONVERT, make_llama


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("inprocess")
    hf_dir = make_llama(root / "llama_hf")
    meta = import_hf(hf_dir, root / "llama_ckpt", quiet=True)
    return hf_dir, root / "llama_ckpt", meta


def test_import_then_export_in_process_is_bit_identical(llama, tmp_path):
    hf_dir, ckpt, meta = llama
    assert meta == checkpoint.read_meta(ckpt)
    assert meta.source.kind == "hf_import" and meta.model.vocab_size == 1000 and meta.padded_vocab_size == 1024
    summary = export_hf(ckpt, tmp_path / "out", max_shard_size="100KB", quiet=True)
    assert summary.shards > 1 and summary.step == 0 and summary.dtype == "float32"
    before = load_file(hf_dir / "model.safetensors")
    after = {}
    for shard in sorted((tmp_path / "out").glob("model-*.safetensors")):
        after.update(load_file(shard))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.distributed.is_initialized()  # the world of one is gone again


@pytest.mark.parametrize("call", ["import", "export"])
def test_a_process_that_sees_cuda_is_refused_before_anything_is_written(llama, tmp_path, monkeypatch, call):
    hf_dir, ckpt, _ = llama
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match="CUDA_VISIBLE_DEVICES"):
        if call == "import":
            import_hf(hf_dir, out, quiet=True)
        else:
            export_hf(ckpt, out, quiet=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_export_leaves_nothing_behind_on_any_error(llama, tmp_path, monkeypatch, failure):
    """The error comes after every shard is written (the last step before the rename): neither `out` nor its
    temporary sibling may remain."""
    _, ckpt, _ = llama

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(hf_convert, "_write_tokenizer", fail)
    with pytest.raises(type(failure)):
        export_hf(ckpt, tmp_path / "X", quiet=True)
    assert list(tmp_path.iterdir()) == []
    assert not torch.distributed.is_initialized()


def test_export_refuses_a_nonempty_output_and_keeps_it(llama, tmp_path):
    _, ckpt, _ = llama
    (tmp_path / "X").mkdir()
    (tmp_path / "X" / "keep.txt").write_text("x")
    with pytest.raises(ConvertError, match="--force"):
        export_hf(ckpt, tmp_path / "X", quiet=True)
    assert [p.name for p in tmp_path.iterdir()] == ["X"] and (tmp_path / "X" / "keep.txt").read_text() == "x"


def test_command_line_main_in_process_exits_2_with_one_line_and_leaves_the_environment(tmp_path, capsys):
    """tools/convert.py's main() called in a process that has imported torch already: it does not touch the
    environment (hiding the GPUs is only for its own process, before torch), and bad input is one line, exit 2."""
    main = runpy.run_path(str(CONVERT))["main"]  # tools/ is not a package; run_path does not run __main__
    before = dict(os.environ)
    assert main(["import", "--hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert: error: ") and err.count("\n") == 1 and "is not a directory" in err, err
    assert dict(os.environ) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("intermediate_size", 96, "do not give decoder.layers.0.mlp.linear_fc1.weight the shape (192, 64)"),
        ("num_key_value_heads", 1, "do not give decoder.layers.0.self_attention.linear_qkv.weight the shape (96, 64)"),
    ],
)
def test_weights_that_do_not_fit_the_config_are_refused_before_anything_is_written(llama, tmp_path, key, value, needle):
    """The shapes are checked from the safetensors headers against the model config.json implies, before the
    streamed write begins (q/k/v that do not even combine included)."""
    hf_dir, _, _ = llama
    broken = tmp_path / "broken"
    shutil.copytree(hf_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ConvertError, match="config.json and weights disagree") as error:
        import_hf(broken, tmp_path / "out", quiet=True)
    assert needle in str(error.value), error.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    assert not torch.distributed.is_initialized()
