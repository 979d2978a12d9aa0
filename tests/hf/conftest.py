"""Fixtures of the conversion tests: two tiny random HF models (Llama: GQA, untied, vocab padded inside taidtron;
Qwen2: qkv bias, tied) and their imports by `tools/convert.py import`, built once per session."""

from __future__ import annotations

import pytest

from .helpers import Models, import_cli, make_llama, make_qwen2


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("hf")
    llama_hf, qwen2_hf = make_llama(root / "llama"), make_qwen2(root / "qwen2")
    return Models(
        llama_hf, qwen2_hf, import_cli(llama_hf, root / "llama_ckpt"), import_cli(qwen2_hf, root / "qwen2_ckpt")
    )
