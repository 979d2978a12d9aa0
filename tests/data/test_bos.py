"""BOS at the start of documents: the default is what the tokenizer's own files say (checked against transformers
loading the same files), --bos / --no-bos override it, the choice is recorded in .meta.json, and training refuses
data whose choice contradicts data.tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from taidtron.data.indexed import build_indexed_dataset, read_meta
from taidtron.data.tokenizer import load_tokenizer
from taidtron.data.validate import DataError, check_dataset
from tests.data.test_preprocess import documents
from tests.support import run_cli
from tests.train.test_training_run import TINY

SHARES = [0.95, 0.05, 0.0]
TEXT = "Mia lives in Brindle."


def sentencepiece_dir(tmp_path: Path, smoke_tokenizer_path: Path, add_bos_token: bool | None) -> Path:
    """The smoke sentencepiece model in an HF-style folder whose tokenizer_config.json says `add_bos_token` (or
    omits it); transformers loads it as a LlamaTokenizer."""
    directory = tmp_path / f"sp-{add_bos_token}"
    directory.mkdir()
    shutil.copy(smoke_tokenizer_path, directory / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def bpe_dir(tmp_path: Path, hf_tokenizer_json: Path, template: bool, config: dict | None = None) -> Path:
    """The byte-level BPE tokenizer.json, with a post-processor that puts <|pad|> (as a stand-in BOS) before every
    text when `template`, like Llama 3's `<|begin_of_text|>`."""
    from tokenizers import Tokenizer, processors

    directory = tmp_path / f"bpe-{template}-{bool(config)}"
    directory.mkdir()
    tk = Tokenizer.from_file(str(hf_tokenizer_json))
    if template:
        tk.post_processor = processors.TemplateProcessing(
            single="<|pad|> $A", special_tokens=[("<|pad|>", tk.token_to_id("<|pad|>"))]
        )
    tk.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def transformers_adds_bos(directory: Path) -> bool:
    """The reference: does transformers, loading the same folder, put the BOS id before a text?"""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    ids = tok(TEXT).input_ids
    plain = tok(TEXT, add_special_tokens=False).input_ids
    return ids[: len(ids) - len(plain)] == [tok.bos_token_id] if tok.bos_token_id is not None else len(ids) > len(plain)


@pytest.mark.parametrize("add_bos_token", [True, False, None])
def test_sentencepiece_default_follows_tokenizer_config_like_transformers(
    tmp_path, smoke_tokenizer_path, add_bos_token
):
    directory = sentencepiece_dir(tmp_path, smoke_tokenizer_path, add_bos_token)
    default = load_tokenizer(directory).bos_default
    assert default.add == transformers_adds_bos(directory) == bool(add_bos_token)
    assert default.stated == (add_bos_token is not None)


def test_a_bare_sentencepiece_model_states_nothing_and_defaults_to_no_bos(smoke_tok):
    assert (smoke_tok.bos, smoke_tok.bos_default.add, smoke_tok.bos_default.stated) == (2, False, False)


@pytest.mark.parametrize("template", [True, False])
def test_tokenizer_json_default_is_what_its_post_processor_adds_like_transformers(
    tmp_path, hf_tokenizer_json, template
):
    directory = bpe_dir(tmp_path, hf_tokenizer_json, template)
    tok = load_tokenizer(directory)
    assert tok.bos_default.add == transformers_adds_bos(directory) == template and tok.bos_default.stated
    assert tok.bos == (tok.vocab["<|pad|>"] if template else None)


def test_tokenizer_config_add_bos_token_wins_over_the_post_processor(tmp_path, hf_tokenizer_json):
    directory = bpe_dir(tmp_path, hf_tokenizer_json, True, {"add_bos_token": False})
    default = load_tokenizer(directory / "tokenizer.json").bos_default
    assert (default.add, default.stated, default.source) == (False, True, "tokenizer_config.json add_bos_token=false")


def test_preprocess_default_override_and_record(tmp_path, small_jsonl, smoke_tokenizer_path, smoke_tok):
    directory = sentencepiece_dir(tmp_path, smoke_tokenizer_path, True)
    texts = [json.loads(line)["text"] for line in small_jsonl.read_text().splitlines()]
    plain = [smoke_tok.tokenize(t) + [smoke_tok.eod] for t in texts if t]

    lines: list[str] = []
    meta = build_indexed_dataset([small_jsonl], tmp_path / "bos", directory, progress=False, log=lines.append)
    assert documents(tmp_path / "bos") == [[smoke_tok.bos] + doc for doc in plain]
    assert (meta["bos"], meta["bos_id"], meta["bos_source"]) == (
        True,
        2,
        "default: tokenizer_config.json add_bos_token=true",
    )
    assert read_meta(tmp_path / "bos")["bos_source"] == meta["bos_source"]
    assert "BOS: yes, <s> (id 2) before each document (default: tokenizer_config.json add_bos_token=true)" in lines

    meta = build_indexed_dataset([small_jsonl], tmp_path / "nobos", directory, bos=False, progress=False)
    assert documents(tmp_path / "nobos") == plain and (meta["bos"], meta["bos_source"]) == (False, "--no-bos")


def test_bos_for_a_tokenizer_without_one_is_refused(tmp_path, small_jsonl, hf_tokenizer_json):
    with pytest.raises(ValueError, match=r"should start with a BOS token \(--bos\), but .* none; pass --no-bos"):
        build_indexed_dataset([small_jsonl], tmp_path / "x", hf_tokenizer_json, bos=True, progress=False)


def test_the_data_check_refuses_a_bos_choice_the_tokenizer_contradicts(
    tmp_path, small_jsonl, smoke_tokenizer_path, smoke_prefix
):
    says_yes = load_tokenizer(sentencepiece_dir(tmp_path, smoke_tokenizer_path, True))
    says_no = load_tokenizer(sentencepiece_dir(tmp_path, smoke_tokenizer_path, False))
    bare = load_tokenizer(smoke_tokenizer_path)
    assert says_yes.fingerprint() == says_no.fingerprint() == bare.fingerprint()  # only the BOS rule differs
    with_bos, without_bos = str(tmp_path / "with"), str(tmp_path / "without")
    build_indexed_dataset([small_jsonl], with_bos, smoke_tokenizer_path, bos=True, progress=False)
    build_indexed_dataset([small_jsonl], without_bos, smoke_tokenizer_path, bos=False, progress=False)

    check_dataset(with_bos, says_yes, SHARES)
    check_dataset(without_bos, says_no, SHARES)
    check_dataset(with_bos, bare, SHARES)  # a bare sentencepiece model states nothing: either is fine
    check_dataset(without_bos, bare, SHARES)
    with pytest.raises(DataError, match=r"has no BOS before its documents \(--no-bos\), but .* adds one "):
        check_dataset(without_bos, says_yes, SHARES)
    with pytest.raises(DataError, match=r"starts every document with BOS \(--bos\), but .* adds none .*--no-bos"):
        check_dataset(with_bos, says_no, SHARES)
    # the shipped dataset predates --bos: no BOS, and its .meta.json says nothing about it
    assert "bos" not in read_meta(smoke_prefix)
    with pytest.raises(DataError, match=r"has no BOS before its documents \(built before --bos existed\)"):
        check_dataset(smoke_prefix, says_yes, SHARES)


def test_data_with_bos_and_no_meta_passes_the_sampled_check(tmp_path, small_jsonl, smoke_tokenizer_path, smoke_tok):
    prefix = tmp_path / "with"
    build_indexed_dataset([small_jsonl], prefix, smoke_tokenizer_path, bos=True, progress=False)
    Path(f"{prefix}.meta.json").unlink()  # as if another tool had built it: checked by sampling
    check_dataset(str(prefix), smoke_tok, SHARES)


def test_training_stops_in_one_line_on_a_bos_mismatch(tmp_path, smoke_tokenizer_path, smoke_prefix):
    directory = sentencepiece_dir(tmp_path, smoke_tokenizer_path, True)
    proc = run_cli(
        "-m",
        "taidtron.train",
        "--config",
        "configs/smoke.yaml",
        *TINY,
        f"data.blend=[{smoke_prefix}]",
        f"data.tokenizer={directory}",
        f"logging.run_dir={tmp_path / 'run'}",
        expect_ok=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "has no BOS before its documents" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "taidtron" in line]) == 1, proc.stderr
