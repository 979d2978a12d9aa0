"""Fixtures of the checkpoint tests: an imported tiny Qwen2 teacher, built once per session (a checkpoint teacher is
identical under every tp/pp, which a random teacher is not). The helpers that run short distillations with it are
in `tests/checkpoint/helpers.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hf.helpers import import_cli, make_qwen2


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """`tools/convert.py import` of a tiny random Qwen2 (vocab 1024, the smoke tokenizer's)."""
    root = tmp_path_factory.mktemp("teacher")
    return import_cli(make_qwen2(root / "qwen2_hf"), root / "qwen2_ckpt")
