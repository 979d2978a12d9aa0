"""A run that cannot distil correctly from its `teacher.cache` is refused before anything is built, with one line
naming the problem and the fix: a cache of other data (contents, blend weights), sequence length, split, seed,
tokenizer or teacher; a run longer than the cache, or validating on more samples than it holds; a shard missing,
truncated or corrupted (checked against its record); an objective that cannot run from log-probs.

The refusals are raised by `taidtron.train.run`, called here in this process (each stops within a second or two of
start-up); three of them also go through the command line, where every ValueError becomes one stderr line and exit
code 2."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from taidtron.cache import CacheError, read_manifest
from taidtron.cache.identity import check_fits_run
from taidtron.checkpoint import TokenizerRef
from taidtron.config import load_config
from taidtron.train import run
from tests.cache.conftest import one_line_exit_2, run_args, write_cache
from tests.checkpoint.helpers import run_train
from tests.hf.helpers import import_cli, make_qwen2
from tests.support import REPO_ROOT


@pytest.fixture(scope="module")
def setup(tmp_path_factory, teacher_ckpt):
    root = tmp_path_factory.mktemp("refusals")
    cache = root / "cache"
    write_cache(run_args(root / "unused", teacher_ckpt), cache, "8")
    return root, cache


def damaged(root: Path, cache: Path, name: str, damage) -> Path:
    """A copy of the cache with one shard damaged by `damage(path)`."""
    copy = root / f"damaged_{name}"
    if not copy.exists():
        shutil.copytree(cache, copy)
        damage(copy / "train-000001.safetensors")
    return copy


def refusal(setup, teacher_ckpt, *overrides: str, cache: Path | None = None, monkeypatch) -> str:
    """The one-line refusal of the tiny run with these overrides, from `taidtron.train.run` in this process."""
    root, default = setup
    monkeypatch.chdir(REPO_ROOT)
    args = run_args(root / "run", teacher_ckpt, f"teacher.cache={cache or default}", *overrides)
    cfg = load_config(args[1], args[2:])
    with pytest.raises(CacheError) as info:
        run(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.seq_length=16"], "was written with data.seq_length=32, this run has 16"),
        (["data.split=90,10,0"], "was written with data.split=0.95,0.05,0, this run has 0.9,0.1,0"),
        (["data.seed=7"], "was written with data.seed=1234, this run has 7"),
        (["data.blend=[1.0,data/smoke/smoke_text_document]"], "was written for other data"),
        (["optim.train_steps=7", "optim.warmup_steps=1"], "this run reads 28 train samples"),
        (["logging.eval_iters=2"], "validation reads 8 valid samples"),
        (["taid.loss=lm"], "taid.loss=lm trains the student without a teacher; drop teacher.cache"),
    ],
)
@pytest.mark.multiprocess
def test_a_cache_written_for_another_run_is_refused(setup, teacher_ckpt, monkeypatch, overrides, expected):
    assert expected in refusal(setup, teacher_ckpt, *overrides, monkeypatch=monkeypatch)


@pytest.mark.multiprocess
def test_a_cache_of_another_dataset_is_refused(setup, teacher_ckpt, monkeypatch):
    from taidtron.data import build_indexed_dataset

    root, _ = setup
    corpus = root / "other.jsonl"
    lines = (REPO_ROOT / "data/smoke/corpus.jsonl").read_text().splitlines()[::2]
    corpus.write_text("\n".join(lines) + "\n")
    prefix = root / "other_text_document"
    build_indexed_dataset([corpus], prefix, REPO_ROOT / "data/smoke/tokenizer.model", progress=False)
    message = refusal(setup, teacher_ckpt, f"data.blend=[{prefix}]", monkeypatch=monkeypatch)
    assert "was written for other data" in message and "set data.blend to the cache's" in message


@pytest.mark.multiprocess
def test_a_cache_of_another_teacher_is_refused(setup, teacher_ckpt, monkeypatch, tmp_path):
    other = import_cli(make_qwen2(tmp_path / "other_hf", seed=1), tmp_path / "other_ckpt")
    message = refusal(setup, teacher_ckpt, f"teacher.init={other}", monkeypatch=monkeypatch)
    assert f"was written from the teacher {teacher_ckpt.resolve()}" in message
    assert "set teacher.init=null to distil from the cache's teacher" in message


@pytest.mark.multiprocess
def test_a_cache_of_another_tokenizer_is_refused(setup, teacher_ckpt, monkeypatch):
    """Data and tokenizer are checked against each other first (a run never reaches the cache with a tokenizer its
    data was not made with), so the cache's own tokenizer check is called directly."""
    root, cache = setup
    monkeypatch.chdir(REPO_ROOT)
    args = run_args(root / "run", teacher_ckpt)
    cfg = load_config(args[1], args[2:])
    manifest = read_manifest(cache)
    ours = manifest.tokenizer
    check_fits_run(manifest, cache, cfg, ours, needs_valid=True)  # the cache's own tokenizer passes
    other = TokenizerRef(path="/elsewhere/tokenizer.model", fingerprint="0" * 64)
    with pytest.raises(CacheError, match="was written with the tokenizer .* data.tokenizer is /elsewhere"):
        check_fits_run(manifest, cache, cfg, other, needs_valid=True)


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("missing", lambda path: path.unlink(), "is missing shard train-000001 (train samples 8-15)"),
        ("truncated", truncate, "train-000001.safetensors is truncated"),
        ("corrupted", flip_a_byte, "train-000001.safetensors is corrupted"),
        ("record", lambda path: path.with_suffix(".json").write_text("{"), "train-000001.json is unreadable"),
    ],
)
@pytest.mark.multiprocess
def test_a_missing_truncated_or_corrupted_shard_is_refused(setup, teacher_ckpt, monkeypatch, name, damage, expected):
    root, cache = setup
    message = refusal(setup, teacher_ckpt, cache=damaged(root, cache, name, damage), monkeypatch=monkeypatch)
    assert expected in message and "--samples 8:16" in message


@pytest.mark.multiprocess
def test_refusals_on_the_command_line_are_one_line_and_exit_code_2(setup, teacher_ckpt):
    root, cache = setup
    for overrides, fragment in (
        ([f"teacher.cache={damaged(root, cache, 'missing', lambda p: p.unlink())}"], "is missing shard"),
        ([f"teacher.cache={cache}", "data.seq_length=16"], "data.seq_length=32"),
        ([f"teacher.cache={cache}", "taid.loss=lm"], "taid.loss=lm trains the student without a teacher"),
        (["teacher.cache=" + str(root / "absent")], "does not exist; write one with"),
    ):
        proc = run_train(run_args(root / "cli", teacher_ckpt, *overrides), expect_ok=False)
        one_line_exit_2(proc, fragment)
        assert not (root / "cli" / "checkpoints").exists() or not any((root / "cli" / "checkpoints").iterdir())


def test_the_manifest_records_every_fingerprint(setup):
    _, cache = setup
    raw = json.loads((cache / "manifest.json").read_text())
    assert raw["data"]["contents"] and raw["tokenizer"]["fingerprint"] and raw["teacher"]["hash"]
    assert raw["data"]["seq_length"] == 32 and raw["data"]["seed"] == 1234 and raw["top_k"] == 8
    assert raw["format_version"] == 1 and raw["samples"] == {"train": 24, "valid": 4}
    assert dataclasses.asdict(read_manifest(cache))["top_k"] == 8
